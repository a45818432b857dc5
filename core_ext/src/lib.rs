//! The loyalty engine's core: pure, batch-shaped functions over events, member
//! states and rules. No I/O here; `bindings` is the only module that knows Python.

pub mod accrual;
pub mod batch;
pub mod blocks;
pub mod behaviour;
pub mod boards;
pub mod campaigns;
pub mod coupon_rules;
pub mod coupons;
pub mod engage;
pub mod engage_rules;
pub mod engine;
pub mod envelope;
pub mod errors;
pub mod events;
pub mod ledger;
pub mod mall;
pub mod receipts;
pub mod signups;
pub mod merge;
pub mod parking;
pub mod parking_rules;
pub mod rules;
pub mod rules_file;
pub mod settlement;
pub mod simulate;
pub mod state;
pub mod text;
pub mod tiers;
pub mod time;
pub mod rebuild;
pub mod record;
pub mod resp;
pub mod redemption;
pub mod wallet;

#[cfg(feature = "python")]
mod bindings;

/// The extension allocates through mimalloc (see Cargo.toml); `cargo test` keeps the system's.
#[cfg(feature = "python")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[cfg(feature = "python")]
mod bindings_batch;

/// The extension module `core_ext._core`: its exports, in one place.
#[cfg(feature = "python")]
#[pyo3::pymodule]
#[pyo3(name = "_core")]
fn core_module(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
    use pyo3::prelude::*;
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    let exceptions = [
        ("LoyaltyError", py.get_type::<bindings::LoyaltyError>()),
        ("LoyaltyCoreError", py.get_type::<bindings::LoyaltyCoreError>()),
        ("InvalidEventError", py.get_type::<bindings::InvalidEventError>()),
        ("RulesError", py.get_type::<bindings::RulesError>()),
        ("RejectedEventError", py.get_type::<bindings::RejectedEventError>()),
        ("CorruptStateError", py.get_type::<bindings::CorruptStateError>()),
        ("InvalidArgumentError", py.get_type::<bindings::InvalidArgumentError>()),
    ];
    for (name, exc) in exceptions {
        // Tracebacks then say core_ext.InvalidEventError, where users import it from.
        exc.setattr("__module__", "core_ext")?;
        m.add(name, exc)?;
    }
    // The core's refusals are LoyaltyErrors and ValueErrors both (pyo3 gives an exception
    // one base; the type is a heap type, so its bases can be set once here).
    let value_error = py.get_type::<pyo3::exceptions::PyValueError>();
    py.get_type::<bindings::LoyaltyCoreError>()
        .setattr("__bases__", (py.get_type::<bindings::LoyaltyError>(), value_error))?;
    m.add_class::<bindings::PyRuleSet>()?;
    m.add_class::<bindings::PyEventBatch>()?;
    m.add_class::<bindings_batch::PyAccrualBatch>()?;
    m.add_class::<bindings_batch::PyOutcomeKind>()?;
    m.add_class::<bindings_batch::PyEventOutcome>()?;
    m.add_class::<bindings_batch::PyMemberUpdate>()?;
    m.add_class::<bindings_batch::PyEvaluation>()?;
    m.add_class::<bindings_batch::PyEventInfo>()?;
    m.add_class::<batch::Report>()?;
    m.add_class::<bindings_batch::PyDeadLetter>()?;
    m.add_class::<bindings_batch::PyHeldRefund>()?;
    m.add_class::<bindings_batch::PyMessage>()?;
    m.add_class::<bindings_batch::PyTableBlock>()?;
    m.add_class::<bindings_batch::PyLedgerBlocks>()?;
    m.add_function(wrap_pyfunction!(bindings_batch::ledger_blocks, m)?)?;
    m.add_function(wrap_pyfunction!(bindings_batch::ledger_schema_mismatches, m)?)?;
    m.add_function(wrap_pyfunction!(bindings_batch::ledger_tables, m)?)?;
    m.add_function(wrap_pyfunction!(bindings_batch::decode_event, m)?)?;
    m.add_function(wrap_pyfunction!(bindings_batch::board_commands, m)?)?;
    m.add_function(wrap_pyfunction!(bindings_batch::board_shard, m)?)?;
    m.add_function(wrap_pyfunction!(bindings_batch::candidate_boards, m)?)?;
    m.add_function(wrap_pyfunction!(bindings_batch::envelope_pack, m)?)?;
    m.add_function(wrap_pyfunction!(bindings_batch::envelope_unpack, m)?)?;
    m.add_function(wrap_pyfunction!(bindings::validate_payment, m)?)?;
    m.add_function(wrap_pyfunction!(bindings::validate_member_event, m)?)?;
    m.add_function(wrap_pyfunction!(bindings::check_json_object, m)?)?;
    m.add_function(wrap_pyfunction!(bindings_batch::evaluate_batch, m)?)?;
    m.add_function(wrap_pyfunction!(bindings::member_view, m)?)?;
    m.add_function(wrap_pyfunction!(bindings::check_member_event, m)?)?;
    m.add_function(wrap_pyfunction!(bindings::mall_catalogue, m)?)?;
    m.add_function(wrap_pyfunction!(bindings::receipt_id, m)?)?;
    m.add_function(wrap_pyfunction!(bindings::check_image_name, m)?)?;
    m.add_function(wrap_pyfunction!(bindings::events_catalogue, m)?)?;
    m.add_function(wrap_pyfunction!(bindings::record_fields, m)?)?;
    m.add_function(wrap_pyfunction!(bindings::simulate, m)?)?;
    m.add_function(wrap_pyfunction!(bindings::redeem, m)?)?;
    m.add_function(wrap_pyfunction!(bindings::reverse_redemption, m)?)?;
    m.add_function(wrap_pyfunction!(bindings::rebuild_member, m)?)?;
    m.add_function(wrap_pyfunction!(bindings::hold_points, m)?)?;
    m.add_function(wrap_pyfunction!(bindings::release_hold, m)?)?;
    m.add_function(wrap_pyfunction!(bindings::parking_exit, m)?)?;
    m.add_function(wrap_pyfunction!(bindings::wallet_total, m)?)?;
    m.add_function(wrap_pyfunction!(bindings::next_wallet_check_ms, m)?)?;
    m.add_function(wrap_pyfunction!(bindings::redeem_coupon, m)?)?;
    m.add_function(wrap_pyfunction!(bindings::coupon_wallet, m)?)?;
    m.add_function(wrap_pyfunction!(bindings::liability_by_expiry, m)?)?;
    m.add_function(wrap_pyfunction!(bindings::engage, m)?)?;
    m.add_function(wrap_pyfunction!(bindings::engagement_view, m)?)?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests_engine;
#[cfg(test)]
mod tests_coupons;
#[cfg(test)]
mod tests_engage;
#[cfg(test)]
mod tests_batch;
