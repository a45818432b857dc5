//! The accrual hot path as a plan: a batch of Kafka records (envelopes or single
//! events) goes through rounds of read -> evaluate -> reserve budgets -> write, each
//! step a list of Redis commands built here (RESP bytes) that the caller sends without
//! looking inside, and the replies it hands back. Pure: no I/O, no clock.
//!
//! Per round: two `HMGET`s per member (its state, sequence number and counters; the
//! records of the event ids it names), one `HGET` per budget; the engine evaluates the pending
//! events; one `ly_reserve` call per budget takes what the events consume (idempotent
//! by event id); one `ly_apply` call per member writes its state, records, outbox and
//! history only if its sequence number is unchanged; one `ly_settle` call per budget
//! commits the reservations of members written and releases the others. Members that
//! conflicted (another writer) or met a short budget are evaluated again next round.
//! Every call names the keys of one hash slot (a member's, or one budget's).

use crate::accrual::{Applied, PaymentRecord};
use crate::engine::{self, Outcome, StoredMembers};
use crate::envelope;
use crate::errors::{CoreError, CoreResult};
use crate::events::{self, Event, EventKind, MemberKind};
use crate::record::{self, Record};
use crate::resp::{Command, Reply};
use crate::rules::RuleSet;
use memchr::memmem::Finder;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::sync::{Arc, LazyLock};

pub const DAY_MS: i64 = 86_400_000;
/// A ledger-topic message stays well under Kafka's default 1 MB request limit.
pub const LEDGER_MESSAGE_BYTES: usize = 700_000;

/// Where the batch writes and how long what it keeps lives.
#[derive(Debug, Clone)]
pub struct Config {
    /// Redis key namespace.
    pub ns: String,
    /// Records are kept this long after they were applied (the refund horizon); an
    /// event older than it is refused, since its duplicate check could not be trusted.
    pub horizon_ms: i64,
    /// Recent movements kept per member for the member API.
    pub history_len: i64,
    /// Members written by one `ly_apply` call. 1 keeps every call in one hash slot (a
    /// Redis Cluster); on a single Redis, more members per call save the call's own cost
    /// (about 9 µs of Redis CPU each, docs/hot-path.md).
    pub members_per_call: usize,
}

/// What became of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Pending,
    Applied,
    Duplicate,
    Guest,
    Rejected,
    Held,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Pending => "pending",
            Kind::Applied => "applied",
            Kind::Duplicate => "duplicate",
            Kind::Guest => "guest",
            Kind::Rejected => "rejected",
            Kind::Held => "held",
        }
    }
}

/// Counts of a batch, for metrics and logs (in Python, `core_ext.BatchReport`: the
/// bindings hand it over as it is).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "python", pyo3::pyclass(name = "BatchReport", frozen, get_all, module = "core_ext._core"))]
pub struct Report {
    pub events: usize,
    pub applied: usize,
    pub duplicates: usize,
    pub rejected: usize,
    pub guests: usize,
    pub held: usize,
    pub points_issued: i64,
    pub points_debited: i64,
    pub ledger_rows: usize,
    pub conflicts: usize,
    pub rounds: usize,
    /// Duplicates whose rows an earlier delivery wrote to the outbox: sent again.
    pub resent: usize,
    /// Events whose id was applied already with other content: refused (the first stays).
    pub mismatched: usize,
}

struct Ev {
    body: Vec<u8>,
    parsed: CoreResult<Event>,
    kind: Kind,
    error: Option<CoreError>,
    applied: Option<Applied>,
    /// Outbox rows of an earlier delivery found for a duplicate: sent again.
    resend: Option<String>,
    /// A guest payment's fact (for BI).
    fact: Option<String>,
    /// On the last event of a member's write: the member's state after it, as a
    /// `member_states` row (a JSON array of one), sent with the event's rows.
    state_row: Option<String>,
}

/// What one member's read returned.
struct MemberRead {
    id: String,
    seq: i64,
    state: Option<String>,
    held: i64,
    /// The member's counters as stored: balance, earned, clawed back, events, stored value.
    counters: [i64; 5],
    /// The last day its records were swept.
    gc_day: i64,
    /// Event indexes of this member evaluated this round, in order.
    events: Vec<usize>,
    /// Ids asked: its events' ids, then the payments its refunds name.
    asked: Vec<String>,
    records: HashMap<String, String>,
}

/// A member's write of this round.
struct MemberWrite {
    member: usize,
    expected_seq: i64,
    state_json: String,
    review_at_ms: Option<i64>,
    next_check_ms: Option<i64>,
    events: Vec<usize>,
    /// (event id, record, written by this round: it names the round's outbox).
    records: Vec<(String, String, bool)>,
    blocked: bool,
    ok: bool,
}

/// What the read asks of a member's hash: sequence number, state, refunds held, the
/// counters (balance, earned, clawed back, events, stored value), the last sweep day.
const HEAD_FIELDS: [&str; 9] =
    ["seq", "state", "held", "balance", "earned", "debited", "events", "sv_balance", "gc"];

/// A reservation of a budget: (event id, units, index of the member's write).
type Reservation = (String, i64, usize);

/// A member written: its id, events, tier review and wallet check times.
struct Done {
    member: String,
    review_at_ms: Option<i64>,
    next_check_ms: Option<i64>,
    /// The member API's entries of its newest events, oldest first.
    history: Vec<String>,
}

/// (member, when) pairs of the schedules: tier reviews and wallet checks.
pub type Schedules = (Vec<(String, i64)>, Vec<(String, i64)>);

#[derive(Default)]
struct Round {
    /// Event indexes evaluated in this round.
    idx: Vec<usize>,
    members: Vec<MemberRead>,
    by_member: HashMap<String, usize>,
    budgets: Vec<(String, i64)>,
    spent: HashMap<String, i64>,
    writes: Vec<MemberWrite>,
    /// Reservations per budget: (event id, units, write index), in reply order.
    reservations: Vec<(String, Vec<Reservation>)>,
    /// The token of the round's outbox (`outbox_plan`), which its records name.
    outbox: Option<String>,
}

pub struct AccrualBatch {
    rules: Arc<RuleSet>,
    cfg: Config,
    now_ms: i64,
    evs: Vec<Ev>,
    round: Option<Round>,
    conflicts: usize,
    mismatched: usize,
    rounds: usize,
    /// Members written over all rounds: their schedules and recent movements.
    done_members: Vec<Done>,
    /// Duplicates whose record names a round outbox: (event index, outbox token).
    resent: Vec<(usize, String)>,
    /// The outboxes of this batch's rounds (deleted once the ledger has their rows).
    outboxes: Vec<String>,
    /// Members that have refunds held, with the payments applied for them in this batch.
    paid_with_held: Vec<(String, String)>,
    guests_kept: Option<Vec<bool>>,
}

fn member_key(ns: &str, m: &str) -> String {
    format!("{ns}:m:{{{m}}}")
}

fn budget_key(ns: &str, id: &str) -> String {
    format!("{ns}:budget:{{{id}}}")
}

