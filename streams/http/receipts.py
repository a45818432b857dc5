"""Receipt points (小票积分, docs/points-mall.md): a member submits a receipt of a purchase
the payment system did not see (a photo of it uploaded first); the rules approve it at once
or leave it to a reviewer (customer service in the console), and an approved receipt earns
through the accrual path as a payment of channel `receipt` whose event id is the receipt's
id (derived from the merchant and the receipt number). One receipt number of a merchant
earns once, whoever submits it, and a receipt and a payment of the same purchase earn once.

POST /v1/receipts/images                  the image's bytes (signed POS; image/jpeg, png, webp
                                          or gif; ?filename= optional): 201 {"image"}
POST /v1/receipts                         {"member_id", "merchant_id", "receipt_no",
                                          "amount_fen", "purchased_at", "image"} (signed POS):
                                          201 approved or pending; 409 with the reason
GET  /v1/members/{member_id}/receipts     the member's receipts (pending and recent)
GET  /v1/admin/receipts                   ?status=pending|approved|rejected: the review queue
GET  /v1/admin/receipts/images/{image}    a receipt's image, for its reviewer
POST /v1/admin/receipts/{receipt_id}/{decision}   approve | reject: {"member_id", "reason"}
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from faust.web import Request, Response, View
from PIL import Image, UnidentifiedImageError

import core_ext
from streams.app import app, notifications_topic, runtime
from streams.http.common import (
    Refused,
    account_of,
    error_response,
    json_response,
    member_state_part,
    read_signed,
    web_request,
)
from streams.http.console import json_body, operator_of
from streams.http.engage import engage
from streams.inputs import is_valid_id
from streams.metrics import counters

log = logging.getLogger(__name__)

#: The formats taken, as Pillow names them, and the extension each is kept under.
FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif"}
DECISIONS = ("approve", "reject")
STATUSES = ("pending", "approved", "rejected")
#: A decoded image this large (pixels) is refused: a small file that expands to gigabytes.
MAX_PIXELS = 50_000_000


def recent_payments(member_id: str, days: int) -> Callable[[], Awaitable[dict[str, Any]]]:
    """The core's context for a receipt: the member's payments of the receipts' maximum age
    (and a day), from their event records, so a purchase a payment earned is not earned again."""
    async def context() -> dict[str, Any]:
        rt = await runtime.started()
        since = int(time.time() * 1000) - (days + 1) * 86_400_000
        return {"purchases": await rt.balances.payments_since(member_id, since)}
    return context


def image_dir() -> Path:
    return Path(runtime.settings.receipt_image_dir)


def image_of(data: bytes) -> str:
    """The extension of an image the bytes are (decoded and verified by Pillow), else
    Refused 400: the engine keeps only images it can read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                fmt = im.format or ""
                if fmt not in FORMATS:
                    raise Refused(400, f"image: {fmt or 'this'} is not taken (JPEG, PNG, WebP or GIF)", "image")
                if im.width * im.height > MAX_PIXELS:
                    raise Refused(400, f"image: {im.width}x{im.height} pixels is too large", "image")
                im.verify()
    except Refused:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as exc:
        raise Refused(400, f"image: not an image the engine can read ({type(exc).__name__})", "image") from None
    return FORMATS[fmt]


def check_filename(name: str) -> None:
    """A client's file name is only ever shown, never a path: no directories, no dot-dot."""
    if (not name or len(name) > 128 or "/" in name or "\\" in name or ".." in name or name.startswith(".")
            or any(ord(c) < 32 for c in name)):
        raise Refused(400, "filename: a plain file name (no path, no '..'), 1-128 characters", "filename")


