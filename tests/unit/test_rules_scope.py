"""What a BU operator may change in the rules (streams/rules_scope.py)."""

from __future__ import annotations

from streams.rules_scope import changes_outside

BASE = """
version = "v1"
[caps]
daily_points = 5000
[[campaigns]]
id = "mall-weekend"
bus = ["sh-mall"]
bonus_points = 10
[[campaigns]]
id = "group-day"
bonus_points = 5
[[merchants]]
id = "shop-1"
bu = "sh-mall"
category = "food"
"""


def test_a_bu_operator_may_change_only_their_bu_s_own_entries() -> None:
    mine = BASE.replace("bonus_points = 10", "bonus_points = 20")
    assert changes_outside(BASE, mine, "sh-mall") == []
    added = mine + '[[campaigns]]\nid = "mall-night"\nbus = ["sh-mall"]\nbonus_points = 3\n'
    assert changes_outside(BASE, added, "sh-mall") == []
    assert changes_outside(BASE, mine, "sh-hotel") == ["campaigns[id=mall-weekend]"]
    group = BASE.replace("bonus_points = 5", "bonus_points = 6")
    assert changes_outside(BASE, group, "sh-mall") == ["campaigns[id=group-day]"]
    assert changes_outside(BASE, BASE.replace("5000", "6000"), "sh-mall") == ["caps"]
    # The version string names the text: anyone who publishes may (and should) change it.
    assert changes_outside(BASE, BASE.replace('version = "v1"', 'version = "v2"'), "sh-mall") == []
    # Moving an entry out of the BU (or into it from another) is not the BU's alone.
    moved = BASE.replace('bus = ["sh-mall"]', 'bus = ["sh-mall", "sh-hotel"]')
    assert changes_outside(BASE, moved, "sh-mall") == ["campaigns[id=mall-weekend]"]
    merchant = BASE.replace('category = "food"', 'category = "fashion"')
    assert changes_outside(BASE, merchant, "sh-mall") == []
    removed = BASE.replace('[[merchants]]\nid = "shop-1"\nbu = "sh-mall"\ncategory = "food"\n', "")
    assert changes_outside(BASE, removed, "sh-mall") == []
    assert changes_outside(BASE, removed, "sh-hotel") == ["merchants[id=shop-1]"]


def test_a_merchant_is_added_or_replaced_in_the_text_with_its_comments_kept() -> None:
    from streams.rules_scope import merchants_of, with_merchant

    text = BASE.replace('category = "food"', 'category = "food"   # the food court')
    added = with_merchant(text, {"id": "shop-2", "bu": "sh-mall", "category": "fashion", "commission_bp": 300})
    assert "# the food court" in added
    assert [m["id"] for m in merchants_of(added)] == ["shop-1", "shop-2"]
    assert merchants_of(added)[1]["commission_bp"] == 300
    edited = with_merchant(added, {"id": "shop-1", "bu": "sh-mall", "category": "jewelry", "points": 2,
                                   "per_fen": 100, "name": ""})
    got = merchants_of(edited)
    assert [m["id"] for m in got] == ["shop-1", "shop-2"] and got[0]["category"] == "jewelry" and got[0]["points"] == 2
    assert got[0]["name"] is None, "an empty field is left out"
    assert changes_outside(text, edited, "sh-mall") == []
    import pytest

    for bad, msg in [({"bu": "x"}, "id: required"), ({"id": "s", "points": "2"}, "integer"),
                     ({"id": "s", "colour": "red"}, "unknown fields")]:
        with pytest.raises(ValueError, match=msg):
            with_merchant(text, bad)
