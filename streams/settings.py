"""One frozen settings object, read from the environment (LOYALTY_*)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from streams.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


class SettingsError(ConfigError):
    """A LOYALTY_* environment variable has a value that cannot be used."""


def _int(name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise SettingsError(f"{name} must be <= {maximum}, got {value}")
    return value


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None


def _str(name: str, default: str) -> str:
    return os.environ.get(name) or default


# What a worker process runs. `ledger` holds the ClickHouse store (an embedded chdb store
# belongs to exactly one process); the others need only Kafka and Redis. Every worker
# serves the HTTP API; `ingress` alone names a process that does nothing else (several of
# them in front of the agents' workers, docs/scaling.md).
ROLES = frozenset({"accrual", "ledger", "notifier", "parking"})
KNOWN_ROLES = ROLES | {"ingress"}


def _roles(name: str) -> frozenset[str]:
    raw = os.environ.get(name, "").strip()
    if not raw or raw == "all":
        return ROLES
    roles = frozenset(r.strip() for r in raw.split(",") if r.strip())
    unknown = sorted(roles - KNOWN_ROLES)
    if unknown or not roles:
        raise SettingsError(f"{name} takes a comma-separated list of {', '.join(sorted(KNOWN_ROLES))} (or all), "
                            f"got {raw!r}")
    return roles if roles == {"ingress"} else roles - {"ingress"}


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6380/0"
    clickhouse_dsn: str = f"chdb:///{ROOT / '.local' / 'data' / 'chdb'}"
    rules_path: Path = ROOT / "rules" / "demo.toml"
    app_id: str = "loyalty"
    topic_prefix: str = "loyalty"
    redis_namespace: str = "ly"
    partitions: int = 4
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    callback_secret: str = field(default="", repr=False)
    admin_token: str = field(default="", repr=False)
    signature_max_age_s: int = 300
    batch_size: int = 500
    batch_within_s: float = 0.05
    ledger_batch_size: int = 200  # ledger messages (each one payment batch) per insert
    ledger_within_s: float = 0.5
    max_body_bytes: int = 64 * 1024
    session_timeout_s: float = 10.0
    tier_review_interval_s: float = 60.0
    wallet_check_interval_s: float = 30.0
    log_level: str = "info"
    # Payment gateways (streams/gateways): where merchant numbers map to BUs and merchants,
    # and the keys that verify them. Secrets come from the environment only.
    gateways_path: Path = ROOT / "rules" / "gateways.toml"
    wechatpay_apiv3_key: str = field(default="", repr=False)
    wechatpay_platform_keys: str = ""  # "serial=/path/key.pem,serial2=/path/cert.pem"
    alipay_public_key: str = ""  # path to the Alipay public key (PEM or bare base64)
    gateway_route_days: int = 400  # how long a gateway payment's route is kept for its refunds
    # Pushes (coupons issued, expiry reminders) to the members' messaging webhook.
    push_webhook_url: str = ""
    push_secret: str = field(default="", repr=False)
    push_timeout_s: float = 2.0
    push_attempts: int = 5
    push_backoff_s: float = 0.2
    push_batch_size: int = 200
    segments_interval_s: float = 86_400.0  # scheduled segments refresh (0: off)
    max_in_flight: int = 2_000  # callbacks waiting for Kafka's ack before new ones get 503
    publish_timeout_s: float = 5.0
    roles: frozenset[str] = ROLES
    # Credentials (issue 9): scoped keys, from the environment only (streams/auth.py).
    pos_keys: str = field(default="", repr=False)  # "till-01:secret,till-02:secret"
    member_token_secret: str = field(default="", repr=False)
    pii_key: str = field(default="", repr=False)  # keys the pseudonyms of phone numbers
    nonce_window_s: int = 600  # how long a used nonce is remembered (> 2x the signature window)
    rate_limit_member: int = 20  # requests per second per member token
    rate_limit_pos: int = 500  # requests per second per POS key
    # Fault injection for the fault tests (docs/reliability.md): a file `clickhouse-down` in
    # this directory makes every ClickHouse insert fail until it is removed. Unset in production.
    faults_dir: str = ""
    # The hot path (docs/hot-path.md): how long event records live (a refund or a duplicate
    # arriving later is refused), recent movements kept per member, and the ingress's
    # envelopes (group commit: callbacks arriving while a produce is in flight share a record).
    kafka_compression: str = "zstd"  # what the worker's producer compresses with ("" for none)
    refund_horizon_days: int = 400
    # A refund that arrives before its payment is held this long (longer than the gateways'
    # retry windows), then dead-lettered with the reason (docs/rules.md: Refunds).
    held_wait_s: int = 48 * 3600
    # The ingress's sanity window on a callback's occurred_at (docs/security.md), and how
    # long an event id stays claimed by the member (or payer) that first sent it.
    occurred_max_age_days: int = 400
    occurred_max_ahead_days: int = 1
    event_claim_days: int = 35
    history_length: int = 8
    # Members written by one ly_apply call on a single Redis (1 on a Redis Cluster, where a
    # call names one hash slot): each call costs Redis ~9 µs of its own (docs/hot-path.md).
    redis_members_per_call: int = 64
    envelope_linger_ms: float = 1.0
    envelope_max_events: int = 500
    envelope_max_bytes: int = 512 * 1024

    @property
    def group_id(self) -> str:
        """The Kafka consumer group: workers with the same roles share partitions (a
        Faust group expects every member to subscribe to the same topics)."""
        if self.roles == ROLES:
            return self.app_id
        return f"{self.app_id}-{'-'.join(sorted(self.roles))}"

    @property
    def holds_ledger(self) -> bool:
        """Whether this process may open the ClickHouse store: the ledger role, or any
        worker when the DSN names a server that all of them share."""
        return "ledger" in self.roles or not self.clickhouse_dsn.startswith("chdb://")

    @property
    def payments_topic(self) -> str:
        return f"{self.topic_prefix}.payments"

    @property
    def member_events_topic(self) -> str:
        return f"{self.topic_prefix}.member-events"

    @property
    def parking_topic(self) -> str:
        return f"{self.topic_prefix}.parking"

    @property
    def notifications_topic(self) -> str:
        return f"{self.topic_prefix}.coupon-pushes"

    @property
    def ledger_topic(self) -> str:
        return f"{self.topic_prefix}.ledger"

    @property
    def dead_letter_topic(self) -> str:
        return f"{self.topic_prefix}.dead-letter"

    @property
    def faust_dir(self) -> Path:
        return ROOT / ".local" / "faust" / self.group_id

    @property
    def base_url(self) -> str:
        return f"http://{self.web_host}:{self.web_port}"

    @classmethod
    def from_env(cls) -> Settings:
        d = cls()
        return cls(
            # scripts/services reads LOYALTY_KAFKA_PORT / LOYALTY_REDIS_PORT too: one
            # variable moves both the service and its clients.
            kafka_bootstrap=_str("LOYALTY_KAFKA_BOOTSTRAP", f"127.0.0.1:{_int('LOYALTY_KAFKA_PORT', 9092, 1)}"),
            redis_url=_str("LOYALTY_REDIS_URL", f"redis://127.0.0.1:{_int('LOYALTY_REDIS_PORT', 6380, 1)}/0"),
            clickhouse_dsn=_str("LOYALTY_CLICKHOUSE_DSN", d.clickhouse_dsn),
            rules_path=Path(_str("LOYALTY_RULES", str(d.rules_path))),
            app_id=_str("LOYALTY_APP_ID", d.app_id),
            topic_prefix=_str("LOYALTY_TOPIC_PREFIX", d.topic_prefix),
            redis_namespace=_str("LOYALTY_REDIS_NAMESPACE", d.redis_namespace),
            partitions=_int("LOYALTY_PARTITIONS", d.partitions, 1),
            web_host=_str("LOYALTY_WEB_HOST", d.web_host),
            web_port=_int("LOYALTY_WEB_PORT", d.web_port, 1),
            callback_secret=os.environ.get("LOYALTY_CALLBACK_SECRET", ""),
            admin_token=os.environ.get("LOYALTY_ADMIN_TOKEN", ""),
            signature_max_age_s=_int("LOYALTY_SIGNATURE_MAX_AGE", d.signature_max_age_s, 1),
            batch_size=_int("LOYALTY_BATCH_SIZE", d.batch_size, 1),
            batch_within_s=_float("LOYALTY_BATCH_WITHIN", d.batch_within_s),
            ledger_batch_size=_int("LOYALTY_LEDGER_BATCH_SIZE", d.ledger_batch_size, 1),
            ledger_within_s=_float("LOYALTY_LEDGER_WITHIN", d.ledger_within_s),
            max_body_bytes=_int("LOYALTY_MAX_BODY_BYTES", d.max_body_bytes, 1024),
            session_timeout_s=_float("LOYALTY_SESSION_TIMEOUT", d.session_timeout_s),
            tier_review_interval_s=_float("LOYALTY_TIER_REVIEW_INTERVAL", d.tier_review_interval_s),
            wallet_check_interval_s=_float("LOYALTY_WALLET_CHECK_INTERVAL", d.wallet_check_interval_s),
            log_level=_str("LOYALTY_LOG_LEVEL", d.log_level),
            gateways_path=Path(_str("LOYALTY_GATEWAYS", str(d.gateways_path))),
            wechatpay_apiv3_key=os.environ.get("LOYALTY_WECHATPAY_APIV3_KEY", ""),
            wechatpay_platform_keys=_str("LOYALTY_WECHATPAY_PLATFORM_KEYS", ""),
            alipay_public_key=_str("LOYALTY_ALIPAY_PUBLIC_KEY", ""),
            gateway_route_days=_int("LOYALTY_GATEWAY_ROUTE_DAYS", d.gateway_route_days, 1),
            push_webhook_url=_str("LOYALTY_PUSH_WEBHOOK_URL", ""),
            push_secret=os.environ.get("LOYALTY_PUSH_SECRET", ""),
            push_timeout_s=_float("LOYALTY_PUSH_TIMEOUT", d.push_timeout_s),
            push_attempts=_int("LOYALTY_PUSH_ATTEMPTS", d.push_attempts, 1),
            push_backoff_s=_float("LOYALTY_PUSH_BACKOFF", d.push_backoff_s),
            push_batch_size=_int("LOYALTY_PUSH_BATCH_SIZE", d.push_batch_size, 1),
            segments_interval_s=_float("LOYALTY_SEGMENTS_INTERVAL", d.segments_interval_s),
            max_in_flight=_int("LOYALTY_MAX_IN_FLIGHT", d.max_in_flight, 1),
            publish_timeout_s=_float("LOYALTY_PUBLISH_TIMEOUT", d.publish_timeout_s),
            roles=_roles("LOYALTY_ROLES"),
            pos_keys=os.environ.get("LOYALTY_POS_KEYS", ""),
            member_token_secret=os.environ.get("LOYALTY_MEMBER_TOKEN_SECRET", ""),
            pii_key=os.environ.get("LOYALTY_PII_KEY", ""),
            nonce_window_s=_int("LOYALTY_NONCE_WINDOW", d.nonce_window_s, 1),
            rate_limit_member=_int("LOYALTY_RATE_LIMIT_MEMBER", d.rate_limit_member, 1),
            rate_limit_pos=_int("LOYALTY_RATE_LIMIT_POS", d.rate_limit_pos, 1),
            faults_dir=_str("LOYALTY_FAULTS_DIR", ""),
            kafka_compression=os.environ.get("LOYALTY_KAFKA_COMPRESSION", d.kafka_compression),
            refund_horizon_days=_int("LOYALTY_REFUND_HORIZON_DAYS", d.refund_horizon_days, 1),
            held_wait_s=_int("LOYALTY_HELD_WAIT_S", d.held_wait_s, 1),
            occurred_max_age_days=_int("LOYALTY_OCCURRED_MAX_AGE_DAYS", d.occurred_max_age_days, 1),
            occurred_max_ahead_days=_int("LOYALTY_OCCURRED_MAX_AHEAD_DAYS", d.occurred_max_ahead_days, 0),
            event_claim_days=_int("LOYALTY_EVENT_CLAIM_DAYS", d.event_claim_days, 1),
            history_length=_int("LOYALTY_HISTORY_LENGTH", d.history_length, 1),
            redis_members_per_call=_int("LOYALTY_REDIS_MEMBERS_PER_CALL", d.redis_members_per_call, 1, 1000),
            envelope_linger_ms=_float("LOYALTY_ENVELOPE_LINGER_MS", d.envelope_linger_ms),
            envelope_max_events=_int("LOYALTY_ENVELOPE_MAX_EVENTS", d.envelope_max_events, 1),
            envelope_max_bytes=_int("LOYALTY_ENVELOPE_MAX_BYTES", d.envelope_max_bytes, 1024),
        )
