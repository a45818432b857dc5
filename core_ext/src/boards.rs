//! Leaderboards: a member's points per period (ISO week, calendar month in the group's
//! local time), group-wide and per business unit, for the boards the rules define.
//! The member state keeps the absolute score of each current board; the ledger row of
//! the event carries it with a version, and the leaderboard consumer of the ledger topic
//! takes the newest version (so a redelivered or reordered message changes nothing twice).

use crate::rules::RuleSet;
use crate::state::MemberState;
use chrono::Datelike;

/// The boards the rules define that an event at `bu_id`, `at_ms` counts on.
pub fn boards_of(rules: &RuleSet, bu_id: &str, at_ms: i64) -> Vec<String> {
    let defs = &rules.engagement.leaderboards;
    if defs.is_empty() {
        return Vec::new();
    }
    let Some(local) = local_time(at_ms, rules.utc_offset_minutes) else {
        return Vec::new();
    };
    defs.iter().map(|d| board_name(&local, d.monthly, d.per_bu, bu_id)).collect()
}

/// Every board any rules could define that an event at `bu_id`, `at_ms` counts on (the
/// week's and the month's, group-wide and the business unit's): an erasure takes the
/// member off each of them without knowing which rules scored it.
pub fn candidate_boards(bu_id: &str, at_ms: i64, utc_offset_minutes: i64) -> Vec<String> {
    let Some(local) = local_time(at_ms, utc_offset_minutes) else {
        return Vec::new();
    };
    [(false, false), (false, true), (true, false), (true, true)]
        .iter()
        .map(|&(monthly, per_bu)| board_name(&local, monthly, per_bu, bu_id))
        .collect()
}

fn local_time(at_ms: i64, utc_offset_minutes: i64) -> Option<chrono::NaiveDateTime> {
    chrono::DateTime::from_timestamp_millis(at_ms + utc_offset_minutes * 60_000).map(|t| t.naive_utc())
}

/// A board's name: its period (`w:2026-W48`, `m:2026-11`) and scope (`all`, `bu:<id>`).
fn board_name(local: &chrono::NaiveDateTime, monthly: bool, per_bu: bool, bu_id: &str) -> String {
    let period = if monthly {
        format!("m:{}-{:02}", local.year(), local.month())
    } else {
        let w = local.iso_week();
        format!("w:{}-W{:02}", w.year(), w.week())
    };
    if per_bu {
        format!("{period}:bu:{bu_id}")
    } else {
        format!("{period}:all")
    }
}

/// Adds `delta` to the member's score on each board an event counts on; returns the
/// boards with their new absolute scores. Only the two newest periods of each kind stay.
pub fn score(rules: &RuleSet, state: &mut MemberState, bu_id: &str, at_ms: i64, delta: i64) -> Vec<(String, i64)> {
    if delta == 0 {
        return Vec::new();
    }
    let names = boards_of(rules, bu_id, at_ms);
    if names.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(names.len());
    let mut new_period = false;
    for name in names {
        let s = match state.boards.get_mut(&name) {
            Some(s) => s,
            None => {
                new_period = true;
                state.boards.entry(name.clone()).or_insert(0)
            }
        };
        *s += delta;
        out.push((name, *s));
    }
    if !new_period {
        return out;
    }
    for kind in ["w:", "m:"] {
        let mut periods: Vec<&str> =
            state.boards.keys().filter(|k| k.starts_with(kind)).filter_map(|k| k.split(':').nth(1)).collect();
        periods.sort_unstable();
        periods.dedup();
        if periods.len() > 2 {
            let keep_from = periods[periods.len() - 2].to_string();
            state.boards.retain(|k, _| !k.starts_with(kind) || k.split(':').nth(1).is_some_and(|p| p >= keep_from.as_str()));
        }
    }
    out
}

/// The shard of a board a member's score lives in (boards are sharded by member, so no
/// single key takes every payment's score; reads sum the shards).
pub fn shard(member: &str, shards: u32) -> u32 {
    (crate::record::fnv1a(member.as_bytes()) % shards.max(1) as u64) as u32
}

/// The keys of a board shard: its sorted set and its versions hash (one slot).
pub fn shard_keys(ns: &str, board: &str, shard: u32) -> [String; 2] {
    [format!("{ns}:lb:{{{board}#{shard}}}"), format!("{ns}:lbv:{{{board}#{shard}}}")]
}

/// A leaderboard update: (board, member, absolute score, version).
pub type Update = (String, String, i64, i64);

/// `ly_board` calls for updates: one per board shard.
pub fn commands(ns: &str, updates: &[Update], shards: u32, ttl_s: i64) -> Vec<Vec<u8>> {
    let mut by: std::collections::BTreeMap<(&str, u32), Vec<&Update>> = Default::default();
    for u in updates {
        by.entry((u.0.as_str(), shard(&u.1, shards))).or_default().push(u);
    }
    by.into_iter()
        .map(|((board, s), items)| {
            let [z, v] = shard_keys(ns, board, s);
            let mut c = crate::resp::Command::new("FCALL");
            c.str("ly_board").int(2).key(&z).key(&v).int(ttl_s);
            for (_, member, score, version) in items {
                c.str(member).int(*score).int(*version);
            }
            c.bytes()
        })
        .collect()
}

