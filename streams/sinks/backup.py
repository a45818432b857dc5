"""Backup and restore of the ClickHouse store (embedded or server), the only durable copy
of the ledger and the facts Redis is rebuilt from.

ClickHouse's own BACKUP needs a disk or path allowed in the server's configuration, which
the embedded engine does not offer; the equivalent here is a directory with every table's
rows in ClickHouse's Native format and a manifest (the migrations applied, each table's
rows and the SHA-256 of its file). A restore applies the migrations to an empty store and
inserts the rows; the tables a materialized view fills (daily aggregates) are not copied:
the views fill them again as the source rows go in. docs/reliability.md has the procedure.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
from pathlib import Path
from typing import Any

import orjson

from streams.sinks.ledger import LedgerStore

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _tables(client: Any) -> tuple[list[str], set[str]]:
    """The store's tables (not views), and the ones a materialized view writes to."""
    rows = client.query("SELECT name, engine, create_table_query FROM system.tables "
                        "WHERE database = currentDatabase() ORDER BY name").result_rows
    tables = [name for name, engine, _ in rows if engine not in ("View", "MaterializedView")]
    targets = {m.group(1) for _, engine, ddl in rows if engine == "MaterializedView"
               for m in [re.search(r"\bTO\s+(?:\w+\.)?`?(\w+)`?", ddl)] if m}
    return tables, targets


def backup_sync(store: LedgerStore, into: Path) -> dict[str, Any]:
    """Writes every table of the store into `into` (created; must not hold a backup)."""
    client = store.client
    if (into / MANIFEST).exists():
        raise FileExistsError(f"{into} holds a backup already")
    into.mkdir(parents=True, exist_ok=True)
    tables, targets = _tables(client)
    manifest: dict[str, Any] = {
        "format": 1, "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "migrations": sorted(r[0] for r in client.query("SELECT name FROM schema_migrations").result_rows),
        "tables": {},
    }
    for table in tables:
        if table in targets:
            continue
        rows = int(client.query(f"SELECT count() FROM `{table}`").result_rows[0][0])
        data = client.raw_query(f"SELECT * FROM `{table}`", fmt="Native") if rows else b""
        (into / f"{table}.native").write_bytes(data)
        manifest["tables"][table] = {"rows": rows, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        log.info("backup: %s, %d rows", table, rows)
    (into / MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    return manifest


def restore_sync(store: LedgerStore, source: Path) -> dict[str, Any]:
    """Restores a backup into an empty store (migrations applied first); checks every
    file against the manifest before anything is inserted, and the row counts after."""
    manifest = orjson.loads((source / MANIFEST).read_bytes())
    if manifest.get("format") != 1:
        raise ValueError(f"{source}: unknown backup format {manifest.get('format')!r}")
    files = {}
    for table, meta in manifest["tables"].items():
        data = (source / f"{table}.native").read_bytes()
        if hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise ValueError(f"{source / (table + '.native')}: its SHA-256 is not the manifest's (damaged)")
        files[table] = data
    client = store.client
    missing = set(manifest["migrations"]) - {r[0] for r in client.query("SELECT name FROM schema_migrations")
                                             .result_rows}
    if missing:
        raise ValueError(f"the backup was taken with migrations this code does not have: {sorted(missing)}")
    for table in files:
        if table == "schema_migrations":
            continue
        if int(client.query(f"SELECT count() FROM `{table}`").result_rows[0][0]):
            raise ValueError(f"table {table} of the target store is not empty: restore into an empty store")
    restored = {}
    for table, data in files.items():
        if table == "schema_migrations" or not data:
            restored[table] = 0 if table != "schema_migrations" else manifest["tables"][table]["rows"]
            continue
        # As they were: no collapsing of a ReplacingMergeTree's rows within the block
        # (optimize_on_insert), so the counts can be checked against the backup's.
        client.raw_insert(table, None, insert_block=data, settings={"optimize_on_insert": 0}, fmt="Native")
        got = int(client.query(f"SELECT count() FROM `{table}`").result_rows[0][0])
        if got != manifest["tables"][table]["rows"]:
            raise ValueError(f"{table}: {got} rows restored, the backup has {manifest['tables'][table]['rows']}")
        restored[table] = got
        log.info("restore: %s, %d rows", table, got)
    return {"tables": restored, "created_at": manifest["created_at"]}
