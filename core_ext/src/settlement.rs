//! Settlement between business units and merchants: the payment split (commission,
//! points offset reimbursed, net to the merchant) and the points pool, as
//! double-entry lines that sum to zero, in fen and in points, for every event.
//! Rounding: a share of an amount is allocated by largest remainder, so parts always
//! add up to the whole, to the fen; refunds take their cumulative share, so partial
//! refunds add up to exactly the original split.

use serde::Serialize;

/// One double-entry line. Accounts: "gateway" (money paid in), "merchant:<id>",
/// "bu:<id>" (a business unit's books), "pool" (the group's points pool), "members"
/// (points held by members).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Line {
    pub account: String,
    pub amount_fen: i64,
    pub points: i64,
}

impl Line {
    pub fn money(account: impl Into<String>, amount_fen: i64) -> Line {
        Line { account: account.into(), amount_fen, points: 0 }
    }

    pub fn points(account: impl Into<String>, points: i64) -> Line {
        Line { account: account.into(), amount_fen: 0, points }
    }
}

/// Splits `total` in proportion to `weights` (all >= 0): floors first, then one unit
/// each to the largest remainders (the first listed wins a tie). Sums to `total`.
pub fn largest_remainder(total: i64, weights: &[i64]) -> Vec<i64> {
    let sum: i128 = weights.iter().map(|&w| w as i128).sum();
    if sum == 0 {
        let mut out = vec![0; weights.len()];
        if let Some(first) = out.first_mut() {
            *first = total;
        }
        return out;
    }
    let mut out: Vec<i64> = Vec::with_capacity(weights.len());
    let mut rems: Vec<(i128, usize)> = Vec::with_capacity(weights.len());
    for (i, &w) in weights.iter().enumerate() {
        let exact = total as i128 * w as i128;
        out.push((exact / sum) as i64);
        rems.push((exact % sum, i));
    }
    let mut left = total - out.iter().sum::<i64>();
    rems.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, i) in rems {
        if left == 0 {
            break;
        }
        out[i] += 1;
        left -= 1;
    }
    out
}

/// What a payment's money becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Split {
    pub gross_fen: i64,
    /// The mall's commission (to the business unit's books).
    pub commission_fen: i64,
    /// What the merchant keeps of the gross.
    pub merchant_fen: i64,
    /// Points used at the till, valued at the business unit's rate: the pool pays
    /// it to the merchant on top.
    pub points_offset_fen: i64,
}

impl Split {
    pub fn payable_to_merchant(&self) -> i64 {
        self.merchant_fen + self.points_offset_fen
    }
}

/// How a share of an amount (a commission, a merchant's part of a coupon) is rounded
/// to the fen: `HalfUp` (the default, as the gateways round per-transaction fees) or
/// `Floor` (in the payer of the share's favour, the engine's behaviour before the setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rounding {
    #[default]
    HalfUp,
    Floor,
}

impl Rounding {
    /// `amount * num / den` rounded to the fen (`amount`, `num` >= 0, `den` > 0).
    pub fn share(self, amount: i64, num: i64, den: i64) -> i64 {
        let exact = amount as i128 * num as i128;
        let d = den as i128;
        (match self {
            Rounding::Floor => exact / d,
            Rounding::HalfUp => (2 * exact + d) / (2 * d),
        }) as i64
    }
}

/// The split of a payment of `gross_fen` under a contract of `commission_bp` basis
/// points with a minimum commission, and a points offset worth `points_offset_fen`.
pub fn split_payment(
    gross_fen: i64,
    commission_bp: i64,
    commission_min_fen: i64,
    points_offset_fen: i64,
    rounding: Rounding,
) -> Split {
    let by_rate = rounding.share(gross_fen, commission_bp, 10_000);
    let commission_fen = by_rate.max(commission_min_fen).min(gross_fen).max(0);
    Split { gross_fen, commission_fen, merchant_fen: gross_fen - commission_fen, points_offset_fen }
}

/// The part of `original` that a refund reverses, given what earlier refunds took:
/// each component's cumulative share of `refunded_after` (largest remainder over the
/// components) minus what was already reversed. A full refund, in one go or in
/// parts, reverses exactly the original.
pub fn split_refund(original: &Split, refunded_before_fen: i64, refund_fen: i64) -> Split {
    let share = |refunded: i64| {
        let gross = largest_remainder(refunded, &[original.commission_fen, original.merchant_fen]);
        let offset = if original.gross_fen == 0 {
            0
        } else {
            (original.points_offset_fen as i128 * refunded as i128 / original.gross_fen as i128) as i64
        };
        (gross[0], gross[1], offset)
    };
    let (c0, m0, o0) = share(refunded_before_fen);
    let (c1, m1, o1) = share(refunded_before_fen + refund_fen);
    Split { gross_fen: refund_fen, commission_fen: c1 - c0, merchant_fen: m1 - m0, points_offset_fen: o1 - o0 }
}

