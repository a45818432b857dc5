"""The points ledger in ClickHouse (embedded chdb by default, a server by DSN).

clickhouse-connect's client is synchronous; every call runs on one dedicated thread
so the event loop never blocks and the embedded engine sees one caller at a time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import clickhouse_connect
from faust.web.exceptions import ServiceUnavailable

import core_ext
from streams.errors import TransientError
from streams.settings import ROOT

log = logging.getLogger(__name__)

SQL_DIR = ROOT / "sql"
UTC = dt.UTC

class LedgerUnavailable(TransientError):
    """The ledger store did not take a write; `retry_after` says when to try again."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def migration_files(sql_dir: Path = SQL_DIR) -> list[Path]:
    return sorted(p for p in sql_dir.glob("[0-9][0-9][0-9]_*.sql"))


def split_statements(text: str) -> list[str]:
    """Splits a .sql file on ';' at line ends; our DDL has no ';' inside strings."""
    body = "\n".join(line for line in text.splitlines() if not line.strip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def load_query(name: str) -> str:
    path = SQL_DIR / "queries" / f"{name}.sql"
    return "\n".join(line for line in path.read_text().splitlines() if not line.strip().startswith("--"))


@dataclass(frozen=True)
class LedgerWrite:
    """What a write of ledger messages did: rows inserted per table, the leaderboard calls
    (RESP, built by the core) for the scores the rows carry, poison messages (index,
    reason), and the CPU seconds the store's thread spent encoding and inserting."""

    rows: dict[str, int]
    board_plan: list[bytes]
    poison: list[tuple[int, str]]
    cpu_s: float


class LedgerNotHeld(ServiceUnavailable, TransientError):
    """This worker runs without the ledger role and the store is embedded: another
    process holds it. A view that needs the store answers 503 with the reason."""


class LedgerStore:
    def __init__(self, dsn: str, faults_dir: str = "") -> None:
        self.dsn = dsn
        self._fault = Path(faults_dir) / "clickhouse-down" if faults_dir else None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
        self._client: Any = None

    def _connect(self) -> Any:
        if self.dsn.startswith("chdb://"):
            Path(self.dsn.removeprefix("chdb://")).mkdir(parents=True, exist_ok=True)
        return clickhouse_connect.get_client(dsn=self.dsn)

    @property
    def client(self) -> Any:
        if self._client is None:
            raise LedgerNotHeld(
                f"the ClickHouse store {self.dsn} is held by the ledger worker, not this one "
                "(LOYALTY_ROLES without ledger): ask that worker, or use a server DSN")
        return self._client

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    async def in_thread(self, fn: Any, *args: Any) -> Any:
        """Runs `fn(*args)` on the store's own thread (where its client is used)."""
        return await self._run(fn, *args)

    async def setup(self) -> list[str]:
        """Connects, pings and applies pending migrations; returns the ones applied. Fails
        if a table's columns are not what the ledger blocks write."""
        self._client = await self._run(self._connect)
        applied = await self._run(self.migrate_sync)
        await self._run(self.check_schema_sync)
        return applied  # type: ignore[no-any-return]

    def check_schema_sync(self) -> None:
        names = [t for t, _ in core_ext.ledger_tables()]
        result = self._client.query(
            "SELECT table, name, type FROM system.columns"
            " WHERE database = currentDatabase() AND table IN {t:Array(String)}", parameters={"t": names})
        wrong = core_ext.ledger_schema_mismatches([tuple(r) for r in result.result_rows])
        if wrong:
            raise RuntimeError("ClickHouse tables do not fit the ledger blocks: " + "; ".join(wrong))

    def migrate_sync(self) -> list[str]:
        client = self._client
        client.command(
            "CREATE TABLE IF NOT EXISTS schema_migrations (name String, applied_at DateTime64(3, 'UTC')"
            " DEFAULT now64(3)) ENGINE = MergeTree ORDER BY name"
        )
        done = {r[0] for r in client.query("SELECT name FROM schema_migrations").result_rows}
        applied = []
        for path in migration_files():
            if path.name in done:
                continue
            for statement in split_statements(path.read_text()):
                client.command(statement)
            client.insert("schema_migrations", [[path.name]], column_names=["name"])
            log.info("applied migration %s", path.name)
            applied.append(path.name)
        return applied

    async def close(self) -> None:
        if self._client is not None:
            await self._run(self._client.close)
            self._client = None
        self._executor.shutdown(wait=True)

    async def write_messages(self, messages: Sequence[bytes],
                             boards: tuple[str, int, int] | None = None) -> LedgerWrite:
        """Ledger-topic messages into ClickHouse: the core encodes one RowBinary block per
        table (no Python per row) and each table gets one insert, all on the store's own
        thread. The deduplication token is a digest of the rows' identities, so an insert
        retried after an unclear failure is taken once. Messages that cannot be stored are
        named in `poison` and nothing is inserted: the caller takes them out and writes the rest.
        Given the boards' (namespace, shards, ttl_s), the result carries the leaderboard
        calls the rows need."""
        if self._fault is not None and self._fault.exists():
            raise LedgerUnavailable(f"injected fault: {self._fault} exists (ClickHouse down)", 0.5)

        def work() -> LedgerWrite:
            t0 = time.thread_time()
            blocks = core_ext.ledger_blocks(list(messages), boards)
            if blocks.poison:
                return LedgerWrite({}, [], blocks.poison, time.thread_time() - t0)
            rows: dict[str, int] = {}
            for tb in blocks.tables:
                try:
                    self.client.raw_insert(tb.table, tb.columns, insert_block=tb.data, fmt="RowBinary",
                                           settings={"insert_deduplication_token": hashlib.sha256(
                                               tb.identity).hexdigest()})
                except Exception as exc:  # clickhouse-connect raises several kinds; all mean "not taken"
                    if isinstance(exc, LedgerNotHeld):
                        raise
                    raise LedgerUnavailable(f"{tb.table} insert of {tb.rows} rows failed: {exc}", 1.0) from exc
                rows[tb.table] = tb.rows
            return LedgerWrite(rows, blocks.board_plan, [], time.thread_time() - t0)

        return await self._run(work)  # type: ignore[no-any-return]

    async def insert_segments(self, rows: Sequence[dict[str, Any]]) -> None:
        """Rows of member_segments (one refresh)."""
        if not rows:
            return
        cols = ("member_id", "recency_days", "frequency", "monetary_fen", "r", "f", "m", "segment", "tags",
                "refreshed_at")
        await self._run(self.client.insert, "member_segments", [[r[c] for c in cols] for r in rows],
                        column_names=cols)

    async def query_sql(self, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Runs one SQL statement (tests, tools); named queries go through `query`."""
        result = await self._run(self.client.query, sql, parameters=parameters or {})
        return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]

    async def query(self, name: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Runs a named query from sql/queries/ and returns its rows as dicts."""
        sql = load_query(name)
        result = await self._run(self.client.query, sql, parameters=parameters or {})
        return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]
