//! The one error type of the core. Each variant maps to one Python exception in
//! `bindings.rs`; messages are written for the person who has to fix the input.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CoreError {
    /// A payment/refund event that cannot be accepted: names the field and why.
    #[error("{field}: {reason}")]
    InvalidEvent { field: String, reason: String },

    /// A rule set that cannot be loaded: names the file, line and field.
    #[error("{file}:{line}: {field}: {reason}")]
    InvalidRules {
        file: String,
        line: usize,
        field: String,
        reason: String,
    },

    /// An event that is well formed but cannot be applied under the rules or the
    /// member's state (unknown business unit, refund of an unknown payment...).
    #[error("{field}: {reason}")]
    Rejected { field: String, reason: String },
}

impl CoreError {
    pub fn invalid_event(field: impl Into<String>, reason: impl Into<String>) -> Self {
        CoreError::InvalidEvent {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn rejected(field: impl Into<String>, reason: impl Into<String>) -> Self {
        CoreError::Rejected {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The field the error is about, for the `field` member of a JSON error body.
    pub fn field(&self) -> &str {
        match self {
            CoreError::InvalidEvent { field, .. }
            | CoreError::InvalidRules { field, .. }
            | CoreError::Rejected { field, .. } => field,
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            CoreError::InvalidEvent { reason, .. }
            | CoreError::InvalidRules { reason, .. }
            | CoreError::Rejected { reason, .. } => reason,
        }
    }
}

pub type CoreResult<T> = Result<T, CoreError>;
