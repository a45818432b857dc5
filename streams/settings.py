"""One frozen settings object, read from the environment (LOYALTY_*)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from streams.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


class SettingsError(ConfigError):
    """A LOYALTY_* environment variable has a value that cannot be used."""


# What a worker process runs. `ledger` holds the ClickHouse store (an embedded chdb store
# belongs to exactly one process); the others need only Kafka and Redis. Every worker
# serves the HTTP API; `ingress` alone names a process that does nothing else (several of
# them in front of the agents' workers, docs/scaling.md).
ROLES = frozenset({"accrual", "ledger", "notifier", "parking"})
KNOWN_ROLES = ROLES | {"ingress"}


def _env(name: str, default: Any, **bounds: Any) -> Any:
    """A field read from the environment variable `name` (its full name, when it is not
    LOYALTY_ + the field's name), with its bounds (ge, le)."""
    return Field(default, validation_alias=AliasChoices(name), **bounds)


class Settings(BaseSettings):
    """Every setting, from LOYALTY_* environment variables (pydantic-settings: typed,
    bounded, secrets as SecretStr that never print). An empty variable means the default.
    `Settings.from_env()` reads them and raises SettingsError naming the variable."""

    model_config = SettingsConfigDict(env_prefix="LOYALTY_", frozen=True, env_ignore_empty=True, extra="ignore",
                                      populate_by_name=True)

    # scripts/services reads LOYALTY_KAFKA_PORT / LOYALTY_REDIS_PORT too: one variable
    # moves both the service and its clients (the defaults below follow them).
    kafka_bootstrap: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6380/0"
    clickhouse_dsn: str = f"chdb:///{ROOT / '.local' / 'data' / 'chdb'}"
    rules_path: Path = _env("LOYALTY_RULES", ROOT / "rules" / "demo.toml")
    app_id: str = "loyalty"
    topic_prefix: str = "loyalty"
    redis_namespace: str = "ly"
    partitions: int = Field(4, ge=1)
    #: Copies of each topic the engine creates, and how many must have a write before the
    #: broker acknowledges it (the producer asks for acks=all): 1 and 1 on one broker; 3 and
    #: 2 on a three-broker cluster (a broker can die without losing or refusing a write).
    topic_replication_factor: int = Field(1, ge=1)
    topic_min_insync_replicas: int = Field(1, ge=1)
    web_host: str = "127.0.0.1"
    web_port: int = Field(6066, ge=1, le=65535)
    callback_secret: SecretStr = SecretStr("")
    admin_token: SecretStr = SecretStr("")
    signature_max_age_s: int = _env("LOYALTY_SIGNATURE_MAX_AGE", 300, ge=1)
    batch_size: int = Field(500, ge=1)
    batch_within_s: float = _env("LOYALTY_BATCH_WITHIN", 0.05, ge=0)
    ledger_batch_size: int = Field(200, ge=1)  # ledger messages (each one payment batch) per insert
    ledger_within_s: float = _env("LOYALTY_LEDGER_WITHIN", 0.5, ge=0)
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    session_timeout_s: float = _env("LOYALTY_SESSION_TIMEOUT", 10.0, gt=0)
    tier_review_interval_s: float = _env("LOYALTY_TIER_REVIEW_INTERVAL", 60.0, gt=0)
    wallet_check_interval_s: float = _env("LOYALTY_WALLET_CHECK_INTERVAL", 30.0, gt=0)
    log_level: str = "info"
    # Payment gateways (streams/gateways): where merchant numbers map to BUs and merchants,
    # and the keys that verify them. Secrets come from the environment only.
    gateways_path: Path = _env("LOYALTY_GATEWAYS", ROOT / "rules" / "gateways.toml")
    wechatpay_apiv3_key: SecretStr = SecretStr("")
    wechatpay_platform_keys: str = ""  # "serial=/path/key.pem,serial2=/path/cert.pem"
    alipay_public_key: str = ""  # path to the Alipay public key (PEM or bare base64)
    gateway_route_days: int = Field(400, ge=1)  # how long a gateway payment's route is kept for its refunds
    # WeChat Pay smart business circle (智慧商圈, docs/gateways.md): the mall's merchant
    # number and its APIv3 signing key (path and certificate serial) that sign the points
    # sync and parking sync calls, WeChat Pay's API base (the simulator's in tests), and the
    # circle's parking brand id. All empty: circle notifications are refused (503).
    wechatpay_mchid: str = ""
    wechatpay_merchant_key: str = ""  # path of the merchant's API private key (PEM)
    wechatpay_merchant_serial: str = ""  # its certificate serial number
    wechatpay_api_base: str = "https://api.mch.weixin.qq.com"
    wechatpay_circle_brandid: int = Field(0, ge=0)  # 0: no parking status sync
    wechatpay_circle_sync_interval_s: float = _env("LOYALTY_WECHATPAY_CIRCLE_SYNC_INTERVAL", 1.0, gt=0)
    # Pushes (coupons issued, expiry reminders) to the members' messaging webhook.
    push_webhook_url: str = ""
    push_secret: SecretStr = SecretStr("")
    push_timeout_s: float = _env("LOYALTY_PUSH_TIMEOUT", 2.0, gt=0)
    push_attempts: int = Field(5, ge=1)
    push_backoff_s: float = _env("LOYALTY_PUSH_BACKOFF", 0.2, ge=0)
    push_batch_size: int = Field(200, ge=1)
    segments_interval_s: float = _env("LOYALTY_SEGMENTS_INTERVAL", 86_400.0, ge=0)  # scheduled refresh (0: off)
    max_in_flight: int = Field(2_000, ge=1)  # callbacks waiting for Kafka's ack before new ones get 503
    publish_timeout_s: float = _env("LOYALTY_PUBLISH_TIMEOUT", 5.0, gt=0)
    roles: Annotated[frozenset[str], NoDecode] = ROLES
    # Credentials (issue 9): scoped keys, from the environment only (streams/auth.py).
    pos_keys: SecretStr = SecretStr("")  # "till-01:secret,till-02:secret"
    member_token_secret: SecretStr = SecretStr("")
    pii_key: SecretStr = SecretStr("")  # keys the pseudonyms of phone numbers
    nonce_window_s: int = _env("LOYALTY_NONCE_WINDOW", 600, ge=1)  # a used nonce is remembered (> 2x the window)
    rate_limit_member: int = Field(20, ge=1)  # requests per second per member token
    rate_limit_pos: int = Field(500, ge=1)  # requests per second per POS key
    # The operators' console (docs/back-office.md): a Fernet key (`loyalty operators
    # session-key` makes one) encrypts and signs the session cookie; without it the console's
    # login answers 503 and only the admin token reaches /v1/admin.
    console_session_key: SecretStr = SecretStr("")
    console_session_s: int = _env("LOYALTY_CONSOLE_SESSION", 8 * 3600, ge=60)  # a session's life from login
    console_cookie_secure: bool = False  # True behind HTTPS (the cookie then travels only over TLS)
    login_max_failures: int = Field(5, ge=1)  # failed logins within the lock window that lock a login
    login_lock_s: int = _env("LOYALTY_LOGIN_LOCK", 900, ge=1)
    #: An adjustment of more points than this (either sign), made by an operator, waits for
    #: a second operator's approval (maker / checker); the admin token is not held back.
    approval_points: int = Field(10_000, ge=0)
    #: Members an audience send reaches a second (its grants queue behind the live events).
    audience_send_rate: int = Field(5_000, ge=1)
    #: Scheduled campaigns (docs/marketing.md): how often the leader looks for a due run,
    #: how late a run may still start (a run missed by more is skipped and logged), and how
    #: long a run may make no progress before the leader takes it up again.
    schedule_interval_s: float = _env("LOYALTY_SCHEDULE_INTERVAL", 30.0, gt=0)
    schedule_grace_s: int = _env("LOYALTY_SCHEDULE_GRACE", 6 * 3600, ge=60)
    schedule_stale_s: float = _env("LOYALTY_SCHEDULE_STALE", 30.0, gt=0)
    #: Rehearsals and tests only: the scheduler's clock read from this file (an ISO-8601
    #: time with offset, or epoch milliseconds) instead of the system's. Never in production.
    clock_file: str = ""
    #: Days within which a group admin may undo a merge of two accounts.
    merge_undo_days: int = Field(30, ge=0, le=60)
    #: Receipt points (docs/points-mall.md): where uploaded receipt images are kept (a
    #: directory every worker of the service shares: a local disk or a mounted object
    #: store), and the largest image taken.
    receipt_image_dir: Path = ROOT / ".local" / "receipts"
    receipt_image_max_bytes: int = Field(4 * 1024 * 1024, ge=1024, le=32 * 1024 * 1024)
    # Fault injection for the fault tests (docs/reliability.md): a file `clickhouse-down` in
    # this directory makes every ClickHouse insert fail until it is removed. Unset in production.
    faults_dir: str = ""
    # The hot path (docs/hot-path.md): how long event records live (a refund or a duplicate
    # arriving later is refused), recent movements kept per member, and the ingress's
    # envelopes (group commit: callbacks arriving while a produce is in flight share a record).
    # What the worker's producer compresses with ("" for none). Measured on the pipeline
    # (benchmarks/README.md, 2026-12-01): zstd and none cost the same CPU an event; lz4
    # (aiokafka's, through cramjam) took 28% more of the worker's CPU.
    kafka_compression: str = "zstd"
    refund_horizon_days: int = Field(400, ge=1)
    # A refund that arrives before its payment is held this long (longer than the gateways'
    # retry windows), then dead-lettered with the reason (docs/rules.md: Refunds).
    held_wait_s: int = Field(48 * 3600, ge=1)
    # The ingress's sanity window on a callback's occurred_at (docs/security.md), and how
    # long an event id stays claimed by the member (or payer) that first sent it.
    occurred_max_age_days: int = Field(400, ge=1)
    occurred_max_ahead_days: int = Field(1, ge=0)
    event_claim_days: int = Field(35, ge=1)
    history_length: int = Field(8, ge=1)
    # Members written by one ly_apply call on a single Redis (1 on a Redis Cluster, where a
    # call names one hash slot): each call costs Redis ~9 µs of its own (docs/hot-path.md).
    redis_members_per_call: int = Field(64, ge=1, le=1000)
    # On a Redis Cluster: the member writes, budget reservations and outboxes wait (WAIT) for
    # this many replicas to have them before the batch goes on, up to redis_wait_ms; a
    # primary killed after that loses none of them when its replica is promoted. 0: no wait.
    redis_wait_replicas: int = Field(1, ge=0, le=5)
    redis_wait_ms: int = Field(100, ge=1, le=10_000)
    # Several ingress processes on one port (`loyalty worker --roles ingress --processes N` sets
    # both for its children): SO_REUSEPORT on the HTTP socket, and a directory where each
    # writes its metrics so that /metrics sums them (streams/metrics.py).
    # `loyalty backup` writes ClickHouse backups under this directory (streams/sinks/backup.py).
    backup_dir: Path = ROOT / ".local" / "backups"
    web_reuse_port: bool = False
    metrics_dir: str = ""
    envelope_linger_ms: float = Field(1.0, ge=0)
    envelope_max_events: int = Field(500, ge=1)
    envelope_max_bytes: int = Field(512 * 1024, ge=1024)

    @model_validator(mode="before")
    @classmethod
    def _service_ports(cls, data: Any) -> Any:
        """The clients' defaults follow LOYALTY_KAFKA_PORT / LOYALTY_REDIS_PORT."""
        if isinstance(data, dict):
            for env, key, url in (("LOYALTY_KAFKA_PORT", "kafka_bootstrap", "127.0.0.1:{}"),
                                  ("LOYALTY_REDIS_PORT", "redis_url", "redis://127.0.0.1:{}/0")):
                port = os.environ.get(env, "")
                if port and not data.get(key):
                    if not port.isdigit() or not 1 <= int(port) <= 65535:
                        raise ValueError(f"{env} must be a port (1-65535), got {port!r}")
                    data[key] = url.format(int(port))
        return data

    @model_validator(mode="after")
    def _replicas(self) -> Settings:
        if self.topic_min_insync_replicas > self.topic_replication_factor:
            raise ValueError(f"LOYALTY_TOPIC_MIN_INSYNC_REPLICAS ({self.topic_min_insync_replicas}) cannot exceed "
                             f"LOYALTY_TOPIC_REPLICATION_FACTOR ({self.topic_replication_factor})")
        return self

    @field_validator("roles", mode="before")
    @classmethod
    def _roles(cls, raw: Any) -> frozenset[str]:
        if isinstance(raw, frozenset | set):
            return frozenset(raw)
        raw = str(raw).strip()
        if not raw or raw == "all":
            return ROLES
        roles = frozenset(r.strip() for r in raw.split(",") if r.strip())
        unknown = sorted(roles - KNOWN_ROLES)
        if unknown or not roles:
            raise ValueError(f"takes a comma-separated list of {', '.join(sorted(KNOWN_ROLES))} (or all)")
        return roles if roles == {"ingress"} else roles - {"ingress"}

    @classmethod
    def from_env(cls) -> Settings:
        """The settings of this process; SettingsError names each variable that is wrong."""
        try:
            # "" is a value of its own here (no compression), not "the default".
            raw = os.environ.get("LOYALTY_KAFKA_COMPRESSION")
            return cls() if raw is None else cls(kafka_compression=raw)
        except ValidationError as exc:
            raise SettingsError("; ".join(_explain(cls, e) for e in exc.errors())) from None

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
    def rules_topic(self) -> str:
        """The published rule versions (compacted; streams/rules_store.py)."""
        return f"{self.topic_prefix}.rules"

    @property
    def faust_dir(self) -> Path:
        return ROOT / ".local" / "faust" / self.group_id

    @property
    def base_url(self) -> str:
        return f"http://{self.web_host}:{self.web_port}"


def _explain(cls: type[Settings], error: ErrorDetails) -> str:
    """One validation error as the variable's name, what it must be, and what it got (a
    secret's value is never repeated)."""
    name = str(error["loc"][0]) if error["loc"] else ""
    env, field = f"LOYALTY_{name.upper()}" if name else "LOYALTY_*", cls.model_fields.get(name)
    for field_name, info in cls.model_fields.items():
        alias = info.validation_alias
        if (isinstance(alias, AliasChoices) and name in alias.choices) or field_name == name:
            field = info
            env = str(alias.choices[0]) if isinstance(alias, AliasChoices) else f"LOYALTY_{field_name.upper()}"
    message = error["msg"].removeprefix("Value error, ")
    if "input" in error and not isinstance(error["input"], dict) and field is not None \
            and field.annotation is not SecretStr:
        return f"{env} {message}, got {error['input']!r}"
    return f"{env} {message}"
