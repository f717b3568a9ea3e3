//! Status conditions: building them, and keeping `lastTransitionTime` unless a
//! condition's status really changed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// Condition types and reasons (Gateway API names where one exists).
pub mod types {
    pub const ACCEPTED: &str = "Accepted";
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    pub const PROGRAMMED: &str = "Programmed";
    pub const READY: &str = "Ready";
}

pub mod reasons {
    pub const ACCEPTED: &str = "Accepted";
    pub const INVALID: &str = "Invalid";
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    pub const REF_NOT_PERMITTED: &str = "RefNotPermitted";
    pub const INVALID_CERTIFICATE_REF: &str = "InvalidCertificateRef";
    pub const BACKEND_NOT_FOUND: &str = "BackendNotFound";
    pub const PROGRAMMED: &str = "Programmed";
    pub const PENDING: &str = "Pending";
    pub const READY: &str = "Ready";
    pub const RESOURCE_CONFLICT: &str = "ResourceConflict";
    pub const PORT_UNAVAILABLE: &str = "PortUnavailable";
    pub const NO_MATCHING_PARENT: &str = "NoMatchingParent";
    pub const CONFLICTED: &str = "Conflicted";
    pub const TARGET_NOT_FOUND: &str = "TargetNotFound";
    pub const INVALID_REF: &str = "InvalidRef";
}

/// A condition before it is dated: what a pure status function decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Cond {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Cond {
            type_,
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn ok(type_: &'static str, reason: &str, message: impl Into<String>) -> Self {
        Cond::new(type_, true, reason, message)
    }

    pub fn fail(type_: &'static str, reason: &str, message: impl Into<String>) -> Self {
        Cond::new(type_, false, reason, message)
    }
}

fn status_str(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

/// Kubernetes condition messages are limited to 32768 bytes.
const MAX_MESSAGE: usize = 32 * 1024;

fn clamp_message(mut m: String) -> String {
    if m.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE - 3;
        while !m.is_char_boundary(cut) {
            cut -= 1;
        }
        m.truncate(cut);
        m.push_str("...");
    }
    m
}

/// Dates `new` against `old`: a condition whose type exists in `old` with the
/// same status keeps its `lastTransitionTime`; any other gets `now`.
pub fn merge(
    old: &[Condition],
    new: Vec<Cond>,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    new.into_iter()
        .map(|c| {
            let status = status_str(c.status);
            let last_transition_time = old
                .iter()
                .find(|o| o.type_ == c.type_ && o.status == status)
                .map(|o| o.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                last_transition_time,
                message: clamp_message(c.message),
                observed_generation: generation,
                reason: c.reason,
                status: status.to_string(),
                type_: c.type_.to_string(),
            }
        })
        .collect()
}

/// The current time truncated to whole seconds, which is all `Time` keeps.
pub fn now() -> Time {
    let ts = Timestamp::now();
    Time(Timestamp::from_second(ts.as_second()).unwrap_or(ts))
}

/// The status (`True`/`False`) of condition `type_`, if present.
pub fn status_of<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a str> {
    conds
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

/// Whether condition `type_` is present and True.
pub fn is_true(conds: &[Condition], type_: &str) -> bool {
    status_of(conds, type_) == Some("True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    #[test]
    fn keeps_transition_time_when_status_unchanged() {
        let old = merge(
            &[],
            vec![Cond::ok(types::READY, reasons::READY, "2/2")],
            Some(1),
            &t(100),
        );
        // Reason, message and generation change; status does not.
        let new = merge(
            &old,
            vec![Cond::ok(types::READY, "Other", "3/3")],
            Some(2),
            &t(200),
        );
        assert_eq!(new[0].last_transition_time, t(100));
        assert_eq!(new[0].message, "3/3");
        assert_eq!(new[0].observed_generation, Some(2));
    }

    #[test]
    fn new_transition_time_when_status_flips() {
        let old = merge(
            &[],
            vec![Cond::ok(types::READY, reasons::READY, "")],
            Some(1),
            &t(100),
        );
        let new = merge(
            &old,
            vec![Cond::fail(types::READY, reasons::PENDING, "0/2")],
            Some(1),
            &t(200),
        );
        assert_eq!(new[0].last_transition_time, t(200));
        assert_eq!(new[0].status, "False");
    }

    #[test]
    fn new_condition_type_is_dated_now() {
        let old = merge(
            &[],
            vec![Cond::ok(types::ACCEPTED, reasons::ACCEPTED, "")],
            Some(1),
            &t(100),
        );
        let new = merge(
            &old,
            vec![
                Cond::ok(types::ACCEPTED, reasons::ACCEPTED, ""),
                Cond::ok(types::READY, reasons::READY, ""),
            ],
            Some(1),
            &t(200),
        );
        assert_eq!(new[0].last_transition_time, t(100));
        assert_eq!(new[1].last_transition_time, t(200));
    }

    #[test]
    fn long_messages_are_clamped() {
        let c = merge(
            &[],
            vec![Cond::fail(
                types::ACCEPTED,
                reasons::INVALID,
                "é".repeat(40_000),
            )],
            None,
            &t(1),
        );
        assert!(c[0].message.len() <= MAX_MESSAGE);
        assert!(c[0].message.ends_with("..."));
    }
}
