"""Published rule versions: the source of truth for the rules every worker applies.

A compacted topic (`<prefix>.rules`, one partition) holds every version published (key
`v:<n>`) and the one in force (key `current`). A worker reads it whole at start, before it
applies anything, and follows it afterwards, so every worker (and one started later)
applies the same version. `LOYALTY_RULES` only seeds version 1 into an empty topic; after
that, rules change by publishing (the console, `POST /v1/admin/rules/publish`, or a reload
of the file, which publishes it when it differs) and go back by rolling back (a new version
with an older one's text).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from streams.settings import Settings

log = logging.getLogger(__name__)

CURRENT = b"current"


@dataclass(frozen=True)
class Published:
    """One published version: its number (1, 2, ...), the TOML text, the version string
    the text declares, who published it, when, why, and from where (file, console,
    rollback to N)."""

    number: int
    text: str
    rules_version: str
    by: str
    at_ms: int
    why: str
    source: str

    def summary(self) -> dict[str, object]:
        d = asdict(self)
        d.pop("text")
        return d

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes) -> Published:
        return cls(**orjson.loads(raw))


@dataclass
class History:
    current: Published | None
    versions: dict[int, Published]
    #: The offset the topic was read to (following it goes on from there).
    end: int = 0


async def _ensure_topic(settings: Settings) -> None:
    from streams.kafka_topics import engine_topics

    partitions, configs = engine_topics(settings)[settings.rules_topic]
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=15_000)
    await admin.start()
    try:
        if settings.rules_topic not in set(await admin.list_topics()):
            try:
                await admin.create_topics([NewTopic(settings.rules_topic, partitions,
                                                    settings.topic_replication_factor, topic_configs=configs)])
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()


async def read_history(settings: Settings, timeout_s: float = 30.0) -> History:
    """Every version published so far and the one in force, read from the beginning of the
    topic to its end."""
    await _ensure_topic(settings)
    tp = TopicPartition(settings.rules_topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                                group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    history = History(None, {})
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = history.end = (await consumer.end_offsets([tp]))[tp]
        deadline = time.monotonic() + timeout_s
        while await consumer.position(tp) < end:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{settings.rules_topic}: not read to its end ({end}) in {timeout_s:.0f} s")
            for records in (await consumer.getmany(tp, timeout_ms=500)).values():
                for r in records:
                    _take(history, r.key, r.value)
    finally:
        await consumer.stop()
    return history


def _take(history: History, key: bytes | None, value: bytes | None) -> None:
    if value is None or key is None:
        return
    entry = Published.from_json(value)
    if key == CURRENT:
        if history.current is None or entry.number >= history.current.number:
            history.current = entry
    else:
        history.versions[entry.number] = entry


async def publish(settings: Settings, entry: Published) -> None:
    """Writes the version and makes it the one in force (acks from every in-sync replica)."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        value = entry.to_json()
        await producer.send_and_wait(settings.rules_topic, key=f"v:{entry.number}".encode(), value=value, partition=0)
        await producer.send_and_wait(settings.rules_topic, key=CURRENT, value=value, partition=0)
    finally:
        await producer.stop()
    log.info("rules #%d published (%s) by %s: %s", entry.number, entry.rules_version, entry.by, entry.why)


async def follow(settings: Settings, start_offset: int, apply: Callable[[Published], Awaitable[None]]) -> None:
    """Applies every version made current after `start_offset`, forever (a Kafka error is
    logged and the read goes on from where it was)."""
    tp = TopicPartition(settings.rules_topic, 0)
    offset = start_offset
    while True:
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                                    group_id=None, auto_offset_reset="earliest")
        try:
            await consumer.start()
            consumer.assign([tp])
            consumer.seek(tp, offset)
            while True:
                for records in (await consumer.getmany(tp, timeout_ms=1000)).values():
                    for r in records:
                        offset = r.offset + 1
                        if r.key == CURRENT and r.value is not None:
                            await apply(Published.from_json(r.value))
        except asyncio.CancelledError:
            raise
        except (KafkaError, OSError) as exc:
            log.warning("following %s: %r; reading again from offset %d", settings.rules_topic, exc, offset)
            await asyncio.sleep(1.0)
        except Exception:  # a version this worker cannot apply must not stop it following
            log.exception("following %s: a version could not be applied; the next one will be", settings.rules_topic)
            await asyncio.sleep(1.0)
        finally:
            await consumer.stop()