/// The Redis keys of a member, all in its hash slot: state, records, outbox, history.
pub fn member_keys(ns: &str, m: &str) -> [String; 4] {
    [member_key(ns, m), format!("{ns}:ev:{{{m}}}"), format!("{ns}:ob:{{{m}}}"), format!("{ns}:h:{{{m}}}")]
}

/// A round's outbox: the ledger rows of its writes until the ledger topic has them.
pub fn outbox_key(ns: &str, token: &str) -> String {
    format!("{ns}:outbox:{{{token}}}")
}

/// The index of round outboxes (token -> created ms), read by the sweeper.
pub fn outbox_index_key(ns: &str) -> String {
    format!("{ns}:outboxes")
}

pub fn guest_key(ns: &str, kind: &str, id: &str) -> String {
    format!("{ns}:guest:{{{kind}:{id}}}")
}

impl AccrualBatch {
    /// Decodes every record (envelopes and single events) into one batch of events.
    pub fn decode(rules: Arc<RuleSet>, cfg: Config, records: &[&[u8]], now_ms: i64) -> AccrualBatch {
        let mut evs = Vec::with_capacity(records.len());
        for rec in records {
            match envelope::unpack(rec) {
                Ok(bodies) => {
                    for b in bodies {
                        evs.push(Ev::new(b.to_vec(), events::parse_event(b)));
                    }
                }
                Err(e) => evs.push(Ev::new(rec.to_vec(), Err(e))),
            }
        }
        let oldest = now_ms - cfg.horizon_ms;
        let days = cfg.horizon_ms / DAY_MS;
        for ev in &mut evs {
            if let Ok(e) = &ev.parsed {
                if e.occurred_at_ms() < oldest {
                    ev.settle(Kind::Rejected, Some(CoreError::rejected(
                        "occurred_at",
                        format!("older than the refund horizon of {days} days: records of events that old are gone, so it cannot be checked for a duplicate"),
                    )));
                }
            }
        }
        AccrualBatch {
            rules,
            cfg,
            now_ms,
            evs,
            round: None,
            conflicts: 0,
            mismatched: 0,
            rounds: 0,
            done_members: Vec::new(),
            resent: Vec::new(),
            outboxes: Vec::new(),
            paid_with_held: Vec::new(),
            guests_kept: None,
        }
    }

    pub fn len(&self) -> usize {
        self.evs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.evs.is_empty()
    }

    pub fn kind(&self, i: usize) -> Kind {
        self.evs[i].kind
    }

    pub fn body(&self, i: usize) -> &[u8] {
        &self.evs[i].body
    }

    pub fn event(&self, i: usize) -> Option<&Event> {
        self.evs[i].parsed.as_ref().ok()
    }

    pub fn error(&self, i: usize) -> Option<&CoreError> {
        self.evs[i].error.as_ref()
    }

    pub fn applied(&self, i: usize) -> Option<&Applied> {
        self.evs[i].applied.as_ref()
    }

    pub fn pending(&self) -> usize {
        self.evs.iter().filter(|e| e.kind == Kind::Pending).count()
    }

    // ---- round: read ---------------------------------------------------------------

    /// The read of a round: three `HMGET`s per member with pending events, one `HGET` per
    /// budget (members first, then budgets). Empty when nothing is pending.
    pub fn read_plan(&mut self) -> Vec<Vec<u8>> {
        let mut round = Round::default();
        for (i, ev) in self.evs.iter_mut().enumerate() {
            if ev.kind != Kind::Pending {
                continue;
            }
            let Ok(e) = &ev.parsed else { continue };
            round.idx.push(i);
            let Some(m) = e.member_id() else { continue };
            let at = match round.by_member.get(m) {
                Some(&at) => at,
                None => {
                    round.by_member.insert(m.to_string(), round.members.len());
                    round.members.push(MemberRead {
                        id: m.to_string(),
                        seq: 0,
                        state: None,
                        held: 0,
                        counters: [0; 5],
                        gc_day: 0,
                        events: Vec::new(),
                        asked: Vec::new(),
                        records: HashMap::default(),
                    });
                    round.members.len() - 1
                }
            };
            let mr = &mut round.members[at];
            mr.events.push(i);
            mr.asked.push(e.event_id().to_string());
            if let Event::Payment(p) = e {
                if let Some(of) = &p.refund_of {
                    mr.asked.push(of.clone());
                }
            }
        }
        if round.idx.is_empty() {
            self.round = None;
            return Vec::new();
        }
        round.budgets = budget_limits(&self.rules);
        let ns = &self.cfg.ns;
        let mut out = Vec::with_capacity(round.members.len() + round.budgets.len());
        // Plain reads (no script: arguments into Lua cost ~2 µs per KB): the write's
        // sequence check is what makes the state and records read here safe to use.
        for m in &round.members {
            let keys = member_keys(ns, &m.id);
            let mut head = Command::new("HMGET");
            head.key(&keys[0]);
            for f in HEAD_FIELDS {
                head.str(f);
            }
            out.push(head.bytes());
            let mut c = Command::new("HMGET");
            c.key(&keys[1]);
            for id in &m.asked {
                c.str(id);
            }
            out.push(c.bytes());
        }
        for (id, _) in &round.budgets {
            let mut c = Command::new("HGET");
            c.key(&budget_key(ns, id)).str("spent");
            out.push(c.bytes());
        }
        self.round = Some(round);
        out
    }

    /// Takes the read's replies and evaluates the round's events in the engine.
    pub fn read_done(&mut self, replies: &[Reply]) -> Result<(), String> {
        let mut round = self.round.take().ok_or("read_done without a read plan")?;
        if replies.len() != 2 * round.members.len() + round.budgets.len() {
            return Err(format!(
                "read: {} replies for {} members and {} budgets",
                replies.len(),
                round.members.len(),
                round.budgets.len()
            ));
        }
        for (m, two) in round.members.iter_mut().zip(replies.chunks(2)) {
            let (Some(head), Some(recs)) = (two[0].as_array(), two[1].as_array()) else {
                return Err(format!("read of {}: {}", m.id, two[0].describe()));
            };
            if head.len() != HEAD_FIELDS.len() || recs.len() != m.asked.len() {
                return Err(format!("read of {}: {} records for {} ids", m.id, recs.len(), m.asked.len()));
            }
            m.seq = head[0].as_int().unwrap_or(0);
            m.state = head[1].as_str().map(str::to_string);
            m.held = head[2].as_int().unwrap_or(0);
            for (c, v) in m.counters.iter_mut().zip(&head[3..8]) {
                *c = v.as_int().unwrap_or(0);
            }
            m.gc_day = head[8].as_int().unwrap_or(0);
            for (id, r) in m.asked.iter().zip(recs) {
                if let Some(r) = r.as_str() {
                    m.records.insert(id.clone(), r.to_string());
                }
            }
        }
        for ((id, _), reply) in round.budgets.iter().zip(&replies[2 * round.members.len()..]) {
            round.spent.insert(id.clone(), reply.as_int().unwrap_or(0));
        }
        self.evaluate(round)
    }

