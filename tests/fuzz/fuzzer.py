"""A seeded, bounded black-box fuzz of a real worker's HTTP surface (issue: bad input at
scale). Mostly correctly signed requests, so that they reach validation, with mutated
bodies and headers: the payment callback above all, then the member and parking
callbacks, the till (holds, redemptions, coupons, plates), the gateways, the member and
admin reads. A tenth of the payments are valid and must be accepted; their points are
the independent model the balances are checked against afterwards.

`run_fuzz` sends the requests and returns what came back; `check_after` drains the
worker and checks everything the promise "bad input gets a clear 4xx and changes
nothing" implies (docs/security.md: Bad input). Used by tests/fuzz (a few thousand
requests in CI) and by `scripts/bench fuzz --requests N` (the full size).
"""

from __future__ import annotations

import asyncio
import gzip
import random
import re
import secrets
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from devtools.gateways import AlipaySimulator, WeChatPaySimulator, simulators
from devtools.workers import WorkerProcess
from streams.messages import readable_event_id
from streams.signing import sign, signed_headers
from tests import reference
from tests.fixtures import rules_toml

RULES = rules_toml("""
version = "fuzz-1"
utc_offset_minutes = 480
""", "normal_tier", tail="""
[formats.mall]
points = 1
per_fen = 100
[formats.hotel]
points = 2
per_fen = 100
[[business_units]]
id = "sh-mall"
format = "mall"
max_payment_fen = 5000000
[[business_units]]
id = "sh-hotel"
format = "hotel"
[[merchants]]
id = "sh-hotel-rooms"
bu = "sh-hotel"
category = "rooms"
max_payment_fen = 2000000
""")

#: Where an amount is refused above (the rules' max_payment_fen of each place).
LIMITS = {("sh-mall", "sh-mall-shop-01"): 5_000_000, ("sh-hotel", "sh-hotel-rooms"): 2_000_000}
#: The id fields of a payment: a mutation never gives one a value that is a valid id.
IDS = ("event_id", "bu_id", "merchant_id", "category", "channel")
MOBILE = re.compile(rb"(?<!\d)1[3-9]\d[ -]?\d{4}[ -]?\d{4}(?!\d)")


@dataclass
class Req:
    endpoint: str  # "POST /v1/callbacks/payment" (what the counts are by)
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""
    chunked: bool = False
    #: A payment that must be accepted and earn points (the model's input).
    valid: dict[str, Any] | None = None
    #: A signed callback whose refusal must be dead-lettered.
    callback: bool = False
    #: Statuses this request may get; None: any 2xx/4xx.
    expect: tuple[int, ...] | None = None


@dataclass
class Result:
    requests: int = 0
    by_endpoint: Counter[tuple[str, int]] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    accepted: list[dict[str, Any]] = field(default_factory=list)
    refused_callbacks: int = 0
    #: The event ids of refused callbacks, where their body says one (each must be dead-lettered).
    refused_ids: set[str] = field(default_factory=set)
    #: Points members spent in redemptions that were made (201): the model takes them off.
    redeemed: Counter[str] = field(default_factory=Counter)
    phones: set[str] = field(default_factory=set)
    slowest_s: float = 0.0
    seconds: float = 0.0

    @property
    def five_xx(self) -> int:
        """Answers 500 and up, but 503 (a retry a sender is told to make: a gateway's
        unrouted merchant, Kafka slow); those are counted in the table."""
        return sum(n for (_e, s), n in self.by_endpoint.items() if s >= 500 and s != 503)

    def table(self) -> str:
        lines = [f"{'endpoint':48} {'status':>6} {'count':>8}"]
        for (endpoint, status), n in sorted(self.by_endpoint.items()):
            lines.append(f"{endpoint:48} {status:>6} {n:>8}")
        return "\n".join(lines)


