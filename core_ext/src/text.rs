//! Optional text fields read without a copy when they can be.
//!
//! serde's derive borrows a bare `Cow<'a, str>` field from the input (with
//! `#[serde(borrow)]`), but an `Option<Cow<'a, str>>` is always deserialised as an owned
//! copy: every optional text of a ledger row cost an allocation and a free. `opt_cow`
//! borrows an optional text that has no escapes and copies only the others.

use serde::de::{Deserializer, Error, Visitor};
use std::borrow::Cow;
use std::fmt;

/// For `#[serde(borrow, default, deserialize_with = "crate::text::opt_cow")]` on an
/// `Option<Cow<'a, str>>` field: absent or null is None, a string without escapes is
/// borrowed, one with escapes is unescaped into an owned copy.
pub fn opt_cow<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'a, str>>, D::Error> {
    d.deserialize_option(OptText)
}

struct OptText;
struct Text;

impl<'de> Visitor<'de> for OptText {
    type Value = Option<Cow<'de, str>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or null")
    }

    fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(Text).map(Some)
    }
}

impl<'de> Visitor<'de> for Text {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Plain<'a> {
        #[serde(borrow)]
        a: Option<Cow<'a, str>>,
    }

    #[derive(Deserialize)]
    struct Opt<'a> {
        #[serde(borrow, default, deserialize_with = "opt_cow")]
        a: Option<Cow<'a, str>>,
        #[serde(borrow, default, deserialize_with = "opt_cow")]
        b: Option<Cow<'a, str>>,
    }

    #[test]
    fn serde_alone_copies_an_optional_text_and_opt_cow_borrows_it() {
        let json = r#"{"a":"m-001","b":null}"#;
        let plain: Plain = serde_json::from_str(json).unwrap();
        assert!(matches!(plain.a, Some(Cow::Owned(_))), "serde's derive changed: Option<Cow> now borrows");
        let ours: Opt = serde_json::from_str(json).unwrap();
        assert!(matches!(ours.a, Some(Cow::Borrowed("m-001"))));
        assert_eq!(ours.b, None);
    }

    #[test]
    fn an_escaped_or_absent_text_and_a_wrong_type() {
        let ours: Opt = serde_json::from_str(r#"{"a":"say \"hi\"\n"}"#).unwrap();
        assert!(matches!(&ours.a, Some(Cow::Owned(s)) if s == "say \"hi\"\n"));
        assert_eq!(ours.b, None);
        let ours: Opt = serde_json::from_str("{}").unwrap();
        assert_eq!((ours.a, ours.b), (None, None));
        let err = serde_json::from_str::<Opt>(r#"{"a":12}"#).err().expect("a number is not a text");
        assert!(err.to_string().contains("expected a string"), "{err}");
    }
}