    fn evaluate(&mut self, mut round: Round) -> Result<(), String> {
        let n = round.idx.len();
        let mut flags = Vec::with_capacity(n);
        let mut originals = Vec::with_capacity(n);
        // Every pending event's record: applied already? the payment a refund names?
        for &i in &round.idx {
            let e = self.evs[i].parsed.as_ref().expect("only parsed events are pending");
            let (mut applied, mut original) = (false, None);
            if let Some(m) = e.member_id().and_then(|m| round.by_member.get(m)).map(|&at| &round.members[at]) {
                applied = m.records.contains_key(e.event_id());
                if let Event::Payment(p) = e {
                    if let Some(of) = &p.refund_of {
                        original = m.records.get(of).and_then(|r| Record::decode(r).ok()).and_then(|r| r.as_original());
                    }
                }
            }
            flags.push(applied);
            originals.push(original);
        }
        let stored = StoredMembers {
            members: round.members.iter().map(|m| (m.id.clone(), (m.seq, m.state.clone()))).collect(),
            budget_spent: round.spent.clone(),
        };
        let result = if n == self.evs.len() {
            let all: Vec<&CoreResult<Event>> = self.evs.iter().map(|e| &e.parsed).collect();
            engine_on(&self.rules, &all, &flags, &originals, &stored, self.now_ms)
        } else {
            let some: Vec<&CoreResult<Event>> = round.idx.iter().map(|&i| &self.evs[i].parsed).collect();
            engine_on(&self.rules, &some, &flags, &originals, &stored, self.now_ms)
        };
        let mut mismatch = self.mismatches(&round);
        // Outcomes back onto the events; applied ones wait for their member's write.
        let mut per_member: HashMap<String, Vec<usize>> = HashMap::default();
        for (k, outcome) in result.outcomes.into_iter().enumerate() {
            let i = round.idx[k];
            let ev = &mut self.evs[i];
            match outcome {
                Outcome::Apply(a) => {
                    ev.applied = Some(a);
                    let m = ev.parsed.as_ref().ok().and_then(|e| e.member_id()).unwrap_or("");
                    per_member.entry(m.to_string()).or_default().push(i);
                }
                Outcome::Duplicate => {
                    // The same id with other content: the first stays, this one is refused.
                    if let Some(err) = mismatch[k].take() {
                        ev.settle(Kind::Rejected, Some(err));
                        self.mismatched += 1;
                        continue;
                    }
                    // Applied by an earlier delivery: if its round's outbox is still there,
                    // that delivery may have died before its ledger rows were acked.
                    let e = ev.parsed.as_ref().ok();
                    let token = e.and_then(|e| {
                        let at = *round.by_member.get(e.member_id()?)?;
                        let rec = round.members[at].records.get(e.event_id())?;
                        record::split_token(rec).1.map(str::to_string)
                    });
                    if let Some(token) = token {
                        self.resent.push((i, token));
                    }
                    ev.settle(Kind::Duplicate, None);
                }
                Outcome::Guest(fact) => {
                    ev.fact = Some(fact);
                    ev.settle(Kind::Guest, None);
                }
                Outcome::Rejected(err) => {
                    // A refusal may come from a state that moved on: final only if its
                    // member's write goes through (or it has no member write).
                    ev.error = Some(err);
                }
                Outcome::Held(err) => {
                    ev.error = Some(err);
                    ev.kind = Kind::Held;
                }
            }
        }
        let payments = result.payments;
        let mut writes = Vec::with_capacity(result.members.len());
        for &i in &round.idx {
            self.evs[i].state_row = None;
        }
        for u in result.members {
            let at = round.by_member[&u.member_id];
            let events = per_member.remove(u.member_id.as_str()).unwrap_or_default();
            if let Some(&last) = events.last() {
                self.evs[last].state_row =
                    Some(state_row(&u.member_id, u.expected_seq + 1, &u.state_json, self.now_ms));
            }
            let records = self.records_of(&round.members[at], &events, &payments);
            writes.push(MemberWrite {
                member: at,
                expected_seq: u.expected_seq,
                state_json: u.state_json,
                review_at_ms: u.review_at_ms,
                next_check_ms: u.next_check_ms,
                events,
                records,
                blocked: false,
                ok: false,
            });
        }
        // Budgets the written events consume, per budget in rule order.
        let limits: HashMap<&str, i64> = round.budgets.iter().map(|(id, l)| (id.as_str(), *l)).collect();
        let mut by_budget: HashMap<String, Vec<(String, i64, usize)>> = HashMap::default();
        let mut order: Vec<String> = Vec::new();
        for (w, mw) in writes.iter().enumerate() {
            for &i in &mw.events {
                let a = self.evs[i].applied.as_ref().expect("applied");
                let eid = self.evs[i].parsed.as_ref().unwrap().event_id();
                let mut units: Vec<(&str, i64)> = Vec::new();
                for (b, u) in &a.campaigns {
                    if !limits.contains_key(b.as_str()) {
                        continue;
                    }
                    match units.iter_mut().find(|x| x.0 == b) {
                        Some(x) => x.1 += u,
                        None => units.push((b, *u)),
                    }
                }
                for (b, u) in units {
                    if !by_budget.contains_key(b) {
                        order.push(b.to_string());
                    }
                    by_budget.entry(b.to_string()).or_default().push((eid.to_string(), u, w));
                }
            }
        }
        round.reservations = order.into_iter().map(|b| {
            let v = by_budget.remove(&b).unwrap_or_default();
            (b, v)
        }).collect();
        round.writes = writes;
        self.round = Some(round);
        Ok(())
    }

    /// For each pending event whose id was applied before (an earlier batch, or earlier in
    /// this round) with other content: the refusal naming both digests and the fields that
    /// differ, as far as what is kept tells them.
    fn mismatches(&self, round: &Round) -> Vec<Option<CoreError>> {
        let mut first: HashMap<&str, usize> = HashMap::default();
        round
            .idx
            .iter()
            .map(|&i| {
                let e = self.evs[i].parsed.as_ref().ok()?;
                let digest = record::digest(e);
                // What was applied under this id: the stored record, else the first of this round.
                let m = &round.members[*round.by_member.get(e.member_id()?)?];
                let earlier = match m.records.get(e.event_id()).map(|r| Record::decode(r)) {
                    // A record rebuilt from the ledger has no digest (0): a plain duplicate.
                    Some(Ok(stored)) => stored.digest().filter(|&d| d != 0).map(|d| (d, stored.differing(e))),
                    Some(Err(_)) => None,
                    None => match first.get(e.event_id()) {
                        Some(&j) => {
                            self.evs[j].parsed.as_ref().ok().map(|f| (record::digest(f), record::differing(f, e)))
                        }
                        None => {
                            first.insert(e.event_id(), i);
                            None
                        }
                    },
                }?;
                (earlier.0 != digest).then(|| {
                    let fields = if earlier.1.is_empty() { "fields it does not keep".to_string() } else { earlier.1.join(", ") };
                    CoreError::rejected(
                        "event_id",
                        format!(
                            "{:?} was applied with other content (digest {:012x}, this one {digest:012x}): it differs in {fields}; the first stays",
                            e.event_id(),
                            earlier.0
                        ),
                    )
                })
            })
            .collect()
    }