class Fuzzer:
    """Makes the requests of one run from a seed."""

    def __init__(self, w: WorkerProcess, seed: int, wx: WeChatPaySimulator, ali: AlipaySimulator) -> None:
        self.w = w
        self.rng = random.Random(seed)
        self.wx, self.ali = wx, ali
        tag = uuid.UUID(int=self.rng.getrandbits(128)).hex[:6]
        self.members = [f"fz{tag}-{i:03d}" for i in range(40)]
        self.tag = tag
        self.n = 0
        self.accepted_ids: list[tuple[str, str]] = []  # (event id, member) accepted so far
        self.phones: set[str] = set()

    # ---- building blocks ----------------------------------------------------------

    def _id(self, kind: str = "tx") -> str:
        self.n += 1
        return f"fz{self.tag}-{kind}-{self.n:07d}"

    def _now(self, shift_s: float = 0) -> str:
        t = time.time() + shift_s
        return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(t))

    def _phone(self) -> str:
        number = f"1{self.rng.choice('3456789')}{self.rng.randrange(10**9):09d}"
        self.phones.add(number)
        return self.rng.choice([number, f"+86 {number[:3]} {number[3:7]} {number[7:]}", f"+86-{number}"])

    def _payment(self, member: str | None = None) -> dict[str, Any]:
        place = self.rng.choice(list(LIMITS))
        return {"event_id": self._id(), "type": "payment", "occurred_at": self._now(-self.rng.randrange(86_400)),
                "member_id": member or self.rng.choice(self.members), "bu_id": place[0], "merchant_id": place[1],
                "category": "fashion" if place[0] == "sh-mall" else "rooms",
                "amount_fen": self.rng.randrange(100, 200_000), "channel": self.rng.choice(["wechat", "alipay"])}

    def _signed(self, path: str, body: bytes, *, pos: bool = False, **extra: str) -> dict[str, str]:
        if pos:
            return {**self.w.pos_headers(body), "Idempotency-Key": self._id("k"), **extra}
        return {**signed_headers(self.w.callback_secret, body), **extra}

    def _callback(self, body: bytes, headers: dict[str, str] | None = None, *, path: str = "/v1/callbacks/payment",
                  expect: tuple[int, ...] | None = None, chunked: bool = False) -> Req:
        return Req(f"POST {path}", "POST", path, headers or self._signed(path, body), body, chunked=chunked,
                   callback=True, expect=expect)

    # ---- payment callbacks ----------------------------------------------------------

    def payment(self) -> Req:
        r = self.rng.random()
        if r < 0.10:
            p = self._payment()
            self.accepted_ids.append((p["event_id"], p["member_id"]))
            return Req("POST /v1/callbacks/payment", "POST", "/v1/callbacks/payment",
                       self._signed("/v1/callbacks/payment", orjson.dumps(p)), orjson.dumps(p), valid=p,
                       callback=True, expect=(202,))
        if r < 0.14:  # a guest paying by phone, the kind written plainly or with escapes
            p = self._payment()
            del p["member_id"]
            p["payer"] = {"kind": "phone", "id": self._phone()}
            body = orjson.dumps(p)
            if self.rng.random() < 0.5:
                body = body.replace(b'"kind":"phone"', b'"kind":"p\\u0068one"')
            return self._callback(body, expect=(202,))
        if r < 0.18:  # a repeated key: refused before anything reads the body
            p = self._payment()
            if self.rng.random() < 0.5:
                del p["member_id"]
                p["payer"] = {"kind": "phone", "id": self._phone()}
            body = orjson.dumps(p).replace(b'"amount_fen":', b'"amount_fen":1,"amount_fen":', 1)
            return self._callback(body, expect=(400,))
        if r < 0.22 and self.accepted_ids:  # an accepted event id sent for another member
            event_id, member = self.rng.choice(self.accepted_ids)
            other = self.rng.choice([m for m in self.members if m != member])
            p = {**self._payment(other), "event_id": event_id}
            return self._callback(orjson.dumps(p), expect=(409,))
        if r < 0.30:
            return self._callback(orjson.dumps(self._bad_time()), expect=(400,))
        if r < 0.34:
            p = self._payment()
            p["amount_fen"] = LIMITS[(p["bu_id"], p["merchant_id"])] + self.rng.randrange(1, 10**9)
            return self._callback(orjson.dumps(p), expect=(400,))
        if r < 0.44:
            return self._bad_headers()
        if r < 0.47:
            return self._too_large()
        return self._callback(self._mutated(self._payment()), expect=(400,))

    def _bad_time(self) -> dict[str, Any]:
        p = self._payment()
        p["occurred_at"] = self.rng.choice([
            "0000-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2026-06-30T23:59:60Z", "2025-12-31T23:59:60+08:00",
            self._now(3 * 86_400), self._now(-500 * 86_400), "2026-11-23T10:15:00", "yesterday", "",
            "2026-13-01T00:00:00Z", "+002026-11-23T10:15:00Z",
        ])
        return p

    def _mutated(self, p: dict[str, Any]) -> bytes:
        """A payment with one to three fields dropped or given values no field takes."""
        odd: list[Any] = [None, True, -1, 0, 1.5, 2**63, 2**70, -(2**63) - 1, 10**16, "100", "", "x" * 5_000,
                          [], {}, [1, 2], {"a": 1}, "m-\u0000", "a\ud7ff b", "../../etc", "1e3"]
        required = ["event_id", "type", "occurred_at", "bu_id", "merchant_id", "category", "amount_fen", "channel"]
        for _ in range(self.rng.randint(1, 3)):
            name = self.rng.choice(required)
            if self.rng.random() < 0.3:
                p.pop(name, None)
            else:
                value = self.rng.choice(odd)
                if name in IDS and isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_.:@-]{1,64}", value):
                    value = None  # an id that happens to be valid would make this body fine
                p[name] = value
        try:
            return orjson.dumps(p)
        except TypeError:  # 2**70: orjson cannot write it, the text can
            return orjson.dumps({k: v for k, v in p.items() if not isinstance(v, int) or abs(v) < 2**63}
                                ).replace(b"{", b'{"amount_fen":' + str(2**70).encode() + b",", 1)

    def _bad_headers(self) -> Req:
        p = self._payment()
        body = orjson.dumps(p)
        good = signed_headers(self.w.callback_secret, body)
        choice = self.rng.randrange(9)
        if choice == 0:
            return self._callback(body, {**good, "X-Signature": "0" * 64}, expect=(401,))
        if choice == 1:
            ts = "9" * self.rng.choice([13, 308, 309, 400, 5000])
            return self._callback(b"{}", {**good, "X-Timestamp": ts, "X-Signature": "0" * 64}, expect=(401,))
        if choice == 2:
            return self._callback(body, {k: v for k, v in good.items() if k != "X-Nonce"}, expect=(401,))
        if choice == 3:
            return self._callback(body, {**good, "X-Timestamp": str(int(time.time()) - 3_600)}, expect=(401,))
        if choice == 4:
            return self._callback(body, {**good, "Content-Type": self.rng.choice(
                ["text/plain", "application/x-www-form-urlencoded", "", "application/jsonx"])}, expect=(415,))
        if choice == 5:  # signed over the plain body, sent compressed
            return self._callback(gzip.compress(body), {**good, "Content-Encoding": "gzip"}, expect=(415,))
        if choice == 6:
            return self._callback(body, {**good, "X-Key-Id": "pos-test"}, expect=(403,))
        if choice == 7:
            return self._callback(body, {**good, "X-Timestamp": "-1"}, expect=(401,))
        return self._callback(b"\xff\xfe" + body, self._signed("/v1/callbacks/payment", b"\xff\xfe" + body),
                              expect=(400,))

    def _too_large(self) -> Req:
        body = b'{"event_id":"' + self._id().encode() + b'","pad":"' + b"x" * 70_000 + b'"}'
        chunked = self.rng.random() < 0.5
        return self._callback(body, self._signed("/v1/callbacks/payment", body), expect=(413,), chunked=chunked)

    # ---- everything else ------------------------------------------------------------

    def other(self) -> Req:
        kind = self.rng.randrange(12)
        if kind == 0:
            return self._member_callback()
        if kind == 1:
            return self._hold()
        if kind == 2:
            body = self._odd_object({"member_id": self.rng.choice(self.members), "points": 100, "bu_id": "sh-mall",
                                     "kind": "cash_offset"})
            return Req("POST /v1/redemptions", "POST", "/v1/redemptions", self._signed("", body, pos=True), body)
        if kind == 3:
            body = self._odd_object({"member_id": self.rng.choice(self.members), "coupon_id": "c-1",
                                     "payment_id": "p-1", "amount_fen": 10_000, "bu_id": "sh-mall"})
            return Req("POST /v1/coupons/redeem", "POST", "/v1/coupons/redeem", self._signed("", body, pos=True), body)
        if kind == 4:
            m = self.rng.choice(self.members)
            body = self._odd_object({"member_id": m, "plate": "沪A12345"})
            return Req("POST /v1/members/{id}/plates", "POST", f"/v1/members/{m}/plates",
                       self._signed("", body, pos=True), body)
        if kind == 5:
            body = self._odd_object({"event_id": self._id("pk"), "type": "entry", "plate": "沪A12345",
                                     "car_park": "sh-mall-p1", "occurred_at": self._now()})
            return self._callback(body, path="/v1/callbacks/parking")
        if kind == 6:
            return self._wechatpay()
        if kind == 7:
            return self._alipay()
        if kind == 8:
            return self._ledger_read()
        if kind == 9:
            q = {"from": self.rng.choice(["0001-01-01", "9999-12-31", "2026-02-30", "x", "2026-11-01"]),
                 "to": self.rng.choice(["9999-12-31", "2026-11-30", "0001-01-01", ""])}
            return Req("GET /v1/admin/kpis", "GET", "/v1/admin/kpis?" + urllib.parse.urlencode(q),
                       {"Authorization": f"Bearer {self.w.admin_token}"})
        if kind == 10:
            day = self.rng.choice(["0001-01-01", "9999-12-31", "2026-11-29", "", "29/11/2026"])
            return Req("GET /v1/admin/settlement/statement", "GET", f"/v1/admin/settlement/statement?date={day}",
                       {"Authorization": f"Bearer {self.w.admin_token}"})
        m = self.rng.choice(self.members)
        body = self._odd_object({"tier": "normal", "until": self._now(86_400), "reason": "fuzz"})
        return Req("POST /v1/admin/members/{id}/tier", "POST", f"/v1/admin/members/{m}/tier",
                   {"Authorization": f"Bearer {self.w.admin_token}", "Content-Type": "application/json"}, body)

    def _odd_object(self, doc: dict[str, Any]) -> bytes:
        """A request object with a value made odd, a key repeated, or left as it is."""
        r = self.rng.random()
        name = self.rng.choice(list(doc))
        if r < 0.4:
            doc[name] = self.rng.choice([None, -1, 2**63, 10**16, "", "x" * 300, [1], {"a": {"b": []}}, 1.5])
        elif r < 0.6:
            text = orjson.dumps(doc)
            return text.replace(b"{", b'{"' + name.encode() + b'":' + orjson.dumps(doc[name]) + b",", 1)
        elif r < 0.7:
            doc.pop(name)
        return orjson.dumps(doc)

    def _member_callback(self) -> Req:
        member = self._id("nm")
        kind = self.rng.choice(["register", "sign_in", "profile"])
        body: dict[str, Any] = {"event_id": self._id("reg"), "type": kind, "member_id": member,
                                "occurred_at": self._now()}
        if body["type"] == "register":
            body["external_ids"] = [{"kind": "phone", "id": self._phone()}]
        raw = orjson.dumps(body)
        r = self.rng.random()
        if r < 0.3:
            raw = raw.replace(b'"kind":"phone"', b'"kind":"p\\u0068one"')
        elif r < 0.5:
            raw = raw.replace(b'"member_id":', b'"member_id":"other","member_id":', 1)
        elif r < 0.7:
            raw = orjson.dumps({**body, "occurred_at": self.rng.choice(["0000-01-01T00:00:00Z",
                                                                        "2026-12-31T23:59:60Z"])})
        return self._callback(raw, path="/v1/callbacks/member")

    def _hold(self) -> Req:
        doc: dict[str, Any] = {"member_id": self.rng.choice(self.members), "points": self.rng.choice(
            [100, 0, -5, 2**63, 9223372036854775808, 10**16, 1.5, "100", True]),
            "ttl_seconds": self.rng.choice([900, 10**16, -1, 0, 86_401, 1.5, None])}
        body = orjson.dumps(doc) if self.rng.random() < 0.8 else \
            orjson.dumps(doc).replace(b'"points":', b'"points":1,"points":', 1)
        return Req("POST /v1/holds", "POST", "/v1/holds", self._signed("", body, pos=True), body)

    def _wechatpay(self) -> Req:
        tx = f"42{self.rng.randrange(10**26):026d}"
        mchid = self.rng.choice(["1900000109", "1900000109", "1999999999"])
        resource = self.wx.transaction(tx, f"o-{self.tag}-{self.rng.randrange(100)}", self.rng.randrange(1, 10**6),
                                       mchid=mchid)
        body = self.wx.notification("TRANSACTION.SUCCESS", resource)
        headers = self.wx.headers(body)
        r = self.rng.random()
        if r < 0.3:
            body = body.replace(b'"TRANSACTION.SUCCESS"', b'"TRANSACTION.SUCCESS","event_type":"X"', 1)
        elif r < 0.5:
            headers["Wechatpay-Timestamp"] = "9" * 320
        return Req("POST /v1/callbacks/wechatpay", "POST", "/v1/callbacks/wechatpay", headers, body, callback=True)

    def _alipay(self) -> Req:
        trade = self.ali.trade(f"2026{self.rng.randrange(10**20):020d}", f"2088{self.rng.randrange(10**12):012d}",
                               f"{self.rng.randrange(1, 10**5)}.{self.rng.randrange(100):02d}")
        signed = self.ali.sign(trade)
        if self.rng.random() < 0.4:
            signed = {**signed, "total_amount": "99999999999.99"}
        body = AlipaySimulator.body(signed)
        return Req("POST /v1/callbacks/alipay", "POST", "/v1/callbacks/alipay",
                   {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}, body, callback=True)

    def _ledger_read(self) -> Req:
        m = self.rng.choice(self.members)
        q = {"from": self.rng.choice(["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2026-11-01T00:00:00+08:00",
                                      "x", "2026-11-01"]),
             "limit": self.rng.choice(["50", "0", "100000", "-1", "1e3", "9" * 30])}
        return Req("GET /v1/members/{id}/ledger", "GET", f"/v1/members/{m}/ledger?" + urllib.parse.urlencode(q),
                   {"Authorization": f"Bearer {self.w.admin_token}"})

    def requests(self, n: int) -> list[Req]:
        """n requests: nine in ten to the payment callback, the rest across the others."""
        return [self.payment() if self.rng.random() < 0.9 else self.other() for _ in range(n)]


