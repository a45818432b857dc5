//! The only module that touches Python objects. Converts once per batch at the
//! boundary and releases the GIL while the pure core works.

use crate::accrual::{self, EventContext, Outcome, PaymentRecord};
use crate::errors::CoreError;
use crate::events::{self, PaymentEvent};
use crate::rules::RuleSet;
use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::sync::Arc;

create_exception!(
    _core,
    LoyaltyCoreError,
    PyValueError,
    "Base class of every error raised by the loyalty core."
);
create_exception!(
    _core,
    InvalidEventError,
    LoyaltyCoreError,
    "An event body that cannot be accepted; `.field` and `.reason` say why."
);
create_exception!(
    _core,
    RulesError,
    LoyaltyCoreError,
    "A rule set that cannot be loaded; `.file`, `.line`, `.field` and `.reason` say where and why."
);
create_exception!(
    _core,
    RejectedEventError,
    LoyaltyCoreError,
    "A well-formed event that the rules or the member's state cannot apply."
);

/// Turns a core error into the matching Python exception, with its parts as attributes.
pub fn core_error_to_py(py: Python<'_>, err: CoreError) -> PyErr {
    let message = err.to_string();
    let pyerr = match &err {
        CoreError::InvalidEvent { .. } => InvalidEventError::new_err(message),
        CoreError::InvalidRules { .. } => RulesError::new_err(message),
        CoreError::Rejected { .. } => RejectedEventError::new_err(message),
    };
    let value = pyerr.value(py);
    // setattr on a fresh exception instance cannot fail in practice; if it did,
    // the message still carries every part.
    let _ = value.setattr("field", err.field());
    let _ = value.setattr("reason", err.reason());
    if let CoreError::InvalidRules { file, line, .. } = &err {
        let _ = value.setattr("file", file.as_str());
        let _ = value.setattr("line", *line);
    }
    pyerr
}

/// A validated, compiled earning rule set.
#[pyclass(name = "RuleSet", frozen, module = "core_ext._core")]
pub struct PyRuleSet {
    pub inner: Arc<RuleSet>,
}

#[pymethods]
impl PyRuleSet {
    #[staticmethod]
    #[pyo3(signature = (text, path = "<string>"))]
    fn from_toml(py: Python<'_>, text: &str, path: &str) -> PyResult<Self> {
        RuleSet::from_toml(text, path)
            .map(|r| PyRuleSet { inner: Arc::new(r) })
            .map_err(|e| core_error_to_py(py, e))
    }

    #[getter]
    fn version(&self) -> String {
        self.inner.version.clone()
    }

    #[getter]
    fn tier_ids(&self) -> Vec<String> {
        self.inner.tiers.iter().map(|t| t.id.clone()).collect()
    }

    #[getter]
    fn default_tier(&self) -> String {
        self.inner.default_tier().id.clone()
    }

    #[getter]
    fn business_units(&self) -> Vec<(String, String)> {
        let mut out: Vec<_> = self
            .inner
            .business_units
            .values()
            .map(|b| (b.id.clone(), b.format.clone()))
            .collect();
        out.sort();
        out
    }

    fn __repr__(&self) -> String {
        format!(
            "RuleSet(version={:?}, business_units={}, tiers={})",
            self.inner.version,
            self.inner.business_units.len(),
            self.inner.tiers.len()
        )
    }
}

/// Validates one raw event body; returns `(event_id, member_id, type)`.
#[pyfunction]
pub fn validate_payment(py: Python<'_>, body: &[u8]) -> PyResult<(String, String, &'static str)> {
    events::parse_payment_event(body)
        .map(|ev| (ev.event_id, ev.member_id, ev.kind.as_str()))
        .map_err(|e| core_error_to_py(py, e))
}

/// A batch of raw event bodies, decoded and validated once.
#[pyclass(name = "PaymentBatch", frozen, module = "core_ext._core")]
pub struct PyPaymentBatch {
    events: Vec<Result<PaymentEvent, CoreError>>,
}

#[pymethods]
impl PyPaymentBatch {
    #[staticmethod]
    fn decode(py: Python<'_>, bodies: Vec<Vec<u8>>) -> Self {
        let events = py.detach(|| bodies.iter().map(|b| events::parse_payment_event(b)).collect());
        PyPaymentBatch { events }
    }

    fn __len__(&self) -> usize {
        self.events.len()
    }

    /// Per event: `(event_id, member_id, refund_of)`, all None for an invalid event.
    fn keys(&self) -> Vec<(Option<String>, Option<String>, Option<String>)> {
        self.events
            .iter()
            .map(|e| match e {
                Ok(ev) => (Some(ev.event_id.clone()), Some(ev.member_id.clone()), ev.refund_of.clone()),
                Err(_) => (None, None, None),
            })
            .collect()
    }
}

type OutcomeTuple = (
    &'static str,
    i64,
    Option<String>,
    Option<String>,
    i64,
    i64,
    Option<String>,
    Option<String>,
);

/// Computes the outcome of every event of `batch`; see `core_ext/_core.pyi`.
#[pyfunction]
pub fn accrue_batch(
    py: Python<'_>,
    rules: &PyRuleSet,
    batch: &PyPaymentBatch,
    tiers: Vec<Option<String>>,
    originals: Vec<Option<(i64, i64, i64, i64)>>,
    applied: Vec<bool>,
    now_ms: i64,
) -> PyResult<Vec<OutcomeTuple>> {
    let n = batch.events.len();
    if tiers.len() != n || originals.len() != n || applied.len() != n {
        return Err(PyValueError::new_err(format!(
            "accrue_batch: {n} events but {} tiers, {} originals, {} applied flags",
            tiers.len(),
            originals.len(),
            applied.len()
        )));
    }
    let mut contexts = Vec::with_capacity(n);
    for ((tier, original), already_applied) in tiers.into_iter().zip(originals).zip(applied) {
        let original = match original {
            Some((amount_fen, points, refunded_amount_fen, refunded_points)) if amount_fen > 0 => {
                Some(PaymentRecord { amount_fen, points, refunded_amount_fen, refunded_points })
            }
            Some(_) => return Err(PyValueError::new_err("accrue_batch: an original payment has amount_fen <= 0")),
            None => None,
        };
        contexts.push(EventContext { tier, original, already_applied });
    }
    let rules = Arc::clone(&rules.inner);
    let events = &batch.events;
    let outcomes = py.detach(|| accrual::accrue_batch(&rules, events, &contexts, now_ms));
    Ok(outcomes
        .into_iter()
        .map(|o| match o {
            Outcome::Apply(m) => (
                "apply",
                m.points,
                Some(m.row_json),
                m.refund_of,
                m.amount_fen,
                m.clawback_points,
                None,
                None,
            ),
            Outcome::Duplicate => ("duplicate", 0, None, None, 0, 0, None, None),
            Outcome::Rejected(e) => (
                "rejected",
                0,
                None,
                None,
                0,
                0,
                Some(e.field().to_string()),
                Some(e.reason().to_string()),
            ),
        })
        .collect())
}
