"""`make pipeline` with every credential set prints none of them: banners, log lines, errors.

The local PostgreSQL trusts local connections, so a password in ``DATABASE_URL`` is accepted
and ignored: the pipeline runs normally while the test watches for the password. The
exchange key and secret are not the built-in emulator's, so every signed request is refused:
the error paths print too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.integration.pipeline_harness import REPO_ROOT, free_port

pytestmark = pytest.mark.integration

SECRETS = {
    "password": "pw-Zq81-never-print",
    "api_key": "key-Xv42-never-print",
    "api_secret": "secret-Wm77-never-print",
    "token": "token-Kd09-never-print",
}


def test_the_pipeline_never_prints_a_credential(kafka_bootstrap, database_url, unique_suffix, tmp_path):
    # Arrange
    user_and_host = database_url.split("://", 1)[1]
    user, _, host = user_and_host.partition("@")
    user = user.split(":", 1)[0]
    environment = {
        **os.environ, "PYTHONPATH": str(REPO_ROOT),
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "DATABASE_URL": f"postgresql://{user}:{SECRETS['password']}@{host}",
        "BINANCE_API_KEY": SECRETS["api_key"], "BINANCE_API_SECRET": SECRETS["api_secret"],
        "WEB_AUTH_TOKEN": SECRETS["token"],
        "PIPELINE_APP_ID": f"secrets-{unique_suffix}", "PIPELINE_TOPIC_PREFIX": f"secrets-{unique_suffix}.",
        "PIPELINE_TOPIC_PARTITIONS": "3", "PIPELINE_DATA_DIR": str(tmp_path / "data"),
        "WEB_PORT": str(free_port()), "EMULATOR_PORT": str(free_port()), "DEMO_FEED_PORT": str(free_port()),
        "PIPELINE_SINK_METRICS_PORT": "0", "DEMO_FEED_INTERVAL_S": "0.2", "SYNC_INTERVAL_S": "1",
        "LOG_FORMAT": "text",
    }
    environment.pop("SIGNALS_WS_URL", None)
    environment.pop("BINANCE_FUTURES_URL", None)
    output = tmp_path / "pipeline.out"

    # Act: run the whole pipeline for a while (the demo feed plays, requests are refused), then stop it
    with open(output, "wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "streams.supervise"], cwd=REPO_ROOT, env=environment,
                                   stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:  # until an order the demo feed asked for was refused
                text = output.read_text(errors="replace")
                if "position-pipeline is running" in text and "binance refused our credentials" in text:
                    break
                time.sleep(0.5)
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    text = output.read_text(errors="replace")

    # Assert: the pipeline ran (banner, worker ready, requests refused) and said no secret
    assert "position-pipeline is running" in text and "[^Worker]: Ready" in text, text[-3000:]
    assert "binance refused our credentials" in text  # the error paths ran
    assert f"{user}:***@" in text
    leaked = {name for name, secret in SECRETS.items() if secret in text}
    assert not leaked, leaked
