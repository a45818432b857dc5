"""The engine's topics created, and known to every broker, before a worker subscribes.

Faust declares its topics when its consumer starts and subscribes right after. On a Kafka
cluster a topic just created on the controller can be missing from the metadata another
broker answers with for a moment: the consumer group is then assigned without it ("Ignoring
missing topic"), and the worker would never consume it. So `loyalty worker` creates the
topics first (the same partitions, replication, min.insync.replicas and retention as
streams.app.Topics, an existing topic is left as it is) and waits until each broker of the
bootstrap list describes every one of them with a leader for every partition.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.protocol.metadata import MetadataRequest

from streams.settings import Settings

log = logging.getLogger(__name__)

#: How long each topic keeps its records (set when the engine creates it; docs/reliability.md):
#: the input topics long enough for an agent down over a long weekend to catch up; the ledger
#: topic twice that, so that what ClickHouse has not confirmed can be replayed into it (and
#: longer than the accrual's round outboxes live, 7 days); the dead letters for operators to
#: look at and replay.
RETENTION_DAYS = {"payments": 7, "member-events": 7, "parking": 7, "coupon-pushes": 7, "ledger": 14,
                  "dead-letter": 30}


def engine_topics(settings: Settings) -> dict[str, tuple[int, dict[str, str]]]:
    """Every topic a worker of these settings uses: name -> (partitions, configs)."""
    def configs(days: int | None) -> dict[str, str]:
        out = {"min.insync.replicas": str(settings.topic_min_insync_replicas)}
        if days is not None:
            out["retention.ms"] = str(days * 86_400_000)
        return out

    n = settings.partitions
    return {
        settings.payments_topic: (n, configs(RETENTION_DAYS["payments"])),
        settings.ledger_topic: (n, configs(RETENTION_DAYS["ledger"])),
        settings.member_events_topic: (n, configs(RETENTION_DAYS["member-events"])),
        settings.parking_topic: (n, configs(RETENTION_DAYS["parking"])),
        settings.notifications_topic: (n, configs(RETENTION_DAYS["coupon-pushes"])),
        settings.dead_letter_topic: (1, configs(RETENTION_DAYS["dead-letter"])),
        # Every published rule version (key v:<n>) and the one in force (key current): kept
        # for good by compaction, read whole by every worker at start (streams/rules_store.py).
        settings.rules_topic: (1, {**configs(None), "cleanup.policy": "compact"}),
        # Faust's own: the partition whose holder is the app's leader (timers run there).
        f"{settings.group_id}-__assignor-__leader": (1, configs(None)),
    }


async def ensure_topics(settings: Settings, timeout_s: float = 90.0) -> None:
    """Creates the engine's topics that do not exist, then waits until every broker of the
    bootstrap list knows them all with a leader per partition; raises TimeoutError after
    `timeout_s`."""
    wanted = engine_topics(settings)
    deadline = time.monotonic() + timeout_s
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=15_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(name, partitions, settings.topic_replication_factor, topic_configs=cfg)
               for name, (partitions, cfg) in wanted.items() if name not in existing]
        if new:
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass  # another worker of the deployment made them meanwhile
            log.info("created topics %s (replication %d, min.insync.replicas %d)", [t.name for t in new],
                     settings.topic_replication_factor, settings.topic_min_insync_replicas)
    finally:
        await admin.close()
    client = AIOKafkaClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=5_000)
    await client.bootstrap()
    try:
        for broker in client.cluster.brokers():
            while True:
                missing = await _missing_on(client, broker.nodeId, wanted)
                if missing is None:
                    log.warning("broker %s is not answering; the topics are checked on the others", broker.nodeId)
                    break
                if not missing:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"broker {broker.nodeId} does not know topics {sorted(missing)} "
                                       f"after {timeout_s:.0f} s")
                await asyncio.sleep(0.2)
    finally:
        await client.close()


async def _missing_on(client: AIOKafkaClient, node_id: int,
                      wanted: dict[str, tuple[int, dict[str, str]]]) -> set[str] | None:
    """The topics this broker's metadata lacks, or has without a leader or with fewer
    partitions; None if the broker does not answer (it is down: no consumer asks it)."""
    try:
        reply = (await client.send(node_id, MetadataRequest(list(wanted), allow_auto_topic_creation=False))).to_object()
    except (TimeoutError, KafkaError, OSError):
        return None
    ready = {t["topic"] for t in reply["topics"]
             if t["error_code"] == 0 and len(t["partitions"]) >= wanted[t["topic"]][0]
             and all(p["leader"] >= 0 for p in t["partitions"])}
    return set(wanted) - ready
