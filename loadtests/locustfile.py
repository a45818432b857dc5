"""Locust load on the HTTP service: signed payment callbacks and member balance reads.

Headless, against a running worker (e.g. `loyalty worker`, with the same secret):

    LOYALTY_CALLBACK_SECRET=... .venv/bin/locust -f loadtests/locustfile.py --headless \\
        -H http://127.0.0.1:6066 -u 50 -r 50 -t 30s --only-summary

Every callback has a fresh event id; 3% are resent (a gateway retry) and must be
answered 202 without a second effect.
"""

from __future__ import annotations

import os
import random
import uuid

import orjson
from locust import HttpUser, between, task

from streams.signing import signed_headers

SECRET = os.environ.get("LOYALTY_CALLBACK_SECRET", "")
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
            if resp.status_code != 202:
                resp.failure(f"{resp.status_code}: {resp.text[:200]}")

    @task(2)
    def member_balance(self) -> None:
        with self.client.get(
            f"/v1/members/{random.choice(self.members)}", name="/v1/members/{id}", catch_response=True
        ) as resp:
            if resp.status_code in (200, 404):
                resp.success()
