//! Engagement rules (seeds 001-004): games with prize pools, sign-in plans,
//! burn-side promotions, partner exchange, stored value, channel earning rates and
//! profile rewards, as validated (the compiled rules; their loader is rules_file/engagement.rs).

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

/// Odds are written in parts per million; what the prizes leave is "thanks for playing".
pub const ODDS_TOTAL: i64 = 1_000_000;
pub const GAME_KINDS: [&str; 5] = ["wheel", "golden_egg", "scratch_card", "nine_grid", "cards"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reward {
    Points(i64),
    /// A coupon of this template (an `item` template is a physical item voucher).
    Coupon(String),
    /// A card of a collection game.
    Card(String),
}

#[derive(Debug, Clone)]
pub struct Prize {
    pub id: String,
    pub odds_ppm: i64,
    /// Units the whole group may give (None: unlimited); taken atomically in Redis.
    pub stock: Option<i64>,
    pub reward: Reward,
}

#[derive(Debug, Clone)]
pub struct Game {
    pub id: String,
    pub kind: String,
    pub cost_points: i64,
    pub daily_limit: Option<i64>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub prizes: Vec<Prize>,
    /// Card games: the reward when every card of the set is held.
    pub set_reward_points: i64,
    pub set_reward_coupon: Option<String>,
}

impl Game {
    /// The distinct cards of a collection game, in file order.
    pub fn cards(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for p in &self.prizes {
            if let Reward::Card(c) = &p.reward {
                if !out.contains(&c.as_str()) {
                    out.push(c);
                }
            }
        }
        out
    }
}

/// The budget id under which a prize's stock is taken (one atomic Lua step).
pub fn prize_budget_id(game: &str, prize: &str) -> String {
    format!("prize:{game}:{prize}")
}

#[derive(Debug, Clone)]
pub struct Contract {
    pub min_stake: i64,
    pub max_stake: i64,
    /// Bonus on a kept contract, percent of the stake.
    pub bonus_pct: i64,
}

#[derive(Debug, Clone)]
pub struct SignInPlan {
    pub id: String,
    pub cycle_days: i64,
    /// Points for the 1st, 2nd, ... consecutive day of a cycle.
    pub rewards: Vec<i64>,
    pub makeup_cost_points: Option<i64>,
    pub makeup_max_per_cycle: i64,
    pub contract: Option<Contract>,
}

#[derive(Debug, Clone, Default)]
pub struct BurnPromotion {
    pub id: String,
    /// Where the points are spent (None: anywhere).
    pub kinds: Option<HashSet<String>>,
    pub bus: Option<HashSet<String>>,
    pub formats: Option<HashSet<String>>,
    pub categories: Option<HashSet<String>>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// Value of a point spent, percent of the normal rate (200: worth double).
    pub value_pct: i64,
    /// Points price of a points-mall exchange, percent of the list price (80: 20% off).
    pub price_pct: i64,
    /// Where the points must have been earned, and how recently (value promotions).
    pub earned_bus: Option<HashSet<String>>,
    pub earned_formats: Option<HashSet<String>>,
    pub earned_within_days: i64,
    /// Who pays the extra value: a business unit id, or "pool".
    pub funded_by: String,
}

impl BurnPromotion {
    pub fn needs_origin(&self) -> bool {
        self.earned_bus.is_some() || self.earned_formats.is_some()
    }
}

#[derive(Debug, Clone)]
pub struct Partner {
    pub id: String,
    pub kind: String,
    /// Points for one partner unit (a mile, a bank point) going out, and coming in.
    pub points_per_unit_out: Option<i64>,
    pub points_per_unit_in: Option<i64>,
    /// What one partner unit costs (out) or pays (in), for settlement.
    pub unit_value_fen: i64,
    /// Points a member may send out / receive per local day (per direction).
    pub daily_limit_points: i64,
    /// How long an exchange out waits for the partner's answer (ms) before the wallet
    /// check fails it and gives the points back.
    pub answer_wait_ms: i64,
}

#[derive(Debug, Clone)]
pub struct StoredValue {
    pub max_balance_fen: i64,
    pub max_topup_fen: i64,
}

#[derive(Debug, Clone)]
pub struct ProfileReward {
    pub id: String,
    pub fields: Vec<String>,
    pub points: i64,
}

pub use crate::events::PROFILE_FIELDS;

/// The kinds of redemption (`POST /v1/redemptions` `kind`) that rules may name.
pub const REDEMPTION_KINDS: [&str; 5] = ["cash_offset", "parking_offset", "mall_exchange", "lottery", "benefit"];

#[derive(Debug, Clone, Default)]
pub struct Engagement {
    pub games: HashMap<String, Game>,
    pub sign_in_plans: HashMap<String, SignInPlan>,
    pub burn_promotions: Vec<BurnPromotion>,
    /// The longest `earned_within_days` of the promotions that look at origin (0: none).
    pub origin_window_days: i64,
    pub partners: HashMap<String, Partner>,
    pub stored_value: Option<StoredValue>,
    /// Earning multiplier in percent by payment channel (e.g. stored_value = 150).
    pub channel_multiplier_pct: HashMap<String, i64>,
    pub profile_rewards: Vec<ProfileReward>,
    /// Leaderboards the rules define (none: no scores are kept).
    pub leaderboards: Vec<Leaderboard>,
    /// The points mall's catalogue (积分商城), by item id.
    pub mall_items: HashMap<String, MallItem>,
    pub receipts: Option<ReceiptRules>,
    /// Members' events with sign-up (e.g. a high-value members' salon), by id.
    pub gatherings: HashMap<String, Gathering>,
    /// Scheduled and recurring campaigns, in the file's order.
    pub scheduled: Vec<ScheduledCampaign>,
    /// Saved audiences (`[audiences.<id>]`), by id.
    pub audiences: std::collections::BTreeMap<String, CampaignAudience>,
    pub frequency_cap: Option<FrequencyCap>,
}

/// A members' event (`[[member_events]]`): seats, who may come, its cost, when to sign up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gathering {
    pub id: String,
    pub name: String,
    /// Seats; a sign-up when they are taken joins the waitlist.
    pub capacity: i64,
    /// Points a seat costs (0: free), given back on a cancellation, kept on a no-show.
    pub points: i64,
    pub tiers: Option<rustc_hash::FxHashSet<String>>,
    pub tags: Option<rustc_hash::FxHashSet<String>>,
    pub signup_from_ms: Option<i64>,
    pub signup_to_ms: i64,
    pub starts_ms: i64,
    pub ends_ms: i64,
    /// A member who did not come may not sign up for an event for this many days.
    pub no_show_ban_days: i64,
}

