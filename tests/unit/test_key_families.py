"""The key families of streams/state/keys.py: every key builder's output has a family, and
docs/reliability.md's table lists each family as the code has it."""

from __future__ import annotations

import inspect

from streams.settings import ROOT
from streams.state.keys import FAMILIES, KeySpace, family_of


def test_every_key_the_key_space_builds_has_a_family() -> None:
    ks = KeySpace("ly")
    built: list[str] = []
    for name, member in inspect.getmembers(KeySpace):
        if name.startswith("_"):
            continue
        if isinstance(member, property):
            value = getattr(ks, name)
            if isinstance(value, str) and value.startswith("ly:"):
                built.append(value)
        elif callable(member):
            params = [p for p in inspect.signature(member).parameters if p != "self"]
            value = getattr(ks, name)(*[0 if p == "shard" else f"x-{i}" for i, p in enumerate(params)])
            built += [v for v in (value if isinstance(value, tuple) else (value,)) if isinstance(v, str)]
    assert len(built) >= 20
    assert [k for k in built if "*" not in k and family_of("ly", k) is None] == []  # (member_pattern: a SCAN match)
    assert family_of("ly", "other:m:{m-1}") is None and family_of("ly", "ly:unknown") is None


def test_the_documented_table_is_the_code_s() -> None:
    doc = (ROOT / "docs" / "reliability.md").read_text()
    for f in FAMILIES:
        row = f"| {f.name} | `{f.pattern.replace('|', chr(92) + '|')}` | {'yes' if f.expires else 'no'} | {f.bound} |"
        assert row in doc, row
