"""Every SQL statement the product sends is a constant: listed here, reviewed, never built from input.

The test walks the source of every module that imports asyncpg and collects the first
argument of each database call. Each must be a string literal (values go in as ``$n``
parameters), a module-level UPPER_CASE constant built at import from other constants, or
a migration file's text; and the whole list must equal the one below, so a new statement
fails this test until someone has looked at it and added it.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
PRODUCT_PACKAGES = ("streams", "sinks", "stack", "emulator")
DATABASE_CALLS = frozenset({"execute", "executemany", "fetch", "fetchrow", "fetchval", "prepare", "cursor",
                            "copy_records_to_table", "copy_to_table", "copy_from_query", "copy_from_table"})

#: (module, the statement argument as written) of every database call in the product.
REVIEWED_STATEMENTS = {
    ("sinks/migrate.py", "\"SELECT to_regclass('monitoring.schema_migrations') IS NOT NULL\""),
    ("sinks/migrate.py", "'SELECT version, checksum FROM monitoring.schema_migrations'"),
    ("sinks/migrate.py", "_BOOTSTRAP"),
    ("sinks/migrate.py", "'SELECT pg_advisory_lock($1)'"),
    ("sinks/migrate.py", "'SELECT pg_advisory_unlock($1)'"),
    ("sinks/migrate.py", "migration.sql"),
    ("sinks/migrate.py",
     "'INSERT INTO monitoring.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)'"),
    ("sinks/sql.py", "MERGE_POSITIONS_SQL"),
    ("sinks/sql.py", "INSERT_EVENTS_SQL"),
    ("sinks/sql.py", "_LIVE_ROW_OF_KEY_SQL"),
    ("sinks/sql.py", "EVENTS_TABLE"),
    # Audit rows in binary COPY form, when some are written already: a temporary table, then
    # the same ON CONFLICT DO NOTHING insert, from it.
    ("sinks/sql.py", "CREATE_STAGED_EVENTS_SQL"),
    ("sinks/sql.py", "STAGED_EVENTS_TABLE"),
    ("sinks/sql.py", "INSERT_STAGED_EVENTS_SQL"),
    # Read-only, parameterised: a key's positions, then their events.
    ("streams/web/history.py", "_POSITIONS"),
    ("streams/web/history.py", "_EVENTS"),
    ("streams/web/closed.py", "_CLOSED"),
    # Read-only, a constant limit as its one parameter: the page's latest refusals.
    ("streams/web/feed.py", "_REFUSALS"),
    ("streams/ops/replay.py", "'TRUNCATE monitoring.positions, monitoring.position_events'"),
}


def database_modules() -> list[Path]:
    found = []
    for package in PRODUCT_PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            if "asyncpg" in text:
                found.append(path)
    return found


def statements(path: Path) -> list[ast.expr]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [node.args[0] for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in DATABASE_CALLS and node.args]


def module_constants(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {target.id for target in targets if isinstance(target, ast.Name)}
    return names


def test_every_sql_statement_is_a_reviewed_constant():
    # Arrange
    modules = database_modules()

    # Act
    found = {(str(path.relative_to(REPO_ROOT)), ast.unparse(argument)) for path in modules
             for argument in statements(path)}

    # Assert
    assert {"sinks/sql.py", "sinks/migrate.py", "streams/ops/replay.py"} <= {str(p.relative_to(REPO_ROOT))
                                                                           for p in modules}
    assert found == REVIEWED_STATEMENTS, (found - REVIEWED_STATEMENTS, REVIEWED_STATEMENTS - found)


def test_no_statement_is_built_at_the_call_from_runtime_values():
    for path in database_modules():
        constants = module_constants(path)
        for argument in statements(path):
            text = ast.unparse(argument)
            if isinstance(argument, ast.Constant):
                assert isinstance(argument.value, str), (path, text)
            elif isinstance(argument, ast.Name):
                assert argument.id in constants and argument.id.lstrip("_").isupper(), (path, text)
            else:  # only a migration's file text: read from the package, never from input
                assert text == "migration.sql", (path, text)
