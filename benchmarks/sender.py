"""The load generator of the latency benchmarks: pre-signed callbacks posted on a fixed
timetable over keep-alive connections, each request's send time noted (see
`send_on_timetable`)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass

from yarl import URL

POOL = 256


@dataclass
class Sent:
    """What the sender saw: per request, its wall-clock send time (ms) and the status it got
    (0: no answer, the error is counted under its exception name); and how late the sender
    was against its timetable at worst (ms)."""

    send_ms: list[float]
    status: list[int]
    errors: Counter[str]
    max_lag_ms: float
    elapsed_s: float


async def send_on_timetable(url: str, requests: list[tuple[bytes, dict[str, str]]], rate: int) -> Sent:
    """Posts pre-signed requests on a fixed timetable: request i at t0 + i / rate (never
    bunched to catch up beyond what the event loop's resolution makes unavoidable).

    A lean HTTP/1.1 client over keep-alive connections (the requests' bytes built before
    the clock starts; a response read to its Content-Length): an aiohttp client took about
    three quarters of a core at 2,000 requests/s on this machine, which the engine shares,
    so it would measure the generator rather than the engine."""
    n = len(requests)
    send_ms = [0.0] * n
    status = [0] * n
    errors: Counter[str] = Counter()
    lag = 0.0
    target = URL(url)
    wire = []
    for body, headers in requests:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        wire.append((f"POST {target.path} HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n{head}"
                     f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
    idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(POOL):
        idle.put_nowait(await asyncio.open_connection(target.host, target.port))

    async def one(i: int, due: float) -> None:
        nonlocal lag
        reader, writer = await idle.get()
        late = time.monotonic() - due
        if late > lag:
            lag = late
        send_ms[i] = time.time() * 1000
        try:
            writer.write(wire[i])
            head = await reader.readuntil(b"\r\n\r\n")
            status[i] = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            idle.put_nowait((reader, writer))
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            errors[type(exc).__name__] += 1
            writer.close()
            idle.put_nowait(await asyncio.open_connection(target.host, target.port))

    tasks = []
    t0 = time.monotonic() + 0.05
    for i in range(n):
        due = t0 + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - t0
    while not idle.empty():
        idle.get_nowait()[1].close()
    return Sent(send_ms, status, errors, lag * 1000, elapsed)


