"""Fixtures over the real services: Kafka and Redis started by scripts/services,
a `loyalty worker` child process with its own topics, group, namespace and store."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.workers import WebhookReceiver, WorkerProcess
from streams.settings import ROOT


@pytest.fixture(scope="session")
def services() -> None:
    subprocess.run([str(ROOT / "scripts" / "services"), "up"], check=True)


def new_worker(tmp: Path, name: str, **env: str) -> WorkerProcess:
    run_id = f"t-{name}-{uuid.uuid4().hex[:8]}"
    return WorkerProcess(run_id=run_id, data_dir=tmp / run_id, extra_env=env)


@pytest.fixture(scope="module")
def receiver(request: pytest.FixtureRequest) -> Iterator[WebhookReceiver]:
    """The members' messaging webhook: a real receiver on 127.0.0.1 that checks each push's
    signature with the test module's PUSH_SECRET."""
    r = WebhookReceiver(request.module.PUSH_SECRET).start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def worker(services: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    w = new_worker(tmp_path_factory.mktemp("worker"), "pipeline")
    w.start()
    yield w
    w.stop()
    w.cleanup()


@pytest.fixture
def worker_factory(services: None, tmp_path: Path) -> Iterator[object]:
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

