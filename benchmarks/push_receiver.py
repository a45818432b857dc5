"""The webhook receiver of the trigger benchmark, in a process of its own (so that it does
not share an interpreter with the load generator): verifies each push's signature like a
member-messaging service would, answers 204, and appends `arrival_ms<TAB>push_id<TAB>type
<TAB>event_id` per push to a file (flushed every 0.2 s).

A lean HTTP/1.1 server over keep-alive connections (an asyncio protocol that reads a
request's head and its Content-Length body and answers 204), as the benchmarks' sender is a
lean client: an aiohttp server spent 120-205 µs of CPU a push here, on the same 2 cores as
the engine it measures. A request it cannot read is answered 400 and its connection closed.

Run: `python benchmarks/push_receiver.py PORT SECRET FILE`.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import IO

import orjson

from streams.signing import SignatureError, verify

NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"
UNAUTHORIZED = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n"
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class Receiver(asyncio.Protocol):
    def __init__(self, secret: str, out: IO[str]) -> None:
        self.secret, self.out = secret, out
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            headers: dict[str, str] = {}
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                self.refuse()
                return
            if len(self.buffer) < end + 4 + length:
                return  # the rest of the body is on its way
            body = self.buffer[end + 4:end + 4 + length]
            self.buffer = self.buffer[end + 4 + length:]
            self.answer(headers, body)

    def answer(self, headers: dict[str, str], body: bytes) -> None:
        assert self.transport is not None
        try:
            verify(self.secret, headers.get("x-timestamp"), headers.get("x-nonce"), headers.get("x-signature"),
                   body, 300)
        except SignatureError:
            self.transport.write(UNAUTHORIZED)
            return
        msg = orjson.loads(body)
        self.out.write(f"{time.time() * 1000:.1f}\t{headers.get('x-push-id', '')}\t{msg.get('type', '')}\t"
                       f"{msg.get('event_id', '')}\n")
        self.transport.write(NO_CONTENT)

    def refuse(self) -> None:
        assert self.transport is not None
        self.transport.write(BAD_REQUEST)
        self.transport.close()


async def serve(port: int, secret: str, out: IO[str]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Receiver(secret, out), "127.0.0.1", port, backlog=1024)
    async with server:
        while True:
            await asyncio.sleep(0.2)
            out.flush()


def main() -> None:
    with open(sys.argv[3], "a", buffering=1 << 16) as out:
        asyncio.run(serve(int(sys.argv[1]), sys.argv[2], out))


if __name__ == "__main__":
    main()
