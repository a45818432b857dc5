"""CPU seconds per process over a measured interval: the worker, Redis (its AOF rewrite
children included), Kafka, and the whole machine, so that a benchmark can say which part
of a 2-core machine its figure spends (and what is left idle)."""

from __future__ import annotations

from dataclasses import dataclass, field

import psutil

#: The co-located services, by process name (Debian's redis-server, Kafka's JVM).
SERVICES = {"redis": ("redis-server",), "kafka": ("java",)}


def _cpu_of(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def _by_name(names: tuple[str, ...]) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["name"]):
        if p.info["name"] in names:
            out.append(p)
    return out


@dataclass
class CpuAccount:
    """Start it, stop it; `per_event` gives CPU µs per event by part."""

    worker_pid: int
    #: More processes to account apart, by name (the ingress, the notifier, a receiver...).
    extra: dict[str, int] = field(default_factory=dict)
    #: Of those, the ones counted without their children (the benchmark's own process,
    #: whose children are the processes it measures).
    alone: frozenset[str] = frozenset()
    start_s: dict[str, float] = field(default_factory=dict)
    spent_s: dict[str, float] = field(default_factory=dict)
    machine_busy: float = 0.0

    def _sample(self) -> dict[str, float]:
        out = {}
        for name, pid in {"worker": self.worker_pid, **self.extra}.items():
            out[name] = 0.0
            try:
                proc = psutil.Process(pid)
                t = proc.cpu_times()
                out[name] = (t.user + t.system if name in self.alone else
                             _cpu_of(proc) + sum(_cpu_of(c) for c in proc.children(recursive=True)))
            except psutil.NoSuchProcess:
                pass
        for part, names in SERVICES.items():
            total = 0.0
            for p in _by_name(names):
                try:
                    # A Redis AOF rewrite is a forked child: its CPU is counted while it runs.
                    total += _cpu_of(p) + sum(_cpu_of(c) for c in p.children())
                except psutil.NoSuchProcess:
                    continue
            out[part] = total
        t = psutil.cpu_times()
        out["machine"] = sum(t) - t.idle - getattr(t, "iowait", 0.0)
        out["machine_all"] = sum(t)
        return out

    def start(self) -> None:
        self.start_s = self._sample()

    def stop(self) -> None:
        end = self._sample()
        self.spent_s = {k: end[k] - self.start_s.get(k, 0.0) for k in end}
        self.machine_busy = self.spent_s["machine"] / max(1e-9, self.spent_s["machine_all"])

    def per_event(self, events: int) -> dict[str, float]:
        """CPU µs per event: worker, the extra processes, redis, kafka, other (the rest of the
        machine), machine."""
        s = self.spent_s
        parts = ["worker", *self.extra, "redis", "kafka"]
        other = s["machine"] - sum(s[k] for k in parts)
        return {k: v * 1e6 / max(1, events) for k, v in
                {**{k: s[k] for k in parts}, "other": max(0.0, other), "machine": s["machine"]}.items()}