def _has_message(status: int, text: bytes, endpoint: str) -> bool:
    if "alipay" in endpoint:
        return text.strip() in (b"fail", b"success")  # Alipay's protocol: the body is the answer
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return isinstance(doc, dict) and bool(doc.get("error") or doc.get("message"))


async def _chunks(body: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(body), 8192):
        yield body[i:i + 8192]


async def _send(session: aiohttp.ClientSession, base: str, q: Req, result: Result) -> None:
    for attempt in range(20):
        t0 = time.monotonic()
        data: Any = _chunks(q.body) if q.chunked else q.body
        async with session.request(q.method, base + q.path, data=data, headers=q.headers) as r:
            text = await r.read()
            status = r.status
        result.slowest_s = max(result.slowest_s, time.monotonic() - t0)
        if status == 503 and q.valid is not None and attempt < 19:
            # Kafka slow or the ingress shedding: a sender tries again, signed anew.
            await asyncio.sleep(0.2)
            q.headers = {**q.headers, **_resign(q)}
            continue
        break
    result.requests += 1
    result.by_endpoint[(q.endpoint, status)] += 1
    if status >= 500 and status != 503:
        result.problems.append(f"{q.endpoint} answered {status}: {text[:300]!r}")
    if q.expect is not None and status not in q.expect:
        result.problems.append(f"{q.endpoint} answered {status}, expected {q.expect}: {text[:300]!r} "
                               f"for {q.body[:300]!r}")
    if 400 <= status < 500 and not _has_message(status, text, q.endpoint):
        result.problems.append(f"{q.endpoint} answered {status} with no message: {text[:200]!r}")
    # Refused callbacks are dead-lettered: every 4xx, and a gateway's 503 (no route: retried).
    gateway = "wechatpay" in q.path or "alipay" in q.path
    if q.callback and (400 <= status < 500 or (status == 503 and gateway)):
        result.refused_callbacks += 1
        if not gateway and (event_id := readable_event_id(q.body)):
            result.refused_ids.add(event_id)
    if q.valid is not None and status == 202:
        result.accepted.append(q.valid)
    if q.endpoint == "POST /v1/redemptions" and status == 201:
        doc = orjson.loads(q.body)
        result.redeemed[doc["member_id"]] += doc["points"]


