//! A car park as the rules file defines it (the compiled rules): what `rules.rs` holds
//! and `parking.rs` prices. Rules layer: it names nothing above it.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarPark {
    pub bu: String,
    pub free_minutes: i64,
    pub price_per_hour_fen: i64,
    /// Most one 24-hour period of parking costs.
    pub daily_cap_fen: i64,
    /// Where same-day spend earns free parking, and how much: (min spend fen, free minutes),
    /// the best matching step applies.
    pub spend_bu: Option<String>,
    pub spend_steps: Vec<(i64, i64)>,
}
