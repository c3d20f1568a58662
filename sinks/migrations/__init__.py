"""Versioned SQL migrations of the ``monitoring`` schema, applied in order by ``sinks.migrate``.

One file per version, ``NNNN_name.sql``, plain SQL without BEGIN/COMMIT (the runner wraps
each file in its own transaction). A file that has been applied anywhere is never edited:
the runner stores each file's checksum and refuses a database whose history differs.
"""