async def _drain(session: aiohttp.ClientSession, base: str, queue: asyncio.Queue[Req], result: Result) -> None:
    while not queue.empty():
        await _send(session, base, queue.get_nowait(), result)


_SECRETS: dict[str, str] = {}


def _resign(q: Req) -> dict[str, str]:
    secret = _SECRETS["callback"]
    ts, nonce = str(int(time.time())), secrets.token_hex(12)
    return {"X-Timestamp": ts, "X-Nonce": nonce, "X-Signature": sign(secret, ts, nonce, q.body)}


async def run_fuzz(w: WorkerProcess, wx: WeChatPaySimulator, ali: AlipaySimulator, *, seed: int, requests: int,
                   concurrency: int = 32, progress: bool = False) -> Result:
    """Sends `requests` fuzzed requests (built from `seed`) with `concurrency` in flight."""
    _SECRETS["callback"] = w.callback_secret
    fuzzer = Fuzzer(w, seed, wx, ali)
    result = Result()
    t0 = time.monotonic()
    done = 0
    # Built in slices, so that a run of 100,000 does not hold every body at once.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        while done < requests:
            batch = fuzzer.requests(min(2_000, requests - done))
            queue: asyncio.Queue[Req] = asyncio.Queue()
            for q in batch:
                queue.put_nowait(q)
            await asyncio.gather(*(_drain(session, w.base_url, queue, result) for _ in range(concurrency)))
            done += len(batch)
            if progress:
                rate = done / (time.monotonic() - t0)
                print(f"fuzz: {done:,}/{requests:,} requests ({rate:,.0f}/s), 5xx {result.five_xx}, "
                      f"problems {len(result.problems)}", flush=True)
    result.seconds = time.monotonic() - t0
    result.phones = fuzzer.phones
    return result


