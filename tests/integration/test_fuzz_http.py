"""Property-based fuzzing of every HTTP endpoint over a real worker: random and adversarial
bodies, headers, paths and queries always get an answer below 500 with a clear message,
rejected callbacks are dead-lettered, and nothing a refused request carried changes a balance."""

from __future__ import annotations

import json
import urllib.parse
import uuid
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.gateways import WeChatPayApi, simulators
from devtools.workers import WorkerProcess
from streams.signing import signed_headers

pytestmark = pytest.mark.integration

MEMBER = f"fz-{uuid.uuid4().hex[:6]}"
ACCEPTED: list[str] = []
BASE = {"event_id": "fz-1", "type": "payment", "occurred_at": "2026-11-23T10:15:00+08:00", "member_id": MEMBER,
        "bu_id": "sh-mall", "merchant_id": "sh-mall-shop-01", "category": "fashion", "amount_fen": 1000,
        "channel": "wechat"}
ODD = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(), st.text(max_size=40),
    st.just(2**63), st.just(-1), st.just("x" * 5_000), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)
KEYS = [*sorted(BASE), "refund_of", "payer", "coupon_ids", "points", "kind", "hold_id", "plate", "gate", "car_park",
        "external_ids", "tier", "until", "reason", "idempotency_key", "ttl_s"]


def _body(drop: list[str], changes: dict[str, Any]) -> bytes:
    doc = {k: v for k, v in BASE.items() if k not in drop}
    doc["event_id"] = f"fz-{uuid.uuid4().hex[:10]}"  # never a repeat of an accepted one
    doc.update(changes)
    return json.dumps(doc).encode()


BODIES = st.one_of(
    st.binary(max_size=200),
    st.builds(_body, st.lists(st.sampled_from(sorted(BASE)), min_size=1, max_size=3),
              st.dictionaries(st.sampled_from(KEYS), ODD, max_size=3)),
    st.builds(_body, st.just([]), st.dictionaries(st.sampled_from(KEYS), ODD, min_size=1, max_size=3)),
    st.integers(100, 3_000).map(lambda d: b'{"a":' * d + b"1" + b"}" * d),
    st.just(b'{"event_id":"a","event_id":"b","type":"payment"}'),
    st.just(orjson.dumps(BASE).replace(MEMBER.encode(), b"m-\xff\xfe")),
    st.just(b"{" + b'"k":1,' * 20_000 + b'"z":1}'),  # over the body limit
)
POSTS = ["/v1/callbacks/payment", "/v1/callbacks/member", "/v1/callbacks/parking", "/v1/redemptions",
         "/v1/holds", "/v1/coupons/redeem", f"/v1/members/{MEMBER}/plates", "/v1/holds/h-1/release",
         "/v1/redemptions/r-1/reverse", "/v1/callbacks/wechatpay", "/v1/callbacks/alipay",
         "/v1/callbacks/wechatpay/circle/authorizations", "/v1/callbacks/wechatpay/circle/payments",
         f"/v1/admin/members/{MEMBER}/tier", "/v1/admin/rules/simulate", "/v1/admin/segments/refresh",
         "/v1/console/login", f"/v1/admin/members/{MEMBER}/unbind", f"/v1/admin/members/{MEMBER}/holds/h-1/cancel",
         f"/v1/admin/members/{MEMBER}/coupons/c-1/resend", f"/v1/admin/members/{MEMBER}/export",
         f"/v1/admin/members/{MEMBER}/adjustments", "/v1/admin/approvals/a-1/approve", "/v1/admin/rules/check",
         "/v1/admin/audiences/preview", "/v1/admin/operators", "/v1/admin/operators/nobody/reset-password",
         f"/v1/admin/members/{MEMBER}/merge", "/v1/admin/merges/mg-1/undo", f"/v1/admin/members/{MEMBER}/erase",
         "/v1/admin/coupons/redeem", "/v1/mall/items/umbrella/exchange", "/v1/mall/orders/o-1/cancel",
         "/v1/receipts", "/v1/receipts/images", "/v1/admin/receipts/rc-1/approve", "/v1/admin/receipts/rc-1/reject",
         "/v1/events/e-1/sign-ups", "/v1/events/e-1/cancellations", "/v1/events/e-1/check-ins"]
GETS = ["/v1/members/{id}", "/v1/members/{id}/coupons", "/v1/members/{id}/ledger", "/v1/parking/quote",
        "/v1/parking/sessions", "/v1/admin/kpis", "/v1/admin/settlement/statement", "/v1/admin/liability",
        "/v1/admin/audit", "/v1/admin/members/search", "/v1/admin/rules", "/v1/admin/approvals",
        "/v1/admin/members/{id}/overview", "/v1/admin/audiences/sends/{id}", "/v1/mall/items",
        "/v1/members/{id}/orders", "/v1/admin/merges/{id}", "/v1/admin/coupons/redemptions",
        "/v1/members/{id}/receipts", "/v1/admin/receipts", "/v1/admin/receipts/images/{id}", "/v1/events",
        "/v1/members/{id}/events", "/v1/admin/campaigns", "/v1/admin/campaigns/{id}/preview",
        "/v1/admin/campaigns/{id}/runs/{id}"]
