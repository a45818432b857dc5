"""The Faust app, its topics, and the runtime (rules, Redis, ClickHouse) its agents share.

`create_app(settings)` builds them (the app, its topics, the runtime, the timers and the
start-up task) from one Settings object without reading the environment; importing this
module builds the worker's own from the environment (`loyalty`, with the names `app`,
`runtime`, `settings` and the topics that the agents and views decorate and use), and
`loyalty worker` imports the agents and the web views and runs it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import faust
import orjson
import redis.exceptions
from aiohttp.web import BaseSite, TCPSite
from aiokafka.errors import KafkaError
from faust.web import drivers as web_drivers
from faust.web.drivers.aiohttp import Web as AiohttpWeb

import core_ext
from streams.auth import mask_phone_bytes, mask_phones, parse_pos_keys, pseudonymise_body, redact_url
from streams.errors import TransientError
from streams.gateways import load_rsa_public_key
from streams.gateways.circle import MerchantSigner
from streams.gateways.mapping import GatewayConfig
from streams.gateways.mapping import load_config as load_gateway_config
from streams.gateways.wechatpay import WeChatPayKeys
from streams.kafka_topics import RETENTION_DAYS
from streams.messages import dead_letter_record, ledger_messages, readable_event_id
from streams.retry import retrying
from streams.rules_store import Published, follow, publish, read_history
from streams.settings import Settings
from streams.sinks.ledger import LedgerStore
from streams.state import BalanceStore

if TYPE_CHECKING:
    from faust.transport.consumer import Consumer

log = logging.getLogger(__name__)

# Failures that pass: an event that met one is retried, never dead-lettered. OSError stays
# whole: aiokafka and redis-py raise plain OSErrors (ECONNRESET, EPIPE...) for a service
# going away, which must not dead-letter the events in flight.
TRANSIENT = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, KafkaError, OSError,
             asyncio.TimeoutError, TransientError)

class ReusePortWeb(AiohttpWeb):
    """Faust's aiohttp web server with SO_REUSEPORT: several processes on one port, the
    kernel spreading connections over them."""

    def _new_transport_tcp(self) -> BaseSite:
        return TCPSite(self._runner, self.app.conf.web_bind, self.app.conf.web_port,
                       ssl_context=self.app.conf.web_ssl_context, reuse_port=True)


web_drivers.DRIVERS.aliases["reuseport"] = "streams.app:ReusePortWeb"


def build_faust_app(settings: Settings) -> faust.App:
    settings.faust_dir.parent.mkdir(parents=True, exist_ok=True)
    return faust.App(
        settings.group_id,
        web="reuseport://" if settings.web_reuse_port else "aiohttp://",
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        # Faust's own table directory, out of the working tree (default: ./<app id>-data).
        datadir=str(settings.faust_dir),
        autodiscover=False,
        key_serializer="raw",
        value_serializer="raw",
        producer_acks=-1,
        # Ledger messages are JSON rows (~1 KB an event): zstd shrinks what the producer
        # checksums and the broker stores several times over, for little CPU.
        producer_compression_type=settings.kafka_compression or None,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.topic_replication_factor,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        # A worker that died (SIGKILL, OOM) leaves the group after this long, so its
        # replacement gets the partitions within seconds, not a minute.
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(1.0, settings.session_timeout_s / 4),
        web_enabled=True,
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
    )


@dataclass(frozen=True)
class Topics:
    """The topics of one app, as `loyalty worker` creates them before Faust starts
    (streams/kafka_topics.py: created and known to every broker before the consumers
    subscribe); internal=True lets Faust create any that is still missing."""

    payments: faust.TopicT
    ledger: faust.TopicT
    member_events: faust.TopicT
    parking: faust.TopicT
    notifications: faust.TopicT
    dead_letter: faust.TopicT

    @classmethod
    def declare(cls, app: faust.App, settings: Settings) -> Topics:
        def topic(name: str, partitions: int, days: int) -> faust.TopicT:
            return app.topic(name, internal=True, partitions=partitions, key_serializer="raw",
                             value_serializer="raw", retention=days * 86_400.0,
                             replicas=settings.topic_replication_factor,
                             config={"min.insync.replicas": str(settings.topic_min_insync_replicas)})

        n = settings.partitions
        return cls(payments=topic(settings.payments_topic, n, RETENTION_DAYS["payments"]),
                   ledger=topic(settings.ledger_topic, n, RETENTION_DAYS["ledger"]),
                   member_events=topic(settings.member_events_topic, n, RETENTION_DAYS["member-events"]),
                   parking=topic(settings.parking_topic, n, RETENTION_DAYS["parking"]),
                   notifications=topic(settings.notifications_topic, n, RETENTION_DAYS["coupon-pushes"]),
                   dead_letter=topic(settings.dead_letter_topic, 1, RETENTION_DAYS["dead-letter"]))

    def all(self) -> tuple[faust.TopicT, ...]:
        return (self.dead_letter, self.notifications, self.payments, self.member_events, self.parking, self.ledger)



def load_rules(path: Path) -> core_ext.RuleSet:
    return core_ext.RuleSet.from_toml(path.read_text(encoding="utf-8"), str(path))


def load_gateways(settings: Settings, rules: core_ext.RuleSet) -> GatewayConfig:
    return load_gateway_config(settings.gateways_path, {bu for bu, _ in rules.business_units}, lenient=True)


class Runtime:
    """What agents and views share in one worker: rules, balances and the ledger.

    Started once, on first use, so that a view answering before the agents are up
    and an agent starting before the web server both find it ready.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rules: core_ext.RuleSet = load_rules(settings.rules_path)
        self.gateways = load_gateways(settings, self.rules)
        self.wechatpay_keys = WeChatPayKeys.from_settings(settings.wechatpay_apiv3_key.get_secret_value(),
                                                          settings.wechatpay_platform_keys)
        #: The mall's merchant identity that signs the business circle's calls (None: no circle).
        self.circle_signer = MerchantSigner.from_settings(settings.wechatpay_mchid, settings.wechatpay_merchant_key,
                                                          settings.wechatpay_merchant_serial,
                                                          settings.wechatpay_api_base)
        self.alipay_key = (load_rsa_public_key(Path(settings.alipay_public_key).read_bytes(), "Alipay public key")
                           if settings.alipay_public_key else None)
        self.pos_keys = parse_pos_keys(settings.pos_keys.get_secret_value())
        self.balances = BalanceStore(settings.redis_url, settings.redis_namespace, settings.refund_horizon_days,
                                     settings.history_length, settings.redis_members_per_call,
                                     settings.redis_wait_replicas, settings.redis_wait_ms)
        self.ledger = LedgerStore(settings.clickhouse_dsn, settings.faults_dir)
        #: The published version in force (streams/rules_store.py), once read at start.
        self.rules_published: Published | None = None
        self.rules_offset = 0
        self._started = False
        self._lock = asyncio.Lock()

    async def started(self) -> Runtime:
        if self._started:
            return self
        async with self._lock:
            if not self._started:
                await self.balances.setup()
                applied = await self.ledger.setup() if self.settings.holds_ledger else ["(held by the ledger worker)"]
                async for attempt in retrying("reading the published rules", (KafkaError, OSError), initial_s=0.5,
                                              max_s=5.0, attempts=30):
                    with attempt:
                        await self.sync_rules()
                log.info(
                    "runtime ready: roles %s, rules %s, redis %s, clickhouse %s, migrations applied %s",
                    ",".join(sorted(self.settings.roles)),
                    self.rules.version,
                    redact_url(self.settings.redis_url),
                    redact_url(self.settings.clickhouse_dsn),
                    applied or "none",
                )
                self._started = True
        return self

    async def sync_rules(self) -> None:
        """At start, before anything is applied: the version in force from the rules topic;
        an empty topic gets LOYALTY_RULES as version 1 (its only use once published)."""
        history = await read_history(self.settings)
        current = history.current
        # Following goes on from where this read ended (a seed of ours is read back there).
        self.rules_offset = history.end
        if current is None:
            path = self.settings.rules_path
            current = Published(1, path.read_text(encoding="utf-8"), self.rules.version, "loyalty worker",
                                int(time.time() * 1000), f"seeded from {path}", "file")
            await publish(self.settings, current)
        self.apply_published(current)

    def apply_published(self, entry: Published) -> bool:
        """Makes a published version the one this worker applies (a newer one only); the
        old set stays if the text does not compile here (logged)."""
        if self.rules_published is not None and entry.number <= self.rules_published.number:
            return False
        try:
            rules = core_ext.RuleSet.from_toml(entry.text, f"rules #{entry.number}")
            gateways = load_gateways(self.settings, rules)
        except (core_ext.RulesError, ValueError) as exc:
            log.error("rules #%d (%s) cannot be applied here, keeping #%s: %s", entry.number, entry.rules_version,
                      self.rules_published.number if self.rules_published else "file", exc)
            return False
        self.rules, self.gateways, self.rules_published = rules, gateways, entry
        log.info("rules #%d in force: version %s (%s by %s: %s)", entry.number, rules.version, entry.source,
                 entry.by, entry.why)
        return True

    async def publish_rules(self, text: str, by: str, why: str, source: str, path: str = "console.toml") -> Published:
        """Checks `text` (RulesError with file, line and field; GatewayConfigError), publishes
        it as the next version for every worker and applies it here at once. One publish at a
        time in the group (a Redis lock)."""
        candidate = core_ext.RuleSet.from_toml(text, path)
        load_gateways(self.settings, candidate)
        async with self.balances.rules_lock():
            history = await read_history(self.settings)
            number = max([0, *history.versions, history.current.number if history.current else 0]) + 1
            entry = Published(number, text, candidate.version, by, int(time.time() * 1000), why, source)
            await publish(self.settings, entry)
        self.apply_published(entry)
        return entry

    async def reload_rules(self, by: str) -> core_ext.RuleSet:
        """The rules file published as a new version when it differs from the one in force
        (every worker follows); the old set stays if the file is invalid."""
        text = self.settings.rules_path.read_text(encoding="utf-8")
        if self.rules_published is None or text != self.rules_published.text:
            await self.publish_rules(text, by, f"reloaded from {self.settings.rules_path}", "file",
                                     str(self.settings.rules_path))
        else:  # the same rules: the gateways file may have changed
            self.gateways = load_gateways(self.settings, self.rules)
        return self.rules


