"""Process-wide counters, rendered at /metrics in Prometheus text format."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

counters: Counter[str] = Counter()

HELP = {
    "callbacks_accepted_total": "Payment callbacks acknowledged after Kafka had them (acks=all).",
    "callbacks_rejected_total": "Payment callbacks refused (bad signature, bad body, too large).",
    "callbacks_unavailable_total": "Payment callbacks answered 503 because Kafka did not take them (in time).",
    "callbacks_shed_total": "Callbacks answered 503 at once: too many were waiting for Kafka (overload).",
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
    "points_clawed_back_total": "Points taken back by refunds.",
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
    "ledger_rows_written_total": "Ledger rows inserted into ClickHouse (re-emitted rows included).",
    "ledger_write_retries_total": "Ledger inserts retried after a failure.",
    "ledger_sink_rows_total": "Rows the ledger sink inserted, every table (ledger, settlement, coupons, ...).",
    "ledger_sink_cpu_us_total": "CPU microseconds the ledger sink's thread spent encoding and inserting them.",
    "gateway_wechatpay_payment_total": "WeChat Pay payment notifications accepted.",
    "gateway_wechatpay_refund_total": "WeChat Pay refund notifications accepted.",
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
    "push_latency_ms_sum": "Sum of (delivered - event processed) milliseconds, for the mean push latency.",
    "push_latency_ms_count": "Pushes counted in push_latency_ms_sum.",
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

    def lines(self, name: str) -> list[str]:
        out = [f"# HELP loyalty_{name} {self.help}", f"# TYPE loyalty_{name} histogram"]
        running = 0
        for b, c in zip(self.buckets, self.counts, strict=True):
            running += c
            out.append(f'loyalty_{name}_bucket{{le="{b:g}"}} {running}')
        out.append(f'loyalty_{name}_bucket{{le="+Inf"}} {self.n}')
        out.append(f"loyalty_{name}_sum {self.total:.6f}")
        out.append(f"loyalty_{name}_count {self.n}")
        return out


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


def render() -> str:
    lines = []
    for name, help_text in HELP.items():
        lines.append(f"# HELP loyalty_{name} {help_text}")
        lines.append(f"# TYPE loyalty_{name} counter")
        lines.append(f"loyalty_{name} {counters[name]}")
    lines.append("# HELP loyalty_topic_messages_total Messages consumed (in) and produced (out) per topic.")
    lines.append("# TYPE loyalty_topic_messages_total counter")
    for (topic, direction), n in sorted(topic_messages.items()):
        lines.append(f'loyalty_topic_messages_total{{topic="{topic}",direction="{direction}"}} {n}')
    lines.append("# HELP loyalty_gateway_unrouted_total Signed gateway notifications whose merchant has no route "
                 "(answered 503 so that the gateway retries; add the route).")
    lines.append("# TYPE loyalty_gateway_unrouted_total counter")
    for (gateway, merchant), n in sorted(gateway_unrouted.items()):
        label = merchant.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
        lines.append(f'loyalty_gateway_unrouted_total{{gateway="{gateway}",merchant="{label}"}} {n}')
    for name, h in histograms.items():
        lines += h.lines(name)
    for name, (help_text, read) in gauges.items():
        lines.append(f"# HELP loyalty_{name} {help_text}")
        lines.append(f"# TYPE loyalty_{name} gauge")
        try:
            values = read()
        except Exception:  # a gauge that cannot be read now is left out, not an error page
            values = {}
        for labels, v in sorted(values.items()):
            lines.append(f"loyalty_{name}{{{labels}}} {v:g}" if labels else f"loyalty_{name} {v:g}")
    return "\n".join(lines) + "\n"
