"""The domain package stays pure: no I/O, clock, randomness or stream library."""

from __future__ import annotations

import ast
import json
import pathlib
import subprocess
import sys

DOMAIN = pathlib.Path(__file__).resolve().parents[3] / "streams" / "domain"

ALLOWED_IMPORTS = {
    "__future__",
    "base64",
    "collections",
    "dataclasses",
    "decimal",
    "enum",
    "hashlib",
    "re",
    "types",
    "typing",
}
#: The one package of the project the domain may import: itself.
OWN_PACKAGE = "streams.domain"
FORBIDDEN_MODULES = {
    "aiokafka",
    "aiohttp",
    "asyncio",
    "asyncpg",
    "ccxt",
    "datetime",
    "faust",
    "mode",
    "random",
    "secrets",
    "socket",
    "threading",
    "uuid",
    "websockets",
}


def _imported_roots(source: str) -> set[str]:
    """The top-level modules imported, except ``streams.domain`` itself (any other ``streams`` module counts)."""
    roots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        else:
            continue
        for name in names:
            if name != OWN_PACKAGE and not name.startswith(OWN_PACKAGE + "."):
                roots.add(name if name.startswith("streams") else name.split(".")[0])
    return roots


def test_the_purity_check_catches_an_import_of_another_streams_package():
    assert _imported_roots("from streams.wire.serde import x\nfrom streams.domain.model import y\n") == {"streams.wire.serde"}


def test_domain_modules_import_only_the_pure_standard_library():
    # Arrange
    modules = sorted(DOMAIN.glob("*.py"))

    # Act
    offending = {
        path.name: sorted(_imported_roots(path.read_text()) - ALLOWED_IMPORTS) for path in modules
    }

    # Assert
    assert modules
    assert {name: roots for name, roots in offending.items() if roots} == {}


def test_domain_import_loads_no_io_clock_random_or_stream_library():
    # Arrange: a fresh interpreter, so nothing another test imported can hide a leak
    program = (
        "import json, sys\n"
        "before = set(sys.modules)\n"
        "import streams.domain\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )

    # Act
    completed = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        check=True,
        cwd=DOMAIN.parents[1],
    )
    loaded = {name.split(".")[0] for name in json.loads(completed.stdout)}

    # Assert
    assert loaded & FORBIDDEN_MODULES == set()
