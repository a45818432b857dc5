"""`loyalty rules simulate --from/--to`: days are the group's local days, at the rules' offset."""

from __future__ import annotations

import pytest

from streams.cli import _instant


@pytest.mark.parametrize(("offset", "want"), [(480, "+08:00"), (0, "+00:00"), (-300, "-05:00"), (345, "+05:45")])
def test_a_day_is_local_midnight_at_the_rules_offset(offset: int, want: str) -> None:
    assert _instant("2026-11-20", offset) == f"2026-11-20T00:00:00{want}"


def test_an_instant_keeps_its_own_offset_and_bad_input_says_why() -> None:
    assert _instant("2026-11-20T10:00:00+09:00", 480) == "2026-11-20T10:00:00+09:00"
    with pytest.raises(ValueError, match="no UTC offset"):
        _instant("2026-11-20T10:00:00", 480)
    with pytest.raises(ValueError):
        _instant("2026-13-40", 480)
    with pytest.raises(ValueError):
        _instant("yesterday", 480)
