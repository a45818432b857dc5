"""The webhook receiver of the trigger benchmark, in a process of its own (so that it does
not share an interpreter with the load generator): verifies each push's signature like a
member-messaging service would, answers 204, and appends `arrival_ms<TAB>push_id<TAB>type
<TAB>event_id` per push to a file (flushed every 0.2 s).

Run: `python benchmarks/push_receiver.py PORT SECRET FILE`.
"""

from __future__ import annotations

import asyncio
import sys
import time

import orjson
from aiohttp import web

from streams.signing import SignatureError, verify


def main() -> None:
    port, secret, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    out = open(path, "a", buffering=1 << 16)

    async def push(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verify(secret, request.headers.get("X-Timestamp"), request.headers.get("X-Nonce"),
                   request.headers.get("X-Signature"), body, 300)
        except SignatureError:
            return web.Response(status=401)
        msg = orjson.loads(body)
        out.write(f"{time.time() * 1000:.1f}\t{request.headers.get('X-Push-Id', '')}\t{msg.get('type', '')}\t"
                  f"{msg.get('event_id', '')}\n")
        return web.Response(status=204)

    async def flusher(_app: web.Application) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(0.2)
                out.flush()
        _app["flusher"] = asyncio.ensure_future(loop())

    app = web.Application()
    app.router.add_post("/push", push)
    app.on_startup.append(flusher)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
