"""Receipt points (小票积分) over the real services: an image upload that is not an image, too
big or a path trick refused with 400; a receipt approved by the rules earns through the
accrual path; the same receipt again (same member: the stored answer; another member:
409); one left to review, approved or rejected (the member told why) by a reviewer; a
receipt and a payment callback of the same purchase earn once, whichever comes first; the
receipts' KPIs."""

from __future__ import annotations

import datetime as dt
import io
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from PIL import Image, ImageDraw

from devtools.workers import WebhookReceiver, WorkerProcess, redis_client
from tests.integration.test_engagement import now_iso
from tests.integration.test_mall import register

pytestmark = pytest.mark.integration

PUSH_SECRET = "receipt-push-secret"
AUTO, OTHER = "sh-mall-shop-02", "sh-mall-shop-01"  # food (auto-approved), fashion (reviewed)
MAX_IMAGE = 20_000


def png(seed: int, size: tuple[int, int] = (32, 24), lines: tuple[str, ...] = ()) -> bytes:
    """A small PNG (distinct per seed); with `lines`, a white slip printed like a receipt."""
    out = io.BytesIO()
    im = Image.new("RGB", size, "white" if lines else (seed % 256, (seed * 7) % 256, 90))
    draw = ImageDraw.Draw(im)
    for i, text in enumerate(lines):
        draw.text((14, 16 + 22 * i), text, fill="black")
    im.save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def rw(services: None, receiver: WebhookReceiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    from tests.integration.conftest import new_worker

    tmp = tmp_path_factory.mktemp("receipts")
    # The demo rules' [receipts]: the food court's (AUTO) receipts up to 500 yuan, within 3
    # days, 5 a member a day, are approved at once.
    w = new_worker(tmp, "receipts", LOYALTY_RECEIPT_IMAGE_DIR=str(tmp / "images"),
                   LOYALTY_RECEIPT_IMAGE_MAX_BYTES=str(MAX_IMAGE), LOYALTY_PUSH_WEBHOOK_URL=receiver.url,
                   LOYALTY_PUSH_SECRET=PUSH_SECRET, LOYALTY_PUSH_BACKOFF="0.05")
    w.start()
    yield w
    w.stop()
    w.cleanup()


def upload(w: WorkerProcess, data: bytes, ctype: str = "image/png", filename: str | None = None) -> tuple[int, Any]:
    path = "/v1/receipts/images" + (f"?filename={filename}" if filename is not None else "")
    return w.post(path, data, w.pos_headers(data, **{"Content-Type": ctype}))


def submit(w: WorkerProcess, member: str, merchant: str, no: str, amount: int, image: str,
           at: str | None = None) -> tuple[int, Any]:
    body = orjson.dumps({"member_id": member, "merchant_id": merchant, "receipt_no": no, "amount_fen": amount,
                         "purchased_at": at or now_iso(), "image": image})
    return w.post("/v1/receipts", body, w.pos_headers(body, **{"Content-Type": "application/json"}))


def admin_post(w: WorkerProcess, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    data = orjson.dumps(body)
    return w.post(path, data, {"Authorization": f"Bearer {w.admin_token}", "Content-Type": "application/json"})


def balance(w: WorkerProcess, member: str) -> int:
    return int(w.get(f"/v1/members/{member}")[1]["balance"])


def ledger(w: WorkerProcess, member: str) -> list[dict[str, Any]]:
    return list(w.get(f"/v1/members/{member}/ledger")[1]["rows"])


def pay(w: WorkerProcess, member: str, merchant: str, amount: int, category: str) -> str:
    ev = {"event_id": f"p-{uuid.uuid4().hex[:12]}", "type": "payment", "occurred_at": now_iso(), "member_id": member,
          "bu_id": "sh-mall", "merchant_id": merchant, "category": category, "amount_fen": amount, "channel": "wechat"}
    assert w.send_callback(ev)[0] == 202
    return str(ev["event_id"])


def test_an_image_that_is_not_an_image_too_big_or_a_path_trick_is_refused_with_400(rw: WorkerProcess) -> None:
    status, body = upload(rw, b"GIF89a but not really an image at all")
    assert status == 400 and body["field"] == "image" and "not an image" in body["error"], body
    status, body = upload(rw, b"%PDF-1.4 a document", "application/pdf")
    assert status == 400 and body["field"] == "image", body
    big = png(1, (400, 400)) + b"\0" * MAX_IMAGE
    status, body = upload(rw, big)
    assert status == 400 and "larger than" in body["error"], body
    status, body = upload(rw, png(2), filename="../../etc/passwd")
    assert status == 400 and body["field"] == "filename", body
    status, kept = upload(rw, png(3), filename="receipt.png")
    assert status == 201 and kept["image"].endswith(".png") and len(kept["image"]) == 68, kept
    assert upload(rw, png(3))[1]["image"] == kept["image"], "the same image kept once, by its hash"
    for bad in ("../../etc/passwd", "/etc/passwd", kept["image"].replace(".png", ".exe"), "a" * 64 + ".png"):
        status, body = submit(rw, "m-x", AUTO, f"R-{uuid.uuid4().hex[:6]}", 100, bad)
        assert status == 400 and body["field"] == "image", (bad, body)
    # A signature made for other bytes is refused before anything is kept.
    data = png(4)
    status, _ = rw.post("/v1/receipts/images", data, rw.pos_headers(png(5), **{"Content-Type": "image/png"}))
    assert status == 401


def test_auto_approval_earns_through_the_accrual_path_and_a_receipt_earns_for_one_member_once(
        rw: WorkerProcess) -> None:
    a, b = f"ra-{uuid.uuid4().hex[:8]}", f"rb-{uuid.uuid4().hex[:8]}"
    register(rw, [a, b])
    start = balance(rw, a)  # a registration bonus, if the rules give one
    image = upload(rw, png(10))[1]["image"]
    no = f"T{uuid.uuid4().hex[:10]}"
    status, got = submit(rw, a, AUTO, no, 12_000, image)
    assert status == 201 and got["status"] == "approved" and got["receipt_id"].startswith("rc-"), got
    rw.wait_caught_up()
    rows = [r for r in ledger(rw, a) if r["event_id"] == got["receipt_id"]]
    assert [(r["kind"], r["channel"], r["amount_fen"]) for r in rows] == [("earn", "receipt", 12_000)], rows
    assert balance(rw, a) - start == rows[0]["points"] > 0
    assert submit(rw, a, AUTO, no, 12_000, image) == (200, got), "the same member again: the stored answer"
    status, body = submit(rw, b, AUTO, no, 12_000, image)
    assert status == 409 and body["field"] == "receipt_no" and "another member" in body["error"], body
    # Redis lost the claim: `loyalty rebuild` claims the number again from the receipts table.
    r = redis_client(rw.redis_url)
    key = f"{rw.run_id}:receipt:{got['receipt_id']}"
    assert r.get(key) == a.encode()
    r.delete(key)
    rw.wait_caught_up()
    status, page = admin_post(rw, "/v1/admin/rebuild", {"offset": 0, "limit": 1000})
    assert status == 200 and page["receipt_claims"] >= 1, page
    assert r.get(key) == a.encode() and r.ttl(key) > 59 * 86_400
    assert submit(rw, b, AUTO, no, 12_000, image)[0] == 409
    receipts = rw.get(f"/v1/members/{a}/receipts", token=rw.member_token(a))[1]["receipts"]
    assert [(r["receipt_id"], r["status"]) for r in receipts] == [(got["receipt_id"], "approved")]
    assert rw.get(f"/v1/members/{a}/receipts", token=rw.member_token(b))[0] == 403
    # Too old a purchase is refused, and its number stays free for the member it belongs to.
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(days=40)).isoformat()
    status, body = submit(rw, b, AUTO, "OLD-1", 500, image, at=old)
    assert status == 409 and body["field"] == "purchased_at", body
    assert submit(rw, a, AUTO, "OLD-1", 500, image, at=old)[1]["field"] == "purchased_at", "not claimed by b"


def test_a_reviewer_approves_one_and_rejects_another_and_the_member_is_told(
        rw: WorkerProcess, receiver: WebhookReceiver) -> None:
    m = f"rr-{uuid.uuid4().hex[:8]}"
    register(rw, [m])
    start = balance(rw, m)
    image = upload(rw, png(20))[1]["image"]
    s1, first = submit(rw, m, OTHER, f"V{uuid.uuid4().hex[:8]}", 30_000, image)
    s2, second = submit(rw, m, AUTO, f"V{uuid.uuid4().hex[:8]}", 90_000, image)  # over the auto limit
    assert (s1, first["status"], first["review"]) == (201, "pending", "merchant"), first
    assert (s2, second["status"], second["review"]) == (201, "pending", "amount"), second
    rw.wait_caught_up()
    rw.wait_until(lambda: {first["receipt_id"], second["receipt_id"]} <= {
        r["receipt_id"] for r in rw.get("/v1/admin/receipts?status=pending")[1]["receipts"]}, 60, "the review queue")
    queue = {r["receipt_id"]: r for r in rw.get("/v1/admin/receipts?status=pending")[1]["receipts"]}
    assert queue[first["receipt_id"]]["image"] == image and queue[first["receipt_id"]]["member"] == m
    req = urllib.request.Request(f"{rw.base_url}/v1/admin/receipts/images/{image}",
                                 headers={"Authorization": f"Bearer {rw.admin_token}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert (r.headers["Content-Type"], r.read()) == ("image/png", png(20)), "the reviewer sees the very image"
    assert balance(rw, m) == start, "nothing earned while pending"
    base = f"/v1/admin/receipts/{first['receipt_id']}"
    status, body = admin_post(rw, f"{base}/reject", {"member_id": m})
    assert status == 400 and body["field"] == "reason", body
    status, approved = admin_post(rw, f"{base}/approve", {"member_id": m})
    assert status == 201 and approved["status"] == "approved", approved
    assert admin_post(rw, f"{base}/reject", {"member_id": m, "reason": "late"})[0] in (200, 409)
    status, rejected = admin_post(rw, f"/v1/admin/receipts/{second['receipt_id']}/reject",
                                  {"member_id": m, "reason": "the photo is blurred"})
    assert status == 201 and rejected["status"] == "rejected" and rejected["reason"] == "the photo is blurred"
    rw.wait_caught_up()
    earned = [r for r in ledger(rw, m) if r["channel"] == "receipt" and r["kind"] == "earn"]
    assert [r["event_id"] for r in earned] == [first["receipt_id"]]
    assert balance(rw, m) - start == earned[0]["points"] > 0
    rw.wait_until(lambda: any(b.get("kind") == "receipt_rejected" and b.get("member_id") == m
                              for _, b, _ in receiver.received), 60, "the rejection notice")
    notice = next(b for _, b, _ in receiver.received if b.get("kind") == "receipt_rejected" and b.get("member_id") == m)
    assert notice["receipt"]["reason"] == "the photo is blurred"
    audit = rw.get(f"/v1/admin/audit?member={m}")[1]
    assert {"receipt.approve", "receipt.reject"} <= {r["action"] for r in audit["rows"]}, audit


def test_a_receipt_and_a_callback_of_one_purchase_earn_once_whichever_comes_first(rw: WorkerProcess) -> None:
    m = f"rc-{uuid.uuid4().hex[:8]}"
    register(rw, [m])
    image = upload(rw, png(30))[1]["image"]
    # The callback first: the receipt of the same merchant, amount and day is refused.
    paid = pay(rw, m, AUTO, 8_800, "food")
    rw.wait_caught_up()
    status, body = submit(rw, m, AUTO, f"D{uuid.uuid4().hex[:8]}", 8_800, image)
    assert status == 409 and body["field"] == "receipt_no" and paid in body["error"], body
    # The receipt first: it earns; the callback after it is applied and earns nothing.
    status, got = submit(rw, m, AUTO, f"D{uuid.uuid4().hex[:8]}", 6_600, image)
    assert status == 201 and got["status"] == "approved"
    rw.wait_caught_up()
    before = balance(rw, m)
    late = pay(rw, m, AUTO, 6_600, "food")
    rw.wait_caught_up()
    assert balance(rw, m) == before
    row = next(r for r in ledger(rw, m) if r["event_id"] == late)
    assert row["points"] == 0 and {"rule": "earned_already", "id": got["receipt_id"], "points": 0} in row["explain"]
    rec = rw.get("/v1/admin/reconcile?kinds=1")[1]
    assert rec["clean"], rec


def test_customer_service_reviews_a_receipt_in_the_browser(rw: WorkerProcess, receiver: WebhookReceiver) -> None:
    """The console's Receipts tab: customer service sees the queue, opens the photo and
    rejects with a reason (typed in the prompt); a BU operator has no such tab or right."""
    from playwright.sync_api import sync_playwright

    from tests.integration.test_console import SHOTS, Console, add_operator, launch, signed_in

    add_operator(rw, "cs-rc", "customer_service")
    add_operator(rw, "bu-rc", "bu_operator", bu="sh-mall")
    m = f"rw-{uuid.uuid4().hex[:8]}"
    register(rw, [m])
    no = f"W{uuid.uuid4().hex[:8]}"
    slip = ("SH MALL - SHOP 01 (fashion)", f"Receipt no. {no}", "2026-11-30 18:42", "-" * 30, "Scarf         1 x 45.60",
            "-" * 30, "TOTAL            45.60", "Paid: cash", "", "Thank you!")
    image = upload(rw, png(40, (240, 320), slip))[1]["image"]
    status, got = submit(rw, m, OTHER, no, 45_600, image)
    assert status == 201 and got["status"] == "pending"
    rw.wait_caught_up()
    with sync_playwright() as p:
        browser = launch(p)
        page = signed_in(browser, rw, "cs-rc", "customer_service")
        page.click("#nav button[data-tab='receipts']")
        row = f"#receipts tbody tr:has-text('{no}')"
        page.wait_for_selector(row)
        assert "456.00" in page.inner_text(row)
        page.click(f"{row} button.view")
        page.wait_for_selector("#receipt-photo-card:not(.hidden)")
        page.wait_for_selector("#receipt-photo[data-loaded='240']")  # the very photo, 240 px wide
        page.on("dialog", lambda d: d.accept("the amount on the photo is 45.60"))
        page.screenshot(path=str(SHOTS / "console-receipts.png"), full_page=True)
        page.click(f"{row} button.reject")
        page.wait_for_selector("#receipts-status:text('rejected'), #receipts-status.error")
        assert "rejected (the amount on the photo is 45.60)" in page.inner_text("#receipts-status")
        bu = signed_in(browser, rw, "bu-rc", "bu_operator")
        assert bu.is_hidden("#nav button[data-tab='receipts']")
        browser.close()
    mine = rw.get(f"/v1/members/{m}/receipts")[1]["receipts"]
    assert [(r["status"], r["reason"]) for r in mine] == [("rejected", "the amount on the photo is 45.60")]
    bu_op = Console(rw)
    assert bu_op.login("bu-rc")[0] == 200
    assert bu_op.call("GET", "/v1/admin/receipts")[0] == 403


def test_the_receipts_kpis_count_what_happened(rw: WorkerProcess) -> None:
    rw.wait_caught_up()
    today = dt.date.today()
    q = f"?from={today - dt.timedelta(days=1)}&to={today + dt.timedelta(days=1)}&kpi=receipts"
    status, body = rw.get(f"/v1/admin/kpis{q}")
    assert status == 200, body
    k = body["kpis"]["receipts"][0]
    # The tests above in this module: 2 approved at once (the refused ones are not
    # receipts), 1 approved and 2 rejected by a reviewer.
    assert (k["submitted"], k["approved"], k["rejected"], k["pending"]) == (5, 3, 2, 0), k
    assert k["approved_auto"] == 2 and k["points_earned"] > 0 and k["avg_review_s"] >= 0, k
