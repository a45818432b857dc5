"""Bad input that used to get a 5xx or get through (issue: bad input at scale), one by one
over a real worker: each gets a clear 4xx naming what is wrong (or, for an unrouted
gateway notification, a 503 the gateway retries), nothing is applied, and a refused
callback is dead-lettered. tests/fuzz runs the same kinds of input by the thousand."""

from __future__ import annotations

import asyncio
import gzip
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from devtools.workers import WorkerProcess, read_dead_letters
from streams.settings import Settings
from streams.signing import signed_headers
from tests.fuzz.fuzzer import start_fuzzed_worker, topics_of

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bw(services: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WorkerProcess, Any, Any]]:
    w, wx, ali = start_fuzzed_worker(tmp_path_factory.mktemp("bad-input"))
    yield w, wx, ali
    w.kill()
    w.cleanup()


def payment(member: str, **changes: Any) -> dict[str, Any]:
    return {"event_id": f"bi-{uuid.uuid4().hex[:12]}", "type": "payment",
            "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "member_id": member,
            "bu_id": "sh-mall", "merchant_id": "sh-mall-shop-01", "category": "fashion", "amount_fen": 10_000,
            "channel": "wechat", **changes}


def letters(w: WorkerProcess) -> dict[str, dict[str, Any]]:
    records = asyncio.run(read_dead_letters(Settings.from_env().kafka_bootstrap, f"{w.run_id}.dead-letter",
                                            wait_s=2))
    return {r["event_id"]: r for r in records if r.get("event_id")}


def test_a_timestamp_too_long_for_a_float_is_a_401_before_anything(bw: tuple[WorkerProcess, Any, Any]) -> None:
    w = bw[0]
    for path in ("/v1/callbacks/payment", "/v1/callbacks/member", "/v1/redemptions", "/v1/holds"):
        for digits in (13, 309, 5000):
            headers = {"X-Timestamp": "9" * digits, "X-Nonce": uuid.uuid4().hex, "X-Signature": "0" * 64,
                       "Content-Type": "application/json"}
            if path in ("/v1/redemptions", "/v1/holds"):
                headers["X-Key-Id"] = w.pos_key_id
            status, body = w.post(path, b"{}", headers)
            assert status == 401 and "X-Timestamp" in body["error"], (path, digits, status, body)


def test_every_integer_of_a_hold_is_range_checked(bw: tuple[WorkerProcess, Any, Any]) -> None:
    w = bw[0]
    m = f"bi-{uuid.uuid4().hex[:8]}"
    for req, field in (({"member_id": m, "points": 100, "ttl_seconds": 10**16}, "ttl_seconds"),
                       ({"member_id": m, "points": 9223372036854775808}, "points"),
                       ({"member_id": m, "points": 1.5}, "points"),
                       ({"member_id": m, "points": True}, "points")):
        body = orjson.dumps(req)
        status, answer = w.post("/v1/holds", body, w.pos_headers(body, **{"Idempotency-Key": uuid.uuid4().hex}))
        assert (status, answer["field"]) == (400, field), (req, status, answer)
        assert "must be an integer from" in answer["error"]
    body = b'{"member_id":"' + m.encode() + b'","points":1,"points":100}'
    status, answer = w.post("/v1/holds", body, w.pos_headers(body, **{"Idempotency-Key": uuid.uuid4().hex}))
    assert status == 400 and "duplicate key" in answer["error"], answer


def test_dates_of_a_request_are_bounded(bw: tuple[WorkerProcess, Any, Any]) -> None:
    w = bw[0]
    for url, field in (("/v1/members/someone/ledger?from=0001-01-01T00:00:00Z", "from"),
                       ("/v1/members/someone/ledger?to=9999-12-31T23:59:59Z", "to"),
                       ("/v1/admin/settlement/statement?date=0001-01-01", "date"),
                       ("/v1/admin/kpis?from=0001-01-01", "query")):
        status, answer = w.get(url)
        assert status == 400, (url, status, answer)
        assert answer.get("field") in (field, "query", "from", "to"), answer
        assert "1970" in answer["error"] or "between" in answer["error"], answer


def test_duplicate_keys_and_escaped_phone_kinds_are_caught_before_any_rewrite(
        bw: tuple[WorkerProcess, Any, Any]) -> None:
    w = bw[0]
    phone = f"139{uuid.uuid4().int % 10**8:08d}"
    p = payment("x")
    del p["member_id"]
    p["payer"] = {"kind": "phone", "id": phone}
    twice = orjson.dumps(p).replace(b'"amount_fen":', b'"amount_fen":1,"amount_fen":', 1)
    status, answer = w.send_callback(twice)
    assert status == 400 and "duplicate key" in answer["error"], answer
    escaped = orjson.dumps({**p, "event_id": f"bi-{uuid.uuid4().hex[:12]}"}).replace(
        b'"kind":"phone"', b'"kind":"p\\u0068one"')
    assert w.send_callback(escaped)[0] == 202
    w.wait_caught_up()
    topics = asyncio.run(topics_of(Settings.from_env().kafka_bootstrap, f"{w.run_id}.payments"))
    blob = b"".join(v for values in topics.values() for v in values)
    assert phone.encode() not in blob and b"ph_" in blob, "the escaped phone kind was pseudonymised"
    assert p["event_id"] in letters(w), "the refused body was dead-lettered"


