"""The cluster subset (`scripts/test --cluster`): every worker and every client these tests
start speak to the Redis Cluster (three primaries, three replicas) and the three-broker
Kafka that `scripts/services up --cluster` starts; topics are replicated three times with
min.insync.replicas 2. The fixtures have the names of tests/integration's, so its tests
imported here run unchanged on the cluster."""

from __future__ import annotations

import os
import subprocess

import pytest

from streams.settings import ROOT

# The same worker fixtures as tests/integration's: their `services` is this file's (the cluster).
from tests.integration.conftest import new_worker, worker, worker_factory

REDIS_URL = "redis://127.0.0.1:7101/0"
BROKERS = "127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094"
CLUSTER_ENV = {
    "LOYALTY_REDIS_URL": REDIS_URL,
    "LOYALTY_KAFKA_BOOTSTRAP": BROKERS,
    "LOYALTY_TOPIC_REPLICATION_FACTOR": "3",
    "LOYALTY_TOPIC_MIN_INSYNC_REPLICAS": "2",
}
# The test process's own clients (Settings.from_env) and every worker it starts (their
# environment is this one's plus their own) use the cluster.
os.environ.update(CLUSTER_ENV)


def run_services(*args: str) -> str:
    out = subprocess.run([str(ROOT / "scripts" / "services"), *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


@pytest.fixture(scope="session")
def services() -> None:
    """The cluster is up (the name tests/integration's fixtures and tests ask for)."""
    run_services("up", "--cluster")


__all__ = ["new_worker", "worker", "worker_factory"]