SEGMENT = st.one_of(st.text(max_size=70), st.just("x" * 65), st.just("a{b}"), st.just("../../etc"),
                    st.just(MEMBER))
QUERY = st.dictionaries(st.sampled_from(["from", "to", "limit", "offset", "plate", "car_park", "date", "bu",
                                         "format", "active_days", "q", "kind", "operator", "member", "action",
                                         "member_id", "merchant"]),
                        st.text(max_size=30), max_size=3)


@pytest.fixture(scope="module")
def fw(services: None, tmp_path_factory: pytest.TempPathFactory) -> Any:
    run_id = f"t-fuzz-{uuid.uuid4().hex[:8]}"
    tmp = tmp_path_factory.mktemp("fuzz")
    _wx, _ali, gateway_env = simulators(tmp / "gateway-keys")  # every endpoint configured and live
    circle_env = WeChatPayApi().env(tmp / "merchant")  # the business circle's merchant (no call is made)
    w = WorkerProcess(run_id=run_id, data_dir=tmp / run_id,
                      extra_env={**gateway_env, **circle_env, "LOYALTY_RATE_LIMIT_POS": "100000",
                                 "LOYALTY_RATE_LIMIT_MEMBER": "100000"})
    w.start()
    body = orjson.dumps({**BASE, "event_id": f"fz-seed-{uuid.uuid4().hex[:6]}", "amount_fen": 50_000})
    assert w.send_callback(body)[0] == 202
    w.wait_until(lambda: w.get(f"/v1/members/{MEMBER}")[0] == 200, 60, "the fuzzed member")
    yield w
    w.stop()
    w.cleanup()


def _headers(w: WorkerProcess, path: str, body: bytes, auth: str) -> dict[str, str]:
    if auth == "callback":
        return signed_headers(w.callback_secret, body)
    if auth == "pos":
        return w.pos_headers(body, **{"Idempotency-Key": f"fz-{uuid.uuid4().hex[:8]}"})
    if auth == "admin":
        return {"Authorization": f"Bearer {w.admin_token}", "Content-Type": "application/json"}
    return {"Content-Type": "application/json"}


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(POSTS), body=BODIES, auth=st.sampled_from(["callback", "pos", "admin", "none"]))
def test_posts_never_answer_5xx_and_refusals_change_nothing(fw: WorkerProcess, path: str, body: bytes,
                                                             auth: str) -> None:
    before = fw.metrics()
    status, answer = fw.post(path, body, _headers(fw, path, body, auth))
    assert status < 500, (path, status, answer)
    after = fw.metrics()
    if status >= 400 and isinstance(answer, dict):
        assert answer.get("error") or answer.get("message") or answer.get("code"), answer
    if status in (400, 401, 413) and path.startswith("/v1/callbacks/"):
        assert after["events_dead_lettered_total"] > before["events_dead_lettered_total"]  # a dead-letter copy
    if status >= 400:  # refused: nothing went to Kafka, nothing was applied at once
        assert after["callbacks_accepted_total"] == before["callbacks_accepted_total"]
        assert after.get("redemptions_total", 0) == before.get("redemptions_total", 0)
        assert after.get("holds_total", 0) == before.get("holds_total", 0)
    else:
        ACCEPTED.append(path)


def test_only_accepted_requests_moved_the_member(fw: WorkerProcess) -> None:
    """After the fuzzing: the member moved at most once per accepted request (the seed payment
    and whatever the fuzzer happened to get accepted); Redis = ledger."""
    fw.wait_until(lambda: sum(v for k, v in fw.metrics().items() if k.startswith("consumer_lag")) == 0, 60,
                  "the topics drained")
    member = fw.get(f"/v1/members/{MEMBER}")[1]
    assert 1 <= member["events"] <= 1 + len(ACCEPTED)
    rec = fw.get("/v1/admin/reconcile")[1]
    assert rec["clean"], rec.get("mismatches")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(GETS), segment=SEGMENT, query=QUERY,
       auth=st.sampled_from(["admin", "pos", "member", "forged", "none"]))
def test_gets_never_answer_5xx(fw: WorkerProcess, path: str, segment: str, query: dict[str, str],
                               auth: str) -> None:
    url = path.replace("{id}", urllib.parse.quote(segment, safe="")) or path
    if query:
        url += "?" + urllib.parse.urlencode(query)
    token = {"admin": fw.admin_token, "pos": fw.pos_bearer, "member": fw.member_token(MEMBER),
             "forged": "m." + MEMBER + ".99999999999.00", "none": ""}[auth]
    status, answer = fw.get(url, token=token)
    assert status < 500 or (status == 503 and "held by" in str(answer)), (url, status, answer)