async def read_image(request: Request) -> bytes:
    """The upload's bytes up to LOYALTY_RECEIPT_IMAGE_MAX_BYTES (never read past it)."""
    limit = runtime.settings.receipt_image_max_bytes
    ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if not ctype.startswith("image/"):
        raise Refused(400, f"Content-Type: an image (image/jpeg, image/png, image/webp, image/gif), got "
                      f"{ctype[:60]!r}", "image")
    if request.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity"):
        raise Refused(400, "Content-Encoding: send the image as is (identity)", "Content-Encoding")
    data = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):  # type: ignore[attr-defined]
        data += chunk
        if len(data) > limit:
            raise Refused(400, f"image: larger than {limit} bytes", "image")
    if not data:
        raise Refused(400, "image: the body is empty", "image")
    return bytes(data)


def keep_image(data: bytes, ext: str) -> str:
    """Writes the image under its SHA-256 (the same image kept once); its name."""
    name = f"{hashlib.sha256(data).hexdigest()}.{ext}"
    folder = image_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if not path.exists():
        tmp = folder / f".{name}.{time.monotonic_ns()}.tmp"
        tmp.write_bytes(data)
        tmp.replace(path)  # atomic: a reader never sees half an image
    return name


def image_path(name: str) -> Path:
    """The path of an uploaded image named as the upload answered, or Refused 400."""
    try:
        core_ext.check_image_name(name)
    except core_ext.InvalidEventError as exc:
        raise Refused(400, str(exc), "image") from None
    return image_dir() / name


@app.page("/v1/receipts/images")
class ReceiptImages(View):
    async def post(self, request: Request) -> Response:
        if "filename" in request.query:
            check_filename(request.query["filename"])
        data = await read_image(request)
        await read_signed(request, "pos", body=data, shown=f"<receipt image, {len(data)} bytes>".encode(),
                          strict=False)
        ext = image_of(data)
        name = await asyncio.to_thread(keep_image, data, ext)
        counters["receipt_images_total"] += 1
        log.info("receipt image %s kept (%d bytes)", name, len(data))
        return json_response(self, {"image": name, "bytes": len(data)}, 201)


@app.page("/v1/receipts")
class Receipts(View):
    async def post(self, request: Request) -> Response:
        body = await read_signed(request, "pos")
        req = orjson.loads(body) if body.strip() else None
        if not isinstance(req, dict):
            return error_response(self, 400, "body: a JSON object", "body")
        for name in ("member_id", "merchant_id", "receipt_no"):
            if not isinstance(req.get(name), str) or not is_valid_id(req[name]):
                return error_response(self, 400, f"{name}: letters, digits, _ - . : @ only, 1-64 chars", name)
        if not isinstance(req.get("image"), str):
            return error_response(self, 400, "image: the name the image upload answered", "image")
        if not await asyncio.to_thread(image_path(req["image"]).is_file):
            return error_response(self, 400, "image: no such upload (POST /v1/receipts/images first)", "image")
        member_id = await account_of(req["member_id"])
        rt = await runtime.started()
        receipts = rt.rules.receipts_max_age_days
        if receipts is None:
            return error_response(self, 409, "receipt points are not offered (the rules have no [receipts])",
                                  "receipt")
        receipt_id = core_ext.receipt_id(req["merchant_id"], req["receipt_no"])
        claimed, holder = await rt.balances.claim_receipt(receipt_id, member_id, (receipts + 30) * 86_400)
        if holder != member_id:
            counters["receipts_refused_total"] += 1
            return error_response(self, 409, f"receipt {req['receipt_no']} of {req['merchant_id']} was submitted "
                                  "already by another member", "receipt_no", receipt_id=receipt_id)
        op_body = orjson.dumps({**req, "member_id": member_id})

        async def then(answer: dict[str, Any]) -> None:
            counters["receipts_submitted_total"] += 1
            if answer.get("status") == "approved":
                counters["receipts_approved_total"] += 1
            log.info("receipt %s of %s at %s: %s", receipt_id, member_id, req["merchant_id"], answer.get("status"))
        try:
            answer = await engage(self, "receipt_submit", member_id, f"{receipt_id}:s", op_body, then=then,
                                  context=recent_payments(member_id, receipts))
        except BaseException:
            if claimed:  # refused (or failed): the number is free again
                await rt.balances.release_receipt(receipt_id, member_id)
            raise
        if claimed and answer.status >= 400:
            await rt.balances.release_receipt(receipt_id, member_id)
        return answer