    /// The records a member's write stores: each applied event's, and a refunded
    /// payment's record again with its refunds counted.
    fn records_of(
        &self,
        m: &MemberRead,
        events: &[usize],
        payments: &HashMap<(String, String), PaymentRecord>,
    ) -> Vec<(String, String, bool)> {
        let mut out = Vec::with_capacity(events.len() + 1);
        let mut written: HashSet<String> = HashSet::default();
        for &i in events {
            let e = self.evs[i].parsed.as_ref().expect("applied events are parsed");
            let a = self.evs[i].applied.as_ref().expect("applied");
            let digest = record::digest(e);
            let rec = match e {
                Event::Payment(p) if p.kind == EventKind::Payment => Record::Payment {
                    applied_ms: None,
                    digest,
                    payment: payments
                        .get(&(m.id.clone(), p.event_id.clone()))
                        .copied()
                        .unwrap_or(PaymentRecord {
                            amount_fen: p.amount_fen,
                            points: a.record_points,
                            used: a.used_points,
                            ..Default::default()
                        }),
                    booking: a.booking.clone().unwrap_or_default(),
                },
                Event::Payment(_) => {
                    Record::Refund { applied_ms: None, digest, amount_fen: a.amount_fen, points: a.record_points }
                }
                Event::Member(_) => Record::Member { applied_ms: None, digest, points: a.points },
            };
            written.insert(e.event_id().to_string());
            out.push((e.event_id().to_string(), rec.encode(), true));
        }
        // A merge brings the merged account's records (its payments' refunds find them).
        for &i in events {
            let Some(Event::Member(ev)) = self.evs[i].parsed.as_ref().ok() else { continue };
            let Some(spec) = ev.merge.as_ref().filter(|_| ev.kind == MemberKind::MergeIn) else { continue };
            for (id, rec) in &spec.records {
                let bare = record::split_token(rec).0;
                if !m.records.contains_key(id) && written.insert(id.clone()) {
                    out.push((id.clone(), bare.to_string(), false));
                }
            }
        }
        // Payments of earlier batches that this batch refunded.
        for &i in events {
            let Some(Event::Payment(p)) = self.evs[i].parsed.as_ref().ok() else { continue };
            let Some(of) = &p.refund_of else { continue };
            if written.contains(of) {
                continue;
            }
            let (Some(stored), Some(after)) = (m.records.get(of), payments.get(&(m.id.clone(), of.clone()))) else {
                continue;
            };
            if let Ok(Record::Payment { applied_ms, digest, booking, .. }) = Record::decode(stored) {
                let rec = Record::Payment { applied_ms, digest, payment: *after, booking };
                written.insert(of.clone());
                out.push((of.clone(), rec.encode(), false));
            }
        }
        out
    }

    // ---- round: budgets ------------------------------------------------------------

    /// One `ly_reserve` per budget the round's writes consume (empty if none).
    pub fn reserve_plan(&self) -> Vec<Vec<u8>> {
        let Some(round) = &self.round else { return Vec::new() };
        let limits: HashMap<&str, i64> = round.budgets.iter().map(|(id, l)| (id.as_str(), *l)).collect();
        round
            .reservations
            .iter()
            .map(|(b, items)| {
                let mut c = Command::new("FCALL");
                c.str("ly_reserve").int(1).key(&budget_key(&self.cfg.ns, b)).int(self.now_ms);
                c.int(limits.get(b.as_str()).copied().unwrap_or(-1));
                for (eid, units, w) in items {
                    c.str(eid).int(*units).str(&round.members[round.writes[*w].member].id);
                }
                c.bytes()
            })
            .collect()
    }

    /// A member any of whose reservations failed is not written this round.
    pub fn reserve_done(&mut self, replies: &[Reply]) -> Result<(), String> {
        let round = self.round.as_mut().ok_or("reserve_done without a round")?;
        if replies.len() != round.reservations.len() {
            return Err(format!("reserve: {} replies for {} budgets", replies.len(), round.reservations.len()));
        }
        for ((b, items), reply) in round.reservations.iter().zip(replies) {
            let a = reply.as_array().ok_or_else(|| format!("ly_reserve of {b}: {}", reply.describe()))?;
            if a.len() != items.len() {
                return Err(format!("ly_reserve of {b}: {} answers for {} reservations", a.len(), items.len()));
            }
            for ((_, _, w), r) in items.iter().zip(a) {
                if r.as_int() != Some(1) {
                    round.writes[*w].blocked = true;
                }
            }
        }
        Ok(())
    }

    // ---- round: outbox ---------------------------------------------------------------

    /// The round's outbox: the ledger rows of every event about to be written, in one
    /// key (`ns:outbox:{token}`, a `SET` with a TTL) written before the members' writes,
    /// whose records name it. If the process dies before the ledger topic has the rows,
    /// the next delivery finds the records, reads the outbox and sends the rows again;
    /// once the rows are acked the outbox is deleted (`trim_plan`), so a duplicate that
    /// finds no outbox has its rows in the ledger already. Empty when nothing is written.
    pub fn outbox_plan(&mut self, token: &str, ttl_s: i64) -> Vec<Vec<u8>> {
        let Some(round) = self.round.as_mut() else { return Vec::new() };
        let mut parts: Vec<&[u8]> = Vec::new();
        // The last event of each write carries its member's state row: joined once here.
        let joined: Vec<(usize, String)> = round
            .writes
            .iter()
            .filter(|w| !w.blocked)
            .filter_map(|w| w.events.last())
            .filter_map(|&i| {
                let ev = &self.evs[i];
                let rows = &ev.applied.as_ref()?.rows_json;
                ev.state_row.as_deref().map(|s| (i, join_rows(rows, s)))
            })
            .collect();
        let joined_at: HashMap<usize, &str> = joined.iter().map(|(i, s)| (*i, s.as_str())).collect();
        for w in round.writes.iter().filter(|w| !w.blocked) {
            for &i in &w.events {
                let ev = &self.evs[i];
                let e = ev.parsed.as_ref().expect("applied events are parsed");
                parts.push(e.event_id().as_bytes());
                match joined_at.get(&i) {
                    Some(rows) => parts.push(rows.as_bytes()),
                    None => parts.push(ev.applied.as_ref().expect("applied").rows_json.as_bytes()),
                }
            }
        }
        if parts.is_empty() {
            return Vec::new();
        }
        round.outbox = Some(token.to_string());
        self.outboxes.push(token.to_string());
        let mut c = Command::new("SET");
        // Compressed: the outbox's bytes go to Redis's AOF, and every byte there is copied
        // again by each AOF rewrite, although the outbox lives only until Kafka acks.
        c.key(&outbox_key(&self.cfg.ns, token)).arg(&envelope::pack_compressed(&parts)).str("EX").int(ttl_s);
        // The index the sweeper reads: outboxes whose batch never got its rows acked.
        let mut index = Command::new("ZADD");
        index.key(&outbox_index_key(&self.cfg.ns)).int(self.now_ms).str(token);
        vec![c.bytes(), index.bytes()]
    }

