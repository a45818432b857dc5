"""Group commit at the ingress: callbacks that arrive while a produce is in flight share
one Kafka record (an envelope, docs/envelopes.md), and Redis look-ups of concurrent
callbacks (nonce claims, payer resolution) share one round trip.

Each envelope goes to the partition the producer's own partitioner gives its events'
key (aiokafka's default: murmur2 of the member key over the topic's partition count),
so one member's events stay in one partition and in arrival order. At most one envelope
is in flight per (topic, partition) in this process; what arrives meanwhile waits for
the next one. A callback is answered only after the envelope holding it is acked
(acks=all); if the produce fails, every callback in it is told so (503 + Retry-After).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

import core_ext
from streams.metrics import counters, histograms

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: How long a topic's partition count is trusted before it is asked again.
METADATA_TTL_S = 30.0


def partition_for(key: bytes, partitions: int, partitioner: Any = None) -> int:
    """The partition a keyed record lands on under the producer's partitioner."""
    all_partitions = list(range(partitions))
    return int((partitioner or _DEFAULT)(key, all_partitions, all_partitions))


_DEFAULT = DefaultPartitioner()


def unpack_records(records: Sequence[bytes]) -> list[bytes]:
    """The bodies of consumed records: an envelope's bodies in order, or the record
    itself (a plain single-event record, or a corrupt envelope handed on whole so that
    it is refused as a body that is not an event)."""
    out: list[bytes] = []
    for record in records:
        try:
            out.extend(core_ext.envelope_unpack(record))
        except core_ext.InvalidEventError:
            out.append(record)
    return out


def pack_by_partition(pairs: Sequence[tuple[bytes, bytes]], partitions: int, max_events: int,
                      max_bytes: int) -> list[tuple[int, bytes, bytes]]:
    """Keyed bodies packed, in their order, into envelopes per partition (the partition
    each key lands on under the producer's partitioner): (partition, key, record) with the
    key of the envelope's first body; a group of one stays a plain record."""
    lanes: dict[int, list[tuple[bytes, bytes]]] = {}
    for key, body in pairs:
        lanes.setdefault(partition_for(key, partitions), []).append((key, body))
    out: list[tuple[int, bytes, bytes]] = []
    for partition, lane in lanes.items():
        start, size = 0, 0
        for i, (_key, body) in enumerate(lane):
            if i > start and (i - start >= max_events or size + len(body) + 4 > max_bytes):
                out.append(_packed(partition, lane[start:i]))
                start, size = i, 0
            size += len(body) + 4
        out.append(_packed(partition, lane[start:]))
    return out


def _packed(partition: int, group: Sequence[tuple[bytes, bytes]]) -> tuple[int, bytes, bytes]:
    if len(group) == 1:
        return partition, group[0][0], group[0][1]
    return partition, group[0][0], core_ext.envelope_pack([b for _k, b in group])


class PartitionCounts:
    """Topics' partition counts from the producer's metadata, cached briefly."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._known: dict[str, tuple[int, float]] = {}

    async def __call__(self, topic: str) -> int:
        known = self._known.get(topic)
        if known is not None and time.monotonic() - known[1] < METADATA_TTL_S:
            return known[0]
        producer = self.app.producer._ensure_producer()  # Faust's aiokafka producer
        n = len(await producer.partitions_for(topic))
        self._known[topic] = (n, time.monotonic())
        return n


@dataclass
class _Lane:
    """The callbacks waiting for one (topic, partition): bodies and their futures."""

    waiting: list[tuple[bytes, bytes, asyncio.Future[bool]]] = field(default_factory=list)
    size: int = 0
    busy: bool = False
    #: The task draining the lane (kept referenced so it is not collected mid-flight).
    task: asyncio.Future[None] | None = None


class EnvelopeProducer:
    """Packs concurrent events of one partition into envelopes and waits for their acks."""

    def __init__(self, app: Any, linger_s: float, max_events: int, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.linger_s = linger_s
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self._lanes: dict[tuple[str, int], _Lane] = {}
        self.partitions = PartitionCounts(app)

    async def publish(self, topic: Any, key: bytes, body: bytes) -> bool:
        """Sends one event in the next envelope of its partition; True once Kafka has it."""
        name = topic.get_topic_name()
        partition = partition_for(key, await self.partitions(name))
        lane = self._lanes.setdefault((name, partition), _Lane())
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        lane.waiting.append((key, body, done))
        lane.size += len(body) + 4
        if not lane.busy:
            lane.busy = True
            lane.task = asyncio.ensure_future(self._drain(topic, partition, lane))
        return await done

    async def _drain(self, topic: Any, partition: int, lane: _Lane) -> None:
        try:
            if self.linger_s > 0:
                await asyncio.sleep(self.linger_s)
            while lane.waiting:
                taken, size = 0, 0
                for _key, body, _f in lane.waiting:
                    if taken and (taken >= self.max_events or size + len(body) > self.max_bytes):
                        break
                    taken += 1
                    size += len(body) + 4
                group, lane.waiting = lane.waiting[:taken], lane.waiting[taken:]
                lane.size -= size
                ok = await self._send(topic, partition, group)
                for _key, _body, f in group:
                    if not f.done():
                        f.set_result(ok)
        except BaseException as exc:  # never leave a callback waiting forever
            for _key, _body, f in lane.waiting:
                if not f.done():
                    f.set_result(False)
            lane.waiting, lane.size = [], 0
            if not isinstance(exc, Exception):
                raise
            log.exception("envelope producer failed")
        finally:
            lane.busy = False

    async def _send(self, topic: Any, partition: int, group: Sequence[tuple[bytes, bytes, Any]]) -> bool:
        key = group[0][0]
        value = group[0][1] if len(group) == 1 else core_ext.envelope_pack([b for _k, b, _f in group])
        try:
            fut = await topic.send(key=key, value=value, partition=partition, force=True)
            await asyncio.wait_for(asyncio.shield(fut), self.timeout_s)  # acks=all: the broker has it
        except (KafkaError, TimeoutError) as exc:
            counters["envelopes_failed_total"] += 1
            log.error("kafka did not take an envelope of %d events for %s[%d]: %r", len(group),
                      topic.get_topic_name(), partition, exc)
            return False
        counters["envelopes_sent_total"] += 1
        histograms["envelope_events"].observe(len(group))
        return True


class Coalescer(Generic[T, R]):
    """Calls that arrive while a round trip is in flight share the next one: `run_many`
    takes every waiting item and returns one result per item, in order."""

    def __init__(self, run_many: Callable[[list[T]], Awaitable[Sequence[R]]], max_items: int = 1000) -> None:
        self.run_many = run_many
        self.max_items = max_items
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._busy = False
        self._task: asyncio.Future[None] | None = None

    async def __call__(self, item: T) -> R:
        done: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, done))
        if not self._busy:
            self._busy = True
            self._task = asyncio.ensure_future(self._drain())
        return await done

    async def _drain(self) -> None:
        try:
            while self._waiting:
                group, self._waiting = self._waiting[: self.max_items], self._waiting[self.max_items:]
                try:
                    results = await self.run_many([item for item, _ in group])
                except BaseException as exc:
                    for _, f in group:
                        if not f.done():
                            f.set_exception(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, f), r in zip(group, results, strict=True):
                    if not f.done():
                        f.set_result(r)
        finally:
            self._busy = False
