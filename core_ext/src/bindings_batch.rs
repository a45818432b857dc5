//! Python bindings of the accrual plan (`batch.rs`), envelopes and the typed outcomes
//! of `evaluate_batch`. Values cross the boundary as frozen classes with named fields.

use crate::batch::{self, AccrualBatch, Config, Kind};
use crate::bindings::{core_error_to_py, CorruptStateError, InvalidArgumentError, PyEventBatch, PyRuleSet};
use crate::engine::{self, StoredMembers};
use crate::record::PaymentRecord;
use crate::envelope;
use crate::events::{self, Event};
use crate::resp::Reply;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};
use std::collections::HashMap;
use std::sync::Arc;

/// What became of an event.
#[pyclass(name = "OutcomeKind", eq, eq_int, hash, frozen, module = "core_ext._core")]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum PyOutcomeKind {
    #[pyo3(name = "APPLIED")]
    Applied,
    #[pyo3(name = "DUPLICATE")]
    Duplicate,
    #[pyo3(name = "GUEST")]
    Guest,
    #[pyo3(name = "REJECTED")]
    Rejected,
    /// A refund of a payment not applied yet: held until it is.
    #[pyo3(name = "HELD")]
    Held,
    #[pyo3(name = "PENDING")]
    Pending,
}

impl From<Kind> for PyOutcomeKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Applied => PyOutcomeKind::Applied,
            Kind::Duplicate => PyOutcomeKind::Duplicate,
            Kind::Guest => PyOutcomeKind::Guest,
            Kind::Rejected => PyOutcomeKind::Rejected,
            Kind::Held => PyOutcomeKind::Held,
            Kind::Pending => PyOutcomeKind::Pending,
        }
    }
}

/// One event's outcome of `evaluate_batch`.
#[pyclass(name = "EventOutcome", frozen, get_all, module = "core_ext._core")]
pub struct PyEventOutcome {
    pub kind: PyOutcomeKind,
    /// Balance movement (0 unless applied).
    pub points: i64,
    /// The event's ledger rows (JSON array) when applied; the guest fact when a guest payment.
    pub rows_json: Option<String>,
    pub refund_of: Option<String>,
    pub amount_fen: i64,
    pub clawback_points: i64,
    /// Budgets consumed: (budget id, units).
    pub campaigns: Vec<(String, i64)>,
    /// Why it was refused or held.
    pub field: Option<String>,
    pub reason: Option<String>,
    pub notice: Option<String>,
    /// What the event's record keeps as its points; points used at the till; points given back.
    pub record_points: i64,
    pub used_points: i64,
    pub returned_points: i64,
    /// Leaderboards moved: (board, the member's new score).
    pub boards: Vec<(String, i64)>,
}

/// A member's state after a batch, to write only if the stored sequence number is still `expected_seq`.
#[pyclass(name = "MemberUpdate", frozen, get_all, module = "core_ext._core")]
pub struct PyMemberUpdate {
    pub member_id: String,
    pub expected_seq: i64,
    pub state_json: String,
    pub review_at_ms: Option<i64>,
    pub next_check_ms: Option<i64>,
}

/// `evaluate_batch`'s answer.
#[pyclass(name = "Evaluation", frozen, get_all, module = "core_ext._core")]
pub struct PyEvaluation {
    pub outcomes: Vec<Py<PyEventOutcome>>,
    pub members: Vec<Py<PyMemberUpdate>>,
}