/// The version a board score carries: the member's sequence number after the write, then
/// the event's place in the batch, so later writes of a member always carry more.
pub fn version(seq_after: i64, index: usize) -> i64 {
    (seq_after << 20) | (index as i64 & 0xF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(boards: &str) -> RuleSet {
        let text = format!(
            r#"version = "b"
utc_offset_minutes = 480
[formats.mall]
points = 1
per_fen = 100
[[business_units]]
id = "mall-a"
format = "mall"
[[tiers]]
id = "normal"
multiplier_pct = 100
{boards}"#
        );
        RuleSet::from_toml(&text, "b.toml").unwrap()
    }

    #[test]
    fn scores_per_period_and_scope_only_for_defined_boards() {
        let none = rules("");
        let mut st = MemberState::default();
        assert!(score(&none, &mut st, "mall-a", 0, 10).is_empty());
        assert!(st.boards.is_empty());

        let r = rules(
            "[[leaderboards]]\nperiod = \"week\"\nscope = \"group\"\n[[leaderboards]]\nperiod = \"month\"\nscope = \"bu\"\n",
        );
        // 2026-11-29 23:30 +08:00 is a Sunday of ISO week 48; two days later is week 49, December.
        let sun = crate::time::parse_instant_ms("2026-11-29T23:30:00+08:00").unwrap();
        let got = score(&r, &mut st, "mall-a", sun, 100);
        assert_eq!(got, vec![("w:2026-W48:all".to_string(), 100), ("m:2026-11:bu:mall-a".to_string(), 100)]);
        let got = score(&r, &mut st, "mall-a", sun, -30);
        assert_eq!(got[0].1, 70);
        let mon = sun + 49 * 3_600_000; // Tuesday 2026-12-02 00:30
        let got = score(&r, &mut st, "mall-a", mon, 5);
        assert_eq!(got, vec![("w:2026-W49:all".to_string(), 5), ("m:2026-12:bu:mall-a".to_string(), 5)]);
        // A third period of each kind drops the oldest.
        score(&r, &mut st, "mall-a", mon + 8 * 86_400_000 + 31 * 86_400_000, 1);
        assert!(!st.boards.contains_key("w:2026-W48:all") && !st.boards.contains_key("m:2026-11:bu:mall-a"));
        assert!(st.boards.contains_key("w:2026-W49:all") && st.boards.contains_key("m:2026-12:bu:mall-a"));
        assert!(version(3, 7) > version(2, 1_000_000) && version(3, 8) > version(3, 7));
    }

    #[test]
    fn candidates_hold_every_board_the_rules_could_score() {
        let r = rules(
            "[[leaderboards]]\nperiod = \"week\"\nscope = \"group\"\n[[leaderboards]]\nperiod = \"month\"\nscope = \"bu\"\n",
        );
        // 2026-11-30 23:30 +08:00 is Monday of week 49 locally, still November; in UTC it is 15:30.
        let at = crate::time::parse_instant_ms("2026-11-30T23:30:00+08:00").unwrap();
        let all = candidate_boards("mall-a", at, 480);
        assert_eq!(all, vec!["w:2026-W49:all", "w:2026-W49:bu:mall-a", "m:2026-11:all", "m:2026-11:bu:mall-a"]);
        for name in boards_of(&r, "mall-a", at) {
            assert!(all.contains(&name), "{name} not among the candidates");
        }
        // The local day decides: at +00:00 the same instant is still Monday 15:30, at -16:00 Sunday (week 48).
        assert_eq!(candidate_boards("mall-a", at, -960)[0], "w:2026-W48:all");
    }

    #[test]
    fn a_board_defined_twice_is_refused() {
        let text = "[[leaderboards]]\nperiod = \"week\"\nscope = \"group\"\n[[leaderboards]]\nperiod = \"week\"\nscope = \"group\"\n";
        let err = RuleSet::from_toml(&format!("version = \"b\"\n[formats.mall]\npoints = 1\nper_fen = 100\n[[tiers]]\nid = \"n\"\nmultiplier_pct = 100\n{text}"), "b.toml")
            .unwrap_err();
        assert!(err.to_string().contains("leaderboards[1].period"), "{err}");
        let bad = RuleSet::from_toml("version = \"b\"\n[formats.mall]\npoints = 1\nper_fen = 100\n[[tiers]]\nid = \"n\"\nmultiplier_pct = 100\n[[leaderboards]]\nperiod = \"day\"\nscope = \"group\"\n", "b.toml").unwrap_err();
        assert!(bad.to_string().contains("\"day\" is not week or month"), "{bad}");
    }
}
