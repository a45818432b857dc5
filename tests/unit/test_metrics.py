"""/metrics exports every counter the code increments (prometheus-client writes the text):
each literal counter name in streams/ and agents/ has a help text and appears from the
start, and a name made at run time (engagement_<op>_total) appears once it is counted."""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams import metrics

ROOT = Path(__file__).resolve().parents[2]


def incremented_names() -> set[str]:
    names: set[str] = set()
    for path in [*ROOT.glob("streams/**/*.py"), *ROOT.glob("agents/*.py")]:
        names |= set(re.findall(r'counters\["([a-z0-9_]+)"\]', path.read_text()))
    return names


def exported() -> dict[str, float]:
    return {s.name: s.value for family in text_string_to_metric_families(metrics.render()) for s in family.samples
            if not s.labels}


def test_every_counter_the_code_increments_has_help_and_is_exported() -> None:
    names = incremented_names()
    assert len(names) > 40, "the scan found the counters"
    assert not names - set(metrics.HELP), f"counters without a help text: {sorted(names - set(metrics.HELP))}"
    got = exported()
    missing = [n for n in names if f"loyalty_{n}" not in got]
    assert not missing, missing


def test_a_counter_named_at_run_time_is_exported_once_counted() -> None:
    name = "engagement_fuzzed_op_total"
    assert f"loyalty_{name}" not in exported()
    metrics.counters[name] += 2
    try:
        assert exported()[f"loyalty_{name}"] == 2
    finally:
        del metrics.counters[name]


def test_labelled_counts_histograms_and_gauges_parse() -> None:
    metrics.topic_messages[("t-x.payments", "in")] += 3
    metrics.count_unrouted("wechatpay", 'odd"merchant')
    metrics.histograms["batch_size"].observe(7)
    metrics.gauges["test_gauge"] = ("A gauge of the test.", lambda: {'topic="a",partition="0"': 4.0})
    try:
        families = {f.name: f for f in text_string_to_metric_families(metrics.render())}
        topics = families["loyalty_topic_messages"].samples
        assert any(s.labels == {"topic": "t-x.payments", "direction": "in"} and s.value == 3 for s in topics)
        unrouted = families["loyalty_gateway_unrouted"].samples
        assert any(s.labels.get("merchant") == 'odd"merchant' for s in unrouted)
        samples = families["loyalty_batch_size"].samples
        batch = {s.labels.get("le"): s.value for s in samples if s.name.endswith("bucket")}
        assert batch["10"] >= 1 and batch["+Inf"] >= 1
        gauge = families["loyalty_test_gauge"].samples[0]
        assert gauge.labels == {"topic": "a", "partition": "0"} and gauge.value == 4.0
    finally:
        del metrics.gauges["test_gauge"]
        del metrics.topic_messages[("t-x.payments", "in")]
        metrics.gateway_unrouted.clear()


def test_snapshots_of_several_processes_are_summed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streams import metrics

    monkeypatch.setattr(metrics, "counters", Counter({"callbacks_accepted_total": 3}))
    monkeypatch.setattr(metrics, "topic_messages", Counter({("t.payments", "out"): 2}))
    h = metrics.Histogram("x", (1, 10))
    monkeypatch.setattr(metrics, "histograms", {"callback_ms": h})
    h.observe(0.5)
    h.observe(5)
    other = {"counters": {"callbacks_accepted_total": 4, "envelopes_sent_total": 1},
             "topics": [["t.payments", "out", 5]], "unrouted": [["wechatpay", "m-1", 1]],
             "histograms": {"callback_ms": [[0, 2], 30.0, 3], "gone": [[1], 1.0, 1]}}
    (tmp_path / "1.json").write_bytes(orjson.dumps(other))
    metrics.configure_shared(str(tmp_path))
    try:
        text = metrics.render()
    finally:
        metrics.configure_shared("")
    assert "loyalty_metrics_processes 2.0" in text
    assert "loyalty_callbacks_accepted_total 7.0" in text and "loyalty_envelopes_sent_total 1.0" in text
    assert 'loyalty_topic_messages_total{direction="out",topic="t.payments"} 7.0' in text
    assert 'loyalty_gateway_unrouted_total{gateway="wechatpay",merchant="m-1"} 1.0' in text
    assert 'loyalty_callback_ms_bucket{le="1"} 1.0' in text and 'loyalty_callback_ms_bucket{le="10"} 4.0' in text
    assert "loyalty_callback_ms_count 5.0" in text and "loyalty_callback_ms_sum 35.5" in text
    assert (tmp_path / f"{os.getpid()}.json").exists(), "this process's own snapshot was written"
