"""The points ledger in ClickHouse (embedded chdb by default, a server by DSN).

clickhouse-connect's client is synchronous; every call runs on one dedicated thread
so the event loop never blocks and the embedded engine sees one caller at a time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import clickhouse_connect
import orjson
from faust.web.exceptions import ServiceUnavailable

from streams.settings import ROOT

log = logging.getLogger(__name__)

SQL_DIR = ROOT / "sql"
UTC = dt.UTC

LEDGER_COLUMNS = (
    "event_id", "member_id", "kind", "points", "amount_fen", "bu_id", "format", "merchant_id",
    "category", "channel", "occurred_at", "refund_of", "tier", "rules_version", "processed_at", "explain", "lots",
    "batch_index",
)
SETTLEMENT_COLUMNS = (
    "event_id", "kind", "line_no", "member_id", "account", "amount_fen", "points", "bu_id", "merchant_id",
    "occurred_at", "processed_at",
)
PARKING_COLUMNS = (
    "event_id", "status", "plate", "car_park", "member_id", "entry_at", "exit_at", "minutes", "gross_fee_fen",
    "fee_fen", "points_used", "points_value_fen", "due_fen", "deductions",
)
COUPON_COLUMNS = (
    "event_id", "member_id", "kind", "coupon_id", "template", "trigger", "coupon_kind", "face_value_fen",
    "discount_fen", "merchant_share_fen", "issuer_share_fen", "valid_until", "occurred_at", "processed_at",
    "rules_version", "reason",
)
GAME_DRAW_COLUMNS = (
    "event_id", "member_id", "game_id", "game_kind", "draw", "odds_total", "odds", "prize_id", "outcome",
    "cost_points", "rules_version", "occurred_at", "processed_at",
)
STORED_VALUE_COLUMNS = (
    "event_id", "member_id", "kind", "amount_fen", "balance_after_fen", "bu_id", "merchant_id", "category",
    "channel", "refund_of", "occurred_at", "processed_at",
)
GUEST_COLUMNS = (
    "event_id", "type", "payer_kind", "payer_id", "amount_fen", "bu_id", "format", "merchant_id", "category",
    "channel", "occurred_at", "refund_of", "processed_at",
)


class LedgerUnavailable(Exception):
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


def _ticks(ms: int) -> int:
    """A DateTime64(3) value: clickhouse-connect writes an int as the column's ticks (ms)
    as is, where a datetime object costs a conversion per value on the insert path."""
    return ms


def row_values(row: dict[str, Any]) -> list[Any]:
    """A decoded ledger row (the core's JSON) as values in LEDGER_COLUMNS order."""
    return [
        row["event_id"], row["member_id"], row["kind"], row["points"], row["amount_fen"],
        row["bu_id"], row["format"], row["merchant_id"], row["category"], row["channel"],
        _ticks(row["occurred_at_ms"]), row["refund_of"], row["tier"],
        row["rules_version"], _ticks(row["processed_at_ms"]),
        orjson.dumps(row.get("explain", [])).decode(),
        orjson.dumps(row["lots"]).decode() if row.get("lots") else "",
        row.get("batch_index", 0),
    ]


def settlement_values(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The settlement lines the core put on ledger rows, one dict per line."""
    out = []
    for r in rows:
        for n, line in enumerate(r.get("settlement", ())):
            out.append({"event_id": r["event_id"], "kind": r["kind"], "line_no": n, "member_id": r["member_id"],
                        "account": line["account"], "amount_fen": line["amount_fen"], "points": line["points"],
                        "bu_id": r["bu_id"], "merchant_id": r["merchant_id"],
                        "occurred_at_ms": r["occurred_at_ms"], "processed_at_ms": r["processed_at_ms"]})
    return out


def line_values(line: dict[str, Any]) -> list[Any]:
    return [line["event_id"], line["kind"], line["line_no"], line["member_id"], line["account"], line["amount_fen"],
            line["points"], line["bu_id"], line["merchant_id"], _ticks(line["occurred_at_ms"]),
            _ticks(line["processed_at_ms"])]


def parking_values(s: dict[str, Any]) -> list[Any]:
    return [s["event_id"], s["status"], s["plate"], s["car_park"], s["member_id"], _ticks(s["entry_ms"]),
            _ticks(s["exit_ms"]), s["minutes"], s["gross_fee_fen"], s["fee_fen"], s["points_used"],
            s["points_value_fen"], s["due_fen"], orjson.dumps(s["deductions"]).decode()]


def coupon_values(c: dict[str, Any]) -> list[Any]:
    return [c["event_id"], c["member_id"], c["kind"], c["coupon_id"], c.get("template", ""), c.get("trigger", ""),
            c.get("coupon_kind", ""), c.get("face_value_fen", 0), c.get("discount_fen", 0),
            c.get("merchant_share_fen", 0), c.get("issuer_share_fen", 0), _ticks(c.get("valid_until_ms", 0)),
            _ticks(c["occurred_at_ms"]), _ticks(c["processed_at_ms"]), c.get("rules_version", ""),
            c.get("reason", "")]


def game_draw_values(d: dict[str, Any]) -> list[Any]:
    return [d["event_id"], d["member_id"], d["game_id"], d["game_kind"], d["draw"], d["odds_total"], d["odds"],
            d["prize_id"], d["outcome"], d["cost_points"], d["rules_version"], _ticks(d["occurred_at_ms"]),
            _ticks(d["processed_at_ms"])]


def stored_value_values(r: dict[str, Any]) -> list[Any]:
    return [r["event_id"], r["member_id"], r["kind"], r["amount_fen"], r["balance_after_fen"], r["bu_id"],
            r["merchant_id"], r["category"], r["channel"], r["refund_of"], _ticks(r["occurred_at_ms"]),
            _ticks(r["processed_at_ms"])]


def guest_values(fact: dict[str, Any]) -> list[Any]:
    """A guest payment fact (the core's JSON) as values in GUEST_COLUMNS order."""
    return [
        fact["event_id"], fact["type"], fact["payer_kind"], fact["payer_id"], fact["amount_fen"], fact["bu_id"],
        fact["format"], fact["merchant_id"], fact["category"], fact["channel"],
        _ticks(fact["occurred_at_ms"]), fact["refund_of"], _ticks(fact["processed_at_ms"]),
    ]


class BadLedgerRows(ValueError):
    """Rows of a ledger message that cannot be stored (missing or mistyped fields): a poison
    message, never retried."""


class LedgerNotHeld(ServiceUnavailable):
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

    async def setup(self) -> list[str]:
        """Connects, pings and applies pending migrations; returns the ones applied."""
        self._client = await self._run(self._connect)
        return await self._run(self.migrate_sync)

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

    async def write(self, rows: Sequence[dict[str, Any]], guests: Sequence[dict[str, Any]] = (),
                    parking: Sequence[dict[str, Any]] = (), coupons: Sequence[dict[str, Any]] = (),
                    draws: Sequence[dict[str, Any]] = (), stored: Sequence[dict[str, Any]] = ()) -> None:
        """One insert per table for the whole batch. The dedup token is a digest of the
        rows' identities, so an insert retried after an unclear failure is taken once."""
        if self._fault is not None and self._fault.exists():
            raise LedgerUnavailable(f"injected fault: {self._fault} exists (ClickHouse down)", 0.5)
        # Every table's columns first: a row that cannot be converted (a poison message) is
        # named before anything is inserted, and the caller can isolate it.
        inserts = []
        for table, items, columns, to_values, ident in (
            ("ledger", rows, LEDGER_COLUMNS, row_values, ("member_id", "event_id", "kind")),
            ("guest_payments", guests, GUEST_COLUMNS, guest_values, ("payer_id", "event_id", "type")),
            ("settlement_lines", None, SETTLEMENT_COLUMNS, line_values, ("event_id", "kind", "line_no")),
            ("parking_sessions", parking, PARKING_COLUMNS, parking_values, ("car_park", "event_id")),
            ("coupon_events", coupons, COUPON_COLUMNS, coupon_values, ("coupon_id", "kind", "event_id")),
            ("game_draws", draws, GAME_DRAW_COLUMNS, game_draw_values, ("game_id", "member_id", "event_id")),
            ("stored_value", stored, STORED_VALUE_COLUMNS, stored_value_values, ("member_id", "event_id")),
        ):
            try:
                if items is None:
                    items = settlement_values([*rows, *coupons, *stored])
                if not items:
                    continue
                digest = hashlib.sha256()
                for r in items:
                    digest.update("\x1f".join(str(r[k]) for k in ident).encode() + b"\x1e")
                # Column-oriented: zip transposes in C, where the driver would pivot in Python.
                data = [list(col) for col in zip(*[to_values(r) for r in items], strict=True)]
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
                raise BadLedgerRows(f"{table} rows cannot be stored: {exc!r}") from exc
            inserts.append((table, data, columns, digest.hexdigest(), len(items)))
        for table, data, columns, token, n in inserts:
            try:
                await self._run(
                    self.client.insert, table, data, column_names=columns, column_oriented=True,
                    settings={"insert_deduplication_token": token},
                )
            except Exception as exc:  # clickhouse-connect raises several kinds; all mean "not taken"
                raise LedgerUnavailable(f"{table} insert of {n} rows failed: {exc}", 1.0) from exc

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


class LedgerMessage:
    """A ledger-topic message, decoded: points rows, guest facts, parking sessions and
    coupon events (the core puts coupon rows among an event's rows, marked
    "table": "coupon_events"; the notifier sends its own under "coupons")."""

    __slots__ = ("coupons", "draws", "guests", "ledger", "parking", "stored")

    def __init__(self, value: bytes) -> None:
        msg = orjson.loads(value)
        keys = ("ledger", "guests", "parking", "coupons")
        if (not isinstance(msg, dict) or not msg or not set(msg) <= set(keys)
                or not all(isinstance(msg.get(k, []), list) for k in keys)
                or not all(isinstance(r, dict) for k in keys for r in msg.get(k, []))):
            raise ValueError('a ledger message must be {"ledger": [...], "guests": [...], "parking": [...], '
                             '"coupons": [...]}')
        rows = msg.get("ledger", [])
        self.coupons: list[dict[str, Any]] = list(msg.get("coupons", []))
        self.coupons += [r for r in rows if r.get("table") == "coupon_events"]
        self.draws: list[dict[str, Any]] = [r for r in rows if r.get("table") == "game_draws"]
        self.stored: list[dict[str, Any]] = [r for r in rows if r.get("table") == "stored_value"]
        self.ledger: list[dict[str, Any]] = [r for r in rows if r.get("table") is None]
        self.guests: list[dict[str, Any]] = msg.get("guests", [])
        self.parking: list[dict[str, Any]] = msg.get("parking", [])