/// The budget id of a members' event's seats.
pub fn seats_budget_id(event: &str) -> String {
    format!("event:{event}")
}

/// What a points-mall item gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MallKind {
    /// Goods picked up at (or shipped by) the supplying business unit: an order with states.
    Goods,
    /// A scarce benefit (a lounge pass, a private shopping hour): an order like goods.
    Benefit,
    /// A coupon of a template, issued into the wallet at once.
    Coupon(String),
    /// Free parking: a coupon of a parking template, which the car park's fee uses.
    Parking(String),
}

/// A points-mall item (`[[mall_items]]`): its price, stock, limits, audience and window.
#[derive(Debug, Clone)]
pub struct MallItem {
    pub id: String,
    pub name: String,
    pub kind: MallKind,
    pub points: i64,
    /// Units the whole group may sell (None: unlimited); taken atomically in Redis.
    pub stock: Option<i64>,
    /// Per member in total, and per member per local day (a flash sale: 1 in total).
    pub per_member_limit: Option<i64>,
    pub per_day_limit: Option<i64>,
    /// Only these tiers may buy it (None: every tier).
    pub tiers: Option<rustc_hash::FxHashSet<String>>,
    /// The business unit that supplies it: paid `value_fen` from the points pool per unit.
    pub bu: String,
    pub value_fen: i64,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// A flash sale (积分秒杀): a start time, a limited stock, one per member.
    pub flash: bool,
    /// Goods and benefits: days to collect an order once placed; then it expires and the
    /// points and the unit come back.
    pub collect_days: i64,
    /// Points + cash (积分换购): the cash part in fen (0: points only), paid through the
    /// payment callback naming the order (`mall_order`) within `pay_minutes`, else the
    /// order expires with its points and its unit given back.
    pub cash_fen: i64,
    pub pay_minutes: i64,
}

