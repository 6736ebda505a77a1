"""A ClickHouse-compatible HTTP server on the embedded chdb engine.

For local runs and tests only: one process, queries run one at a time, and
no authentication. Start it with ``python -m services.chdev --data-dir DIR``.
"""