def test_an_event_id_is_one_members(bw: tuple[WorkerProcess, Any, Any]) -> None:
    w = bw[0]
    a, b = f"bi-a-{uuid.uuid4().hex[:6]}", f"bi-b-{uuid.uuid4().hex[:6]}"
    first = payment(a)
    assert w.send_callback(first)[0] == 202
    assert w.send_callback(first)[0] == 202, "a retry of the same sender passes"
    before = w.metrics()["events_claimed_by_another_total"]
    status, answer = w.send_callback({**first, "member_id": b})
    assert status == 409 and a in answer["error"] and b in answer["error"], answer
    assert w.metrics()["events_claimed_by_another_total"] == before + 1
    w.wait_caught_up()
    assert w.get(f"/v1/members/{a}")[1]["balance"] == 100
    assert w.get(f"/v1/members/{b}")[0] == 404, "the second member earned nothing"
    letter = letters(w)[first["event_id"]]
    assert letter["field"] == "event_id" and a in letter["reason"] and b in letter["reason"], letter


def test_occurred_at_outside_the_window_or_a_leap_second_is_refused(bw: tuple[WorkerProcess, Any, Any]) -> None:
    w = bw[0]
    m = f"bi-{uuid.uuid4().hex[:8]}"
    for at in ("0000-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2026-06-30T23:59:60Z",
               time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3 * 86_400)),
               time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 500 * 86_400))):
        status, answer = w.send_callback(payment(m, occurred_at=at))
        assert (status, answer["field"]) == (400, "occurred_at"), (at, status, answer)
    body = orjson.dumps({"event_id": f"bi-{uuid.uuid4().hex[:8]}", "type": "sign_in", "member_id": m,
                         "occurred_at": "9999-12-31T23:59:59Z"})
    status, answer = w.post("/v1/callbacks/member", body, signed_headers(w.callback_secret, body))
    assert (status, answer["field"]) == (400, "occurred_at"), answer
    w.wait_caught_up()
    assert w.get(f"/v1/members/{m}")[0] == 404


def test_a_payment_above_its_places_maximum_is_refused(bw: tuple[WorkerProcess, Any, Any]) -> None:
    w = bw[0]
    m = f"bi-{uuid.uuid4().hex[:8]}"
    before = w.metrics()["payments_over_limit_total"]
    status, answer = w.send_callback(payment(m, amount_fen=5_000_001))
    assert (status, answer["field"]) == (400, "amount_fen") and "5000000" in answer["error"], answer
    hotel = payment(m, bu_id="sh-hotel", merchant_id="sh-hotel-rooms", category="rooms", amount_fen=2_000_001)
    assert w.send_callback(hotel)[0] == 400, "the merchant's own maximum"
    assert w.metrics()["payments_over_limit_total"] == before + 2
    assert w.send_callback(payment(m, amount_fen=5_000_000))[0] == 202, "at the maximum is fine"


def test_content_type_and_encoding_are_checked(bw: tuple[WorkerProcess, Any, Any]) -> None:
    w = bw[0]
    p = payment(f"bi-{uuid.uuid4().hex[:8]}")
    body = orjson.dumps(p)
    status, answer = w.post("/v1/callbacks/payment", body,
                            {**signed_headers(w.callback_secret, body), "Content-Type": "text/plain"})
    assert (status, answer["field"]) == (415, "Content-Type"), answer
    status, answer = w.post("/v1/callbacks/payment", gzip.compress(body),
                            {**signed_headers(w.callback_secret, body), "Content-Encoding": "gzip"})
    assert (status, answer["field"]) == (415, "Content-Encoding"), answer


async def _chunks(body: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(body), 4096):
        yield body[i:i + 4096]


def test_a_chunked_body_over_the_limit_gets_our_413_and_a_dead_letter(bw: tuple[WorkerProcess, Any, Any]) -> None:
    w = bw[0]
    event_id = f"bi-big-{uuid.uuid4().hex[:8]}"
    body = b'{"event_id":"' + event_id.encode() + b'","pad":"' + b"x" * 2_000_000 + b'"}'

    async def send() -> tuple[int, Any, str]:
        async with aiohttp.ClientSession() as s, s.post(w.base_url + "/v1/callbacks/payment", data=_chunks(body),
                                                        headers=signed_headers(w.callback_secret, body)) as r:
            return r.status, await r.json(content_type=None), r.headers.get("Content-Type", "")
    status, answer, ctype = asyncio.run(send())
    assert status == 413 and "larger than" in answer["error"] and ctype.startswith("application/json"), answer
    w.wait_until(lambda: event_id in letters(w), 30, "the dead letter of the chunked body")
    assert letters(w)[event_id]["field"] == "body"


def test_an_unrouted_gateway_notification_is_a_503_retry_and_counted(bw: tuple[WorkerProcess, Any, Any]) -> None:
    w, wx, _ali = bw
    resource = wx.transaction(f"42{uuid.uuid4().int % 10**26:026d}", "o-nobody", 1_000, mchid="1999999999")
    body = wx.notification("TRANSACTION.SUCCESS", resource)
    status, answer = w.post("/v1/callbacks/wechatpay", body, wx.headers(body))
    assert status == 503 and answer["code"] == "FAIL" and "no route" in answer["message"], answer
    with urllib.request.urlopen(w.base_url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    assert 'loyalty_gateway_unrouted_total{gateway="wechatpay",merchant="1999999999"} 1' in text, text[-2000:]
