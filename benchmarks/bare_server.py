"""The bare endpoint of the ingress capacity benchmark: one aiohttp process that reads a
callback's body and answers 202 with a small JSON body, doing nothing else. Its rate
under the same load generator is the ceiling the ingress is compared with.

Run: `python benchmarks/bare_server.py PORT`.
"""

from __future__ import annotations

import sys

from aiohttp import web


async def accept(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"status": "accepted"}, status=202)


def main() -> None:
    app = web.Application()
    app.router.add_post("/v1/callbacks/payment", accept)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