def start_fuzzed_worker(tmp: Path) -> tuple[WorkerProcess, WeChatPaySimulator, AlipaySimulator]:
    """A worker on the fuzz's rules with both gateways configured (their simulators'
    keys), every credential set and the rate limits out of the way."""
    rules = tmp / "fuzz.toml"
    rules.write_text(RULES)
    wx, ali, gateway_env = simulators(tmp / "gateway-keys")
    w = WorkerProcess(run_id=f"t-fz-{uuid.uuid4().hex[:8]}", data_dir=tmp / "worker",
                      extra_env={**gateway_env, "LOYALTY_RULES": str(rules), "LOYALTY_RATE_LIMIT_POS": "1000000",
                                 "LOYALTY_RATE_LIMIT_MEMBER": "1000000"})
    w.start()
    return w, wx, ali


def phones_in(blob: bytes, phones: set[str]) -> set[str]:
    """The fuzz's phone numbers that appear in clear in `blob` (with or without separators)."""
    found = set()
    for m in MOBILE.finditer(blob):
        digits = re.sub(rb"\D", b"", m.group(0)).decode()
        if digits in phones:
            found.add(digits)
    return found


def expected_balances(accepted: list[dict[str, Any]]) -> dict[str, int]:
    """The independent model: each member's points from the accepted payments alone."""
    rules = reference.RefRules(RULES)
    return reference.simple_points(rules, accepted)


