"""Locust load on the HTTP service: signed payment callbacks and member balance reads,
and the payment gateways' own formats (WeChat Pay v3, Alipay notifications).

Headless, against a running worker (e.g. `loyalty worker`, with the same secrets: the
callback secret, LOYALTY_MEMBER_TOKEN_SECRET for the members' tokens, LOYALTY_POS_KEYS for
the till):

    LOYALTY_CALLBACK_SECRET=... LOYALTY_MEMBER_TOKEN_SECRET=... LOYALTY_POS_KEYS=... \\
      .venv/bin/locust -f loadtests/locustfile.py --headless \\
        -H http://127.0.0.1:6066 -u 50 -r 50 -t 30s --only-summary GatewayAndMembers

Every callback has a fresh event id; 3% are resent (a gateway retry) and must be
answered 202 without a second effect.

The gateway formats sign with simulated gateways' test keys; the worker must trust
them (`loyalty gateways simulator-keys DIR` prints its environment):

    eval "$(loyalty gateways simulator-keys .local/gateway-sim)"; loyalty worker &
    LOYALTY_GATEWAY_SIM_DIR=.local/gateway-sim .venv/bin/locust -f loadtests/locustfile.py --headless \\
        -H http://127.0.0.1:6066 -u 20 -r 20 -t 30s --only-summary WeChatPayNotifications AlipayNotifications

Each sends payments from a pool of payers, 3% retried as the gateway would, and 5%
refunds of its earlier payments.

Peak traffic (issue 8): the peak-shaped load (ramp, normal, a 10x burst, back to normal),
callbacks plus members reading balances and redeeming; a 503 with Retry-After (overload,
refused at once) is its own line in the stats, anything else but 202 is a failure:

    LOYALTY_LOAD_SHAPE=peak LOYALTY_LOAD_USERS=20 LOYALTY_LOAD_SECONDS=20 LOYALTY_CALLBACK_SECRET=... \\
        .venv/bin/locust -f loadtests/locustfile.py --headless -H http://127.0.0.1:6066 --only-summary \\
        --json-file .local/locust-peak GatewayAndMembers MembersReadingAndRedeeming
"""

from __future__ import annotations

import os
import random
import uuid
from pathlib import Path

import orjson
from locust import HttpUser, LoadTestShape, between, task

from devtools.gateways import AlipaySimulator, WeChatPaySimulator, simulators
from streams.auth import member_token, parse_pos_keys
from streams.signing import signed_headers

SECRET = os.environ.get("LOYALTY_CALLBACK_SECRET", "")
# Members read with their own tokens; the till redeems with a POS key (the worker's settings).
MEMBER_SECRET = os.environ.get("LOYALTY_MEMBER_TOKEN_SECRET", "")
POS_KEY_ID, POS_SECRET = next(iter(parse_pos_keys(os.environ.get("LOYALTY_POS_KEYS", "")).items()), ("", ""))


def member_headers(member_id: str) -> dict[str, str]:
    if not MEMBER_SECRET:
        raise RuntimeError("set LOYALTY_MEMBER_TOKEN_SECRET to the worker's, so members can read their balance")
    return {"Authorization": f"Bearer {member_token(MEMBER_SECRET, member_id)}"}
BUS = [("sh-mall", "fashion"), ("sh-mall", "food"), ("sh-hotel", "room"), ("sh-cvs", "snacks"), ("sh-park", "parking")]


