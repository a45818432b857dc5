"""The cluster subset (`scripts/test --cluster`): every worker and every client these tests
start speak to the Redis Cluster (three primaries, three replicas) and the three-broker
Kafka that `scripts/services up --cluster` starts; topics are replicated three times with
min.insync.replicas 2. The fixtures have the names of tests/integration's, so its tests
imported here run unchanged on the cluster."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.workers import WorkerProcess
from streams.settings import ROOT

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
def services_up() -> None:
    run_services("up", "--cluster")


@pytest.fixture(scope="session")
def services(services_up: None) -> None:
    """The cluster is up (tests/integration's tests name this fixture `services`)."""


def new_worker(tmp: Path, name: str, **env: str) -> WorkerProcess:
    run_id = f"t-{name}-{uuid.uuid4().hex[:8]}"
    return WorkerProcess(run_id=run_id, data_dir=tmp / run_id, extra_env=env)


@pytest.fixture(scope="module")
def worker(services_up: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    w = new_worker(tmp_path_factory.mktemp("worker"), "cpipe")
    w.start()
    yield w
    w.stop()
    w.cleanup()


@pytest.fixture
def worker_factory(services_up: None, tmp_path: Path) -> Iterator[object]:
    started: list[WorkerProcess] = []

    def make(name: str, **env: str) -> WorkerProcess:
        w = new_worker(tmp_path, name, **env)
        started.append(w)
        return w

    yield make
    for w in started:
        w.kill()
    for w in started:
        w.cleanup()
