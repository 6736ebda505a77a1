"""Tests for the chdb development server, run as a real subprocess.

Each server binds port 0 on 127.0.0.1 and reports its port through a ready
file. The tests talk to it with clickhouse-connect's HTTP client, the same
client the analytics service uses against a production ClickHouse server.
"""

from __future__ import annotations

import datetime
import gzip
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import clickhouse_connect
import lz4.frame
import pytest
import zstandard
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from services.chdev.sql import first_keyword, split_inline_insert, trailing_format

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0

EVENTS_TABLE = """
CREATE TABLE IF NOT EXISTS tg.events (
    id UInt64,
    ts DateTime64(3, 'UTC'),
    labels Map(String, String),
    model LowCardinality(String),
    tokens Nullable(Int32),
    payload String CODEC(ZSTD(3))
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY id
TTL toDateTime(ts) + INTERVAL 3650 DAY
"""


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(data_dir: Path, work_dir: Path) -> RunningServer:
    ready_file = work_dir / "ready"
    ready_file.unlink(missing_ok=True)
    log_path = work_dir / "server.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.chdev",
                "--data-dir",
                str(data_dir),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--ready-file",
                str(ready_file),
            ],
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not ready_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            pytest.fail(f"server did not start:\n{log_path.read_text()}")
        time.sleep(0.05)
    port = int(ready_file.read_text().strip())
    return RunningServer(process, port, data_dir, log_path)


def stop_server(server: RunningServer) -> int:
    """Send SIGTERM and return the exit code. Fails the test after a timeout."""
    server.process.send_signal(signal.SIGTERM)
    try:
        return server.process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
        pytest.fail(f"server ignored SIGTERM:\n{server.log()}")


def connect(server: RunningServer, **kwargs: object) -> Client:
    return clickhouse_connect.get_client(
        host="127.0.0.1",
        port=server.port,
        username="default",
        password="ignored",
        **kwargs,
    )