def outage_tolerant(fn: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """For timers: an exception in a Faust timer crashes the whole worker, so a round that
    meets a Redis or Kafka outage is skipped (logged) and the next round tries again."""
    @functools.wraps(fn)
    async def guarded() -> None:
        try:
            await fn()
        except TRANSIENT as exc:
            log.warning("%s skipped this round: a backing service is unavailable (%r)", fn.__name__, exc)

    return guarded


@dataclass(frozen=True)
class LoyaltyApp:
    """One app: the Faust app, its topics and its runtime, built from one Settings object."""

    settings: Settings
    app: faust.App
    topics: Topics
    runtime: Runtime

    async def send_dead_letter(self, *, source: str, reason: str, body: bytes, field: str | None = None,
                               event_id: str | None = None) -> None:
        """Copies a rejected body to the dead-letter topic and waits for Kafka's ack."""
        from streams.metrics import counters

        if event_id is None:
            event_id = readable_event_id(body)
        # No phone number leaves the ingress in clear, rejected bodies included.
        pii_key = self.settings.pii_key.get_secret_value()
        body = pseudonymise_body(body, pii_key) if pii_key else body
        body, reason = mask_phone_bytes(body), mask_phones(reason)
        record = dead_letter_record(source=source, reason=reason, body=body, field=field, event_id=event_id)
        fut = await self.topics.dead_letter.send(key=event_id.encode() if event_id else None, value=record,
                                                 force=True)
        await fut
        counters["events_dead_lettered_total"] += 1
        log.warning("dead-lettered (%s) event %s: %s", source, event_id or "-", reason)

    async def record_binding(self, kind: str, key: str, member_id: str, value: str = "") -> None:
        """Makes a binding Redis has durable: a `bindings` row (sql/013_member_states.sql)
        through the ledger topic, which `loyalty rebuild` restores. `key` is the Redis key
        after the namespace (`id:wechat:o-1`, `plate:沪A12345`, `ref-phone:<pseudonym>`).
        Idempotent: a retry sends the same binding again and the newest row per key wins."""
        await self.record_facts([{"table": "bindings", "key": key, "kind": kind, "member_id": member_id,
                                  "value": value}])

    async def record_facts(self, rows: list[dict[str, object]]) -> None:
        """Durable facts (rows of the tables the ledger sink writes, `table` naming each)
        through the ledger topic, stamped now; returns once Kafka has them."""
        if not rows:
            return
        now = int(time.time() * 1000)
        payload = orjson.dumps({"ledger": [{**r, "processed_at_ms": now} for r in rows], "guests": []})
        fut = await self.topics.ledger.send(value=payload, force=True)
        await fut

    async def send_scheduled(self, key: str, kind: str) -> int:
        """Due entries of a schedule become member events (applied in order with the
        member's other events, Kafka key = member id); returns how many were sent."""
        import orjson

        rt = await self.runtime.started()
        now_ms = int(time.time() * 1000)
        sent = 0
        for member_id, due_ms in await rt.balances.due(key, now_ms):
            event = {
                "event_id": f"{kind}-{member_id}-{due_ms}", "type": kind, "member_id": member_id,
                "occurred_at": dt.datetime.fromtimestamp(now_ms / 1000, dt.UTC).isoformat(timespec="milliseconds"),
            }
            fut = await self.topics.member_events.send(key=member_id.encode(), value=orjson.dumps(event), force=True)
            await fut
            await rt.balances.unschedule(key, member_id, due_ms)
            sent += 1
        if sent:
            from streams.metrics import counters

            counters["scheduled_events_sent_total"] += sent
            log.info("%d %s events sent", sent, kind)
        return sent

    async def flush_ledger_outbox(self) -> int:
        """Ledger rows written by the HTTP path (redemptions, engagement, parking exits) whose
        send to Kafka did not complete (a crash, a Kafka outage) are sent again from the
        member's outbox; the ledger dedups them. The accrual's own outbox entries come back
        with the redelivery of their batch. Returns how many members' outboxes were sent."""
        rt = await self.runtime.started()
        older_than = int(time.time() * 1000) - 30_000
        flushed = 0
        for member_id, rows in await rt.balances.orphaned_outboxes(older_than):
            for payload in ledger_messages(list(rows.values()), []):
                fut = await self.topics.ledger.send(value=payload, force=True)
                await fut
            await rt.balances.outbox_done(member_id, list(rows))
            await rt.balances.forget_outbox_index(member_id, older_than)
            log.info("ledger outbox of %s: %d operations sent again", member_id, len(rows))
            flushed += 1
        return flushed

    def consumer_lag(self) -> dict[str, float]:
        """Per assigned partition: the highwater mark less the committed offset."""
        out: dict[str, float] = {}
        # Faust's Consumer (the driver's subclasses it) keeps `_committed_offset`; ConsumerT does not declare it.
        consumer = cast("Consumer", self.app.consumer)
        for tp in consumer.assignment():
            committed = consumer._committed_offset.get(tp)  # Faust keeps it; no public accessor
            out[f'topic="{tp.topic}",partition="{tp.partition}"'] = max(
                0, consumer.highwater(tp) - (committed + 1 if committed is not None else 0))
        return out

    async def prepare(self) -> None:
        """At worker start: connect to Redis and ClickHouse, migrate, and declare every topic
        this process sends to, so the first request finds them and no send declares one later
        (a topic declared in the middle of a broker restart crashed the worker's conductor:
        "All brokers are currently fenced")."""
        await self.runtime.started()
        for topic in self.topics.all():
            try:  # a broker restarting meanwhile: ask again, do not crash the worker
                async for attempt in retrying(f"declaring {topic.get_topic_name()}", (KafkaError,), initial_s=0.2,
                                              max_s=2.0, attempts=60):
                    with attempt:
                        await topic.maybe_declare()
            except KafkaError as exc:
                log.error("could not declare %s after 60 attempts (%r); Faust declares it on first use",
                          topic.get_topic_name(), exc)


def create_app(settings: Settings) -> LoyaltyApp:
    """Builds an app from `settings` alone: the Faust app, its topics, the runtime, the
    schedule and outbox timers and the start-up task. The agents and views are registered
    on the worker's app (`app` below) by importing their modules."""
    app = build_faust_app(settings)
    built = LoyaltyApp(settings=settings, app=app, topics=Topics.declare(app, settings), runtime=Runtime(settings))

    @app.timer(interval=settings.tier_review_interval_s)
    @outage_tolerant
    async def schedule_tier_reviews() -> None:
        """Due tier reviews become tier_review member events."""
        await built.send_scheduled(built.runtime.balances.tier_reviews_key, "tier_review")

    @app.timer(interval=settings.wallet_check_interval_s)
    @outage_tolerant
    async def schedule_wallet_checks() -> None:
        """Due pending releases, lot expiries and expiry reminders become wallet_check events."""
        await built.send_scheduled(built.runtime.balances.wallet_checks_key, "wallet_check")

    @app.timer(interval=10.0)
    @outage_tolerant
    async def flush_ledger_outbox() -> None:
        await built.flush_ledger_outbox()

    @app.task
    async def prepare_runtime() -> None:
        await built.prepare()

    @app.task
    async def follow_rules() -> None:
        """Every rule version published after this worker started, applied when it is
        (each worker follows the rules topic on its own)."""
        rt = await built.runtime.started()

        async def apply(entry: Published) -> None:
            rt.apply_published(entry)

        await follow(settings, rt.rules_offset, apply)

    if settings.metrics_dir:
        from streams import metrics

        metrics.configure_shared(settings.metrics_dir)

        @app.timer(interval=1.0)
        async def share_metrics() -> None:
            """This process's counters where the others on its port read them."""
            metrics.write_snapshot()

    return built


loyalty = create_app(Settings.from_env())
settings, app, runtime = loyalty.settings, loyalty.app, loyalty.runtime
payments_topic, ledger_topic = loyalty.topics.payments, loyalty.topics.ledger
member_events_topic, parking_topic = loyalty.topics.member_events, loyalty.topics.parking
notifications_topic, dead_letter_topic = loyalty.topics.notifications, loyalty.topics.dead_letter
send_dead_letter = loyalty.send_dead_letter
record_binding = loyalty.record_binding
record_facts = loyalty.record_facts
consumer_lag = loyalty.consumer_lag


def leader_timer(interval: float) -> Callable[[Callable[[], Awaitable[None]]], Callable[[], Awaitable[None]]]:
    """A timer that runs on the group's leader only, like Faust's `on_leader=True`, but safe in
    an ingress process: one that consumes nothing (producer-only) has no consumer to ask who
    leads, and Faust's own check there crashes the worker; it runs no leader's timer."""
    from faust.exceptions import ConsumerNotStarted

    def register(fn: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        @functools.wraps(fn)
        async def on_leader() -> None:
            if app.producer_only:
                return
            try:
                leading = app.is_leader()
            except ConsumerNotStarted:  # the worker is still starting: the next round asks again
                return
            if leading:
                await fn()

        app.timer(interval=interval)(on_leader)
        return fn

    return register


def _register_gauges() -> None:
    from streams import metrics

    metrics.gauges["consumer_lag"] = ("Messages not yet processed per assigned partition.", consumer_lag)
    metrics.gauges["dead_letters"] = ("Events sent to the dead-letter topic by this process.",
                                      lambda: {"": float(metrics.counters["events_dead_lettered_total"])})


_register_gauges()
