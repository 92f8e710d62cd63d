//! `--auto-compaction-mode` / `--auto-compaction-retention` (etcd: `etcdserver/api/v3compactor`):
//! the leader compacts history by itself, through raft like a client's Compact.
//! - periodic: keeps the history of the last retention period. The current revision is sampled
//!   every tenth of the period (every hour for periods above an hour, as etcd documents), and each
//!   sample becomes the compaction target once it is a period old.
//! - revision: keeps the last N revisions, checked every five minutes (etcd's interval).
//!
//! Only the leader compacts; a member that loses leadership forgets its samples (etcd pauses its
//! compactor), so a new leader waits a full period before its first periodic compaction.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_proto::cairnpb::internal_request::Request;
use cairn_proto::etcdserverpb::CompactionRequest;

use super::{ApiError, Core};
use crate::config::AutoCompaction;
use crate::mvcc;

/// How often revision mode checks (etcd: `revInterval`).
const REVISION_CHECK_INTERVAL: Duration = Duration::from_secs(5 * 60);
const HOUR: Duration = Duration::from_secs(3600);

/// Decides the next compaction target from samples of the current revision.
struct Planner {
    policy: AutoCompaction,
    /// (when, current revision then), oldest first: periodic mode only.
    samples: VecDeque<(Instant, i64)>,
}

impl Planner {
    fn new(policy: AutoCompaction) -> Planner {
        Planner {
            policy,
            samples: VecDeque::new(),
        }
    }

    fn interval(&self) -> Duration {
        match self.policy {
            AutoCompaction::Periodic(period) if period > HOUR => HOUR,
            AutoCompaction::Periodic(period) => period / 10,
            AutoCompaction::Revision(_) => REVISION_CHECK_INTERVAL,
        }
    }

    /// Records `current` at `now`; the revision to compact to, if it is above `compacted`.
    fn next(&mut self, now: Instant, current: i64, compacted: i64) -> Option<i64> {
        let target = match self.policy {
            AutoCompaction::Revision(keep) => current - keep,
            AutoCompaction::Periodic(period) => {
                self.samples.push_back((now, current));
                let mut target = 0;
                while let Some(&(at, rev)) = self.samples.front() {
                    if now.duration_since(at) < period {
                        break;
                    }
                    target = rev;
                    self.samples.pop_front();
                }
                target
            }
        };
        (target > compacted).then_some(target)
    }

    fn forget(&mut self) {
        self.samples.clear();
    }
}

/// Runs the policy for as long as the member runs.
pub async fn run_auto_compaction(core: Arc<Core>, policy: AutoCompaction) {
    let mut planner = Planner::new(policy);
    let mut ticks = tokio::time::interval(planner.interval());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if !core.raft.status().is_leader {
            planner.forget();
            continue;
        }
        let revisions = core
            .store
            .current_revision()
            .and_then(|c| Ok((c, core.store.compact_revision()?)));
        let Ok((current, compacted)) = revisions else {
            continue;
        };
        let Some(target) = planner.next(Instant::now(), current, compacted) else {
            continue;
        };
        let compact = Request::Compaction(CompactionRequest {
            revision: target,
            physical: false,
        });
        match core.propose(compact).await {
            Ok(_) => tracing::info!(revision = target, ?policy, "auto compaction"),
            // Someone compacted further in the meantime.
            Err(ApiError::Mvcc(mvcc::Error::Compacted)) => {}
            Err(e) => tracing::warn!(revision = target, "auto compaction failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_mode_keeps_the_last_n_revisions() {
        let mut p = Planner::new(AutoCompaction::Revision(100));
        let now = Instant::now();
        assert_eq!(p.next(now, 50, 0), None);
        assert_eq!(p.next(now, 150, 0), Some(50));
        assert_eq!(p.next(now, 150, 50), None);
        assert_eq!(p.interval(), REVISION_CHECK_INTERVAL);
    }

    #[test]
    fn periodic_mode_compacts_to_the_revision_of_one_period_ago() {
        let period = Duration::from_secs(10);
        let mut p = Planner::new(AutoCompaction::Periodic(period));
        assert_eq!(p.interval(), Duration::from_secs(1));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(p.next(at(0), 5, 0), None);
        assert_eq!(p.next(at(4), 9, 0), None);
        assert_eq!(p.next(at(9), 12, 0), None);
        // The sample of t=0 is a period old; at t=14 so is t=4's.
        assert_eq!(p.next(at(10), 20, 0), Some(5));
        assert_eq!(p.next(at(14), 21, 5), Some(9));
        assert_eq!(p.next(at(15), 21, 9), None);
        p.forget();
        assert_eq!(p.next(at(30), 40, 9), None);
        let long = Planner::new(AutoCompaction::Periodic(72 * HOUR));
        assert_eq!(long.interval(), HOUR);
    }
}
