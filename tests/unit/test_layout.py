"""The house's rules: which room may import which (README, "Layout"), and no room too big to read."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

#: The edges: each talks to one outside system. None imports another.
EDGES = ("streams.exchange", "streams.ingest", "streams.web", "sinks")
#: What every edge may import from the project: the core, the wire format, the shared kit.
SHARED = ("streams.domain", "streams.wire", "streams.edge", "streams.telemetry", "streams.settings",
          "streams.topics", "streams.heartbeat")
#: Per room, the project packages it may import (its own always; the standard library and
#: third-party packages are not checked here).
ALLOWED = {
    "streams.domain": (),
    "streams.wire": ("streams.domain",),
    "streams.edge": ("streams.settings",),
    "streams.telemetry": ("streams.domain", "streams.settings"),
    **{edge: SHARED for edge in EDGES},
    # The worker is the composition root: it wires the edges around the processor.
    "streams.worker": (*SHARED, *EDGES, "emulator"),
    # The tools fold the log with the processor, never with the running app.
    "streams.ops": (*SHARED, "streams.worker.processor", "streams.worker.gaps", "sinks.migrate"),
}
#: Product modules longer than this are split by job (generated files aside: there are none).
MAX_MODULE_LINES = 500


def _project_imports(path: Path) -> set[str]:
    """Every project module ``path`` imports, at the top or inside a function."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module)
    return {name for name in imported if name.split(".")[0] in ("streams", "sinks", "emulator", "stack")}


def _room_of(module: str) -> str | None:
    return next((room for room in ALLOWED if module == room or module.startswith(room + ".")), None)


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_each_room_imports_only_what_the_layout_allows(room: str):
    # Arrange
    folder = REPO_ROOT.joinpath(*room.split("."))
    modules = sorted(folder.rglob("*.py"))

    # Act
    offending = {
        _module_name(path): sorted(name for name in _project_imports(path)
                                   if not _within(name, (room, *ALLOWED[room])))
        for path in modules
    }

    # Assert
    assert modules, room
    assert {module: names for module, names in offending.items() if names} == {}


def test_the_layout_check_catches_an_edge_importing_another_edge(tmp_path: Path):
    source = tmp_path / "feed.py"
    source.write_text("from streams.exchange.gateway import CcxtGateway\nfrom streams.domain import Side\n")
    imports = _project_imports(source)
    assert sorted(name for name in imports if not _within(name, ("streams.ingest", *ALLOWED["streams.ingest"]))) \
        == ["streams.exchange.gateway"]
    assert _room_of("streams.exchange.gateway") == "streams.exchange"


def test_no_product_module_is_longer_than_the_limit():
    # Arrange
    modules = [path for package in ("streams", "sinks", "stack", "emulator", "benchmarks")
               for path in (REPO_ROOT / package).rglob("*.py")]

    # Act
    too_long = {str(path.relative_to(REPO_ROOT)): length for path in modules
                if (length := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}

    # Assert
    assert modules
    assert too_long == {}


def test_every_package_error_root_derives_from_the_project_root():
    from sinks.exceptions import SinkError
    from streams.domain import DomainError, PipelineError
    from streams.exchange.errors import ExchangeError
    from streams.ingest.exceptions import IngestError
    from streams.ops.errors import OpsError
    from streams.settings import SettingsError
    from streams.topics import TopologyError
    from streams.web.errors import WebError
    from streams.wire.errors import CodecError
    from streams.worker.processor import InvalidInputRecord

    roots = (DomainError, CodecError, SettingsError, TopologyError, ExchangeError, IngestError, WebError,
             OpsError, InvalidInputRecord, SinkError)
    assert all(issubclass(root, PipelineError) for root in roots)
