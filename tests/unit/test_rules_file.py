"""Loading rules: errors name the file, the line and the field; `loyalty rules check`."""

from __future__ import annotations

from pathlib import Path

import pytest

import core_ext
from streams.cli import main
from streams.settings import ROOT

DEMO = ROOT / "rules" / "demo.toml"


def test_demo_rules_load() -> None:
    rules = core_ext.RuleSet.from_toml(DEMO.read_text(), str(DEMO))
    assert rules.default_tier == "normal"
    assert ("sh-hotel", "hotel") in rules.business_units
    assert rules.tier_ids == ["normal", "silver", "gold", "diamond"]


def test_error_names_file_line_and_field(tmp_path: Path) -> None:
    text = DEMO.read_text().replace('format = "hotel"', 'format = "spa"')
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(core_ext.RulesError) as info:
        core_ext.RuleSet.from_toml(text, str(bad))
    err = info.value
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if ln.strip() == 'format = "spa"')
    assert (err.file, err.line, err.field) == (str(bad), line, "business_units[1].format")
    assert "unknown format" in err.reason


def test_rules_check_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "check", str(DEMO)]) == 0
    assert "version demo-" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text(DEMO.read_text().replace("multiplier_pct = 150", "multiplier_pct = -1"))
    assert main(["rules", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:" in err and "tiers[2].multiplier_pct" in err
    assert main(["rules", "check", str(tmp_path / "missing.toml")]) == 2