class GatewayAndMembers(HttpUser):
    wait_time = between(0.0, 0.01)

    def on_start(self) -> None:
        if not SECRET:
            raise RuntimeError("set LOYALTY_CALLBACK_SECRET to the worker's secret")
        self.members = [f"load-m-{random.randrange(100_000)}" for _ in range(20)]
        self.sent: list[bytes] = []

    @task(20)
    def payment_callback(self) -> None:
        if self.sent and random.random() < 0.03:
            body = random.choice(self.sent)
        else:
            bu, category = random.choice(BUS)
            body = orjson.dumps(
                {
                    "event_id": f"load-{uuid.uuid4().hex}",
                    "type": "payment",
                    "occurred_at": "2026-11-23T12:00:00+08:00",
                    "member_id": random.choice(self.members),
                    "bu_id": bu,
                    "merchant_id": f"{bu}-shop-1",
                    "category": category,
                    "amount_fen": random.randint(100, 200_000),
                    "channel": "wechat",
                }
            )
            self.sent = [*self.sent[-50:], body]
        with self.client.post(
            "/v1/callbacks/payment",
            data=body,
            headers=signed_headers(SECRET, body),
            name="/v1/callbacks/payment",
            catch_response=True,
        ) as resp:
            if resp.status_code == 503 and resp.headers.get("Retry-After"):
                # Overload, refused at once as designed: its own line in the stats.
                resp.request_meta["name"] = "/v1/callbacks/payment (503 shed, retry later)"
                resp.success()
            elif resp.status_code != 202:
                resp.failure(f"{resp.status_code}: {resp.text[:200]}")

    @task(2)
    def member_balance(self) -> None:
        member = random.choice(self.members)
        with self.client.get(
            f"/v1/members/{member}", name="/v1/members/{id}", headers=member_headers(member), catch_response=True
        ) as resp:
            if resp.status_code in (200, 404):
                resp.success()


def _gateway_sims() -> tuple[WeChatPaySimulator, AlipaySimulator]:
    directory = os.environ.get("LOYALTY_GATEWAY_SIM_DIR")
    if not directory:
        raise RuntimeError("set LOYALTY_GATEWAY_SIM_DIR to the keys the worker trusts "
                           "(loyalty gateways simulator-keys DIR)")
    wx, ali, _ = simulators(Path(directory))
    return wx, ali


class WeChatPayNotifications(HttpUser):
    """WeChat Pay v3 TRANSACTION.SUCCESS and REFUND.SUCCESS notifications; 204 expected."""

    wait_time = between(0.0, 0.01)

    def on_start(self) -> None:
        self.wx, _ = _gateway_sims()
        self.payers = [f"oLoad{uuid.uuid4().hex[:23]}" for _ in range(20)]
        self.paid: list[tuple[str, int]] = []
        self.sent: list[bytes] = []

    def _post(self, body: bytes, name: str) -> None:
        with self.client.post("/v1/callbacks/wechatpay", data=body, headers=self.wx.headers(body), name=name,
                              catch_response=True) as resp:
            if resp.status_code not in (200, 204):
                resp.failure(f"{resp.status_code}: {resp.text[:200]}")

    @task(20)
    def payment(self) -> None:
        if self.sent and random.random() < 0.03:
            body = random.choice(self.sent)  # the gateway's retry, signed anew
        else:
            tx, total = f"42{uuid.uuid4().int % 10**30:030d}", random.randint(100, 200_000)
            body = self.wx.notification("TRANSACTION.SUCCESS",
                                        self.wx.transaction(tx, random.choice(self.payers), total))
            self.paid = [*self.paid[-50:], (tx, total)]
            self.sent = [*self.sent[-50:], body]
        self._post(body, "/v1/callbacks/wechatpay [payment]")

    @task(1)
    def refund(self) -> None:
        if not self.paid:
            return
        tx, total = self.paid.pop(random.randrange(len(self.paid)))
        body = self.wx.notification("REFUND.SUCCESS",
                                    self.wx.refund(f"50{uuid.uuid4().int % 10**30:030d}", tx, total, total))
        self._post(body, "/v1/callbacks/wechatpay [refund]")


