"""Input checks hold under `python -O`, which strips `assert`: validation is explicit."""

from __future__ import annotations

import subprocess
import sys

from streams.settings import ROOT

PROBE = """
from streams.inputs import BadInput, parking_event, require
assert False, "python -O keeps asserts?"  # stripped under -O: this line must not matter
print(parking_event(b"[1, 2]", {"p1"})[1:])
print(parking_event(b'{"event_id": "e", "gate": "g", "type": "entry", "plate": "AB123", "car_park": "p1",'
                    b' "occurred_at": "2026-11-23T10:00:00"}', {"p1"})[1:])
try:
    require(1 > 2, "one is not more than two")
except BadInput as exc:
    print("refused:", exc)
"""


def test_checks_refuse_bad_input_under_python_O() -> None:
    out = subprocess.run([sys.executable, "-O", "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "('body', 'must be a JSON object')",
        "('occurred_at', 'must be an ISO-8601 time with offset')",
        "refused: one is not more than two",
    ]
