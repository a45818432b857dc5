"""Development tools live in devtools/, outside the shipped package: nothing in streams/,
agents/ or core_ext/ imports them at module level, the package list leaves them out, and
`loyalty demo` without them says where they are."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

from streams import cli
from streams.settings import ROOT


def test_the_package_ships_no_development_tools() -> None:
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["maturin"]["python-packages"]
    assert "devtools" not in packages and {"streams", "agents", "core_ext"} <= set(packages)
    for path in [*ROOT.joinpath("streams").rglob("*.py"), *ROOT.joinpath("agents").rglob("*.py")]:
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level: what importing the shipped module needs
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in ("devtools", "tests", "benchmarks") for n in names), \
                f"{path.relative_to(ROOT)} imports {names} at module level"


def test_a_development_command_without_its_tools_says_where_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise ModuleNotFoundError(f"No module named {name.split('.')[0]!r}", name="devtools")

    monkeypatch.setattr(cli.importlib, "import_module", missing)
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--events", "10"])
    assert "development tool (devtools/demo.py)" in str(exc.value) and "scripts/demo" in str(exc.value)


def test_the_tools_are_found_from_a_checkout() -> None:
    assert Path(cli.devtool("gateways").__file__).parent == ROOT / "devtools"