pub fn evaluation(py: Python<'_>, r: crate::engine::BatchResult) -> PyResult<PyEvaluation> {
    use crate::engine::Outcome;
    let mut outcomes = Vec::with_capacity(r.outcomes.len());
    for o in r.outcomes {
        let empty = |kind, rows_json, err: Option<&crate::errors::CoreError>| PyEventOutcome {
            kind,
            points: 0,
            rows_json,
            refund_of: None,
            amount_fen: 0,
            clawback_points: 0,
            campaigns: Vec::new(),
            field: err.map(|e| e.field().to_string()),
            reason: err.map(|e| e.reason().to_string()),
            notice: None,
            record_points: 0,
            used_points: 0,
            returned_points: 0,
            boards: Vec::new(),
        };
        let v = match o {
            Outcome::Apply(a) => PyEventOutcome {
                kind: PyOutcomeKind::Applied,
                points: a.points,
                rows_json: Some(a.rows_json),
                refund_of: a.refund_of,
                amount_fen: a.amount_fen,
                clawback_points: a.clawback_points,
                campaigns: a.campaigns,
                field: None,
                reason: None,
                notice: a.notice,
                record_points: a.record_points,
                used_points: a.used_points,
                returned_points: a.returned_points,
                boards: a.boards,
            },
            Outcome::Guest(fact) => empty(PyOutcomeKind::Guest, Some(fact), None),
            Outcome::Duplicate => empty(PyOutcomeKind::Duplicate, None, None),
            Outcome::Rejected(e) => empty(PyOutcomeKind::Rejected, None, Some(&e)),
            Outcome::Held(e) => empty(PyOutcomeKind::Held, None, Some(&e)),
        };
        outcomes.push(Py::new(py, v)?);
    }
    let members = r
        .members
        .into_iter()
        .map(|m| {
            Py::new(
                py,
                PyMemberUpdate {
                    member_id: m.member_id,
                    expected_seq: m.expected_seq,
                    state_json: m.state_json,
                    review_at_ms: m.review_at_ms,
                    next_check_ms: m.next_check_ms,
                },
            )
        })
        .collect::<PyResult<_>>()?;
    Ok(PyEvaluation { outcomes, members })
}

/// What one event says of itself (for the Python side: bindings, referrals, dead letters).
#[pyclass(name = "EventInfo", frozen, get_all, module = "core_ext._core")]
pub struct PyEventInfo {
    pub event_id: String,
    pub member_id: Option<String>,
    /// payment, refund, register, sign_in, ...
    pub kind: &'static str,
    pub occurred_at_ms: i64,
    pub refund_of: Option<String>,
    pub payer_kind: Option<String>,
    pub payer_id: Option<String>,
    /// External ids a registration binds: (kind, id).
    pub bindings: Vec<(String, String)>,
    pub referred_by: Option<String>,
}

/// Decodes and validates one event body; raises InvalidEventError naming the field.
#[pyfunction]
pub fn decode_event(py: Python<'_>, body: &[u8]) -> PyResult<PyEventInfo> {
    let ev = events::parse_event(body).map_err(|e| core_error_to_py(py, e))?;
    Ok(match ev {
        Event::Payment(p) => PyEventInfo {
            event_id: p.event_id,
            member_id: p.member_id,
            kind: p.kind.as_str(),
            occurred_at_ms: p.occurred_at_ms,
            refund_of: p.refund_of,
            payer_kind: p.payer.as_ref().map(|x| x.0.clone()),
            payer_id: p.payer.map(|x| x.1),
            bindings: Vec::new(),
            referred_by: None,
        },
        Event::Member(m) => PyEventInfo {
            event_id: m.event_id,
            member_id: Some(m.member_id),
            kind: m.kind.as_str(),
            occurred_at_ms: m.occurred_at_ms,
            refund_of: None,
            payer_kind: None,
            payer_id: None,
            bindings: m.external_ids,
            referred_by: m.referred_by,
        },
    })
}

/// Packs event bodies into one envelope record (docs/envelopes.md): version 1, or version 2
/// (compressed) if asked.
#[pyfunction]
#[pyo3(signature = (bodies, compressed=false))]
pub fn envelope_pack<'py>(py: Python<'py>, bodies: Vec<Bound<'py, PyBytes>>, compressed: bool) -> Bound<'py, PyBytes> {
    let slices: Vec<&[u8]> = bodies.iter().map(|b| b.as_bytes()).collect();
    if compressed {
        PyBytes::new(py, &envelope::pack_compressed(&slices))
    } else {
        PyBytes::new(py, &envelope::pack(&slices))
    }
}

/// The bodies a record holds: an envelope's (compressed or not), or the record itself; raises
/// InvalidEventError (field "envelope") for a corrupt envelope.
#[pyfunction]
pub fn envelope_unpack<'py>(py: Python<'py>, record: &[u8]) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    let plain = envelope::inflate(record).map_err(|e| core_error_to_py(py, e))?;
    let bodies = envelope::unpack(&plain).map_err(|e| core_error_to_py(py, e))?;
    Ok(bodies.into_iter().map(|b| PyBytes::new(py, b)).collect())
}

/// An event refused: its body, why, and its id if it has one.
#[pyclass(name = "DeadLetter", frozen, get_all, module = "core_ext._core")]
pub struct PyDeadLetter {
    pub event_id: Option<String>,
    pub field: String,
    pub reason: String,
    pub body: Py<PyBytes>,
}