async def topics_of(bootstrap: str, prefix: str) -> dict[str, list[bytes]]:
    """Every record value of every topic whose name starts with `prefix` (Faust's own
    changelogs and repartition topics included)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        described = await admin.describe_topics(names) if names else []
    finally:
        await admin.close()
    partitions = {d["topic"]: [p["partition"] for p in d.get("partitions", [])] for d in described}
    out: dict[str, list[bytes]] = {}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        for name in names:
            parts = [TopicPartition(name, p) for p in partitions.get(name, [])]
            if not parts:
                continue
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            ends = await consumer.end_offsets(parts)
            values: list[bytes] = []
            while True:
                positions = [await consumer.position(tp) for tp in parts]
                if all(pos >= ends[tp] for pos, tp in zip(positions, parts, strict=True)):
                    break
                batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
                for records in batch.values():
                    values += [r.value or b"" for r in records]
            out[name] = values
    finally:
        await consumer.stop()
    return out


def redis_dump(redis_url: str, namespace: str) -> bytes:
    """Every key of a namespace and its value (any type), as one blob to search."""
    import redis

    r: Any = redis.Redis.from_url(redis_url)
    parts: list[bytes] = []
    try:
        for key in r.scan_iter(match=f"{namespace}:*", count=1000):
            kind = r.type(key)
            parts.append(key)
            if kind == b"string":
                parts.append(r.get(key) or b"")
            elif kind == b"hash":
                for k, v in r.hgetall(key).items():
                    parts += [k, v]
            elif kind == b"list":
                parts += r.lrange(key, 0, -1)
            elif kind == b"set":
                parts += list(r.smembers(key))
            elif kind == b"zset":
                parts += [m for m, _s in r.zrange(key, 0, -1, withscores=True)]
            elif kind == b"stream":
                for _id, fields in r.xrange(key):
                    for k, v in fields.items():
                        parts += [k, v]
    finally:
        r.close()
    return b"\n".join(parts)


def clickhouse_dump(chdb_path: str) -> bytes:
    """Every row of every table of a (stopped) worker's embedded ClickHouse store."""
    from chdb import session

    s = session.Session(chdb_path)
    try:
        tables = str(s.query("SHOW TABLES", "TSV")).split()
        return b"\n".join(str(s.query(f"SELECT * FROM `{t}`", "TSV")).encode() for t in tables)
    finally:
        s.close()


