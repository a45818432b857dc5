//! The loyalty engine's core: pure, batch-shaped functions over events, member
//! states and rules. No I/O here; `bindings` is the only module that knows Python.

pub mod accrual;
pub mod errors;
pub mod events;
pub mod rules;

#[cfg(feature = "python")]
mod bindings;

/// The extension module `core_ext._core`: its exports, in one place.
#[cfg(feature = "python")]
#[pyo3::pymodule]
#[pyo3(name = "_core")]
fn core_module(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
    use pyo3::prelude::*;
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("LoyaltyCoreError", py.get_type::<bindings::LoyaltyCoreError>())?;
    m.add("InvalidEventError", py.get_type::<bindings::InvalidEventError>())?;
    m.add("RulesError", py.get_type::<bindings::RulesError>())?;
    m.add("RejectedEventError", py.get_type::<bindings::RejectedEventError>())?;
    m.add_class::<bindings::PyRuleSet>()?;
    m.add_class::<bindings::PyPaymentBatch>()?;
    m.add_function(wrap_pyfunction!(bindings::validate_payment, m)?)?;
    m.add_function(wrap_pyfunction!(bindings::accrue_batch, m)?)?;
    Ok(())
}