class AlipayNotifications(HttpUser):
    """Alipay trade_status_sync notifications (form-encoded, RSA2); `success` expected."""

    wait_time = between(0.0, 0.01)

    def on_start(self) -> None:
        _, self.ali = _gateway_sims()
        self.buyers = [f"2088{random.randrange(10**12):012d}" for _ in range(20)]
        self.paid: list[dict[str, str]] = []

    def _post(self, params: dict[str, str], name: str) -> None:
        with self.client.post("/v1/callbacks/alipay", data=AlipaySimulator.body(self.ali.sign(params)),
                              headers={"Content-Type": "application/x-www-form-urlencoded"}, name=name,
                              catch_response=True) as resp:
            if resp.status_code != 200 or resp.text != "success":
                resp.failure(f"{resp.status_code}: {resp.text[:200]}")

    @task(20)
    def payment(self) -> None:
        if self.paid and random.random() < 0.03:
            trade = random.choice(self.paid)  # Alipay's retry
        else:
            yuan = f"{random.randint(1, 2_000)}.{random.randint(0, 99):02d}"
            trade = self.ali.trade(f"2026{uuid.uuid4().int % 10**24:024d}", random.choice(self.buyers), yuan)
            self.paid = [*self.paid[-50:], trade]
        self._post(trade, "/v1/callbacks/alipay [payment]")

    @task(1)
    def refund(self) -> None:
        if not self.paid:
            return
        trade = self.paid.pop(random.randrange(len(self.paid)))
        self._post(self.ali.refund(trade, f"RF-{uuid.uuid4().hex[:12]}", trade["total_amount"], closed=True),
                   "/v1/callbacks/alipay [refund]")


class MembersReadingAndRedeeming(HttpUser):
    """Members in the app: balance reads, and small redemptions (409 when short is an answer)."""

    wait_time = between(0.05, 0.2)

    def on_start(self) -> None:
        if not SECRET:
            raise RuntimeError("set LOYALTY_CALLBACK_SECRET to the worker's secret")
        self.members = [f"load-m-{random.randrange(100_000)}" for _ in range(20)]

    @task(5)
    def balance(self) -> None:
        member = random.choice(self.members)
        with self.client.get(f"/v1/members/{member}", name="/v1/members/{id}", headers=member_headers(member),
                             catch_response=True) as resp:
            if resp.status_code in (200, 404):
                resp.success()

    @task(1)
    def redeem(self) -> None:
        body = orjson.dumps({"member_id": random.choice(self.members), "kind": "cash_offset", "points": 100,
                             "bu_id": "sh-mall"})
        if not POS_KEY_ID:
            raise RuntimeError("set LOYALTY_POS_KEYS to the worker's, so the till can redeem")
        headers = {**signed_headers(POS_SECRET, body, key_id=POS_KEY_ID),
                   "Idempotency-Key": f"load-{uuid.uuid4().hex[:16]}"}
        with self.client.post("/v1/redemptions", data=body, headers=headers, name="/v1/redemptions",
                              catch_response=True) as resp:
            if resp.status_code in (201, 409, 404):
                resp.success()
            else:
                resp.failure(f"{resp.status_code}: {resp.text[:200]}")


if os.environ.get("LOYALTY_LOAD_SHAPE") == "peak":

    class PeakShape(LoadTestShape):
        """A mall day's peak: ramp up, steady, a 10x burst (an anniversary opening), back to
        normal. LOYALTY_LOAD_USERS (normal users, 20) and LOYALTY_LOAD_SECONDS (one stage, 20)."""

        users = int(os.environ.get("LOYALTY_LOAD_USERS", "20"))
        stage = int(os.environ.get("LOYALTY_LOAD_SECONDS", "20"))

        def tick(self) -> tuple[int, float] | None:
            t, n, s = self.get_run_time(), self.users, self.stage
            if t < s:
                return max(1, int(n * t / s)), n  # ramp
            if t < 2 * s:
                return n, n  # normal
            if t < 3 * s:
                return 10 * n, 10 * n  # the burst
            if t < 4 * s:
                return n, 10 * n  # back to normal
            return None
