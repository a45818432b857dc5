"""Process-wide counters, rendered at /metrics in Prometheus text format.

Several processes on one port (`loyalty worker --roles ingress --processes N`): each writes a
snapshot of its counters and histograms to a shared directory (`configure_shared`) every
second, and /metrics in any of them sums every process's snapshot, as prometheus-client's
multiprocess mode does for its own metric types (the hot path here increments plain
integers instead). A snapshot outlives its process, so counters never go backwards.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    UnknownMetricFamily,
)
from prometheus_client.registry import Collector

counters: Counter[str] = Counter()

HELP = {
    "callbacks_accepted_total": "Payment callbacks acknowledged after Kafka had them (acks=all).",
    "callbacks_rejected_total": "Payment callbacks refused (bad signature, bad body, too large).",
    "callbacks_unavailable_total": "Payment callbacks answered 503 because Kafka did not take them (in time).",
    "callbacks_shed_total": "Callbacks answered 503 at once: too many were waiting for Kafka (overload).",
    "admin_forbidden_total": "Admin API requests refused because the operator's role lacks the permission.",
    "admin_csrf_refused_total": "Console changes refused: CSRF token missing or wrong, or another origin.",
    "audience_grants_sent_total": "Coupon grants of audience sends put on the member-events topic.",
    "campaign_pushes_sent_total": "Scheduled campaigns' pushes (campaign_push events) put on the member-events topic.",
    "campaign_runs_started_total": "Scheduled campaign runs started (their audience evaluated).",
    "campaign_runs_finished_total": "Scheduled campaign runs that sent every member's push.",
    "mall_orders_expired_total": "Points-mall orders expired uncollected (points and stock given back).",
    "event_signups_total": "Members' event sign-ups that took a seat.",
    "event_waitlisted_total": "Members' event sign-ups that joined the waitlist (the seats taken).",
    "event_cancellations_total": "Members' event sign-ups cancelled (points and seat given back).",
    "event_promoted_total": "Members promoted from an event's waitlist to a seat.",
    "event_checkins_total": "Members checked in at an event's door with their code.",
    "event_closed_total": "Sign-ups closed after their event: no-shows and waiting members let go.",
    "receipt_images_total": "Receipt images uploaded and kept (decoded and verified as images).",
    "receipts_submitted_total": "Receipts submitted for points (approved at once or left for review).",
    "receipts_approved_total": "Receipts approved, by the rules at once or by a reviewer.",
    "receipts_rejected_total": "Receipts a reviewer rejected (the member told why).",
    "receipts_refused_total": "Receipts refused: the receipt number submitted already by another member.",
    "members_erased_total": "Accounts erased on a personal data request (PIPL).",
    "merges_total": "Accounts merged into another from the console (both halves applied, bindings moved).",
    "merges_undone_total": "Merges undone (what the merge brought given back, bindings moved back).",
    "events_redirected_total": "Events for a merged account sent again as the account kept's.",
    "events_duplicate_after_merge_total": "Events for a merged account that the account kept had already (its "
                                          "records came with the merge).",
    "audit_rows_total": "Rows written to the audit trail (changes through the console or the admin API).",
    "console_logins_total": "Console sign-ins that succeeded.",
    "console_logins_failed_total": "Console sign-ins refused: unknown login, wrong password or disabled account.",
    "console_logins_locked_total": "Console sign-ins refused because the login is locked after repeated failures.",
    "requests_unavailable_total": "Requests answered 503 because Redis or Kafka was out of reach.",
    "requests_rate_limited_total": "Member and POS requests answered 429 past their key's rate limit.",
    "events_applied_total": "Events whose movement was applied to a balance for the first time.",
    "events_duplicate_total": "Events seen again (redelivery, retried callback): no new effect.",
    "events_rejected_total": "Events the accrual refused (unknown BU, refund of an unknown payment...).",
    "events_guest_total": "Payments of payers bound to no member: kept as guest facts, no points.",
    "callbacks_guest_total": "Payment callbacks whose payer resolved to no member.",
    "guest_payments_credited_total": "Guest payments credited to a member who registered in the window.",
    "member_conflicts_total": "Member groups evaluated again because their state moved on since the read.",
    "notices_sent_total": "Notifications (expiry reminders) sent to the coupon-pushes topic.",
    "redemptions_total": "Redemptions applied.",
    "redemptions_refused_total": "Redemptions refused for insufficient points.",
    "reversals_total": "Redemptions reversed.",
    "holds_total": "Points locked for a checkout at the till.",
    "parking_exits_total": "Car park exits priced and recorded.",
    "refunds_held_total": "Refunds that arrived before their payment, held until it is applied.",
    "refunds_released_total": "Held refunds sent again once their payment was applied.",
    "refunds_expired_total": "Held refunds whose payment never came within LOYALTY_HELD_WAIT_S: dead-lettered.",
    "events_dead_lettered_total": "Events sent to the dead-letter topic with a reason.",
    "points_issued_total": "Points added to balances.",
    "points_debited_total": "Points the accrual took out of balances: refunds' clawbacks, expiries.",
    "batches_total": "Batches of records processed by the accrual.",
    "envelopes_sent_total": "Records the ingress produced (an envelope holds the callbacks of one partition).",
    "envelopes_failed_total": "Envelopes Kafka did not take (in time): each of their callbacks was answered 503.",
    "events_total": "Events the accrual decoded (an envelope record holds many).",
    "events_mismatched_total": "Events whose id was applied already with other content: dead-lettered.",
    "scheduled_events_sent_total": "Member events the schedules sent (tier reviews, wallet checks: releases, expiry).",
    "ledger_rows_sent_total": "Ledger rows sent to the ledger topic (re-sent outbox rows included).",
    "outbox_rows_swept_total": "Events whose ledger rows the sweeper sent from outboxes a dead batch left.",
    **{f"accrual_phase_{p}_us_total": f"Wall microseconds the accrual spent in its {p} phase (all batches)."
       for p in ("decode", "read", "evaluate", "reserve", "outbox", "write", "settle", "guests", "send", "trim",
                 "after")},
    "boards_scores_taken_total": "Leaderboard scores taken from the ledger topic (newest version wins).",
    "batch_retries_total": "Payment batches retried after a transient failure.",
    "redis_restart_repairs_total": "Repairs the ledger worker ran after a Redis restart, before the accrual went on.",
    "redis_restart_members_rebuilt_total": "Members rebuilt from the durable facts by those repairs.",
    "redis_wait_short_total": "Redis Cluster primaries whose replica did not confirm a batch's writes in time (WAIT).",
    "ledger_rows_written_total": "Ledger rows inserted into ClickHouse (re-emitted rows included).",
    "ledger_write_retries_total": "Ledger inserts retried after a failure.",
    "ledger_sink_rows_total": "Rows the ledger sink inserted, every table (ledger, settlement, coupons, ...).",
    "ledger_sink_cpu_us_total": "CPU microseconds the ledger sink's thread spent encoding and inserting them.",
    "gateway_wechatpay_payment_total": "WeChat Pay payment notifications accepted.",
    "gateway_wechatpay_refund_total": "WeChat Pay refund notifications accepted.",
    "gateway_wechatpay_circle_payment_total": "WeChat Pay business-circle payment notifications accepted.",
    "gateway_wechatpay_circle_refund_total": "WeChat Pay business-circle refund notifications accepted.",
    "wechatpay_circle_authorized_total": "Business-circle authorisations taken: the openid bound to the member.",
    "wechatpay_circle_synced_total": "Business-circle payments whose points WeChat Pay took (points sync).",
    "wechatpay_circle_sync_deferred_total": "Points syncs put back for later after every immediate try failed.",
    "wechatpay_circle_sync_refused_total": "Points syncs WeChat Pay refused (4xx): recorded, not tried again.",
    "wechatpay_circle_call_retries_total": "Calls to WeChat Pay (points and parking sync) retried after a failure.",
    "wechatpay_circle_parking_synced_total": "Parking entries and exits of circle members sent to WeChat Pay.",
    "wechatpay_circle_parking_failed_total": "Parking syncs WeChat Pay did not take after the tries (logged).",
    "gateway_alipay_payment_total": "Alipay payment notifications accepted.",
    "gateway_alipay_refund_total": "Alipay refund notifications accepted.",
    "gateway_refused_total": "Gateway notifications refused (signature, timestamp, decryption, mapping).",
    "coupon_events_written_total": "Coupon events (issued, redeemed, refused, returned, expired, pushed) written.",
    "coupon_pushes_queued_total": "Issued coupons sent to the coupon-pushes topic (again after a replay).",
    "coupons_redeemed_total": "Coupons redeemed at the till through the endpoint.",
    "coupons_refused_total": "Coupon redemptions refused at the endpoint (owner, validity, threshold, scope, used).",
    "pushes_delivered_total": "Pushes the webhook answered 2xx.",
    "pushes_failed_total": "Pushes dead-lettered after every attempt failed.",
    "pushes_duplicate_total": "Pushes not sent again: delivered before (redelivery, replay).",
    "engagement_refused_total": "Engagement operations the rules or the member's state refused (409).",
    "referrals_sent_total": "Referral rewards sent to inviters (a registration naming its inviter, with a new phone).",
    "referrals_refused_total": "Registrations naming an inviter that earn no referral (no phone, or a used one).",
    "payments_over_limit_total": "Payments refused at the ingress: above their merchant's or BU's max_payment_fen.",
    "events_claimed_by_another_total": "Payments whose event id another member (or payer) had claimed: refused.",
}


class Histogram:
    """A Prometheus histogram: cumulative buckets, sum and count (observe is O(buckets))."""

    def __init__(self, help_text: str, buckets: tuple[float, ...]) -> None:
        self.help = help_text
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.total += value
        self.n += 1
        for i, b in enumerate(self.buckets):
            if value <= b:
                self.counts[i] += 1
                break


MS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
histograms: dict[str, Histogram] = {
    "batch_size": Histogram("Events per accrual batch.", (1, 10, 50, 100, 250, 500, 1000, 2000, 5000)),
    "core_ms": Histogram("Milliseconds in the Rust core per batch (decode, evaluate).", MS),
    "redis_apply_ms": Histogram("Milliseconds of the Redis read and atomic apply per batch.", MS),
    "clickhouse_write_ms": Histogram("Milliseconds per ClickHouse insert (all tables of a ledger batch).", MS),
    "batch_ms": Histogram("Milliseconds per accrual batch, end to end (read to ledger message acked).", MS),
    "push_latency_ms": Histogram("Milliseconds from an event's processing to its push delivered.", MS),
    "callback_ms": Histogram("Milliseconds from a callback's arrival to its answer.", MS),
    "envelope_events": Histogram("Events per envelope the ingress produced (group commit).",
                                 (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000)),
}

#: (topic, direction) -> messages: "in" consumed by an agent, "out" produced.
topic_messages: Counter[tuple[str, str]] = Counter()

#: (gateway, merchant number) -> signed notifications with no route (answered 503, retried).
gateway_unrouted: Counter[tuple[str, str]] = Counter()
#: At most this many merchant numbers are kept apart; the rest count under "other".
UNROUTED_LABELS = 1000


def count_unrouted(gateway: str, merchant: str) -> None:
    known = (gateway, merchant) in gateway_unrouted or len(gateway_unrouted) < UNROUTED_LABELS
    gateway_unrouted[(gateway, merchant if known else "other")] += 1


#: Gauges computed when /metrics is read: name -> (help, () -> {labels: value}).
gauges: dict[str, tuple[str, Callable[[], dict[str, float]]]] = {}


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _labels(text: str) -> tuple[list[str], list[str]]:
    """`topic="a",partition="0"` as label names and values."""
    pairs = _LABEL.findall(text)
    return [k for k, _v in pairs], [v.replace('\\"', '"').replace("\\\\", "\\") for _k, v in pairs]


def _help_of(name: str) -> str:
    """A counter's help: HELP's, or what its name says (one counted under a name made at run
    time, such as `engagement_<op>_total`, is exported all the same)."""
    return HELP.get(name) or name.removesuffix("_total").replace("_", " ").capitalize() + "."


def snapshot() -> dict[str, Any]:
    """This process's counters, labelled counts and histograms, as plain data."""
    return {
        "counters": dict(counters),
        "topics": [[topic, direction, n] for (topic, direction), n in topic_messages.items()],
        "unrouted": [[gateway, merchant, n] for (gateway, merchant), n in gateway_unrouted.items()],
        "histograms": {name: [list(h.counts), h.total, h.n] for name, h in histograms.items()},
    }


