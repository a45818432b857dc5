"""Process-wide counters, rendered at /metrics in Prometheus text format."""

from __future__ import annotations

from collections import Counter

counters: Counter[str] = Counter()

HELP = {
    "callbacks_accepted_total": "Payment callbacks acknowledged after Kafka had them (acks=all).",
    "callbacks_rejected_total": "Payment callbacks refused (bad signature, bad body, too large).",
    "callbacks_unavailable_total": "Payment callbacks answered 503 because Kafka did not take them.",
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
    "events_dead_lettered_total": "Events sent to the dead-letter topic with a reason.",
    "points_issued_total": "Points added to balances.",
    "points_clawed_back_total": "Points taken back by refunds.",
    "batches_total": "Payment batches processed.",
    "batch_retries_total": "Payment batches retried after a transient failure.",
    "ledger_rows_written_total": "Ledger rows inserted into ClickHouse (re-emitted rows included).",
    "ledger_write_retries_total": "Ledger inserts retried after a failure.",
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
}


def render() -> str:
    lines = []
    for name, help_text in HELP.items():
        lines.append(f"# HELP loyalty_{name} {help_text}")
        lines.append(f"# TYPE loyalty_{name} counter")
        lines.append(f"loyalty_{name} {counters[name]}")
    return "\n".join(lines) + "\n"