    /// Reads of the outboxes that duplicates' records name (one `GET` per outbox).
    pub fn resend_plan(&self) -> Vec<Vec<u8>> {
        let mut tokens: Vec<&str> = self.resent.iter().map(|(_, t)| t.as_str()).collect();
        tokens.sort_unstable();
        tokens.dedup();
        tokens
            .into_iter()
            .map(|t| {
                let mut c = Command::new("GET");
                c.key(&outbox_key(&self.cfg.ns, t));
                c.bytes()
            })
            .collect()
    }

    /// Takes the outboxes read: the rows of the duplicates they hold are sent again.
    pub fn resend_done(&mut self, replies: &[Reply]) -> Result<(), String> {
        let mut tokens: Vec<String> = self.resent.iter().map(|(_, t)| t.clone()).collect();
        tokens.sort_unstable();
        tokens.dedup();
        if replies.len() != tokens.len() {
            return Err(format!("resend: {} replies for {} outboxes", replies.len(), tokens.len()));
        }
        let mut rows: HashMap<(String, String), String> = HashMap::default();
        for (token, reply) in tokens.iter().zip(replies) {
            let Some(blob) = reply.as_bytes() else { continue }; // acked and deleted: nothing to send
            let plain = envelope::inflate(blob).map_err(|e| format!("outbox {token}: {}", e.reason()))?;
            let parts = envelope::unpack(&plain).map_err(|e| format!("outbox {token}: {}", e.reason()))?;
            for pair in parts.chunks(2) {
                if let [id, r] = pair {
                    let id = String::from_utf8_lossy(id).into_owned();
                    rows.insert((token.clone(), id), String::from_utf8_lossy(r).into_owned());
                }
            }
        }
        for (i, token) in &self.resent {
            let id = self.evs[*i].parsed.as_ref().map(|e| e.event_id().to_string()).unwrap_or_default();
            if let Some(r) = rows.remove(&(token.clone(), id)) {
                self.evs[*i].resend = Some(r);
            }
        }
        Ok(())
    }

    // ---- round: write --------------------------------------------------------------

    /// `ly_apply` calls for the members to write (not blocked by a short budget), up to
    /// `members_per_call` members each, in the order of `round.writes`.
    pub fn write_plan(&self) -> Vec<Vec<u8>> {
        let Some(round) = &self.round else { return Vec::new() };
        let day = self.now_ms.div_euclid(DAY_MS);
        let sweep_before = self.now_ms - self.cfg.horizon_ms;
        let ttl_s = self.cfg.horizon_ms / 1000 + 86_400;
        let token = round.outbox.as_deref().unwrap_or("");
        let writes: Vec<&MemberWrite> = round.writes.iter().filter(|w| !w.blocked).collect();
        let mut out = Vec::with_capacity(writes.len() / self.cfg.members_per_call.max(1) + 1);
        for group in writes.chunks(self.cfg.members_per_call.max(1)) {
            let mut c = Command::new("FCALL");
            c.str("ly_apply").int(4 * group.len() as i64);
            for w in group {
                for k in &member_keys(&self.cfg.ns, &round.members[w.member].id) {
                    c.key(k);
                }
            }
            c.int(group.len() as i64).int(day).int(sweep_before).int(ttl_s).int(self.cfg.history_len);
            for w in group {
                self.write_args(&mut c, w, &round.members[w.member], day, token);
            }
            out.push(c.bytes());
        }
        out
    }

    /// One member's part of an `ly_apply` call.
    fn write_args(&self, c: &mut Command, w: &MemberWrite, m: &MemberRead, day: i64, token: &str) {
        let mut counters = m.counters;
        for &i in &w.events {
            let p = self.evs[i].applied.as_ref().expect("applied").points;
            counters[0] += p;
            if p < 0 {
                counters[2] -= p;
            } else {
                counters[1] += p;
            }
            counters[3] += 1;
        }
        // The counters' new values: the sequence check makes them safe to set.
        c.int(w.expected_seq).str("a").str(&w.state_json);
        for v in counters {
            c.int(v);
        }
        c.int((m.gc_day < day) as i64);
        c.int(w.records.len() as i64);
        for (id, rec, own) in &w.records {
            if *own && !token.is_empty() {
                c.str(id).str(&format!("{rec}|@{token}"));
            } else {
                c.str(id).str(rec);
            }
        }
        c.int(0); // the rows wait in the round's outbox, not in the member's keys
        c.int(0); // history: after the write (trim_plan), not through the script
    }

    /// Takes the writes' replies: members written settle their events; the others go
    /// back to pending for the next round. Returns how many members conflicted.
    pub fn write_done(&mut self, replies: &[Reply]) -> Result<usize, String> {
        let round = self.round.as_mut().ok_or("write_done without a round")?;
        let expected = round.writes.iter().filter(|w| !w.blocked).count();
        let per_call = self.cfg.members_per_call.max(1);
        if replies.len() != expected.div_ceil(per_call) {
            return Err(format!("write: {} replies for {} members in calls of {}", replies.len(), expected, per_call));
        }
        let mut answers = Vec::with_capacity(expected);
        for (reply, n) in replies.iter().zip((0..expected).step_by(per_call).map(|at| per_call.min(expected - at))) {
            match reply.as_array() {
                Some(a) if a.len() == n => answers.extend(a.iter().map(|r| r.as_str() == Some("ok"))),
                _ => return Err(format!("ly_apply of {n} members: {}", reply.describe())),
            }
        }
        let mut it = answers.into_iter();
        let mut retry: HashSet<usize> = HashSet::default();
        for w in round.writes.iter_mut() {
            if w.blocked {
                retry.insert(w.member);
                continue;
            }
            let ok = it.next().expect("counted");
            w.ok = ok;
            if !ok {
                retry.insert(w.member);
            }
        }
        let conflicts = retry.len();
        self.conflicts += conflicts;
        self.rounds += 1;
        // Events of members written or not: settle, or back to pending.
        for &i in &round.idx {
            let ev = &mut self.evs[i];
            if ev.kind != Kind::Pending {
                continue;
            }
            let member = ev.parsed.as_ref().ok().and_then(|e| e.member_id()).and_then(|m| round.by_member.get(m));
            if member.is_some_and(|at| retry.contains(at)) {
                ev.applied = None;
                ev.error = None;
                continue;
            }
            if ev.applied.is_some() {
                ev.kind = Kind::Applied;
            } else if ev.error.is_some() {
                ev.kind = Kind::Rejected;
            }
        }
        for &i in &round.idx {
            let ev = &mut self.evs[i];
            if ev.kind == Kind::Held {
                let member = ev.parsed.as_ref().ok().and_then(|e| e.member_id()).and_then(|m| round.by_member.get(m));
                if member.is_some_and(|at| retry.contains(at)) {
                    ev.kind = Kind::Pending;
                    ev.error = None;
                }
            }
        }
        // Payments applied that refunds may wait for: the member had refunds held (its read
        // said so), or one of this batch's refunds was held for exactly this payment.
        let held_here: HashSet<(String, String)> = self
            .evs
            .iter()
            .filter(|e| e.kind == Kind::Held)
            .filter_map(|e| match e.parsed.as_ref().ok()? {
                Event::Payment(p) => Some((p.member_id.clone()?, p.refund_of.clone()?)),
                Event::Member(_) => None,
            })
            .collect();
        for w in round.writes.iter().filter(|w| w.ok) {
            let m = &round.members[w.member];
            let mut paid = Vec::new();
            for &i in &w.events {
                if let Ok(Event::Payment(p)) = self.evs[i].parsed.as_ref() {
                    let key = (m.id.clone(), p.event_id.clone());
                    if p.kind == EventKind::Payment && (m.held > 0 || held_here.contains(&key)) {
                        paid.push(key);
                    }
                }
            }
            self.paid_with_held.extend(paid);
            let first = w.events.len().saturating_sub(self.cfg.history_len.max(0) as usize);
            let history = w.events[first..]
                .iter()
                .filter_map(|&i| {
                    let a = self.evs[i].applied.as_ref()?;
                    a.history_json.clone().or_else(|| history_entry(&a.rows_json))
                })
                .collect();
            self.done_members.push(Done {
                member: m.id.clone(),
                review_at_ms: w.review_at_ms,
                next_check_ms: w.next_check_ms,
                history,
            });
        }
        Ok(conflicts)
    }

