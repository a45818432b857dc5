"""`loyalty`: the one command-line entry point. Run `loyalty --help`.

One module over 400 lines on purpose: each subcommand is a short function that asks the
worker through `admin_call` and prints its answer, and the parser that names them all is
read in one place; splitting them would spread one table of commands over several files."""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import gc
import importlib
import os
import shlex
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from streams.errors import TransientError
from streams.settings import ROOT, Settings


def cmd_services(args: argparse.Namespace) -> int:
    return subprocess.call([str(ROOT / "scripts" / "services"), args.action])


def cmd_members_token(args: argparse.Namespace) -> int:
    """A member token for the member app (reads that member's balance, coupons, ledger)."""
    from streams.auth import member_token
    from streams.inputs import is_valid_id

    secret = os.environ.get("LOYALTY_MEMBER_TOKEN_SECRET", "")
    if not secret:
        print("error: LOYALTY_MEMBER_TOKEN_SECRET is not set (the worker's member token secret)", file=sys.stderr)
        return 2
    if not is_valid_id(args.member_id):
        print("error: member_id: letters, digits, _ - . : @ only, 1-64 chars", file=sys.stderr)
        return 2
    print(member_token(secret, args.member_id, args.ttl))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    if args.web_port:
        os.environ["LOYALTY_WEB_PORT"] = str(args.web_port)
    if args.roles:
        os.environ["LOYALTY_ROLES"] = args.roles
    if args.processes > 1:
        return run_ingress_processes(args)
    _exit_with_parent()
    # The app reads the environment when imported: import it only now.
    import importlib

    from faust import Worker

    from streams.auth import install_log_masking

    install_log_masking()  # no full phone number in any log line
    import streams.http  # (registers the HTTP views: callbacks, members, engagement, gateways, admin)
    from streams.app import app, settings

    _ = streams.http
    if settings.roles - {"ingress"}:
        # Every topic made and known to each broker before a consumer subscribes (a topic a
        # broker does not know yet would be left out of the group's assignment).
        import asyncio

        from streams.kafka_topics import ensure_topics

        loop = asyncio.new_event_loop()  # its own loop: Faust's is not made yet, and stays unset
        try:
            loop.run_until_complete(ensure_topics(settings))
        finally:
            loop.close()
    # Each role is an agent module; a worker subscribes only to its roles' topics.
    for role in sorted(settings.roles - {"ingress"}):
        importlib.import_module(f"agents.{role}")
    if settings.roles == frozenset({"ingress"}):
        # An ingress consumes nothing: Faust's producer-only boot starts the web server and
        # the producer, without a consumer thread polling Kafka or the sensors.
        app.producer_only = True
    # What is loaded now lives as long as the process: the cyclic collector need not walk
    # it again, and it runs less often (the hot path allocates many short-lived objects
    # that form no cycles).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    worker = Worker(app, loglevel=args.loglevel, quiet=True)
    _dump_tasks_on_sigusr1()
    worker.execute_from_commandline()
    return 0


def run_ingress_processes(args: argparse.Namespace) -> int:
    """Several ingress processes on one port (SO_REUSEPORT: the kernel spreads connections
    over them), each a `loyalty worker --roles ingress` child; /metrics in any of them sums
    them all (streams/metrics.py). SIGTERM / SIGINT stop them all; one that dies stops the
    rest (a supervisor restarts the set)."""
    import signal
    import time

    from streams.settings import ROOT, Settings

    settings = Settings.from_env()
    if settings.roles != frozenset({"ingress"}):
        print("error: --processes N runs ingress processes only: add --roles ingress "
              "(agents scale by more workers in their consumer group)", file=sys.stderr)
        return 2
    metrics_dir = Path(settings.metrics_dir or ROOT / ".local" / "metrics" / f"{settings.app_id}-{settings.web_port}")
    metrics_dir.mkdir(parents=True, exist_ok=True)
    for old in metrics_dir.glob("*.json"):  # counters of an earlier set: not this one's
        old.unlink()
    env = {**os.environ, "LOYALTY_ROLES": "ingress", "LOYALTY_WEB_REUSE_PORT": "1",
           "LOYALTY_METRICS_DIR": str(metrics_dir), "LOYALTY_PARENT_PID": str(os.getpid())}
    children = [subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "--loglevel", args.loglevel],
                                 env=env) for _ in range(args.processes)]
    print(f"ingress: {len(children)} processes on port {settings.web_port} (pids "
          f"{', '.join(str(c.pid) for c in children)}); /metrics sums them ({metrics_dir})", file=sys.stderr)
    stop_deadline: list[float] = []  # set once a stop began: past it, what still runs is killed

    def stop(_signum: int = 0, _frame: object = None) -> None:
        if not stop_deadline:
            stop_deadline.append(time.monotonic() + 30)
        for c in children:
            if c.poll() is None:
                c.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = 0
    while any(c.poll() is None for c in children):
        dead = [c for c in children if c.poll() is not None]
        if dead and not stop_deadline:
            code = dead[0].returncode or 1
            print(f"ingress: process {dead[0].pid} exited with {dead[0].returncode}; stopping the others",
                  file=sys.stderr)
            stop()
        if stop_deadline and time.monotonic() > stop_deadline[0]:
            for c in children:
                if c.poll() is None:
                    c.kill()
        time.sleep(0.2)
    return code