/// Receipt points (小票积分, `[receipts]`): how old a receipt may be, and which are
/// approved without a reviewer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptRules {
    pub max_age_days: i64,
    /// Receipts of these merchants, up to `auto_max_fen`, submitted within
    /// `auto_within_days` of the purchase, at most `auto_daily_cap` a member a day, are
    /// approved at once; the others wait for a reviewer.
    pub auto_merchants: rustc_hash::FxHashSet<String>,
    pub auto_max_fen: i64,
    pub auto_within_days: i64,
    pub auto_daily_cap: i64,
}

/// The budget id of a mall item's stock.
pub fn mall_budget_id(item: &str) -> String {
    format!("mall:{item}")
}

/// A leaderboard of points earned on payments: per ISO week or calendar month, group-wide
/// or one board per business unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaderboard {
    pub monthly: bool,
    pub per_bu: bool,
}

/// When a scheduled campaign runs (local time of the rules' UTC offset).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "every", rename_all = "snake_case")]
pub enum Schedule {
    /// Every day at `minute` (minutes after local midnight).
    Day { minute: i64 },
    /// Every week on `weekday` (0 = Monday) at `minute`.
    Week { weekday: i64, minute: i64 },
    /// Every month on `day` (1-28) at `minute`.
    Month { day: i64, minute: i64 },
    /// Once, at this instant.
    Once { at_ms: i64 },
}

/// Who a scheduled campaign reaches: evaluated by the scheduler over the members' stored
/// states and the ledger (sql/queries/campaign_audience.sql), at the run's time.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CampaignAudience {
    pub tiers: Vec<String>,
    pub tags: Vec<String>,
    pub segments: Vec<String>,
    /// A business unit the member paid at (any time).
    pub bu: String,
    /// A format the member paid at (any time).
    pub formats: Vec<String>,
    /// Last payment at least this many days before the run (0: not a condition).
    pub dormant_days: i64,
    /// Last payment within this many days of the run (0: not a condition).
    pub paid_within_days: i64,
    /// Birthday in the run's month.
    pub birthday_month: bool,
    /// Points in lots that expire within this many days of the run (0: not a condition).
    pub points_expiring_within_days: i64,
    /// At least this many points available (0: not a condition).
    pub min_points: i64,
    /// Registered within this many days of the run (0: not a condition).
    pub registered_within_days: i64,
    /// Holds an active coupon of this template ("": not a condition).
    pub holds_coupon: String,
}

/// What a scheduled campaign gives each member it reaches.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CampaignAction {
    /// A coupon of this template (trigger `campaign:<id>:<run>`).
    Coupon { template: String },
    /// A message pushed to the member (no coupon).
    Notice { message: String },
}

/// A scheduled or recurring campaign (`[[scheduled_campaigns]]`): on its schedule the
/// leader's scheduler evaluates the audience and sends each member one `campaign_push`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ScheduledCampaign {
    pub id: String,
    pub name: String,
    pub schedule: Schedule,
    /// Runs due before this instant are not run (None: from the rules' start).
    pub from_ms: Option<i64>,
    /// Runs due at or after this instant are not run (None: no end).
    pub to_ms: Option<i64>,
    /// The saved audience it names ("": its own).
    pub audience_id: String,
    pub audience: CampaignAudience,
    pub action: CampaignAction,
    /// A member reached is not reached again by this campaign before paying again
    /// (set for audiences that name `dormant_days`: a win-back once per dormancy).
    pub once_per_dormancy: bool,
    /// Whether the member's pushes count toward and are held by `[frequency_cap]`.
    pub capped: bool,
}

/// `[frequency_cap]`: at most `pushes` pushes (coupons issued by triggers and scheduled
/// campaigns, campaign notices) per member within any `days` days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrequencyCap {
    pub pushes: i64,
    pub days: i64,
}