    /// One `ly_settle` per budget: reservations of members written are committed, the
    /// others released.
    pub fn settle_plan(&self) -> Vec<Vec<u8>> {
        let Some(round) = &self.round else { return Vec::new() };
        round
            .reservations
            .iter()
            .map(|(b, items)| {
                let mut c = Command::new("FCALL");
                c.str("ly_settle").int(1).key(&budget_key(&self.cfg.ns, b));
                for (eid, _, w) in items {
                    c.str(eid).int(round.writes[*w].ok as i64);
                }
                c.bytes()
            })
            .collect()
    }

    /// Counts of the batch as it stands.
    pub fn report(&self) -> Report {
        let mut r = Report { events: self.evs.len(), ..Report::default() };
        for ev in &self.evs {
            match ev.kind {
                Kind::Applied => {
                    r.applied += 1;
                    let a = ev.applied.as_ref().expect("applied");
                    if a.points >= 0 {
                        r.points_issued += a.points;
                    } else {
                        r.points_debited -= a.points;
                    }
                    r.ledger_rows += count_rows(&a.rows_json);
                }
                Kind::Duplicate => {
                    r.duplicates += 1;
                    if let Some(rows) = &ev.resend {
                        r.resent += 1;
                        r.ledger_rows += count_rows(rows);
                    }
                }
                Kind::Guest => r.guests += 1,
                Kind::Rejected => r.rejected += 1,
                Kind::Held => r.held += 1,
                Kind::Pending => {}
            }
        }
        r.conflicts = self.conflicts;
        r.mismatched = self.mismatched;
        r.rounds = self.rounds;
        if let Some(kept) = &self.guests_kept {
            let again = kept.iter().filter(|k| !**k).count();
            r.guests -= again;
            r.duplicates += again;
        }
        r
    }

    // ---- after the rounds ----------------------------------------------------------

    /// Guest payments kept (compact facts) for crediting at registration: one `ly_guest`
    /// per guest payment with a payer.
    pub fn guest_plan(&self, ttl_s: i64) -> Vec<Vec<u8>> {
        self.guest_events()
            .map(|(_, p)| {
                let (kind, id) = p.payer.as_ref().expect("guests with a payer");
                let mut c = Command::new("FCALL");
                c.str("ly_guest").int(1).key(&guest_key(&self.cfg.ns, kind, id)).int(ttl_s).str(&p.event_id);
                c.arg(&guest_compact(&self.rules, p));
                c.bytes()
            })
            .collect()
    }

    fn guest_events(&self) -> impl Iterator<Item = (usize, &events::PaymentEvent)> {
        self.evs.iter().enumerate().filter_map(|(i, ev)| match (&ev.kind, &ev.parsed) {
            (Kind::Guest, Ok(Event::Payment(p))) if p.payer.is_some() => Some((i, p)),
            _ => None,
        })
    }

    /// A guest payment kept before (a redelivery or a gateway's retry) counts as a duplicate.
    /// `ly_guest` answers 1 (kept), 0 (the same payment was kept before: its fact is sent
    /// again, in case the earlier delivery's send was lost) or 2 (another payment was kept
    /// under this event id: refused like any id reused with other content, and its fact is
    /// not sent, so the durable copy keeps the first one as Redis does).
    pub fn guest_done(&mut self, replies: &[Reply]) {
        let guests: Vec<usize> = self.guest_events().map(|(i, _)| i).collect();
        for (&i, r) in guests.iter().zip(replies) {
            if r.as_int() == Some(2) {
                self.evs[i].fact = None;
                self.mismatched += 1;
            }
        }
        self.guests_kept = Some(replies.iter().map(|r| r.as_int() == Some(1)).collect());
    }

    /// The ledger-topic messages of the batch: every applied event's rows, the rows of
    /// duplicates an earlier delivery wrote but may not have sent, and guest facts.
    pub fn ledger_messages(&self) -> Vec<Vec<u8>> {
        let mut rows: Vec<&str> = Vec::new();
        let mut guests: Vec<&str> = Vec::new();
        for ev in &self.evs {
            match ev.kind {
                Kind::Applied => {
                    rows.push(&ev.applied.as_ref().unwrap().rows_json);
                    rows.extend(ev.state_row.as_deref());
                }
                Kind::Duplicate => {
                    if let Some(r) = &ev.resend {
                        rows.push(r);
                    }
                }
                Kind::Guest => guests.extend(ev.fact.as_deref()),
                _ => {}
            }
        }
        ledger_messages(&rows, &guests)
    }