def http_request(
    server: RunningServer,
    params: dict[str, str],
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    url = f"http://127.0.0.1:{server.port}/?{urllib.parse.urlencode(params)}"
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    work_dir = tmp_path_factory.mktemp("chdev")
    running = start_server(work_dir / "data", work_dir)
    yield running
    stop_server(running)


@pytest.fixture
def client(server: RunningServer) -> Iterator[Client]:
    ch = connect(server)
    ch.command("CREATE DATABASE IF NOT EXISTS tg")
    yield ch
    ch.close()


def event_rows(count: int, offset: int = 0) -> list[tuple[object, ...]]:
    base = datetime.datetime(2026, 11, 30, 23, 59, 58, 125000)
    return [
        (
            offset + i,
            base + datetime.timedelta(milliseconds=i),
            {"tenant": f"t{i % 4}", "route": "/v1/chat"},
            f"model-{i % 3}",
            None if i % 5 == 0 else i * 7,
            bytes([0, 255, i % 256]) + "é".encode(),
        )
        for i in range(count)
    ]


EVENT_COLUMNS = ["id", "ts", "labels", "model", "tokens", "payload"]


def test_sql_split_inline_insert_native() -> None:
    header = b"INSERT INTO `t` (`a`, `format`) FORMAT Native\n"
    data = b"\n\x02\x05 binary"
    insert = split_inline_insert(header + data)
    assert insert is not None
    assert insert.statement == "INSERT INTO `t` (`a`, `format`)"
    assert insert.format_name == "Native"
    assert insert.data == data


def test_sql_split_inline_insert_skips_literals() -> None:
    sql = b"INSERT INTO t SETTINGS x = 'FORMAT CSV' FORMAT JSONEachRow {}"
    insert = split_inline_insert(sql)
    assert insert is not None
    assert insert.format_name == "JSONEachRow"
    assert insert.data == b"{}"
    assert split_inline_insert(b"INSERT INTO t VALUES ('format json')") is None
    assert split_inline_insert(b"INSERT INTO t SELECT 1 FORMAT Native") is None
    assert split_inline_insert(b"SELECT 1 FORMAT Native") is None


def test_sql_keyword_and_trailing_format() -> None:
    assert first_keyword(b"  -- note\n/* x */ (select 1)") == "SELECT"
    assert trailing_format(b"SELECT 1\n FORMAT Native") == "Native"
    assert trailing_format(b"SELECT 'FORMAT Native x'") is None


def test_ping_returns_ok(server: RunningServer) -> None:
    url = f"http://127.0.0.1:{server.port}/ping"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        assert response.read() == b"Ok.\n"


def test_get_query_returns_tab_separated(server: RunningServer) -> None:
    status, headers, body = http_request(server, {"query": "SELECT 1, 'a'"})
    assert status == 200
    assert body == b"1\ta\n"
    assert headers["X-ClickHouse-Format"] == "TabSeparated"
    assert headers["X-ClickHouse-Timezone"]
    assert headers["X-ClickHouse-Query-Id"]


def test_format_clause_and_default_format(server: RunningServer) -> None:
    status, headers, body = http_request(
        server, {"query": "SELECT 2 AS x", "default_format": "JSONEachRow"}
    )
    assert status == 200
    assert body == b'{"x":2}\n'
    assert headers["X-ClickHouse-Format"] == "JSONEachRow"
    status, headers, body = http_request(server, {}, b"SELECT 3 AS x FORMAT CSV")
    assert status == 200
    assert body == b"3\n"
    assert headers["X-ClickHouse-Format"] == "CSV"


def test_connect_reads_version_and_timezone(client: Client) -> None:
    assert client.server_version.startswith("26.")
    assert client.server_tz is not None


@pytest.mark.parametrize("compress", [True, False, "zstd", "gzip"])
def test_insert_round_trip_exact_values(
    server: RunningServer, compress: bool | str
) -> None:
    ch = connect(server, compress=compress)
    try:
        table = f"tg.events_{str(compress).lower()}"
        ch.command("CREATE DATABASE IF NOT EXISTS tg")
        ch.command(f"DROP TABLE IF EXISTS {table}")
        ch.command(EVENTS_TABLE.replace("tg.events", table))
        rows = event_rows(2500)
        summary = ch.insert(table, rows, column_names=EVENT_COLUMNS)
        assert summary.written_rows == 2500
        result = ch.query(
            f"SELECT * FROM {table} ORDER BY id",
            column_formats={"payload": "bytes"},
        )
        assert result.result_rows == rows
    finally:
        ch.close()


def test_insert_body_is_lz4_by_default(server: RunningServer) -> None:
    ch = connect(server)
    try:
        assert ch.write_compression == "lz4"
    finally:
        ch.close()


def test_insert_with_query_in_url(server: RunningServer, client: Client) -> None:
    client.command("CREATE TABLE IF NOT EXISTS tg.url_insert (a UInt8) ENGINE = Log")
    client.command("TRUNCATE TABLE tg.url_insert")
    status, _, body = http_request(
        server,
        {"query": "INSERT INTO tg.url_insert FORMAT JSONEachRow"},
        gzip.compress(b'{"a": 1}\n{"a": 2}\n'),
        {"Content-Encoding": "gzip"},
    )
    assert status == 200, body
    assert client.query("SELECT a FROM tg.url_insert ORDER BY a").result_rows == [
        (1,),
        (2,),
    ]


def test_unknown_table_raises_code_60(client: Client) -> None:
    with pytest.raises(DatabaseError) as caught:
        client.query("SELECT * FROM tg.no_such_table")
    assert caught.value.code == 60
    assert "UNKNOWN_TABLE" in str(caught.value)
    assert "no_such_table" in str(caught.value)


def test_unknown_table_http_status_and_body(server: RunningServer) -> None:
    status, headers, body = http_request(server, {"query": "SELECT * FROM nope"})
    assert status == 404
    assert headers["X-ClickHouse-Exception-Code"] == "60"
    assert body.startswith(b"Code: 60. DB::Exception: ")
    assert b"(UNKNOWN_TABLE) (version 26." in body
    assert b"Traceback" not in body


def test_syntax_error_raises_code_62(server: RunningServer, client: Client) -> None:
    with pytest.raises(DatabaseError) as caught:
        client.command("SELEC 1")
    assert caught.value.code == 62
    status, headers, _ = http_request(server, {}, b"SELEC 1")
    assert status == 400
    assert headers["X-ClickHouse-Exception-Code"] == "62"


def test_unknown_setting_raises_code_115(client: Client) -> None:
    with pytest.raises(DatabaseError) as caught:
        client.query("SELECT 1", settings={"no_such_setting_zz": 1})
    assert caught.value.code == 115


def test_get_rejects_writes(server: RunningServer) -> None:
    status, headers, _ = http_request(server, {"query": "CREATE DATABASE get_db"})
    assert status == 500
    assert headers["X-ClickHouse-Exception-Code"] == "164"


def test_compress_parameter_is_rejected(server: RunningServer) -> None:
    status, headers, _ = http_request(server, {"query": "SELECT 1", "compress": "1"})
    assert status == 501
    assert headers["X-ClickHouse-Exception-Code"] == "48"


def test_settings_apply_to_one_request(client: Client) -> None:
    query = "SELECT getSetting('max_block_size')"
    default = client.query(query).result_rows[0][0]
    changed = client.query(query, settings={"max_block_size": 1234})
    assert changed.result_rows[0][0] == 1234
    assert client.query(query).result_rows[0][0] == default


def test_query_parameters_are_bound(client: Client) -> None:
    result = client.query(
        "SELECT {n:UInt32} + 1, {s:String}", parameters={"n": 41, "s": "it's"}
    )
    assert result.result_rows == [(42, "it's")]


DECODERS = {
    "lz4": lz4.frame.decompress,
    "zstd": lambda body: zstandard.ZstdDecompressor().decompress(body),
    "gzip": gzip.decompress,
    "deflate": zlib.decompress,
}


@pytest.mark.parametrize("encoding", sorted(DECODERS))
def test_response_compression_on_request(server: RunningServer, encoding: str) -> None:
    status, headers, body = http_request(
        server,
        {"query": "SELECT 'zipped'", "enable_http_compression": "1"},
        headers={"Accept-Encoding": f"br, {encoding}"},
    )
    assert status == 200
    assert headers["Content-Encoding"] == encoding
    assert DECODERS[encoding](body) == b"zipped\n"


def test_response_uncompressed_by_default(server: RunningServer) -> None:
    _, headers, body = http_request(
        server, {"query": "SELECT 'plain'"}, headers={"Accept-Encoding": "gzip"}
    )
    assert "Content-Encoding" not in headers
    assert body == b"plain\n"


def test_http_compression_setting_reads_zero(client: Client) -> None:
    # clickhouse-connect sends enable_http_compression=1 only when the server
    # reports 0, as clickhouse-server does by default.
    value = client.command(
        "SELECT value FROM system.settings WHERE name = 'enable_http_compression'"
    )
    assert value == 0


def test_materialized_view_and_optimize(client: Client) -> None:
    client.command("DROP TABLE IF EXISTS tg.usage_mv")
    client.command("DROP TABLE IF EXISTS tg.usage_daily")
    client.command("DROP TABLE IF EXISTS tg.calls")
    client.command(
        "CREATE TABLE tg.calls (id UInt64, day Date, model LowCardinality(String), "
        "tokens UInt32, version UInt32) ENGINE = ReplacingMergeTree(version) "
        "PARTITION BY toYYYYMM(day) ORDER BY id"
    )
    client.command(
        "CREATE TABLE tg.usage_daily (day Date, model LowCardinality(String), "
        "tokens AggregateFunction(sum, UInt32), calls AggregateFunction(count)) "
        "ENGINE = AggregatingMergeTree ORDER BY (day, model)"
    )
    client.command(
        "CREATE MATERIALIZED VIEW tg.usage_mv TO tg.usage_daily AS "
        "SELECT day, model, sumState(tokens) AS tokens, countState() AS calls "
        "FROM tg.calls GROUP BY day, model"
    )
    day = datetime.date(2026, 12, 1)
    client.insert(
        "tg.calls",
        [(1, day, "a", 10, 1), (2, day, "a", 5, 1), (3, day, "b", 7, 1)],
        column_names=["id", "day", "model", "tokens", "version"],
        settings={"insert_deduplication_token": "calls-batch-1"},
    )
    client.insert(
        "tg.calls",
        [(1, day, "a", 12, 2)],
        column_names=["id", "day", "model", "tokens", "version"],
    )
    client.command("OPTIMIZE TABLE tg.calls FINAL")
    client.command("SYSTEM FLUSH LOGS")
    assert client.query("SELECT id, tokens FROM tg.calls ORDER BY id").result_rows == [
        (1, 12),
        (2, 5),
        (3, 7),
    ]
    usage = client.query(
        "SELECT model, sumMerge(tokens), countMerge(calls) FROM tg.usage_daily "
        "GROUP BY model ORDER BY model"
    )
    assert usage.result_rows == [("a", 27, 3), ("b", 7, 1)]


def test_concurrent_queries_from_threads(server: RunningServer) -> None:
    results: dict[int, object] = {}
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        ch = connect(server)
        try:
            for _ in range(5):
                rows = ch.query(f"SELECT sum(number) FROM numbers({n})").result_rows
                results[n] = rows[0][0]
        except BaseException as error:  # collected and asserted below
            errors.append(error)
        finally:
            ch.close()

    sizes = [1000 + 17 * i for i in range(8)]
    threads = [threading.Thread(target=worker, args=(n,)) for n in sizes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert results == {n: n * (n - 1) // 2 for n in sizes}


def test_data_persists_across_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = start_server(data_dir, tmp_path)
    try:
        ch = connect(first)
        ch.command("CREATE DATABASE IF NOT EXISTS tg")
        ch.command(EVENTS_TABLE)
        ch.insert("tg.events", event_rows(10), column_names=EVENT_COLUMNS)
        ch.close()
    finally:
        started = time.monotonic()
        exit_code = stop_server(first)
    assert exit_code == 0, first.log()
    assert time.monotonic() - started < 5.0

    second = start_server(data_dir, tmp_path)
    try:
        ch = connect(second)
        result = ch.query(
            "SELECT * FROM tg.events ORDER BY id", column_formats={"payload": "bytes"}
        )
        ch.close()
    finally:
        stop_server(second)
    assert result.result_rows == event_rows(10)


def test_second_server_on_same_folder_fails(
    server: RunningServer, tmp_path: Path
) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.chdev",
            "--data-dir",
            str(server.data_dir),
            "--port",
            "0",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=30,
        env={**os.environ, "TOLLGATE_LOG_LEVEL": "INFO"},
    )
    assert completed.returncode == 1
    assert b"failed to open the data folder" in completed.stderr