/// A refund held until its payment is applied.
#[pyclass(name = "HeldRefund", frozen, get_all, module = "core_ext._core")]
pub struct PyHeldRefund {
    pub member_id: String,
    pub payment_id: String,
    pub body: Py<PyBytes>,
}

/// A Kafka message to send: key and value.
#[pyclass(name = "Message", frozen, get_all, module = "core_ext._core")]
pub struct PyMessage {
    pub key: Py<PyBytes>,
    pub value: Py<PyBytes>,
}

fn to_reply(v: &Bound<'_, PyAny>) -> PyResult<Reply> {
    if v.is_none() {
        return Ok(Reply::Nil);
    }
    if let Ok(b) = v.cast::<PyBytes>() {
        return Ok(Reply::Bulk(b.as_bytes().to_vec()));
    }
    if let Ok(s) = v.cast::<PyString>() {
        return Ok(Reply::Bulk(s.to_str()?.as_bytes().to_vec()));
    }
    if let Ok(l) = v.cast::<PyList>() {
        return l.iter().map(|x| to_reply(&x)).collect::<PyResult<Vec<_>>>().map(Reply::Array);
    }
    if let Ok(i) = v.extract::<i64>() {
        return Ok(Reply::Int(i));
    }
    if v.is_instance_of::<pyo3::exceptions::PyException>() {
        return Ok(Reply::Error(v.str()?.to_string()));
    }
    Err(CorruptStateError::new_err(format!("unexpected Redis reply of type {}", v.get_type().name()?)))
}

fn replies(v: &Bound<'_, PyList>) -> PyResult<Vec<Reply>> {
    v.iter().map(|x| to_reply(&x)).collect()
}

fn plan<'py>(py: Python<'py>, cmds: Vec<Vec<u8>>) -> Vec<Bound<'py, PyBytes>> {
    cmds.into_iter().map(|c| PyBytes::new(py, &c)).collect()
}

fn plan_error(e: String) -> PyErr {
    CorruptStateError::new_err(format!("accrual plan: {e}"))
}

/// A batch of Kafka records on its way through the accrual rounds (`batch.rs`): each
/// `*_plan` is a list of Redis commands (RESP bytes) to send as they are, each `*_done`
/// takes their replies in order.
#[pyclass(name = "AccrualBatch", module = "core_ext._core")]
pub struct PyAccrualBatch {
    inner: AccrualBatch,
    rules: std::sync::Arc<crate::rules::RuleSet>,
}

