"""docker-compose.yml, checked without a Docker engine.

Two readings. PyYAML reads the file as written (anchors resolved): services, profiles,
healthchecks, volumes, restart policies, published ports. And the Compose specification's
own loader, ``github.com/compose-spec/compose-go/v2`` (COMPOSE_GO_VERSION, the version
docker compose v5.6.0 is built with), loads the file as ``docker compose config`` would:
schema validation (an unknown key is an error), ``${VAR:-default}`` interpolation with the
environment we give it, merge keys, profiles, depends_on consistency. The loader is a
20-line Go program built once into the project's tool cache through the Go module proxy
(``$STACK_CACHE_DIR/tools``; a few seconds the first time). A missing tool fails, never skips.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
COMPOSE_GO_VERSION = "v2.16.1"

CONTRACT_VARIABLES = (
    "KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "SIGNALS_WS_URL", "BINANCE_FUTURES_URL", "BINANCE_API_KEY",
    "BINANCE_API_SECRET", "SYNC_INTERVAL_S", "DEFAULT_STOP_LOSS_PCT", "WEB_PORT", "WEB_BIND",
)
PIPELINE_SERVICES = ("worker", "sink", "ingest")
CORE_SERVICES = {"kafka", "postgres", "topics", "worker", "sink", "ingest"}
DEMO_SERVICES = {"emulator", "demo-feed"}

LOADER_SOURCE = """\
// composecheck FILE [PROFILE...]: load a compose file as `docker compose config` does
// (compose-go: schema, interpolation from the environment, profiles) and print it as JSON.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	options, err := cli.NewProjectOptions([]string{os.Args[1]},
		cli.WithOsEnv, cli.WithProfiles(os.Args[2:]), cli.WithName("position-pipeline"))
	if err != nil {
		fail(err)
	}
	project, err := options.LoadProject(context.Background())
	if err != nil {
		fail(err)
	}
	out, err := project.MarshalJSON()
	if err != nil {
		fail(err)
	}
	os.Stdout.Write(out)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
