"""The Rust core's modules point one way: each imports (`crate::<module>`) only modules of
its own layer or below, and no two import each other round a circle. A module added to
core_ext/src must be given a layer here (docs/architecture.md)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "core_ext" / "src"

#: Lowest first: the basic types; time; events (input); records; the compiled rules; the
#: rules loader and the Redis reply reader; the operations; the batch; the bindings.
LAYERS: list[set[str]] = [
    {"errors", "text", "settlement", "state", "blocks", "envelope", "coupon_rules", "parking_rules"},
    {"time", "ledger"},
    {"events"},
    {"record", "engage_rules"},
    {"rules"},
    {"rules_file", "resp"},
    {"campaigns", "tiers", "wallet", "rebuild", "boards", "coupons", "engage", "parking", "redemption", "accrual",
     "behaviour", "simulate", "merge"},
    {"mall", "receipts", "signups"},
    {"engine", "batch"},
    {"bindings", "bindings_batch", "lib"},
]


def imports() -> dict[str, set[str]]:
    """Each module's `crate::` imports outside its tests (a module directory's files count
    as the module's)."""
    sources: dict[str, str] = {}
    for f in ROOT.glob("*.rs"):
        sources[f.stem] = sources.get(f.stem, "") + f.read_text()
    for f in ROOT.glob("*/*.rs"):
        sources[f.parent.name] = sources.get(f.parent.name, "") + f.read_text()
    names = set(sources)
    out: dict[str, set[str]] = {}
    for name, text in sources.items():
        if name.startswith("tests_"):
            continue
        code = text.split("#[cfg(test)]")[0]
        out[name] = {m for m in re.findall(r"crate::(\w+)", code) if m in names and m != name
                     and not m.startswith("tests_")}
    return out


def test_every_module_has_a_layer_and_imports_only_its_own_or_lower() -> None:
    layer = {m: i for i, group in enumerate(LAYERS) for m in group}
    graph = imports()
    assert set(graph) == set(layer), f"give these modules a layer: {sorted(set(graph) ^ set(layer))}"
    upward = [f"{m} (layer {layer[m]}) imports {d} (layer {layer[d]})" for m, deps in graph.items() for d in deps
              if layer[d] > layer[m]]
    assert not upward, "\n".join(sorted(upward))


def test_no_modules_import_each_other_round_a_circle() -> None:
    graph = imports()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return [*path[path.index(d):], d]
            if d not in state and (found := visit(d)):
                return found
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state and (circle := visit(m)):
            raise AssertionError(" -> ".join(circle))


def test_the_check_sees_an_upward_import() -> None:
    """The check itself: a made-up upward edge is found (so the tests above can fail)."""
    layer = {m: i for i, group in enumerate(LAYERS) for m in group}
    graph = imports()
    graph["errors"] = graph["errors"] | {"engine"}
    assert any(layer[d] > layer[m] for m, deps in graph.items() for d in deps)