    /// Once the ledger messages are acked: the batch's round outboxes (`DEL`) and the
    /// members' recent movements (`LPUSH`, `LTRIM`, `EXPIRE`), a view of the ledger for the
    /// member API written after the member's step.
    pub fn trim_plan(&self) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = Vec::new();
        // Only this batch's own outboxes: one an earlier delivery left may hold the rows of
        // events this batch does not have (a redelivery split differently), so it stays
        // for the sweeper, which sends every event of it that was applied.
        let mut tokens: Vec<&str> = self.outboxes.iter().map(String::as_str).collect();
        tokens.sort_unstable();
        tokens.dedup();
        for t in &tokens {
            let mut c = Command::new("DEL");
            c.key(&outbox_key(&self.cfg.ns, t));
            out.push(c.bytes());
        }
        if !tokens.is_empty() {
            let mut c = Command::new("ZREM");
            c.key(&outbox_index_key(&self.cfg.ns));
            for t in &tokens {
                c.str(t);
            }
            out.push(c.bytes());
        }
        let ttl_s = self.cfg.horizon_ms / 1000 + 86_400;
        for d in self.done_members.iter().filter(|d| !d.history.is_empty()) {
            let key = format!("{}:h:{{{}}}", self.cfg.ns, d.member);
            let mut push = Command::new("LPUSH");
            push.key(&key);
            for h in &d.history {
                push.str(h);
            }
            out.push(push.bytes());
            let mut trim = Command::new("LTRIM");
            trim.key(&key).int(0).int(self.cfg.history_len - 1);
            out.push(trim.bytes());
            let mut expire = Command::new("EXPIRE");
            expire.key(&key).int(ttl_s);
            out.push(expire.bytes());
        }
        out
    }

    /// (member, when) of tier reviews and wallet checks to schedule, for members written.
    pub fn schedules(&self) -> Schedules {
        let mut reviews = Vec::new();
        let mut checks = Vec::new();
        for d in &self.done_members {
            if let Some(r) = d.review_at_ms {
                reviews.push((d.member.clone(), r));
            }
            if let Some(c) = d.next_check_ms {
                checks.push((d.member.clone(), c));
            }
        }
        (reviews, checks)
    }

    /// `ZADD`s of the members written whose tier review or wallet check is due later
    /// (idempotent: a batch retried schedules the same times again). These two keys take
    /// every member's schedule: one command per key and 1,000 members.
    pub fn schedule_plan(&self, reviews_key: &str, checks_key: &str) -> Vec<Vec<u8>> {
        let (reviews, checks) = self.schedules();
        let mut out = Vec::new();
        for (key, items) in [(reviews_key, reviews), (checks_key, checks)] {
            for chunk in items.chunks(1000) {
                let mut c = Command::new("ZADD");
                c.key(key);
                for (m, at) in chunk {
                    c.int(*at).str(m);
                }
                out.push(c.bytes());
            }
        }
        out
    }

    /// An empty batch (what is left once a batch's memory is given back).
    pub fn empty(rules: Arc<RuleSet>) -> AccrualBatch {
        AccrualBatch::decode(rules, Config { ns: String::new(), horizon_ms: DAY_MS, history_len: 0, members_per_call: 1 }, &[], 0)
    }

    /// Payments applied for members who have refunds held: (member, payment id).
    pub fn paid_with_held(&self) -> &[(String, String)] {
        &self.paid_with_held
    }

    /// Coupon pushes of the batch (issued coupons, those of re-sent rows too): (member, JSON).
    pub fn pushes(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for ev in &self.evs {
            let rows = match ev.kind {
                Kind::Applied => ev.applied.as_ref().map(|a| a.rows_json.as_str()),
                Kind::Duplicate => ev.resend.as_deref(),
                _ => None,
            };
            let Some(rows) = rows else { continue };
            static COUPONS: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("\"coupon_events\""));
            if COUPONS.find(rows.as_bytes()).is_none() {
                continue;
            }
            let Ok(parsed) = serde_json::from_str::<Vec<serde_json::Value>>(rows) else { continue };
            for r in parsed {
                if r.get("table").and_then(|t| t.as_str()) == Some("coupon_events")
                    && r.get("kind").and_then(|k| k.as_str()) == Some("issued")
                {
                    if let Some(push) = coupon_push(&r) {
                        out.push(push);
                    }
                }
            }
        }
        out
    }

    /// Notices for members (expiry reminders): (member, JSON).
    pub fn notices(&self) -> Vec<(String, String)> {
        self.evs
            .iter()
            .filter(|ev| ev.kind == Kind::Applied)
            .filter_map(|ev| {
                let n = ev.applied.as_ref()?.notice.clone()?;
                Some((ev.parsed.as_ref().ok()?.member_id()?.to_string(), n))
            })
            .collect()
    }

    /// Registrations applied (their ids to bind, guest payments to credit) and those
    /// seen again (their referral may not have been sent): event indexes.
    pub fn registrations(&self) -> (Vec<usize>, Vec<usize>) {
        let mut applied = Vec::new();
        let mut invited = Vec::new();
        for (i, ev) in self.evs.iter().enumerate() {
            if let Ok(Event::Member(m)) = &ev.parsed {
                if m.kind == MemberKind::Register {
                    match ev.kind {
                        Kind::Applied => {
                            applied.push(i);
                            invited.push(i);
                        }
                        Kind::Duplicate => invited.push(i),
                        _ => {}
                    }
                }
            }
        }
        (applied, invited)
    }
}

impl Ev {
    fn new(body: Vec<u8>, parsed: CoreResult<Event>) -> Ev {
        let (kind, error) = match &parsed {
            Ok(_) => (Kind::Pending, None),
            Err(e) => (Kind::Rejected, Some(e.clone())),
        };
        Ev { body, parsed, kind, error, applied: None, resend: None, fact: None, state_row: None }
    }

    fn settle(&mut self, kind: Kind, error: Option<CoreError>) {
        self.kind = kind;
        self.error = error;
    }
}

fn engine_on(
    rules: &RuleSet,
    events: &[&CoreResult<Event>],
    applied: &[bool],
    originals: &[Option<engine::Original>],
    stored: &StoredMembers,
    now_ms: i64,
) -> engine::BatchResult {
    engine::evaluate_refs(rules, events, applied, originals, stored, now_ms)
}

/// Every budget with a limit, and its limit: campaigns (points), triggers and coupon stocks.
pub fn budget_limits(rules: &RuleSet) -> Vec<(String, i64)> {
    let campaigns = rules.campaigns.iter().filter_map(|c| c.budget_points.map(|b| (c.id.clone(), b)));
    let triggers =
        rules.triggers.iter().filter_map(|t| t.budget.map(|b| (crate::coupons::trigger_budget_id(&t.id), b)));
    let mut stocks: Vec<(String, i64)> = rules
        .coupon_templates
        .values()
        .filter_map(|t| t.stock.map(|s| (crate::coupons::stock_budget_id(&t.id), s)))
        .collect();
    stocks.sort();
    campaigns.chain(triggers).chain(stocks).collect()
}

/// A `member_states` row (as a JSON array of one): the member's whole state after a
/// write, with the sequence number the write gave it.
fn state_row(member_id: &str, seq: i64, state_json: &str, now_ms: i64) -> String {
    let id = serde_json::to_string(member_id).unwrap_or_else(|_| "\"\"".to_string());
    format!(r#"[{{"table":"member_states","member_id":{id},"seq":{seq},"processed_at_ms":{now_ms},"state":{state_json}}}]"#)
}

/// Two JSON arrays of rows as one.
fn join_rows(a: &str, b: &str) -> String {
    let (a, b) = (a.trim(), b.trim());
    let inner = |s: &'_ str| -> String { s.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or("").trim().to_string() };
    let (x, y) = (inner(a), inner(b));
    match (x.is_empty(), y.is_empty()) {
        (true, _) => format!("[{y}]"),
        (_, true) => format!("[{x}]"),
        _ => format!("[{x},{y}]"),
    }
}

fn count_rows(rows_json: &str) -> usize {
    static EVENT_ID: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("\"event_id\""));
    EVENT_ID.find_iter(rows_json.as_bytes()).count()
}

