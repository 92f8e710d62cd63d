//! Checkers: pure functions from a paired history ([`crate::history::Op`]) to a [`CheckResult`].
//!
//! They never talk to a store or read the clock: a search that runs out of its step budget
//! answers [`Verdict::Unknown`], never a pass.

pub mod elle;
pub mod faults;
pub mod kv;
pub mod linearizable;
pub mod revision;
pub mod set;
pub mod watch;

use serde::{Deserialize, Serialize};

/// A checker's answer. Only `Valid` passes; `Unknown` is reported apart and fails the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Valid,
    Invalid,
    Unknown,
}

impl Verdict {
    /// Invalid wins over Unknown, which wins over Valid.
    pub fn and(self, other: Verdict) -> Verdict {
        match (self, other) {
            (Verdict::Invalid, _) | (_, Verdict::Invalid) => Verdict::Invalid,
            (Verdict::Unknown, _) | (_, Verdict::Unknown) => Verdict::Unknown,
            _ => Verdict::Valid,
        }
    }
}

/// One checker's result, as written to `results.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub checker: String,
    pub verdict: Verdict,
    /// Human-readable descriptions of what is wrong (or why the answer is unknown).
    pub anomalies: Vec<String>,
    /// Counters, e.g. ops checked.
    pub stats: serde_json::Value,
}

/// Anomaly lists are capped in reports so a badly broken run stays readable.
pub const ANOMALIES_REPORTED_MAX: usize = 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_combine_pessimistically() {
        use Verdict::*;
        assert_eq!(Valid.and(Valid), Valid);
        assert_eq!(Valid.and(Unknown), Unknown);
        assert_eq!(Unknown.and(Invalid), Invalid);
        assert_eq!(Invalid.and(Valid), Invalid);
    }
}