#[pymethods]
impl PyAccrualBatch {
    #[new]
    #[pyo3(signature = (rules, records, namespace, now_ms, horizon_days, history_len, members_per_call=1))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        rules: &PyRuleSet,
        records: Vec<Bound<'_, PyBytes>>,
        namespace: &str,
        now_ms: i64,
        horizon_days: i64,
        history_len: i64,
        members_per_call: usize,
    ) -> PyResult<Self> {
        if !(1..=10_000).contains(&horizon_days) {
            return Err(InvalidArgumentError::new_err("horizon_days must be from 1 to 10000"));
        }
        if !(1..=1_000).contains(&members_per_call) {
            return Err(InvalidArgumentError::new_err("members_per_call must be from 1 to 1000"));
        }
        // Borrowed, not copied: `bytes` cannot change and `records` holds them while the
        // GIL is released.
        let refs: Vec<&[u8]> = records.iter().map(|b| b.as_bytes()).collect();
        let cfg = Config { ns: namespace.to_string(), horizon_ms: horizon_days * batch::DAY_MS, history_len, members_per_call };
        let rules = std::sync::Arc::clone(&rules.inner);
        let for_batch = std::sync::Arc::clone(&rules);
        let inner = py.detach(|| AccrualBatch::decode(for_batch, cfg, &refs, now_ms));
        Ok(PyAccrualBatch { inner, rules })
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// Events not settled yet (their members conflicted; another round takes them).
    fn pending(&self) -> usize {
        self.inner.pending()
    }

    fn read_plan<'py>(&mut self, py: Python<'py>) -> Vec<Bound<'py, PyBytes>> {
        let cmds = self.inner.read_plan();
        plan(py, cmds)
    }

    /// Evaluates the round (the GIL is released meanwhile).
    fn read_done(&mut self, py: Python<'_>, replies_: &Bound<'_, PyList>) -> PyResult<()> {
        let r = replies(replies_)?;
        let inner = &mut self.inner;
        py.detach(|| inner.read_done(&r)).map_err(plan_error)
    }

    fn reserve_plan<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyBytes>> {
        plan(py, self.inner.reserve_plan())
    }

    fn reserve_done(&mut self, replies_: &Bound<'_, PyList>) -> PyResult<()> {
        self.inner.reserve_done(&replies(replies_)?).map_err(plan_error)
    }

    /// The round's outbox (a `SET` with a TTL): to send before the writes.
    fn outbox_plan<'py>(&mut self, py: Python<'py>, token: &str, ttl_s: i64) -> Vec<Bound<'py, PyBytes>> {
        let cmds = self.inner.outbox_plan(token, ttl_s);
        plan(py, cmds)
    }

    /// Reads of the outboxes duplicates' records name (after the rounds).
    fn resend_plan<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyBytes>> {
        plan(py, self.inner.resend_plan())
    }

    fn resend_done(&mut self, replies_: &Bound<'_, PyList>) -> PyResult<()> {
        self.inner.resend_done(&replies(replies_)?).map_err(plan_error)
    }

    fn write_plan<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyBytes>> {
        let cmds = {
            let inner = &self.inner;
            py.detach(|| inner.write_plan())
        };
        plan(py, cmds)
    }

    /// Returns how many members conflicted (their events go to the next round).
    fn write_done(&mut self, replies_: &Bound<'_, PyList>) -> PyResult<usize> {
        self.inner.write_done(&replies(replies_)?).map_err(plan_error)
    }

    fn settle_plan<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyBytes>> {
        plan(py, self.inner.settle_plan())
    }

    fn guest_plan<'py>(&self, py: Python<'py>, ttl_s: i64) -> Vec<Bound<'py, PyBytes>> {
        plan(py, self.inner.guest_plan(ttl_s))
    }

    fn guest_done(&mut self, replies_: &Bound<'_, PyList>) -> PyResult<()> {
        self.inner.guest_done(&replies(replies_)?);
        Ok(())
    }

    fn ledger_messages<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyBytes>> {
        let msgs = {
            let inner = &self.inner;
            py.detach(|| inner.ledger_messages())
        };
        plan(py, msgs)
    }

    fn trim_plan<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyBytes>> {
        plan(py, self.inner.trim_plan())
    }

    fn report(&self) -> crate::batch::Report {
        self.inner.report()
    }

    fn dead_letters(&self, py: Python<'_>) -> Vec<PyDeadLetter> {
        (0..self.inner.len())
            .filter(|&i| self.inner.kind(i) == Kind::Rejected)
            .map(|i| {
                let e = self.inner.error(i);
                PyDeadLetter {
                    event_id: self.inner.event(i).map(|e| e.event_id().to_string()),
                    field: e.map_or("body", |e| e.field()).to_string(),
                    reason: e.map_or("rejected", |e| e.reason()).to_string(),
                    body: PyBytes::new(py, self.inner.body(i)).unbind(),
                }
            })
            .collect()
    }

    fn held(&self, py: Python<'_>) -> Vec<PyHeldRefund> {
        (0..self.inner.len())
            .filter(|&i| self.inner.kind(i) == Kind::Held)
            .filter_map(|i| match self.inner.event(i)? {
                Event::Payment(p) => Some(PyHeldRefund {
                    member_id: p.member_id.clone()?,
                    payment_id: p.refund_of.clone()?,
                    body: PyBytes::new(py, self.inner.body(i)).unbind(),
                }),
                Event::Member(_) => None,
            })
            .collect()
    }

    /// The kind of each event, in order (for tests and logs).
    fn kinds(&self) -> Vec<PyOutcomeKind> {
        (0..self.inner.len()).map(|i| self.inner.kind(i).into()).collect()
    }

    /// Tier reviews and wallet checks to schedule: ({member: when_ms}, {member: when_ms}).
    fn schedules<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyDict>, Bound<'py, PyDict>)> {
        let (reviews, checks) = self.inner.schedules();
        let (a, b) = (PyDict::new(py), PyDict::new(py));
        for (m, t) in reviews {
            a.set_item(m, t)?;
        }
        for (m, t) in checks {
            b.set_item(m, t)?;
        }
        Ok((a, b))
    }

    /// ZADDs of the tier reviews and wallet checks of the members written.
    fn schedule_plan<'py>(&self, py: Python<'py>, reviews_key: &str, checks_key: &str) -> Vec<Bound<'py, PyBytes>> {
        plan(py, self.inner.schedule_plan(reviews_key, checks_key))
    }

    /// Gives the batch's memory back (the GIL released while it is freed); only its
    /// report stays meaningful.
    fn release(&mut self, py: Python<'_>) {
        let rules = std::sync::Arc::clone(&self.rules);
        let old = std::mem::replace(&mut self.inner, AccrualBatch::empty(rules));
        py.detach(move || drop(old));
    }

    /// (member, payment id) of payments applied for members with refunds held.
    fn paid_with_held(&self) -> Vec<(String, String)> {
        self.inner.paid_with_held().to_vec()
    }

    /// Coupon pushes: messages keyed by member.
    fn pushes(&self, py: Python<'_>) -> Vec<PyMessage> {
        self.inner
            .pushes()
            .into_iter()
            .map(|(m, v)| PyMessage { key: PyBytes::new(py, m.as_bytes()).unbind(), value: PyBytes::new(py, &v).unbind() })
            .collect()
    }

    /// Member notices (expiry reminders): messages keyed by member.
    fn notices(&self, py: Python<'_>) -> Vec<PyMessage> {
        self.inner
            .notices()
            .into_iter()
            .map(|(m, v)| PyMessage {
                key: PyBytes::new(py, m.as_bytes()).unbind(),
                value: PyBytes::new(py, v.as_bytes()).unbind(),
            })
            .collect()
    }

    /// Bodies of registrations applied (ids to bind, guest payments to credit).
    fn registrations<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyBytes>> {
        let (applied, _) = self.inner.registrations();
        applied.into_iter().map(|i| PyBytes::new(py, self.inner.body(i))).collect()
    }

    /// Bodies of registrations applied or seen again (their referral may be owed).
    fn invitations<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyBytes>> {
        let (_, invited) = self.inner.registrations();
        invited.into_iter().map(|i| PyBytes::new(py, self.inner.body(i))).collect()
    }
}

