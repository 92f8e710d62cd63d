//! `faults`: anomalies the nemesis itself observed while injecting a fault (a member that kept
//! running after its fsync failed, where it must stop). The nemesis records them as nemesis
//! events whose action starts with [`ANOMALY_PREFIX`]; this checker turns them into a verdict,
//! so `check` reproduces it from the saved history.

use crate::checker::{CheckResult, Verdict, ANOMALIES_REPORTED_MAX};
use crate::history::{Event, EventKind};
use crate::nemesis::ANOMALY_PREFIX;

pub fn check(events: &[Event]) -> CheckResult {
    let mut faults = 0u64;
    let mut anomalies = Vec::new();
    for event in events {
        let EventKind::Nemesis { action } = &event.kind else {
            continue;
        };
        if action.starts_with("start ") {
            faults += 1;
        }
        if let Some(what) = action
            .strip_prefix("start ")
            .unwrap_or(action)
            .strip_prefix(ANOMALY_PREFIX)
        {
            anomalies.push(what.to_string());
        }
    }
    let verdict = if anomalies.is_empty() {
        Verdict::Valid
    } else {
        Verdict::Invalid
    };
    let count = anomalies.len();
    anomalies.truncate(ANOMALIES_REPORTED_MAX);
    CheckResult {
        checker: "faults".into(),
        verdict,
        anomalies,
        stats: serde_json::json!({ "faults": faults, "anomalies": count }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Actor;

    fn nemesis(action: &str) -> Event {
        Event {
            index: 0,
            time_ns: 0,
            actor: Actor::Nemesis,
            node: None,
            kind: EventKind::Nemesis {
                action: action.into(),
            },
        }
    }

    #[test]
    fn only_anomalies_the_nemesis_saw_are_invalid() {
        let fine = [
            nemesis("start fsync-fail n1: exited by itself after failing fsyncs: panicked"),
            nemesis("stop restart n1 without the shim"),
        ];
        let result = check(&fine);
        assert_eq!(result.verdict, Verdict::Valid);
        assert_eq!(result.stats["faults"], 1);
        let bad = [nemesis(&format!(
            "start {ANOMALY_PREFIX}fsync-fail n1: still running 10s after an fsync failed"
        ))];
        let result = check(&bad);
        assert_eq!(result.verdict, Verdict::Invalid);
        assert!(result.anomalies[0].starts_with("fsync-fail n1"));
    }
}