/// The ledger-topic messages for these rows (each event's JSON array) and guest facts:
/// `{"ledger":[...],"guests":[...]}` of at most about LEDGER_MESSAGE_BYTES each; an
/// event's rows stay together.
pub fn ledger_messages(rows: &[&str], guests: &[&str]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut cur_rows: Vec<&str> = Vec::new();
    let mut cur_guests: Vec<&str> = Vec::new();
    let mut size = 0;
    let flush = |cur_rows: &mut Vec<&str>, cur_guests: &mut Vec<&str>, out: &mut Vec<Vec<u8>>| {
        if cur_rows.is_empty() && cur_guests.is_empty() {
            return;
        }
        let mut m = Vec::with_capacity(64 + cur_rows.iter().chain(cur_guests.iter()).map(|s| s.len() + 1).sum::<usize>());
        m.extend_from_slice(b"{\"ledger\":[");
        let mut first = true;
        for r in cur_rows.iter() {
            let inner = r.trim();
            let inner = inner.strip_prefix('[').and_then(|x| x.strip_suffix(']')).unwrap_or(inner);
            if inner.trim().is_empty() {
                continue;
            }
            if !first {
                m.push(b',');
            }
            first = false;
            m.extend_from_slice(inner.as_bytes());
        }
        m.extend_from_slice(b"],\"guests\":[");
        for (k, g) in cur_guests.iter().enumerate() {
            if k > 0 {
                m.push(b',');
            }
            m.extend_from_slice(g.as_bytes());
        }
        m.extend_from_slice(b"]}");
        out.push(m);
        cur_rows.clear();
        cur_guests.clear();
    };
    for (is_row, items) in [(true, rows), (false, guests)] {
        for item in items.iter() {
            if size + item.len() > LEDGER_MESSAGE_BYTES && size > 0 {
                flush(&mut cur_rows, &mut cur_guests, &mut out);
                size = 0;
            }
            if is_row {
                cur_rows.push(item);
            } else {
                cur_guests.push(item);
            }
            size += item.len() + 1;
        }
    }
    flush(&mut cur_rows, &mut cur_guests, &mut out);
    out
}

/// Fields of a ledger row the member API's history leaves out: the settlement lines and
/// boards (for the books, not the member), and what the member, the batch or the row's
/// place say already.
pub const HISTORY_DROPS: [&str; 9] =
    ["settlement", "boards", "batch_index", "member_id", "processed_at_ms", "channel", "format", "tier", "category"];

/// The member API's entry for an event: its rows without HISTORY_DROPS (what a person
/// reads), as a JSON array; each row keeps its fields in their order. One pass over the
/// rows' text, values copied as they are (no tree of the rows is built).
pub(crate) fn history_entry(rows_json: &str) -> Option<String> {
    let rows: Vec<KeptFields> = serde_json::from_str(rows_json).ok()?;
    if rows.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(rows_json.len());
    out.push('[');
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('{');
        for (j, (k, v)) in row.0.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            out.push('"');
            out.push_str(k);
            out.push_str("\":");
            out.push_str(v.get());
        }
        out.push('}');
    }
    out.push(']');
    Some(out)
}

/// A ledger row's fields that the history keeps, borrowed from the rows' text in order.
struct KeptFields<'a>(Vec<(&'a str, &'a serde_json::value::RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for KeptFields<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = KeptFields<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a ledger row")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut kept = Vec::with_capacity(16);
                while let Some((k, v)) = map.next_entry::<&'de str, &'de serde_json::value::RawValue>()? {
                    if HISTORY_DROPS.contains(&k) || (k == "refund_of" && v.get() == "\"\"") {
                        continue;
                    }
                    kept.push((k, v));
                }
                Ok(KeptFields(kept))
            }
        }
        d.deserialize_map(Fields)
    }
}

/// A guest payment as kept for crediting (the hash field is its event id): what a payment
/// under the member's id needs, as a JSON array `[type, occurred_at_ms, amount_fen, bu_id,
/// merchant_id, category, channel, refund_of?]` (`guest_payment` in balances.py turns it
/// back into a payment body). The category is the one the rules give the payment (the
/// merchant's, when the rules know the merchant), as in its durable fact (`guest_fact`), so
/// a rebuild puts back what was kept; crediting applies the same mapping to either.
fn guest_compact(rules: &RuleSet, p: &events::PaymentEvent) -> Vec<u8> {
    let category = rules.category_of(&p.merchant_id, &p.category);
    let mut v = serde_json::json!([
        p.kind.as_str(), p.occurred_at_ms, p.amount_fen, p.bu_id, p.merchant_id, category, p.channel
    ]);
    if let (Some(of), Some(a)) = (&p.refund_of, v.as_array_mut()) {
        a.push(serde_json::json!(of));
    }
    serde_json::to_vec(&v).expect("a guest fact serialises")
}

/// The push of an issued coupon row (the coupon id is the push id).
fn coupon_push(row: &serde_json::Value) -> Option<(String, Vec<u8>)> {
    let s = |k: &str| row.get(k).cloned().unwrap_or(serde_json::Value::Null);
    let member = row.get("member_id")?.as_str()?.to_string();
    let push = serde_json::json!({
        "push_id": s("coupon_id"),
        "type": "coupon_issued",
        "member_id": member,
        "event_id": s("event_id"),
        "coupon": {
            "coupon_id": s("coupon_id"), "template": s("template"), "trigger": s("trigger"),
            "coupon_kind": s("coupon_kind"), "face_value_fen": s("face_value_fen"), "valid_until_ms": s("valid_until_ms"),
        },
        "occurred_at_ms": s("occurred_at_ms"),
        "processed_at_ms": s("processed_at_ms"),
    });
    Some((member, serde_json::to_vec(&push).ok()?))
}

#[cfg(test)]
mod history_tests {
    use super::{history_entry, HISTORY_DROPS};
    use serde_json::{json, Value};

    #[test]
    fn history_keeps_every_field_but_the_drops_and_an_empty_refund_of() {
        let text = r#"[{"event_id":"e1","member_id":"m-1","kind":"earn","points":12,"refund_of":"","settlement":[{"account":"pool","fen":-5}],"boards":[["w",3,1]],"batch_index":0,"processed_at_ms":9,"channel":"wechat","format":"mall","tier":"gold","category":"food","explain":[{"rule":"base","text":"1 point per 1 yuan \"x\""}],"lots":[[24311,12]]},{"event_id":"e1","kind":"bonus","points":5,"refund_of":"p-0","coupon_id":"c-1"}]"#;
        let rows: Value = serde_json::from_str(text).expect("valid");
        let entry = history_entry(text).expect("rows");
        let got: Value = serde_json::from_str(&entry).expect("valid JSON");
        let mut want = rows.clone();
        for r in want.as_array_mut().unwrap() {
            let o = r.as_object_mut().unwrap();
            for k in HISTORY_DROPS {
                o.remove(k);
            }
            if o.get("refund_of") == Some(&json!("")) {
                o.remove("refund_of");
            }
        }
        assert_eq!(got, want);
        assert!(entry.starts_with(r#"[{"event_id":"e1","kind":"earn","points":12,"#), "{entry}");
        assert_eq!(history_entry("[]"), None);
        assert_eq!(history_entry("not json"), None);
    }
}