/// One table's rows of a batch of ledger messages, as a RowBinary block.
#[pyclass(name = "TableBlock", frozen, get_all, module = "core_ext._core")]
pub struct PyTableBlock {
    pub table: &'static str,
    pub columns: Vec<&'static str>,
    pub rows: usize,
    pub data: Py<PyBytes>,
    /// The rows' identities (event ids and kinds), for the insert's deduplication token.
    pub identity: Py<PyBytes>,
}

/// A batch of ledger-topic messages as ClickHouse blocks (`blocks.rs`).
#[pyclass(name = "LedgerBlocks", frozen, get_all, module = "core_ext._core")]
pub struct PyLedgerBlocks {
    /// Tables with rows, in insert order.
    pub tables: Vec<Py<PyTableBlock>>,
    /// Leaderboard scores the rows carry: (board, member, score, version).
    pub boards: Vec<(String, String, i64, i64)>,
    /// Messages that cannot be stored: (index in the batch, reason); none of their rows is in the blocks.
    pub poison: Vec<(usize, String)>,
    /// The `ly_board` calls (RESP) for `boards`, when the boards' keys were given: what the
    /// ledger role sends to Redis without looking inside.
    pub board_plan: Vec<Py<PyBytes>>,
}

/// Encodes ledger-topic messages into one RowBinary block per table and, given the boards'
/// (namespace, shards, ttl_s), the leaderboard calls their scores need (GIL released for both).
#[pyfunction]
#[pyo3(signature = (messages, boards=None))]
pub fn ledger_blocks(
    py: Python<'_>,
    messages: Vec<Bound<'_, PyBytes>>,
    boards: Option<(String, u32, i64)>,
) -> PyResult<PyLedgerBlocks> {
    // Borrowed, not copied (a batch's messages are megabytes): `bytes` cannot change and
    // `messages` holds them while the GIL is released.
    let refs: Vec<&[u8]> = messages.iter().map(|m| m.as_bytes()).collect();
    let (b, board_cmds) = py.detach(|| {
        let b = crate::blocks::encode(&refs);
        let cmds = match &boards {
            Some((ns, shards, ttl_s)) if !b.boards.is_empty() => crate::boards::commands(ns, &b.boards, (*shards).max(1), *ttl_s),
            _ => Vec::new(),
        };
        (b, cmds)
    });
    let board_plan = board_cmds.iter().map(|c| PyBytes::new(py, c).unbind()).collect();
    let mut tables = Vec::new();
    // The ledger's block last: once a ledger row can be read, every other row of its
    // message (the member's state, its records) can be too, so `reconcile` and `rebuild`,
    // which go by the ledger, never see a write's rows without its state.
    let mut pairs: Vec<_> = crate::blocks::TABLES.iter().zip(b.tables).collect();
    pairs.sort_by_key(|(t, _)| t.name == crate::blocks::LEDGER.name);
    for (t, block) in pairs {
        if block.rows == 0 {
            continue;
        }
        tables.push(Py::new(
            py,
            PyTableBlock {
                table: t.name,
                columns: t.columns.iter().map(|c| c.0).collect(),
                rows: block.rows,
                data: PyBytes::new(py, &block.data).unbind(),
                identity: PyBytes::new(py, &block.identity).unbind(),
            },
        )?);
    }
    Ok(PyLedgerBlocks { tables, boards: b.boards, poison: b.poison, board_plan })
}

