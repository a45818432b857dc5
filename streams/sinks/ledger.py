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
import orjson
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


#: Tables whose rows of an erased member stay, under a pseudonym (copied, then deleted:
#: the member or an event id naming it is in their sorting key).
ERASE_REKEYED = ("ledger", "stored_value", "game_draws", "settlement_lines", "coupon_events", "receipts")


def _pseudonymised(col: str, kind: str, n: int) -> str:
    """A column of a row being pseudonymised, as a SELECT expression: `member_id` becomes
    the pseudonym (`erased-...`) when it is one of the members, and every text column has
    the members' ids replaced by it."""
    if col == "member_id":
        return "if(member_id IN {ids:Array(String)}, {p:String}, member_id)"
    if "String" not in kind or "Array" in kind or "Map" in kind:
        return f"`{col}`"
    expr = f"`{col}`"
    for i in range(n):
        expr = f"replaceAll({expr}, {{i{i}:String}}, {{p:String}})"
    return f"CAST({expr} AS {kind})" if kind.startswith("LowCardinality") else expr
#: Tables whose rows of an erased member go: the person's state, not the books.
ERASE_DELETED = ("member_states", "op_records", "held_refunds", "member_segments")


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
    def held(self) -> bool:
        """Whether this process holds the store (the ledger worker, or a server DSN's client)."""
        return self._client is not None

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

    def erase_members_sync(self, ids: list[str], pseudonym: str, payers: list[tuple[str, str]],
                           plates: list[str], keys: list[str]) -> dict[str, int]:
        """A personal data erasure in ClickHouse (streams/http/privacy.py): the members' rows
        re-keyed to `pseudonym` where amounts must stay (tables with `member_id` in their
        sorting key are copied under it, then deleted; the others updated in place), their
        states, segments, records and bindings deleted, their payers' guest payments and
        gateway routes deleted, plates blanked, the audit trail's details about them emptied.
        Deletes and updates are mutations waited for: the parts holding the rows are rewritten
        without them (not only marked).
        Runs on the store's one thread, so no insert of this process comes between the copy
        and the materialized views' re-attachment. Returns rows touched per table."""
        c = self.client
        p = {"ids": ids, "p": pseudonym, "plates": plates, "keys": keys,
             "kinds": [k for k, _ in payers], "exts": [e for _, e in payers]}

        def count(table: str, where: str) -> int:
            return int(c.query(f"SELECT count() FROM `{table}` FINAL WHERE {where}", parameters=p).result_rows[0][0])

        touched: dict[str, int] = {}
        views = [r[0] for r in c.query("SELECT name FROM system.tables WHERE database = currentDatabase()"
                                       " AND engine = 'MaterializedView'").result_rows]
        # Their rows, and the rows they caused on others (an inviter's `referral:<member>`):
        # copied with the member id replaced by the pseudonym in every text column (the
        # engine's own event ids embed it: schedules, grants, overrides, referrals), then
        # the originals deleted. The copies are not new activity: the materialized views
        # that aggregate inserts are detached meanwhile.
        p["refs"] = [f"referral:{m}" for m in ids]
        for i, m in enumerate(ids):
            p[f"i{i}"] = m
        mine = "member_id IN {ids:Array(String)} OR event_id IN {refs:Array(String)}"
        for table in ERASE_REKEYED:
            touched[table] = count(table, mine)
            if not touched[table]:
                continue
            cols = c.query(
                "SELECT name, type FROM system.columns WHERE database = currentDatabase() AND table = {t:String}"
                " AND default_kind NOT IN ('MATERIALIZED', 'ALIAS') ORDER BY position",
                parameters={"t": table}).result_rows
            names = ", ".join(f"`{col}`" for col, _ in cols)
            values = ", ".join(_pseudonymised(col, kind, len(ids)) for col, kind in cols)
            for v in views:
                c.command(f"DETACH TABLE `{v}`")
            try:
                c.command(f"INSERT INTO `{table}` ({names}) SELECT {values} FROM `{table}` FINAL WHERE {mine}",
                          parameters=p)
            finally:
                for v in views:
                    c.command(f"ATTACH TABLE `{v}`")
            c.command(f"ALTER TABLE `{table}` DELETE WHERE {mine} SETTINGS mutations_sync = 1", parameters=p)
        if touched.get("receipts"):  # their receipts' photos are deleted from the image store
            c.command("ALTER TABLE receipts UPDATE image = '' WHERE member_id = {p:String} SETTINGS mutations_sync = 1",
                      parameters=p)
        for m in ids:  # an inviter's state remembers the referral's event id
            q = {"q": orjson.dumps(f"referral:{m}").decode(), "r": orjson.dumps(f"referral:{pseudonym}").decode()}
            c.command("ALTER TABLE member_states UPDATE state = replaceAll(state, {q:String}, {r:String})"
                      " WHERE position(state, {q:String}) > 0 SETTINGS mutations_sync = 1", parameters=q)
        where = "member_id IN {ids:Array(String)} OR plate IN {plates:Array(String)}"
        touched["parking_sessions"] = count("parking_sessions", where)
        if touched["parking_sessions"]:
            c.command("ALTER TABLE parking_sessions UPDATE member_id = if(member_id IN {ids:Array(String)}, {p:String},"
                      f" member_id), plate = '' WHERE {where} SETTINGS mutations_sync = 1", parameters=p)
        for table in ERASE_DELETED:
            touched[table] = count(table, "member_id IN {ids:Array(String)}")
            c.command(f"ALTER TABLE `{table}` DELETE WHERE member_id IN {{ids:Array(String)}}"
                      " SETTINGS mutations_sync = 1", parameters=p)
        # Bindings: the members' own, every row of a key once theirs, aliases of them, the
        # gateway routes that name one of their payers and the parking sessions of their plates
        # (`park:<car park>:<plate>`).
        routes = "kind = 'route' AND arrayExists(e -> position(value, e) > 0, {exts:Array(String)})"
        parked = "kind = 'parking' AND arrayExists(x -> endsWith(key, concat(':', x)), {plates:Array(String)})"
        where = (f"member_id IN {{ids:Array(String)}} OR key IN {{keys:Array(String)}} OR ({routes}) OR ({parked})"
                 " OR key IN arrayMap(m -> concat('alias:', m), {ids:Array(String)})")
        touched["bindings"] = count("bindings", where)
        c.command(f"ALTER TABLE bindings DELETE WHERE {where} SETTINGS mutations_sync = 1", parameters=p)
        where = "(payer_kind, payer_id) IN arrayZip({kinds:Array(String)}, {exts:Array(String)})"
        touched["guest_payments"] = count("guest_payments", where) if payers else 0
        if payers:
            c.command(f"ALTER TABLE guest_payments DELETE WHERE {where} SETTINGS mutations_sync = 1", parameters=p)
        where = "member_id IN {ids:Array(String)} OR target IN {ids:Array(String)}"
        touched["audit_log"] = count("audit_log", where)
        if touched["audit_log"]:
            target = _pseudonymised("target", "String", len(ids))  # an event id may embed the member
            c.command("ALTER TABLE audit_log UPDATE member_id = if(member_id IN {ids:Array(String)}, {p:String},"
                      f" member_id), target = {target}, before = '', after = '' WHERE {where}"
                      " SETTINGS mutations_sync = 1", parameters=p)
        # Other members' rows that name one of them (an inviter's referral reward).
        for m in ids:
            quoted = orjson.dumps(m).decode()
            n = int(c.query("SELECT count() FROM ledger WHERE position(explain, {q:String}) > 0",
                            parameters={"q": quoted}).result_rows[0][0])
            if n:
                touched["ledger_mentions"] = touched.get("ledger_mentions", 0) + n
                c.command("ALTER TABLE ledger UPDATE explain = replaceAll(explain, {q:String}, {r:String})"
                          " WHERE position(explain, {q:String}) > 0 SETTINGS mutations_sync = 1",
                          parameters={"q": quoted, "r": orjson.dumps(pseudonym).decode()})
        return touched

    async def query_sql(self, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Runs one SQL statement (tests, tools); named queries go through `query`."""
        result = await self._run(self.client.query, sql, parameters=parameters or {})
        return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]

    async def query(self, name: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Runs a named query from sql/queries/ and returns its rows as dicts."""
        sql = load_query(name)
        result = await self._run(self.client.query, sql, parameters=parameters or {})
        return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]