def _exit_with_parent() -> None:
    """A child of `--processes N` ends when its parent does (SIGKILL of the parent included)."""
    parent = os.environ.get("LOYALTY_PARENT_PID")
    if not parent or not parent.isdigit():
        return
    import threading
    import time

    def watch() -> None:
        while os.getppid() == int(parent):
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _dump_tasks_on_sigusr1() -> None:
    """`kill -USR1 <worker>` logs where every asyncio task of the worker waits (for the
    engineer on call: a stream that stopped moving shows its await here)."""
    import asyncio
    import io
    import logging
    import signal

    def dump(*_: object) -> None:
        log = logging.getLogger("streams.tasks")
        try:
            tasks = asyncio.all_tasks(asyncio.get_event_loop())
        except RuntimeError:
            return
        for task in tasks:
            out = io.StringIO()
            task.print_stack(limit=12, file=out)
            log.warning("task %s:\n%s", task.get_name(), out.getvalue())

    signal.signal(signal.SIGUSR1, dump)


def cmd_rules_check(args: argparse.Namespace) -> int:
    import core_ext

    try:
        with open(args.file, encoding="utf-8") as f:
            rules = core_ext.RuleSet.from_toml(f.read(), args.file)
    except OSError as exc:
        print(f"error: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    except core_ext.RulesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    units = ", ".join(f"{bu} ({fmt})" for bu, fmt in rules.business_units)
    print(f"ok: {args.file}: version {rules.version}; tiers {', '.join(rules.tier_ids)}; business units {units}")
    return 0


def cmd_gateways_check(args: argparse.Namespace) -> int:
    import core_ext
    from streams.gateways.mapping import GatewayConfigError, load_config

    settings = Settings.from_env()
    path = Path(args.file) if args.file else settings.gateways_path
    try:
        rules = core_ext.RuleSet.from_toml(settings.rules_path.read_text(encoding="utf-8"), str(settings.rules_path))
        if not path.exists():
            print(f"error: {path} does not exist", file=sys.stderr)
            return 2
        config = load_config(path, {bu for bu, _ in rules.business_units})
    except (core_ext.RulesError, GatewayConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"ok: {path}: {len(config.wechatpay.routes)} WeChat Pay route(s), {len(config.alipay.routes)} Alipay "
          f"route(s), checked against the business units of {settings.rules_path}")
    for name, routes in (("wechatpay", config.wechatpay), ("alipay", config.alipay)):
        for (account, sub), r in sorted(routes.routes.items()):
            print(f"  {name:9} {account:>18} {sub or '-':>18} -> {r.bu_id} / {r.merchant_id} / {r.category}")
    return 0


def devtool(name: str) -> Any:
    """A module of devtools/: in a checkout of the project, not in the installed package."""
    try:
        return importlib.import_module(f"devtools.{name}")
    except ModuleNotFoundError as exc:
        if exc.name not in ("devtools", f"devtools.{name}"):
            raise
        raise SystemExit(f"loyalty: this command is a development tool (devtools/{name}.py): run it from a "
                         "checkout of the project, e.g. scripts/demo; the installed package does not ship it") from exc


def cmd_gateways_simulator_keys(args: argparse.Namespace) -> int:
    _, _, env = devtool("gateways").simulators(Path(args.dir))
    print(f"# test keys of simulated gateways in {args.dir} (never for production); a worker that trusts them:")
    for k, v in env.items():
        print(f"export {k}={shlex.quote(v)}")
    return 0


def format_table(rows: list[dict[str, Any]]) -> list[str]:
    """Rows as aligned text columns (numbers right-aligned, with thousands separators)."""
    if not rows:
        return ["  (none)"]
    cols = list(rows[0])
    cells = [[f"{r[c]:,}" if isinstance(r[c], int) else str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    out = ["  " + "  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True))]
    out += ["  " + "  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return out


def cmd_report(args: argparse.Namespace) -> int:
    from urllib.parse import urlencode

    from streams import bi

    settings = Settings.from_env()
    base = {k: v for k, v in {"from": args.start, "to": args.end, "bu": args.bu, "format": args.format,
                              "active_days": args.active_days, "dormant_days": args.dormant_days}.items() if v}
    results: dict[str, list[dict[str, Any]]] = {}
    filters: dict[str, Any] = {}
    for i, kpi in enumerate(bi.KPIS, 1):
        print(f"[{i}/{len(bi.KPIS)}] {kpi.title} ...", file=sys.stderr, flush=True)
        answer = admin_call(settings, "/v1/admin/kpis?" + urlencode({**base, "kpi": kpi.name}))
        if isinstance(answer, int):
            return answer
        results[kpi.name] = answer["kpis"][kpi.name]
        filters = answer["filters"]
    print("[+] points liability by expiry month (live, from the wallets) ...", file=sys.stderr, flush=True)
    liability = admin_call(settings, "/v1/admin/liability")
    if isinstance(liability, int):
        return liability
    results["liability"] = liability["by_expiry_month"]
    if args.json:
        print(orjson.dumps({"filters": filters, "kpis": results}, option=orjson.OPT_INDENT_2).decode())
        return 0
    if args.csv:
        w = csv.writer(sys.stdout)
        w.writerow(["kpi", "row", "column", "value"])
        for name, rows in results.items():
            for n, r in enumerate(rows):
                for col, value in r.items():
                    w.writerow([name, n, col, value])
        return 0
    scope = ", ".join(f"{k} {filters[k]}" for k in ("bu", "format") if filters.get(k)) or "all business units"
    print(f"Loyalty report {filters['from']} .. {filters['to']} ({scope}; active <= {filters['active_days']} d, "
          f"dormant > {filters['dormant_days']} d)")
    for kpi in bi.KPIS:
        print(f"\n{kpi.title}")
        rows = results[kpi.name]
        if kpi.shape == "one" and rows:
            for col, value in rows[0].items():
                shown = f"{value / 100:.2f} %" if col.endswith("_bp") else f"{value:,}" if isinstance(value, int) \
                    else str(value)
                print(f"  {col:28} {shown:>16}")
        else:
            print("\n".join(format_table(rows)))
    print(f"\nPoints liability by expiry month (live, {liability['members']:,} wallets, "
          f"{liability['total']:,} points)")
    print("\n".join(format_table(results["liability"])))
    return 0


def cmd_db_migrate(args: argparse.Namespace) -> int:
    """Applies the sql/NNN_*.sql migrations not yet applied to the configured ClickHouse."""
    import asyncio

    from streams.sinks.ledger import LedgerStore, migration_files

    settings = Settings.from_env()
    dsn = args.dsn or settings.clickhouse_dsn
    shown = dsn.split("@")[-1]  # never print a password
    print(f"migrating {shown} ({len(migration_files())} migrations in sql/) ...", file=sys.stderr)

    async def run() -> list[str]:
        store = LedgerStore(dsn)
        try:
            return await store.setup()
        finally:
            await store.close()
    try:
        applied = asyncio.run(run())
    except Exception as exc:
        hint = " (an embedded store is held by a running worker: stop it, or use a server DSN)" \
            if dsn.startswith("chdb://") else ""
        print(f"error: {exc}{hint}", file=sys.stderr)
        return 1
    print("applied: " + (", ".join(applied) if applied else "nothing new"))
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    """A backup of the ClickHouse store, written by the worker that holds it."""
    import datetime as _dt

    settings = Settings.from_env()
    name = args.name or _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    print(f"backing up the ClickHouse store through {settings.base_url} ...", file=sys.stderr)
    result = admin_call(settings, "/v1/admin/backup", orjson.dumps({"name": name}))
    if isinstance(result, int):
        return result
    for table, meta in sorted(result["tables"].items()):
        print(f"  {table:24} {meta['rows']:>12,} rows")
    print(f"backup written to {result['path']}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    """A backup into an empty ClickHouse store (no worker may hold an embedded one)."""
    import asyncio

    from streams.sinks.backup import restore_sync
    from streams.sinks.ledger import LedgerStore

    dsn = args.dsn or Settings.from_env().clickhouse_dsn
    print(f"restoring {args.source} into {dsn.split('@')[-1]} ...", file=sys.stderr)

    async def run() -> dict[str, Any]:
        store = LedgerStore(dsn)
        try:
            await store.setup()
            return await store.in_thread(restore_sync, store, Path(args.source))  # type: ignore[no-any-return]
        finally:
            await store.close()
    try:
        result = asyncio.run(run())
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for table, rows in sorted(result["tables"].items()):
        print(f"  {table:24} {rows:>12,} rows")
    print(f"restored the backup of {result['created_at']}; run `loyalty rebuild` against a worker on this store")
    return 0


def cmd_segments_refresh(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    print(f"computing RFM segments and tags through {settings.base_url} ...", file=sys.stderr)
    report = admin_call(settings, "/v1/admin/segments/refresh", b"")
    if isinstance(report, int):
        return report
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(f"members scored {report['members']:,}; changed {report['changed']:,} (lapsed {report['lapsed']:,})")
    for name in ("segments", "tags"):
        print(f"{name}: " + ", ".join(f"{k} {v:,}" for k, v in sorted(report[name].items())))
    return 0


def cmd_rules_simulate(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    try:
        with open(args.rules, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        print(f"error: cannot read {args.rules}: {exc.strerror}", file=sys.stderr)
        return 2
    import core_ext

    try:
        # Days are the group's local days: midnight at the rules' own offset.
        offset = core_ext.RuleSet.from_toml(text, args.rules).utc_offset_minutes
    except core_ext.RulesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        start, end = _instant(args.start, offset), _instant(args.end, offset)
    except ValueError as exc:
        print(f"error: --from/--to: {exc}", file=sys.stderr)
        return 2
    payload = orjson.dumps({"rules": text, "path": args.rules, "from": start, "to": end})
    print(f"replaying stored payments {args.start} .. {args.end} through {args.rules} ...", file=sys.stderr)
    result = admin_call(settings, "/v1/admin/rules/simulate", payload)
    if isinstance(result, int):
        return result
    print(format_simulation(result))
    return 0


def _instant(value: str, offset_minutes: int) -> str:
    """A local date (its midnight at the rules' UTC offset) or a full ISO-8601 instant with
    its offset; raises ValueError saying what is wrong."""
    if len(value) == 10:
        day = dt.date.fromisoformat(value)
        sign = "+" if offset_minutes >= 0 else "-"
        hours, minutes = divmod(abs(offset_minutes), 60)
        return f"{day.isoformat()}T00:00:00{sign}{hours:02d}:{minutes:02d}"
    instant = dt.datetime.fromisoformat(value)
    if instant.tzinfo is None:
        raise ValueError(f"{value!r} has no UTC offset (a day is YYYY-MM-DD; an instant names its offset)")
    return value


def format_simulation(r: dict) -> str:  # type: ignore[type-arg]
    live, cand = r["live"], r["candidate"]
    lines = [f"{r['payments']:,} payments and refunds from {r['from']} to {r['to']}", ""]
    lines.append(f"{'':32}{'live ' + live['version']:>22}{'candidate ' + cand['version']:>26}{'change':>12}")

    def row(label: str, a: int, b: int) -> None:
        lines.append(f"{label:32}{a:>22,}{b:>26,}{b - a:>+12,}")

    row("points issued", live["points_issued"], cand["points_issued"])
    row("points clawed back", live["points_clawed_back"], cand["points_clawed_back"])
    for title, key in (("by business unit", "points_by_bu"), ("by format", "points_by_format")):
        lines.append(title)
        for k in sorted(set(live[key]) | set(cand[key])):
            row(f"  {k}", live[key].get(k, 0), cand[key].get(k, 0))
    lines.append("campaign cost (points / budget)")
    live_c = {c[0]: c for c in live["campaigns"]}
    for cid, points, budget in cand["campaigns"]:
        before = live_c.get(cid, [cid, 0, None])[1]
        cap = f" / {budget:,}" if budget is not None else ""
        over = "  BUDGET EXHAUSTED" if budget is not None and points >= budget else ""
        lines.append(f"  {cid:30}{before:>22,}{points:>26,}{cap}{over}")
    lines.append("members reaching a tier by upgrade")
    for t in sorted(set(live["upgrades"]) | set(cand["upgrades"])):
        row(f"  {t}", live["upgrades"].get(t, 0), cand["upgrades"].get(t, 0))
    lines.append("members per tier at the end")
    for t in sorted(set(live["final_tiers"]) | set(cand["final_tiers"])):
        row(f"  {t}", live["final_tiers"].get(t, 0), cand["final_tiers"].get(t, 0))
    return "\n".join(lines)


#: Exit codes of the commands that ask the worker (the parser's epilog says them too).
EXIT_REFUSED = 1  # the worker refused the request as wrong (4xx), or a check found a difference
EXIT_NO_ANSWER = 2  # no answer: no worker, a worker error (5xx), a wrong admin token
#: Answers that mean the request named something wrong (not the worker or the token).
REFUSED = {400, 404, 409, 422}


#: The first wait before asking again after a 503 (doubling, with jitter, up to 5 s).
RETRY_503_S = 0.5


class WorkerUnavailable(TransientError):
    """The worker answered 503 (it says: try again)."""

    def __init__(self, error: urllib.error.HTTPError) -> None:
        super().__init__(f"503 from {error.url}")
        self.error = error


def admin_call(settings: Settings, path: str, body: bytes | None = None) -> dict | int:  # type: ignore[type-arg]
    """The worker's JSON answer to an admin GET (or POST of `body`), or the exit code after
    saying on stderr why there is none (EXIT_REFUSED, EXIT_NO_ANSWER)."""
    headers = {"Authorization": f"Bearer {settings.admin_token.get_secret_value()}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(settings.base_url + path, data=body, headers=headers,
                                 method="GET" if body is None else "POST")
    try:
        # A 503 (the worker's Redis or Kafka just came back, a pooled connection found dead)
        # is asked again a few times, as a client should; every admin call is idempotent.
        for attempt in Retrying(retry=retry_if_exception_type(WorkerUnavailable), reraise=True,
                                wait=wait_exponential_jitter(multiplier=RETRY_503_S, max=5.0),
                                stop=stop_after_attempt(6)):
            with attempt:
                try:
                    with urllib.request.urlopen(req, timeout=120 if body is None else 600) as resp:
                        return orjson.loads(resp.read())  # type: ignore[no-any-return]
                except urllib.error.HTTPError as exc:
                    if exc.code == 503:
                        raise WorkerUnavailable(exc) from exc
                    raise
        raise AssertionError("unreachable: Retrying returns or raises")
    except WorkerUnavailable as busy:
        error = busy.error
        print(f"error: worker answered 503: {error.read().decode(errors='replace')} (asked 6 times)", file=sys.stderr)
        return EXIT_NO_ANSWER
    except urllib.error.HTTPError as exc:
        print(f"error: worker answered {exc.code}: {exc.read().decode(errors='replace')}", file=sys.stderr)
        return EXIT_REFUSED if exc.code in REFUSED else EXIT_NO_ANSWER
    except urllib.error.URLError as exc:
        print(f"error: no worker at {settings.base_url} ({exc.reason}); start one with `loyalty worker`",
              file=sys.stderr)
        return EXIT_NO_ANSWER
    except (TimeoutError, orjson.JSONDecodeError) as exc:
        print(f"error: no usable answer from {settings.base_url}{path}: {exc}", file=sys.stderr)
        return EXIT_NO_ANSWER


def cmd_reconcile(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    print(f"comparing Redis with the ledger through {settings.base_url} ...", file=sys.stderr)
    if args.repair:
        repaired = admin_call(settings, "/v1/admin/reconcile/repair", b"{}")
        if isinstance(repaired, int):
            return repaired
        print(f"repair: {repaired['mismatches_before']} mismatches; {repaired['rebuilt']} members behind the "
              f"ledger rebuilt from it ({repaired['behind_their_stored_state']} found by their stored state's "
              f"sequence number); {len(repaired['ahead_of_the_ledger'])} ahead of it (rows on their way: "
              "run again once the ledger has caught up)")
        for budget_id, units in sorted(repaired["budgets_changed"].items()):
            print(f"  budget {budget_id}: spent {units:+,} units, to what the ledger shows given")
        result = repaired["after"]
    else:
        result = admin_call(settings, "/v1/admin/reconcile")
        if isinstance(result, int):
            return result
    print(
        f"members {result['members']}  redis total {result['redis_total']}  "
        f"ledger total {result['ledger_total']}  mismatches {result['mismatch_count']}"
    )
    for m in result["mismatches"]:
        print(f"  {m['member_id']}: redis {m['redis']} ledger {m['ledger']} wallet {m.get('wallet')}")
    kinds = admin_call(settings, "/v1/admin/reconcile?kinds=1")
    if isinstance(kinds, int):
        return kinds
    by_kind = kinds["by_kind"]
    print("by kind, Redis against the durable facts:")
    for k in by_kind["kinds"]:
        print(f"  {k['kind']:<54} {k['checked']:>9,} checked  {k['differ']:>6,} differ"
              + (f"  e.g. {', '.join(k['examples'])}" if k["examples"] else ""))
    if by_kind["without_stored_state"]:
        print(f"  ({by_kind['without_stored_state']:,} members have no stored state yet: written before this "
              "version; their balance, lots and tier are checked against the ledger above)")
    return 0 if result["clean"] and by_kind["clean"] else 1


def cmd_held(args: argparse.Namespace) -> int:
    """Refunds held for a payment not applied yet (they are dead-lettered at their deadline)."""
    result = admin_call(Settings.from_env(), f"/v1/admin/held?limit={args.limit}")
    if isinstance(result, int):
        return result
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    print(f"{result['payments']} payments with refunds held (each waits at most {result['wait_s']} s)")
    for e in result["held"]:
        print(f"  {e['member_id']}  payment {e['payment_id']}  {e['refunds']} refunds  "
              f"held {e['held_for_s']} s  dead-lettered at {e['deadline']}")
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    offset: int | None = args.from_offset
    done = bound = held = guests = claims = 0
    print(f"rebuilding Redis state from the ledger through {settings.base_url} ...", file=sys.stderr)
    while offset is not None:
        page = admin_call(settings, "/v1/admin/rebuild", orjson.dumps({"offset": offset, "limit": args.page}))
        if isinstance(page, int):
            print(f"\nstopped at member {offset:,}; each page is idempotent: run it again, or resume with "
                  f"`loyalty rebuild --from-offset {offset}`", file=sys.stderr)
            return page
        done = max(done, offset) + page["rebuilt"]
        bound += page.get("bindings", 0)
        held += page.get("held_refunds", 0)
        guests += page.get("guest_payments", 0)
        claims += page.get("receipt_claims", 0)
        total = max(page["total"], 1)
        print(f"\r  {done:,}/{page['total']:,} members ({100 * done // total}%)", end="", file=sys.stderr, flush=True)
        offset = page["next_offset"]
    print(file=sys.stderr)
    print(f"rebuilt {done:,} members, {bound:,} bindings, {held:,} held refunds, {guests:,} guest payments waiting "
          f"for their payer, {claims:,} receipt numbers claimed; run `loyalty reconcile` to check")
    return 0


def cmd_settlement_statement(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    from urllib.parse import urlencode

    query = "/v1/admin/settlement/statement?" + urlencode(
        {k: v for k, v in {"date": args.date, "bu": args.bu, "merchant": args.merchant}.items() if v})
    st = admin_call(settings, query)
    if isinstance(st, int):
        return st
    if args.json:
        print(orjson.dumps(st, option=orjson.OPT_INDENT_2).decode())
        return 0
    scope = f" business unit {st['bu']}" if st["bu"] else f" merchant {st['merchant']}" if st["merchant"] else ""
    print(f"Settlement statement {st['date']}{scope}")
    print(f"{'account':32}{'amount (fen)':>16}{'points':>14}{'lines':>8}")
    for a in st["accounts"]:
        print(f"{a['account']:32}{a['amount_fen']:>16,}{a['points']:>14,}{a['lines']:>8,}")
    print("net positions:")
    for p in st["positions"]:
        print(f"  {p['party']:30} {p['direction']:8} {p['amount_fen']:>14,} fen")
    print(f"balanced: {'yes' if st['balanced'] else 'NO'}; points tie out to the ledger: "
          f"{'yes' if st['ties_out'] else 'NO'} ({st['members_points']:,} / {st['ledger_points']:,})")
    return 0 if st["balanced"] and st["ties_out"] else 1


def _password(args: argparse.Namespace) -> str:
    """The new password: one line of standard input with --password-stdin, else asked twice."""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    import getpass

    first = getpass.getpass("new password (12+ characters): ")
    if getpass.getpass("again: ") != first:
        raise SystemExit("error: the two passwords differ")
    return first


def _print_operator(op: dict) -> None:  # type: ignore[type-arg]
    scope = f"bu {op['bu']}" if op["bu"] else f"merchant {op['merchant']}" if op["merchant"] else "group"
    print(f"{op['login']:24} {op['role']:18} {scope:28} {'DISABLED' if op['disabled'] else 'active'}")


def cmd_operators(args: argparse.Namespace) -> int:
    """Operator accounts of the console (through the worker, with the admin token; audited)."""
    settings = Settings.from_env()
    if args.operators_command == "session-key":
        from streams.operators import new_session_key

        print(new_session_key())
        return 0
    if args.operators_command == "list":
        result = admin_call(settings, "/v1/admin/operators")
        if isinstance(result, int):
            return result
        for op in result["operators"]:
            _print_operator(op)
        return 0
    if args.operators_command == "add":
        body = {"login": args.login, "role": args.role, "bu": args.bu, "merchant": args.merchant,
                "password": _password(args)}
        result = admin_call(settings, "/v1/admin/operators", orjson.dumps(body))
    elif args.operators_command == "disable":
        result = admin_call(settings, f"/v1/admin/operators/{args.login}/disable", b"{}")
    else:
        result = admin_call(settings, f"/v1/admin/operators/{args.login}/reset-password",
                            orjson.dumps({"password": _password(args)}))
    if isinstance(result, int):
        return result
    _print_operator(result)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """The audit trail, newest first."""
    from urllib.parse import urlencode

    query = {"operator": args.operator, "member": args.member, "action": args.action, "from": args.date_from,
             "to": args.date_to, "limit": str(args.limit)}
    result = admin_call(Settings.from_env(), "/v1/admin/audit?" + urlencode({k: v for k, v in query.items() if v}))
    if isinstance(result, int):
        return result
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    import datetime as dt

    for r in result["rows"]:
        at = dt.datetime.fromtimestamp(r["at_ms"] / 1000, dt.timezone(dt.timedelta(hours=8)))
        change = "" if r["before"] is None and r["after"] is None else \
            f"  {orjson.dumps(r['before']).decode()} -> {orjson.dumps(r['after']).decode()}"
        print(f"{at:%Y-%m-%d %H:%M:%S} {r['operator']:16} {r['role']:16} {r['action']:28} "
              f"{r['member_id'] or r['target']:24} {r['status']}{change}  [{r['request_id']}]")
    print(f"{len(result['rows'])} rows", file=sys.stderr)
    return 0


def cmd_campaigns(args: argparse.Namespace) -> int:
    """Scheduled campaigns: each with its schedule and latest runs, an audience counted now,
    or one run's progress (docs/marketing.md)."""
    settings = Settings.from_env()
    if args.what == "preview":
        if not args.campaign:
            print("loyalty campaigns preview CAMPAIGN", file=sys.stderr)
            return 2
        result = admin_call(settings, f"/v1/admin/campaigns/{args.campaign}/preview")
    elif args.what == "run":
        if not args.campaign or not args.run:
            print("loyalty campaigns run CAMPAIGN RUN (the run id: its local time YYYYMMDDHHMM)", file=sys.stderr)
            return 2
        result = admin_call(settings, f"/v1/admin/campaigns/{args.campaign}/runs/{args.run}")
    else:
        result = admin_call(settings, "/v1/admin/campaigns")
    if isinstance(result, int):
        return result
    if args.json or args.what != "list":
        sys.stdout.buffer.write(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    cap = result["frequency_cap"]
    print("frequency cap: " + (f"{cap[0]} pushes per member within {cap[1]} days" if cap else "none"))
    for c in result["campaigns"]:
        gives = c["action"].get("template") or f"notice {c['action'].get('message', '')[:30]!r}"
        print(f"{c['id']:24} {c['when']:36} {gives:32} due now: {c['due_now'] or '-'}")
        for r in c["runs"][:3]:
            print(f"    run {r['run']}: {r['status']:8} {r['done']:,} of {r['total']:,} members")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    return devtool("demo").run_demo(events=args.events, members=args.members, seed=args.seed,  # type: ignore[no-any-return]
                                    concurrency=args.concurrency)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="loyalty", description="Real-time loyalty and points engine.",
        epilog="Exit codes of the commands that ask a worker: 0 done; 1 the request was refused as wrong "
               "(the worker answered 400, 404, 409 or 422) or a check found a difference; 2 no answer "
               "(no worker, a worker error, a wrong LOYALTY_ADMIN_TOKEN).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("services", help="start/stop the local Kafka and Redis (scripts/services)")
    s.add_argument("action", choices=["up", "down", "status", "reset"])
    s.set_defaults(func=cmd_services)

    s = sub.add_parser("worker", help="run a worker: agents, HTTP callbacks, member and admin API")
    s.add_argument("--web-port", type=int, default=0, help="HTTP port (default LOYALTY_WEB_PORT or 6066)")
    s.add_argument("--roles", default="", help="comma-separated roles: accrual, ledger, notifier, parking "
                   "(ingress alone: the HTTP API only) "
                   "(default LOYALTY_ROLES or all); workers with the same roles share partitions")
    s.add_argument(
        "--loglevel", default=os.environ.get("LOYALTY_LOG_LEVEL", "info"), choices=["debug", "info", "warning", "error"]
    )
    s.add_argument("--processes", type=int, default=1, metavar="N",
                   help="with --roles ingress: N processes on one port (SO_REUSEPORT), /metrics summed over them")
    s.set_defaults(func=cmd_worker)

    s = sub.add_parser("demo", help="a simulated mall day through the whole pipeline, then a report")
    s.add_argument("--events", type=int, default=3000, help="payments to simulate (default 3000)")
    s.add_argument("--members", type=int, default=400, help="distinct members (default 400)")
    s.add_argument("--seed", type=int, default=20261123, help="random seed (same seed, same day)")
    s.add_argument("--concurrency", type=int, default=32, help="callbacks in flight (default 32)")
    s.set_defaults(func=cmd_demo)

    rules = sub.add_parser("rules", help="earning rules")
    rsub = rules.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    s = rsub.add_parser("check", help="validate a rules file without running anything")
    s.add_argument("file")
    s.set_defaults(func=cmd_rules_check)
    s = rsub.add_parser("simulate", help="replay stored payments through candidate rules, side by side with live")
    s.add_argument("--rules", required=True, help="the candidate rules file")
    s.add_argument("--from", dest="start", required=True, help="first day (YYYY-MM-DD) or ISO-8601 instant")
    s.add_argument("--to", dest="end", required=True, help="end, exclusive (YYYY-MM-DD) or ISO-8601 instant")
    s.set_defaults(func=cmd_rules_simulate)

    members = sub.add_parser("members", help="member credentials")
    msub = members.add_subparsers(dest="members_command", required=True)
    s = msub.add_parser("token", help="issue a member token (reads only that member's data) for the member app")
    s.add_argument("member_id")
    s.add_argument("--ttl", type=int, default=3600, help="seconds the token is valid (default 3600)")
    s.set_defaults(func=cmd_members_token)

    gateways = sub.add_parser("gateways", help="WeChat Pay and Alipay notifications (docs/gateways.md)")
    gsub = gateways.add_subparsers(dest="gateways_command", required=True)
    s = gsub.add_parser("check", help="validate the gateways file (routes) against the rules' business units")
    s.add_argument("file", nargs="?", help="default: LOYALTY_GATEWAYS or rules/gateways.toml")
    s.set_defaults(func=cmd_gateways_check)
    s = gsub.add_parser("simulator-keys", help="make (or reuse) test keys of simulated gateways, print worker env")
    s.add_argument("dir", help="directory for the keys, e.g. .local/gateway-sim")
    s.set_defaults(func=cmd_gateways_simulator_keys)

    s = sub.add_parser("report", help="the operator's KPIs from ClickHouse, as tables (or --json / --csv)")
    s.add_argument("--from", dest="start", help="first local day, YYYY-MM-DD (default: 29 days before --to)")
    s.add_argument("--to", dest="end", help="last local day, YYYY-MM-DD, included (default: today)")
    s.add_argument("--bu", help="one business unit")
    s.add_argument("--format", help="one format (mall, hotel, ...)")
    s.add_argument("--active-days", dest="active_days", help="paid within this many days: active (30)")
    s.add_argument("--dormant-days", dest="dormant_days", help="no payment for more than this: dormant (90)")
    out = s.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON document")
    out.add_argument("--csv", action="store_true", help="CSV rows: kpi,row,column,value")
    s.set_defaults(func=cmd_report)

    db = sub.add_parser("db", help="the ClickHouse schema (sql/)")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    s = dbsub.add_parser("migrate", help="apply the migrations not yet applied (safe to re-run)")
    s.add_argument("--dsn", help="default: LOYALTY_CLICKHOUSE_DSN (chdb:///path or http://host:8123)")
    s.set_defaults(func=cmd_db_migrate)

    s = sub.add_parser("backup", help="back up the ClickHouse store (through the worker that holds it)")
    s.add_argument("--name", default="", help="the backup's directory under LOYALTY_BACKUP_DIR (default: the time)")
    s.set_defaults(func=cmd_backup)
    s = sub.add_parser("restore", help="restore a backup into an empty ClickHouse store (no worker on it)")
    s.add_argument("source", help="the backup's directory (with its manifest.json)")
    s.add_argument("--dsn", help="default: LOYALTY_CLICKHOUSE_DSN (chdb:///path or http://host:8123)")
    s.set_defaults(func=cmd_restore)

    segments = sub.add_parser("segments", help="RFM segments and computed tags (docs/bi.md)")
    segsub = segments.add_subparsers(dest="segments_command", required=True)
    s = segsub.add_parser("refresh", help="compute segments and tags now; changed members' states get them")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_segments_refresh)

    s = sub.add_parser("held", help="refunds held for a payment not applied yet, oldest first, with deadlines")
    s.add_argument("--limit", type=int, default=100, help="list at most this many payments (default 100)")
    s.add_argument("--json", action="store_true", help="print the answer as JSON")
    s.set_defaults(func=cmd_held)
    s = sub.add_parser("reconcile", help="compare Redis balances and wallets with the ledger (exit 1 if not equal)")
    s.add_argument("--repair", action="store_true",
                   help="first rebuild from the ledger the members whose Redis state is behind it (Redis lost "
                        "its last writes) and set budgets to what it shows given; run it while no worker is "
                        "applying events (members with rows still on their way to the ledger are left alone)")
    s.set_defaults(func=cmd_reconcile)

    settlement = sub.add_parser("settlement", help="settlement between business units and merchants")
    ssub = settlement.add_subparsers(dest="settlement_command", required=True, metavar="ACTION")
    s = ssub.add_parser("statement", help="net positions of one day: per account, who owes whom")
    s.add_argument("--date", required=True, help="local day, YYYY-MM-DD")
    who = s.add_mutually_exclusive_group()
    who.add_argument("--bu", default="", help="only this business unit")
    who.add_argument("--merchant", default="", help="only this merchant")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_settlement_statement)

    s = sub.add_parser("rebuild", help="recreate Redis state from the durable facts in ClickHouse: members' "
                       "balances, lots, states, records, bindings and held refunds (docs/reliability.md)")
    s.add_argument("--page", type=int, default=500, help="members per request (default 500)")
    s.add_argument("--from-offset", type=int, default=0,
                   help="resume an interrupted rebuild at this member (the offset it printed)")
    s.set_defaults(func=cmd_rebuild)

    operators = sub.add_parser("operators", help="the console's operator accounts (docs/back-office.md)")
    osub = operators.add_subparsers(dest="operators_command", required=True, metavar="ACTION")
    s = osub.add_parser("add", help="add an operator (the password is asked for, or read with --password-stdin)")
    s.add_argument("login")
    s.add_argument("--role", required=True, choices=["group_admin", "bu_operator", "merchant_staff",
                                                     "customer_service", "auditor"])
    s.add_argument("--bu", default="", help="the business unit of a bu_operator")
    s.add_argument("--merchant", default="", help="the merchant of merchant_staff")
    s.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    s.set_defaults(func=cmd_operators)
    s = osub.add_parser("disable", help="disable an operator (their sessions end at once)")
    s.add_argument("login")
    s.set_defaults(func=cmd_operators)
    s = osub.add_parser("reset-password", help="set a new password (sessions end, the lock-out is lifted)")
    s.add_argument("login")
    s.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    s.set_defaults(func=cmd_operators)
    s = osub.add_parser("list", help="every operator, their role and scope")
    s.set_defaults(func=cmd_operators)
    s = osub.add_parser("session-key", help="print a new key for LOYALTY_CONSOLE_SESSION_KEY")
    s.set_defaults(func=cmd_operators)

    s = sub.add_parser("campaigns", help="scheduled campaigns: schedules and runs, an audience now, a run")
    s.add_argument("what", nargs="?", choices=["list", "preview", "run"], default="list",
                   help="list (default): every campaign and its latest runs; preview CAMPAIGN: its audience "
                        "counted now; run CAMPAIGN RUN: a run's progress")
    s.add_argument("campaign", nargs="?", default="")
    s.add_argument("run", nargs="?", default="")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_campaigns)
    s = sub.add_parser("audit", help="the audit trail of the console and the admin API, newest first")
    s.add_argument("--operator", default="", help="only this operator")
    s.add_argument("--member", default="", help="only changes to this member")
    s.add_argument("--action", default="", help="only actions starting with this (e.g. member.adjust)")
    s.add_argument("--from", dest="date_from", default="", help="first local day, YYYY-MM-DD (default 30 days ago)")
    s.add_argument("--to", dest="date_to", default="", help="last local day, YYYY-MM-DD (default today)")
    s.add_argument("--limit", type=int, default=500)
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_audit)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