"""
GO_MOD = f"module composecheck\n\ngo 1.24\n\nrequire github.com/compose-spec/compose-go/v2 {COMPOSE_GO_VERSION}\n"


def _tool_cache() -> Path:
    return Path(os.environ.get("STACK_CACHE_DIR") or Path.home() / ".cache" / "position-pipeline") / "tools"


@pytest.fixture(scope="session")
def composecheck() -> Path:
    """The compose-go loader, built from the Go module proxy when not cached."""
    digest = hashlib.sha256((LOADER_SOURCE + GO_MOD).encode()).hexdigest()[:12]
    binary = _tool_cache() / f"composecheck-{COMPOSE_GO_VERSION}-{digest}" / "composecheck"
    if not binary.exists():
        go = shutil.which("go")
        if go is None:
            pytest.fail(f"the compose loader is not cached and `go` is not on PATH to build it "
                        f"(github.com/compose-spec/compose-go/v2@{COMPOSE_GO_VERSION})")
        binary.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=binary.parent) as staging:
            (Path(staging) / "main.go").write_text(LOADER_SOURCE)
            (Path(staging) / "go.mod").write_text(GO_MOD)
            env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-buildvcs=false -mod=mod"}
            for command in ([go, "mod", "tidy"], [go, "build", "-o", "composecheck", "."]):
                result = subprocess.run(command, cwd=staging, env=env, capture_output=True, text=True, timeout=900)
                if result.returncode != 0:
                    pytest.fail(f"{' '.join(command)} failed building the compose loader:\n{result.stderr[-3000:]}")
            os.replace(Path(staging) / "composecheck", binary)
    return binary


def _load(composecheck: Path, *profiles: str, env: dict[str, str] | None = None,
          path: Path = COMPOSE_FILE) -> dict:
    """The project as compose-go sees it, with only ``env`` (plus PATH) in the environment."""
    result = subprocess.run([str(composecheck), str(path), *profiles], capture_output=True, text=True, timeout=60,
                            env={"PATH": os.environ.get("PATH", ""), **(env or {})}, cwd=path.parent)
    assert result.returncode == 0, f"compose-go refused {path.name}:\n{result.stderr}"
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


# --------------------------------------------------------------------------- the loader


def test_compose_loader_refuses_an_unknown_key(composecheck: Path, tmp_path: Path):
    # Arrange: the checker must validate, or the tests below prove little
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  worker:\n    image: x\n    restart_policy: always\n")

    # Act
    result = subprocess.run([str(composecheck), str(broken)], capture_output=True, text=True, cwd=tmp_path)

    # Assert
    assert result.returncode != 0
    assert "restart_policy" in result.stderr


def test_compose_file_loads_with_and_without_the_demo_profile(composecheck: Path):
    # Act
    plain = _load(composecheck)
    demo = _load(composecheck, "demo")

    # Assert
    assert set(plain["services"]) == CORE_SERVICES
    assert set(demo["services"]) == CORE_SERVICES | DEMO_SERVICES


def test_pipeline_services_get_every_contract_variable_with_demo_defaults(composecheck: Path):
    # Arrange: the calling shell names nothing (and `make stack`'s loopback addresses must not leak in)
    project = _load(composecheck, "demo", env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
                                               "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/positions"})

    # Assert
    for name in PIPELINE_SERVICES:
        env = project["services"][name]["environment"]
        assert set(CONTRACT_VARIABLES) <= env.keys(), name
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:19092"
        assert env["DATABASE_URL"] == "postgresql://postgres:postgres@postgres:5432/positions"
        assert env["BINANCE_FUTURES_URL"] == "http://emulator:6070"
        assert (env["BINANCE_API_KEY"], env["BINANCE_API_SECRET"]) == ("emulator-api-key", "emulator-api-secret")
        assert env["SIGNALS_WS_URL"] == "ws://demo-feed:6071"
        assert (env["SYNC_INTERVAL_S"], env["DEFAULT_STOP_LOSS_PCT"]) == ("30", "2")
        assert (env["WEB_PORT"], env["WEB_BIND"]) == ("6066", "0.0.0.0")


def test_contract_variables_from_the_shell_reach_the_pipeline_services(composecheck: Path):
    # Arrange
    shell = {"BINANCE_FUTURES_URL": "https://fapi.binance.com", "BINANCE_API_KEY": "k-123",
             "BINANCE_API_SECRET": "s-456", "SIGNALS_WS_URL": "wss://feed.example/ws", "SYNC_INTERVAL_S": "15",
             "DEFAULT_STOP_LOSS_PCT": "1.5", "WEB_PORT": "7077"}

    # Act
    project = _load(composecheck, env=shell)

    # Assert
    for name in PIPELINE_SERVICES:
        env = project["services"][name]["environment"]
        for variable, value in shell.items():
            assert env[variable] == value, (name, variable)
    ports = project["services"]["worker"]["ports"]
    assert [(p["host_ip"], p["published"], p["target"]) for p in ports] == [("127.0.0.1", "7077", 7077)]


def test_topics_service_runs_once_before_the_pipeline(composecheck: Path):
    # Arrange
    services = _load(composecheck, "demo")["services"]

    # Assert
    assert services["topics"]["command"] == ["python", "-m", "streams.admin", "create-topics"]
    assert services["topics"]["restart"] == "no"
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    for name in PIPELINE_SERVICES:
        depends = services[name]["depends_on"]
        assert depends["kafka"]["condition"] == "service_healthy", name
        assert depends["topics"]["condition"] == "service_completed_successfully", name
    assert services["sink"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # the demo services are waited for when their profile runs, and optional otherwise
    assert services["worker"]["depends_on"]["emulator"] == {"condition": "service_healthy", "required": False}
    assert services["ingest"]["depends_on"]["demo-feed"] == {"condition": "service_healthy", "required": False}


def test_pipeline_containers_are_hardened_like_the_pods(composecheck: Path):
    services = _load(composecheck, "demo")["services"]
    for name in ("topics", *PIPELINE_SERVICES, *DEMO_SERVICES):
        service = services[name]
        assert service["read_only"] is True, name
        assert service["tmpfs"] == ["/tmp"], name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert service["image"] == "position-pipeline:local", name
        assert service["build"]["context"] == str(REPO_ROOT), name


# --------------------------------------------------------------------------- as written


def test_services_have_healthchecks_restart_policies_and_named_volumes(raw: dict):
    # Arrange
    services = raw["services"]

    # Assert
    for name, service in services.items():
        if name == "topics":
            assert service["healthcheck"] == {"disable": True}
            continue
        assert service["healthcheck"]["test"], name
        assert service["restart"] == "unless-stopped", name
    assert set(raw["volumes"]) == {"kafka-data", "postgres-data", "worker-data"}
    assert "kafka-data:/var/lib/kafka/data" in services["kafka"]["volumes"]
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert services["worker"]["volumes"] == ["worker-data:/var/lib/position-pipeline"]
    assert services["worker"]["environment"]["PIPELINE_DATA_DIR"] == "/var/lib/position-pipeline"
    assert services["worker"]["environment"]["WEB_HOST"] == "worker"  # its name on the compose network
    assert services["worker"]["stop_grace_period"] == "60s"


def test_healthchecks_probe_what_each_service_serves(raw: dict):
    # Arrange
    services = raw["services"]

    # Assert
    assert "/health" in " ".join(services["worker"]["healthcheck"]["test"])
    for name in ("sink", "ingest"):
        test = services[name]["healthcheck"]["test"]
        assert test[:5] == ["CMD", "python", "-m", "streams.heartbeat", "check"], name
        assert test[5] == services[name]["environment"]["PIPELINE_HEARTBEAT_FILE"] == f"/tmp/heartbeat/{name}"
    assert "/_emulator/health" in " ".join(services["emulator"]["healthcheck"]["test"])
    assert "6071" in " ".join(services["demo-feed"]["healthcheck"]["test"])


def test_demo_profile_holds_the_emulator_and_the_demo_feed(raw: dict):
    # Arrange
    services = raw["services"]

    # Assert
    assert {name for name, s in services.items() if "demo" in s.get("profiles", [])} == DEMO_SERVICES
    assert services["emulator"]["command"] == ["python", "-m", "emulator", "--host", "0.0.0.0", "--port", "6070"]
    assert services["demo-feed"]["command"] == ["python", "-m", "streams.ingest.demo_feed", "--host", "0.0.0.0",
                                                "--port", "6071"]
    assert services["emulator"]["ports"] == ["127.0.0.1:6070:6070"]
    assert services["demo-feed"]["ports"] == ["127.0.0.1:6071:6071"]


def test_every_published_port_is_on_loopback_only(raw: dict):
    for name, service in raw["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)


def test_kafka_is_the_same_single_node_kraft_broker_as_the_local_stack(raw: dict):
    # Arrange
    kafka = raw["services"]["kafka"]

    # Assert
    assert kafka["image"] == "apache/kafka:4.1.1"
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert kafka["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "PLAINTEXT://kafka:19092" in kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"]