def check_after(w: WorkerProcess, result: Result, bootstrap: str, redis_url: str) -> list[str]:
    """Drains the worker and checks: Redis = ledger, every member = the model, a dead letter
    for every refused callback, and no phone number of the fuzz in clear in any topic,
    Redis key or value, the log, or (once the worker is stopped) any ClickHouse table.
    Returns the problems found (empty: all held)."""
    problems: list[str] = []
    w.wait_caught_up(timeout=300)
    # Caught up means every input consumed; the last batches' ledger rows may still be on
    # their way to ClickHouse (sent after the batch): asked again until equal, 60 s at most.
    deadline = time.monotonic() + 60
    rec = w.get("/v1/admin/reconcile")[1]
    while not rec.get("clean") and time.monotonic() < deadline:
        time.sleep(0.5)
        rec = w.get("/v1/admin/reconcile")[1]
    if not rec.get("clean"):
        problems.append(f"Redis != ledger: {str(rec.get('mismatches'))[:500]}")
    expected = Counter(expected_balances(result.accepted))
    expected.subtract(result.redeemed)
    for member, points in sorted(expected.items()):
        status, got = w.get(f"/v1/members/{member}")
        if status != 200 or got.get("balance") != points:
            problems.append(f"{member}: balance {got.get('balance') if status == 200 else status}, model {points}")
    topics = asyncio.run(topics_of(bootstrap, w.run_id))
    letters = [orjson.loads(v) for v in topics.get(f"{w.run_id}.dead-letter", [])]
    from streams.ingress import unpack_records

    for name, values in topics.items():
        for value in unpack_records(values) if name.endswith(".payments") else values:
            if leaked := phones_in(value, result.phones):
                problems.append(f"phone numbers in clear in topic {name}: {sorted(leaked)[:3]}")
                break
    # Every refused callback is dead-lettered (till requests refused are too, so there are more).
    from_ingress = [d for d in letters if d.get("source") in ("ingress", "wechatpay", "alipay")]
    if len(from_ingress) < result.refused_callbacks:
        problems.append(f"{result.refused_callbacks} callbacks refused but {len(from_ingress)} dead letters "
                        "from the ingress")
    if missing := result.refused_ids - {d.get("event_id") for d in from_ingress}:
        problems.append(f"{len(missing)} refused callbacks with an event id have no dead letter: {sorted(missing)[:3]}")
    if leaked := phones_in(redis_dump(redis_url, w.run_id), result.phones):
        problems.append(f"phone numbers in clear in Redis: {sorted(leaked)[:3]}")
    w.stop()
    if w.log_path is not None and (leaked := phones_in(w.log_path.read_bytes(), result.phones)):
        problems.append(f"phone numbers in clear in the worker's log: {sorted(leaked)[:3]}")
    if leaked := phones_in(clickhouse_dump(str(w.data_dir / "chdb")), result.phones):
        problems.append(f"phone numbers in clear in ClickHouse: {sorted(leaked)[:3]}")
    return problems
