//! The earning rule set: loaded from TOML, validated once, compiled into lookup
//! tables. Every error names the file, the line and the field.

use crate::errors::{CoreError, CoreResult};
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use toml::Spanned;

/// How a fractional point is turned into an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rounding {
    Floor,
    HalfUp,
    Ceil,
}

impl Rounding {
    /// `num / den` for `num >= 0`, `den > 0`, rounded by this rule.
    pub fn divide(self, num: i128, den: i128) -> i128 {
        debug_assert!(num >= 0 && den > 0);
        match self {
            Rounding::Floor => num / den,
            Rounding::Ceil => (num + den - 1) / den,
            Rounding::HalfUp => (2 * num + den) / (2 * den),
        }
    }
}

/// An earning rate without floats: `points` points for every `per_fen` fen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub points: i64,
    pub per_fen: i64,
}

#[derive(Debug, Clone)]
pub struct BusinessUnit {
    pub id: String,
    pub format: String,
    pub rate: Option<Rate>,
}

#[derive(Debug, Clone)]
pub struct CategoryRule {
    pub formats: Option<HashSet<String>>,
    pub excluded: bool,
    pub rate: Option<Rate>,
}

#[derive(Debug, Clone)]
pub struct Tier {
    pub id: String,
    /// Earning multiplier in percent (150 = 1.5x).
    pub multiplier_pct: i64,
}

#[derive(Debug, Clone)]
pub struct RuleSet {
    pub version: String,
    pub rounding: Rounding,
    pub formats: HashMap<String, Rate>,
    pub business_units: HashMap<String, BusinessUnit>,
    pub categories: HashMap<String, Vec<CategoryRule>>,
    pub tiers: Vec<Tier>,
}

// ---- the file as written -------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuleSet {
    version: Spanned<String>,
    #[serde(default = "default_rounding")]
    rounding: Rounding,
    formats: HashMap<String, RawRate>,
    #[serde(default)]
    business_units: Vec<RawBusinessUnit>,
    #[serde(default)]
    categories: Vec<RawCategory>,
    tiers: Spanned<Vec<RawTier>>,
}

fn default_rounding() -> Rounding {
    Rounding::Floor
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    points: Spanned<i64>,
    per_fen: Spanned<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBusinessUnit {
    id: Spanned<String>,
    format: Spanned<String>,
    #[serde(default)]
    name: Option<String>,
    points: Option<Spanned<i64>>,
    per_fen: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCategory {
    id: Spanned<String>,
    #[serde(default)]
    formats: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    excluded: bool,
    points: Option<Spanned<i64>>,
    per_fen: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    id: Spanned<String>,
    multiplier_pct: Spanned<i64>,
}

// ---- loading -------------------------------------------------------------------

struct Source<'a> {
    file: &'a str,
    text: &'a str,
}

impl Source<'_> {
    fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())].matches('\n').count() + 1
    }

    fn err<T>(&self, span: std::ops::Range<usize>, field: &str, reason: impl Into<String>) -> CoreResult<T> {
        Err(CoreError::InvalidRules {
            file: self.file.to_string(),
            line: self.line_of(span.start),
            field: field.to_string(),
            reason: reason.into(),
        })
    }

    /// The dotted path of the key on the line of `offset`, from the nearest table
    /// header above it: used to name the field of a serde error.
    fn field_at(&self, offset: usize) -> String {
        let start = offset.min(self.text.len());
        let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[start..].find('\n').map_or(self.text.len(), |i| start + i);
        let line = self.text[line_start..line_end].trim();
        let key = line.split('=').next().unwrap_or("").trim();
        let header = self.text[..line_start]
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.starts_with('['))
            .map(|l| l.trim_matches(|c| c == '[' || c == ']').to_string());
        match (header, key.is_empty() || line.starts_with('[')) {
            (Some(h), false) => format!("{h}.{key}"),
            (Some(h), true) => h,
            (None, false) => key.to_string(),
            (None, true) => "(top level)".to_string(),
        }
    }
}

fn check_rate(src: &Source, field: &str, points: &Spanned<i64>, per_fen: &Spanned<i64>) -> CoreResult<Rate> {
    if !(0..=10_000).contains(points.get_ref()) {
        return src.err(points.span(), &format!("{field}.points"), "must be between 0 and 10000");
    }
    if !(1..=100_000_000).contains(per_fen.get_ref()) {
        return src.err(per_fen.span(), &format!("{field}.per_fen"), "must be between 1 and 100000000 fen");
    }
    Ok(Rate {
        points: *points.get_ref(),
        per_fen: *per_fen.get_ref(),
    })
}