/// Lines of a payment at `bu`/`merchant`: the money split, the funding of the points
/// it earned (`funded_fen` from the business unit to the pool) and the points issued
/// and used. A refund passes a negative `sign` with its reversed split.
pub fn payment_lines(
    bu: &str,
    merchant: &str,
    split: &Split,
    earned_points: i64,
    funded_fen: i64,
    used_points: i64,
    sign: i64,
) -> Vec<Line> {
    let mut lines = vec![
        Line::money("gateway", -sign * split.gross_fen),
        Line::money(format!("merchant:{merchant}"), sign * split.payable_to_merchant()),
        Line::money(format!("bu:{bu}"), sign * split.commission_fen),
        Line::money("pool", -sign * split.points_offset_fen),
    ];
    if funded_fen != 0 {
        lines.push(Line::money(format!("bu:{bu}"), -sign * funded_fen));
        lines.push(Line::money("pool", sign * funded_fen));
    }
    if earned_points != 0 {
        lines.push(Line::points("members", sign * earned_points));
        lines.push(Line::points("pool", -sign * earned_points));
    }
    if used_points != 0 {
        lines.push(Line::points("members", -sign * used_points));
        lines.push(Line::points("pool", sign * used_points));
    }
    lines.retain(|l| l.amount_fen != 0 || l.points != 0);
    lines
}

/// Lines of points spent at `bu` (a redemption; negative `points` for a reversal):
/// the pool pays the business unit `paid_fen` for them.
pub fn spend_lines(bu: &str, points: i64, paid_fen: i64) -> Vec<Line> {
    let mut lines = vec![
        Line::points("members", -points),
        Line::points("pool", points),
        Line::money("pool", -paid_fen),
        Line::money(format!("bu:{bu}"), paid_fen),
    ];
    lines.retain(|l| l.amount_fen != 0 || l.points != 0);
    lines
}

/// Lines of expired points: they return to the pool; their funded value (breakage)
/// goes to `breakage_to` ("pool": stays there).
pub fn expiry_lines(points: i64, breakage_fen: i64, breakage_to: &str) -> Vec<Line> {
    let mut lines = vec![Line::points("members", -points), Line::points("pool", points)];
    if breakage_to != "pool" && breakage_fen != 0 {
        lines.push(Line::money("pool", -breakage_fen));
        lines.push(Line::money(format!("bu:{breakage_to}"), breakage_fen));
    }
    lines
}

/// `points` valued at `value_fen` per `per_points`, rounded down.
pub fn value_of(points: i64, value_fen: i64, per_points: i64) -> i64 {
    (points as i128 * value_fen as i128 / per_points as i128) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balanced(lines: &[Line]) -> bool {
        lines.iter().map(|l| l.amount_fen).sum::<i64>() == 0 && lines.iter().map(|l| l.points).sum::<i64>() == 0
    }

    #[test]
    fn largest_remainder_sums_to_the_total() {
        assert_eq!(largest_remainder(100, &[1, 1, 1]), vec![34, 33, 33]);
        assert_eq!(largest_remainder(1, &[3, 7]), vec![0, 1]);
        assert_eq!(largest_remainder(10, &[0, 0]), vec![10, 0]);
        assert_eq!(largest_remainder(0, &[5, 5]), vec![0, 0]);
    }

    #[test]
    fn split_with_rate_minimum_and_offset() {
        let s = split_payment(10_000, 550, 0, 300, Rounding::Floor);
        assert_eq!((s.commission_fen, s.merchant_fen, s.payable_to_merchant()), (550, 9_450, 9_750));
        let s = split_payment(1_000, 550, 100, 0, Rounding::Floor);
        assert_eq!(s.commission_fen, 100); // the minimum
        let s = split_payment(50, 550, 100, 0, Rounding::Floor);
        assert_eq!(s.commission_fen, 50); // never more than the payment
    }

    #[test]
    fn partial_refunds_add_up_to_the_original_split() {
        let s = split_payment(9_999, 333, 0, 777, Rounding::Floor);
        let mut before = 0;
        let mut total = Split::default();
        for part in [1_234, 4_321, 1, 4_443] {
            let r = split_refund(&s, before, part);
            assert_eq!(r.commission_fen + r.merchant_fen, part);
            before += part;
            total.commission_fen += r.commission_fen;
            total.merchant_fen += r.merchant_fen;
            total.points_offset_fen += r.points_offset_fen;
        }
        assert_eq!(
            (total.commission_fen, total.merchant_fen, total.points_offset_fen),
            (s.commission_fen, s.merchant_fen, s.points_offset_fen)
        );
    }

    #[test]
    fn every_event_balances() {
        let s = split_payment(12_345, 600, 200, 500, Rounding::Floor);
        assert!(balanced(&payment_lines("mall", "shop-1", &s, 123, 62, 500, 1)));
        let r = split_refund(&s, 0, 5_000);
        assert!(balanced(&payment_lines("mall", "shop-1", &r, 50, 25, 200, -1)));
        assert!(balanced(&spend_lines("cvs", 1_000, 5_000)));
        assert!(balanced(&expiry_lines(300, 150, "mall")));
        assert!(balanced(&expiry_lines(300, 150, "pool")));
    }
}

#[cfg(test)]
mod rounding_tests {
    use super::*;

    #[test]
    fn commission_rounds_half_up_by_default_and_floor_when_set() {
        // 14.55 yuan at 5%: 72.75 fen of commission.
        assert_eq!(split_payment(1_455, 500, 0, 0, Rounding::HalfUp).commission_fen, 73);
        assert_eq!(split_payment(1_455, 500, 0, 0, Rounding::Floor).commission_fen, 72);
        // Exactly half a fen goes up; below half goes down.
        assert_eq!(Rounding::HalfUp.share(10, 5, 100), 1);
        assert_eq!(Rounding::HalfUp.share(9, 5, 100), 0);
        assert_eq!(Rounding::HalfUp.share(1_234, 40, 100), 494);
        assert_eq!(Rounding::Floor.share(1_234, 40, 100), 493);
    }
}