/// Columns whose ClickHouse type is not what the ledger blocks write, from DESCRIBE rows
/// (table, column, type); empty when the schema fits.
#[pyfunction]
pub fn ledger_schema_mismatches(describe: Vec<(String, String, String)>) -> Vec<String> {
    crate::blocks::schema_mismatches(&describe)
}

/// The tables the ledger blocks write: (table, columns in insert order).
#[pyfunction]
pub fn ledger_tables() -> Vec<(&'static str, Vec<&'static str>)> {
    crate::blocks::TABLES.iter().map(|t| (t.name, t.columns.iter().map(|c| c.0).collect())).collect()
}

/// `ly_board` calls (RESP) for leaderboard updates (board, member, score, version): one
/// per board shard, each naming the keys of one slot.
#[pyfunction]
pub fn board_commands<'py>(
    py: Python<'py>,
    namespace: &str,
    updates: Vec<(String, String, i64, i64)>,
    shards: u32,
    ttl_s: i64,
) -> Vec<Bound<'py, PyBytes>> {
    plan(py, crate::boards::commands(namespace, &updates, shards, ttl_s))
}

/// Every board (week and month, group-wide and per business unit) that an event at
/// `bu_id`, `at_ms` could count on, whatever the rules define.
#[pyfunction]
pub fn candidate_boards(bu_id: &str, at_ms: i64, utc_offset_minutes: i64) -> Vec<String> {
    crate::boards::candidate_boards(bu_id, at_ms, utc_offset_minutes)
}

/// The shard of a board a member's score lives in.
#[pyfunction]
pub fn board_shard(member: &str, shards: u32) -> u32 {
    crate::boards::shard(member, shards)
}

/// A stored payment record: (amount_fen, points, refunded_amount_fen, refunded_points, used, returned_used).
type OriginalTuple = (i64, i64, i64, i64, i64, i64);

/// Evaluates a batch; see `core_ext/_core.pyi`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn evaluate_batch(
    py: Python<'_>,
    rules: &PyRuleSet,
    batch: &PyEventBatch,
    applied: Vec<bool>,
    originals: Vec<Option<OriginalTuple>>,
    members: HashMap<String, (i64, Option<String>)>,
    budget_spent: HashMap<String, i64>,
    now_ms: i64,
) -> PyResult<PyEvaluation> {
    let n = batch.events.len();
    if applied.len() != n || originals.len() != n {
        return Err(InvalidArgumentError::new_err(format!(
            "evaluate_batch: {n} events but {} applied flags and {} originals",
            applied.len(),
            originals.len()
        )));
    }
    let mut records = Vec::with_capacity(n);
    for original in originals {
        records.push(match original {
            Some((amount_fen, points, refunded_amount_fen, refunded_points, used, returned_used)) if amount_fen > 0 => {
                Some(PaymentRecord { amount_fen, points, refunded_amount_fen, refunded_points, used, returned_used }.into())
            }
            Some(_) => return Err(InvalidArgumentError::new_err("evaluate_batch: an original payment has amount_fen <= 0")),
            None => None,
        });
    }
    let stored = StoredMembers { members: members.into_iter().collect(), budget_spent: budget_spent.into_iter().collect() };
    let rules = Arc::clone(&rules.inner);
    let events = &batch.events;
    let result = py.detach(|| engine::evaluate_batch(&rules, events, &applied, &records, &stored, now_ms));
    evaluation(py, result)
}