def merge(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """The sum of several processes' snapshots (histograms bucket by bucket)."""
    total_counters: Counter[str] = Counter()
    topics: Counter[tuple[str, str]] = Counter()
    unrouted: Counter[tuple[str, str]] = Counter()
    hists: dict[str, list[Any]] = {}
    for s in snapshots:
        total_counters.update(s.get("counters", {}))
        for topic, direction, n in s.get("topics", []):
            topics[(topic, direction)] += n
        for gateway, merchant, n in s.get("unrouted", []):
            unrouted[(gateway, merchant)] += n
        for name, (counts, total, n) in s.get("histograms", {}).items():
            if name not in histograms or len(counts) != len(histograms[name].buckets):
                continue  # a process of another version: its buckets do not line up
            mine = hists.setdefault(name, [[0] * len(counts), 0.0, 0])
            mine[0] = [a + b for a, b in zip(mine[0], counts, strict=True)]
            mine[1] += total
            mine[2] += n
    return {"counters": dict(total_counters), "topics": [[t, d, n] for (t, d), n in topics.items()],
            "unrouted": [[g, m, n] for (g, m), n in unrouted.items()], "histograms": hists}


#: Where the processes sharing a port write their snapshots (None: this process alone).
_shared_dir: Path | None = None


def configure_shared(directory: str) -> None:
    """Sums /metrics over every process writing to `directory` (several on one port)."""
    global _shared_dir
    _shared_dir = Path(directory) if directory else None
    if _shared_dir is not None:
        _shared_dir.mkdir(parents=True, exist_ok=True)


def write_snapshot() -> None:
    """Writes this process's snapshot where the others read it (atomically: a reader never
    sees half a file)."""
    if _shared_dir is None:
        return
    path = _shared_dir / f"{os.getpid()}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(snapshot()))
    tmp.replace(path)


def shared_snapshots() -> list[dict[str, Any]]:
    """Every process's latest snapshot in the shared directory, this one's fresh."""
    if _shared_dir is None:
        return [snapshot()]
    write_snapshot()
    out = []
    for path in sorted(_shared_dir.glob("*.json")):
        try:
            out.append(orjson.loads(path.read_bytes()))
        except (OSError, orjson.JSONDecodeError):  # replaced while read: the next scrape has it
            continue
    return out


class _Collector(Collector):
    """Every counter, histogram, labelled count and gauge of this process (or, sharing a
    port, of every process: `configure_shared`), read when /metrics is scraped (the hot path
    increments plain integers; no lock per event)."""

    def collect(self) -> Iterator[Metric]:
        parts = shared_snapshots()
        data = merge(parts)
        if _shared_dir is not None:
            yield GaugeMetricFamily("loyalty_metrics_processes", "Processes whose metrics this page sums "
                                    "(several on one port).", value=len(parts))
        summed: Counter[str] = Counter(data["counters"])
        for name in sorted(set(HELP) | set(summed)):
            value = summed[name]
            if name.endswith("_total"):
                yield CounterMetricFamily(f"loyalty_{name}", _help_of(name), value=value)
            else:  # a sum or count kept by hand (push latency): its own name, untyped
                yield UnknownMetricFamily(f"loyalty_{name}", _help_of(name), value=value)
        topics = CounterMetricFamily("loyalty_topic_messages_total",
                                     "Messages consumed (in) and produced (out) per topic.",
                                     labels=["topic", "direction"])
        for topic, direction, n in sorted(data["topics"]):
            topics.add_metric([topic, direction], n)
        yield topics
        unrouted = CounterMetricFamily("loyalty_gateway_unrouted_total",
                                       "Signed gateway notifications whose merchant has no route (answered 503 "
                                       "so that the gateway retries; add the route).", labels=["gateway", "merchant"])
        for gateway, merchant, n in sorted(data["unrouted"]):
            unrouted.add_metric([gateway, merchant], n)
        yield unrouted
        for name, h in histograms.items():
            counts, total, n = data["histograms"].get(name, [[0] * len(h.buckets), 0.0, 0])
            running, buckets = 0, []
            for b, c in zip(h.buckets, counts, strict=True):
                running += c
                buckets.append((f"{b:g}", running))
            buckets.append(("+Inf", n))
            yield HistogramMetricFamily(f"loyalty_{name}", h.help, buckets=buckets, sum_value=total)
        for name, (help_text, read) in gauges.items():
            try:
                values = read()
            except Exception:  # a gauge that cannot be read now is left out, not an error page
                values = {}
            names = _labels(next(iter(values), ""))[0]
            family = GaugeMetricFamily(f"loyalty_{name}", help_text, labels=names)
            for labels, v in sorted(values.items()):
                family.add_metric(_labels(labels)[1], v)
            yield family


REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(_Collector())


def render() -> str:
    """The metrics in the Prometheus text format (prometheus-client writes it): this
    process's, or the sum over the processes sharing its port. Gauges (consumer lag) are
    this process's own."""
    return generate_latest(REGISTRY).decode()