@app.page("/v1/members/{member_id}/receipts")
class MemberReceipts(View):
    async def get(self, request: Request, member_id: str) -> Response:
        _account, held = await member_state_part(request, member_id, "receipts")
        rows = [{"receipt_id": k, **v} for k, v in held.items()]
        rows.sort(key=lambda r: r.get("submitted_at_ms", 0), reverse=True)
        return json_response(self, {"member_id": member_id, "receipts": rows})


@app.page("/v1/admin/receipts")
class ReviewQueue(View):
    async def get(self, request: Request) -> Response:
        operator_of(request)
        status = request.query.get("status", "pending")
        if status not in STATUSES:
            return error_response(self, 400, f"status: one of {', '.join(STATUSES)}", "status")
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            return error_response(self, 400, "limit: 1-1000", "limit")
        rt = await runtime.started()
        rows = await rt.ledger.query("receipts_by_status", {"status": status, "limit": limit})
        return json_response(self, {"status": status, "receipts": rows})


@app.page("/v1/admin/receipts/images/{image}")
class ReviewImage(View):
    async def get(self, request: Request, image: str) -> Response:
        operator_of(request)
        path = image_path(image)
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return error_response(self, 404, f"no image {image}", "image")
        ext = image.rsplit(".", 1)[1]
        return self.bytes(data, content_type=f"image/{'jpeg' if ext == 'jpg' else ext}",
                          headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"})


@app.page("/v1/admin/receipts/{receipt_id}/{decision}")
class ReviewDecision(View):
    async def post(self, request: Request, receipt_id: str, decision: str) -> Response:
        if decision not in DECISIONS:
            return error_response(self, 404, "decision: approve or reject", "decision")
        op = operator_of(request)
        body = await json_body(request)
        member_id, reason = body.get("member_id"), body.get("reason", "")
        if not isinstance(member_id, str) or not is_valid_id(member_id):
            return error_response(self, 400, "member_id: the member who submitted the receipt", "member_id")
        if not isinstance(reason, str):
            return error_response(self, 400, "reason: text", "reason")
        if not is_valid_id(receipt_id):
            return error_response(self, 400, "receipt_id: an id", "receipt_id")
        member_id = await account_of(member_id)
        review = orjson.dumps({"member_id": member_id, "receipt_id": receipt_id, "decision": decision,
                               "reason": reason, "reviewer": op.login})

        async def then(answer: dict[str, Any]) -> None:
            counters[f"receipts_{answer['status']}_total"] += 1
            web_request(request)["audit"] = {
                "action": f"receipt.{decision}", "member_id": member_id, "target": receipt_id,
                "before": {"status": "pending"},
                "after": {"status": answer["status"], "reason": answer.get("reason")}}
            if answer["status"] == "rejected":
                await notify_rejected(member_id, receipt_id, answer)
            log.info("receipt %s of %s %s by %s", receipt_id, member_id, answer["status"], op.login)
        rt = await runtime.started()
        days = rt.rules.receipts_max_age_days or 30
        return await engage(self, "receipt_review", member_id, f"{receipt_id}:d", review, then=then,
                            context=recent_payments(member_id, days))


async def notify_rejected(member_id: str, receipt_id: str, answer: dict[str, Any]) -> None:
    """The member is told a receipt was rejected, and why (a notice through the notifier,
    pushed once by its id)."""
    notice = {"kind": "receipt_rejected", "event_id": receipt_id, "member_id": member_id,
              "receipt": {k: answer.get(k) for k in ("receipt_id", "merchant_id", "receipt_no", "amount_fen",
                                                      "reason")}}
    fut = await notifications_topic.send(key=member_id.encode(), value=orjson.dumps(notice), force=True)
    await fut