fn optional_rate(
    src: &Source,
    field: &str,
    at: std::ops::Range<usize>,
    points: &Option<Spanned<i64>>,
    per_fen: &Option<Spanned<i64>>,
) -> CoreResult<Option<Rate>> {
    match (points, per_fen) {
        (None, None) => Ok(None),
        (Some(p), Some(f)) => check_rate(src, field, p, f).map(Some),
        _ => src.err(at, field, "set both points and per_fen, or neither"),
    }
}

fn check_rule_id(src: &Source, field: &str, id: &Spanned<String>) -> CoreResult<()> {
    crate::events::check_id(field, id.get_ref())
        .or_else(|e| src.err(id.span(), field, e.reason().to_string()))
}

impl RuleSet {
    /// Parses and validates a TOML rule set. `file` is only used in error messages.
    pub fn from_toml(text: &str, file: &str) -> CoreResult<RuleSet> {
        let src = Source { file, text };
        let raw: RawRuleSet = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            CoreError::InvalidRules {
                file: file.to_string(),
                line: src.line_of(offset),
                field: src.field_at(offset),
                reason: e.message().trim().to_string(),
            }
        })?;

        if raw.version.get_ref().trim().is_empty() {
            return src.err(raw.version.span(), "version", "must not be empty");
        }

        let mut formats = HashMap::new();
        for (name, rate) in &raw.formats {
            check_rule_id(&src, &format!("formats.{name}"), &Spanned::new(rate.points.span(), name.clone()))?;
            formats.insert(name.clone(), check_rate(&src, &format!("formats.{name}"), &rate.points, &rate.per_fen)?);
        }

        let mut business_units = HashMap::new();
        for (i, bu) in raw.business_units.iter().enumerate() {
            let field = format!("business_units[{i}]");
            check_rule_id(&src, &format!("{field}.id"), &bu.id)?;
            if !formats.contains_key(bu.format.get_ref()) {
                return src.err(
                    bu.format.span(),
                    &format!("{field}.format"),
                    format!("unknown format {:?} (define it under [formats])", bu.format.get_ref()),
                );
            }
            let rate = optional_rate(&src, &field, bu.id.span(), &bu.points, &bu.per_fen)?;
            let _ = &bu.name;
            let unit = BusinessUnit {
                id: bu.id.get_ref().clone(),
                format: bu.format.get_ref().clone(),
                rate,
            };
            if business_units.insert(unit.id.clone(), unit).is_some() {
                return src.err(bu.id.span(), &format!("{field}.id"), format!("duplicate business unit {:?}", bu.id.get_ref()));
            }
        }

        let mut categories: HashMap<String, Vec<CategoryRule>> = HashMap::new();
        for (i, cat) in raw.categories.iter().enumerate() {
            let field = format!("categories[{i}]");
            check_rule_id(&src, &format!("{field}.id"), &cat.id)?;
            let scope = match &cat.formats {
                None => None,
                Some(list) => {
                    for f in list.get_ref() {
                        if !formats.contains_key(f) {
                            return src.err(list.span(), &format!("{field}.formats"), format!("unknown format {f:?}"));
                        }
                    }
                    Some(list.get_ref().iter().cloned().collect::<HashSet<_>>())
                }
            };
            let rate = optional_rate(&src, &field, cat.id.span(), &cat.points, &cat.per_fen)?;
            if cat.excluded && rate.is_some() {
                return src.err(cat.id.span(), &field, "an excluded category cannot also have a rate");
            }
            if !cat.excluded && rate.is_none() {
                return src.err(cat.id.span(), &field, "set excluded = true, or points and per_fen");
            }
            categories.entry(cat.id.get_ref().clone()).or_default().push(CategoryRule {
                formats: scope,
                excluded: cat.excluded,
                rate,
            });
        }

        if raw.tiers.get_ref().is_empty() {
            return src.err(raw.tiers.span(), "tiers", "at least one tier is required (the first is the default)");
        }
        let mut tiers: Vec<Tier> = Vec::new();
        for (i, t) in raw.tiers.get_ref().iter().enumerate() {
            let field = format!("tiers[{i}]");
            check_rule_id(&src, &format!("{field}.id"), &t.id)?;
            if !(0..=10_000).contains(t.multiplier_pct.get_ref()) {
                return src.err(t.multiplier_pct.span(), &format!("{field}.multiplier_pct"), "must be between 0 and 10000 (percent)");
            }
            if tiers.iter().any(|x| &x.id == t.id.get_ref()) {
                return src.err(t.id.span(), &format!("{field}.id"), format!("duplicate tier {:?}", t.id.get_ref()));
            }
            tiers.push(Tier {
                id: t.id.get_ref().clone(),
                multiplier_pct: *t.multiplier_pct.get_ref(),
            });
        }

        Ok(RuleSet {
            version: raw.version.get_ref().trim().to_string(),
            rounding: raw.rounding,
            formats,
            business_units,
            categories,
            tiers,
        })
    }

    pub fn default_tier(&self) -> &Tier {
        &self.tiers[0]
    }

    /// The tier a member earns at; an unknown or missing tier earns at the default.
    pub fn tier(&self, id: Option<&str>) -> &Tier {
        id.and_then(|id| self.tiers.iter().find(|t| t.id == id))
            .unwrap_or_else(|| self.default_tier())
    }

    /// The base earning rate of a payment, or `None` when it earns nothing
    /// (excluded category). Category beats business unit beats format.
    pub fn base_rate(&self, bu: &BusinessUnit, category: &str) -> Option<Rate> {
        if let Some(rules) = self.categories.get(category) {
            if let Some(rule) = rules
                .iter()
                .find(|r| r.formats.as_ref().is_none_or(|f| f.contains(&bu.format)))
            {
                return if rule.excluded { None } else { rule.rate };
            }
        }
        bu.rate.or_else(|| self.formats.get(&bu.format).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const SAMPLE: &str = r#"
version = "t-1"
rounding = "floor"

[formats.mall]
points = 1
per_fen = 100

[formats.hotel]
points = 2
per_fen = 100

[[business_units]]
id = "mall-01"
format = "mall"

[[business_units]]
id = "hotel-01"
format = "hotel"

[[categories]]
id = "tobacco"
excluded = true

[[categories]]
id = "jewelry"
formats = ["mall"]
points = 1
per_fen = 200

[[tiers]]
id = "normal"
multiplier_pct = 100

[[tiers]]
id = "gold"
multiplier_pct = 150
"#;

    #[test]
    fn loads_the_sample() {
        let r = RuleSet::from_toml(SAMPLE, "rules.toml").unwrap();
        assert_eq!(r.version, "t-1");
        assert_eq!(r.tiers.len(), 2);
        let mall = &r.business_units["mall-01"];
        assert_eq!(r.base_rate(mall, "fashion"), Some(Rate { points: 1, per_fen: 100 }));
        assert_eq!(r.base_rate(mall, "jewelry"), Some(Rate { points: 1, per_fen: 200 }));
        assert_eq!(r.base_rate(mall, "tobacco"), None);
        let hotel = &r.business_units["hotel-01"];
        // The jewelry rate is scoped to malls: the hotel earns its format rate.
        assert_eq!(r.base_rate(hotel, "jewelry"), Some(Rate { points: 2, per_fen: 100 }));
        assert_eq!(r.tier(Some("nope")).id, "normal");
    }

    fn error_of(text: &str) -> (usize, String, String) {
        match RuleSet::from_toml(text, "r.toml").unwrap_err() {
            CoreError::InvalidRules { line, field, reason, .. } => (line, field, reason),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn errors_name_line_and_field() {
        let bad = SAMPLE.replace("format = \"hotel\"", "format = \"spa\"");
        let (line, field, reason) = error_of(&bad);
        assert_eq!(field, "business_units[1].format");
        assert_eq!(line, 19);
        assert!(reason.contains("unknown format"), "{reason}");

        let bad = SAMPLE.replace("multiplier_pct = 150", "multiplier_pct = \"x\"");
        let (line, field, _) = error_of(&bad);
        assert_eq!((line, field.as_str()), (37, "tiers.multiplier_pct"));

        let bad = SAMPLE.replace("per_fen = 200", "per_fen = 0");
        let (line, field, _) = error_of(&bad);
        assert_eq!((line, field.as_str()), (29, "categories[1].per_fen"));

        let bad = SAMPLE.replace("rounding = \"floor\"", "roundng = \"floor\"");
        let (line, field, reason) = error_of(&bad);
        assert_eq!((line, field.as_str()), (3, "roundng"));
        assert!(reason.contains("unknown field"), "{reason}");
    }

    #[test]
    fn rounding_rules() {
        assert_eq!(Rounding::Floor.divide(199, 100), 1);
        assert_eq!(Rounding::Ceil.divide(101, 100), 2);
        assert_eq!(Rounding::Ceil.divide(100, 100), 1);
        assert_eq!(Rounding::HalfUp.divide(150, 100), 2);
        assert_eq!(Rounding::HalfUp.divide(149, 100), 1);
    }
}
