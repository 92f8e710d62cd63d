//! The lessor: which leases exist (as applied), and — on the leader only — when each expires.
//!
//! Leases themselves are replicated state (granted and revoked through raft, stored by MVCC with the
//! keys attached to them). Time is not: only the leader ("primary") keeps expiry deadlines, renews
//! them on keep-alive, and proposes a revoke for each lease that expires. A member that becomes
//! leader gives every lease a full TTL plus an election timeout (etcd's `Promote`), so no lease
//! expires early because its keep-alives went to the old leader; a member that stops leading forgets
//! the deadlines.
//!
//! **Invariant:** the set of leases equals the applied state (apply calls [`Lessor::granted`] and
//! [`Lessor::revoked`] after writing, and [`Lessor::reload`] after a snapshot install).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::metrics::METRICS;

/// etcd's `MaxLeaseTTL`: larger requested TTLs are refused.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// How long the leader waits for a proposed revoke to apply before proposing it again.
const REVOKE_RETRY: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Lease {
    /// Granted TTL, seconds.
    ttl: i64,
    /// The deadline, on the primary only.
    expiry: Option<Instant>,
    /// When a revoke was last proposed for it (it expired), on the primary only.
    revoking: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    leases: HashMap<i64, Lease>,
    /// (deadline, id) of every lease, on the primary only.
    deadlines: BTreeSet<(Instant, i64)>,
    primary: bool,
}

/// Shared by apply, the Lease API and the expiry task.
#[derive(Debug, Default)]
pub struct Lessor {
    state: Mutex<State>,
    /// Woken when a lease is revoked or this member stops leading.
    changes: tokio::sync::Notify,
}

/// What [`Lessor::time_to_live`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remaining {
    pub granted_ttl: i64,
    /// Whole seconds left (the granted TTL on a member that does not lead).
    pub ttl: i64,
}

impl State {
    fn set_deadline(&mut self, id: i64, deadline: Option<Instant>) {
        if let Some(lease) = self.leases.get_mut(&id) {
            if let Some(old) = lease.expiry.take() {
                self.deadlines.remove(&(old, id));
            }
            if let Some(new) = deadline {
                self.deadlines.insert((new, id));
            }
            lease.expiry = deadline;
            lease.revoking = None;
        }
    }
}

impl Lessor {
    /// A lessor holding `leases` (id, granted TTL), as stored.
    pub fn new(leases: Vec<(i64, i64)>) -> Lessor {
        let lessor = Lessor::default();
        lessor.reload(leases);
        lessor
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("lessor lock poisoned")
    }

    /// Replaces every lease (after a snapshot install). A primary gives each a full TTL.
    pub fn reload(&self, leases: Vec<(i64, i64)>) {
        let mut st = self.lock();
        let primary = st.primary;
        *st = State {
            primary,
            ..State::default()
        };
        let now = Instant::now();
        for (id, ttl) in leases {
            st.leases.insert(
                id,
                Lease {
                    ttl,
                    expiry: None,
                    revoking: None,
                },
            );
            if primary {
                st.set_deadline(id, Some(now + secs(ttl)));
            }
        }
    }

    /// Lease `id` was granted with `ttl` (applied).
    pub fn granted(&self, id: i64, ttl: i64) {
        METRICS.lease_granted.inc();
        let mut st = self.lock();
        st.leases.insert(
            id,
            Lease {
                ttl,
                expiry: None,
                revoking: None,
            },
        );
        if st.primary {
            st.set_deadline(id, Some(Instant::now() + secs(ttl)));
        }
    }

    /// Lease `id` was revoked (applied).
    pub fn revoked(&self, id: i64) {
        METRICS.lease_revoked.inc();
        let mut st = self.lock();
        st.set_deadline(id, None);
        st.leases.remove(&id);
        drop(st);
        self.changes.notify_waiters();
    }

    /// Returns once lease `id` is gone or this member no longer leads (etcd: a renewal of an
    /// expired lease waits for its revoke, so the client never hears "gone" while its keys remain).
    pub async fn wait_gone(&self, id: i64) {
        loop {
            let changed = self.changes.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let st = self.lock();
                if !st.leases.contains_key(&id) || !st.primary {
                    return;
                }
            }
            changed.await;
        }
    }

    pub fn exists(&self, id: i64) -> bool {
        self.lock().leases.contains_key(&id)
    }

    /// Every lease id, ascending.
    pub fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.lock().leases.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    pub fn is_primary(&self) -> bool {
        self.lock().primary
    }

    /// This member became leader: every lease gets its full TTL plus `extend`.
    pub fn promote(&self, extend: Duration) {
        let mut st = self.lock();
        st.primary = true;
        let now = Instant::now();
        let all: Vec<(i64, i64)> = st.leases.iter().map(|(&id, l)| (id, l.ttl)).collect();
        for (id, ttl) in all {
            st.set_deadline(id, Some(now + secs(ttl) + extend));
        }
    }

    /// This member stopped leading: deadlines are the new leader's business.
    pub fn demote(&self) {
        let mut st = self.lock();
        st.primary = false;
        st.deadlines.clear();
        for lease in st.leases.values_mut() {
            lease.expiry = None;
            lease.revoking = None;
        }
        drop(st);
        self.changes.notify_waiters();
    }

    /// Renews lease `id` to its full TTL (primary only). `None` if there is no such lease, or it has
    /// expired and its revoke is under way (see [`Lessor::wait_gone`]).
    pub fn renew(&self, id: i64) -> Option<i64> {
        let mut st = self.lock();
        let lease = st.leases.get(&id)?;
        if lease.revoking.is_some() || lease.expiry.is_some_and(|e| e <= Instant::now()) {
            return None;
        }
        let ttl = lease.ttl;
        if st.primary {
            st.set_deadline(id, Some(Instant::now() + secs(ttl)));
            METRICS.lease_renewed.inc();
        }
        Some(ttl)
    }

    /// The granted and remaining TTL of lease `id`.
    pub fn time_to_live(&self, id: i64) -> Option<Remaining> {
        let st = self.lock();
        let lease = st.leases.get(&id)?;
        let ttl = match lease.expiry {
            Some(expiry) => expiry.saturating_duration_since(Instant::now()).as_secs() as i64,
            None => lease.ttl,
        };
        Some(Remaining {
            granted_ttl: lease.ttl,
            ttl,
        })
    }

    /// Up to `limit` leases whose deadline has passed and whose revoke is not under way (or was
    /// proposed more than [`REVOKE_RETRY`] ago); they are marked as being revoked.
    pub fn expired(&self, limit: usize) -> Vec<i64> {
        let mut st = self.lock();
        let now = Instant::now();
        let due: Vec<i64> = st
            .deadlines
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .map(|&(_, id)| id)
            .filter(|id| {
                st.leases[id]
                    .revoking
                    .is_none_or(|at| now.duration_since(at) >= REVOKE_RETRY)
            })
            .take(limit)
            .collect();
        for id in &due {
            if let Some(lease) = st.leases.get_mut(id) {
                lease.revoking = Some(now);
            }
        }
        due
    }
}

/// A TTL as a duration, at most [`MAX_LEASE_TTL`]: a committed grant may carry any TTL (the API
/// refuses larger ones, apply does not), and a deadline past the clock's range would panic.
fn secs(s: i64) -> Duration {
    Duration::from_secs(s.clamp(0, MAX_LEASE_TTL) as u64)
}

/// etcd's minimum lease TTL: 1.5 election timeouts (in whole ticks), rounded up to seconds.
pub fn min_ttl(tick: Duration, election_ticks: usize) -> i64 {
    (tick * (3 * election_ticks as u32 / 2))
        .as_secs_f64()
        .ceil() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_primary_expires_and_promotion_extends() {
        let l = Lessor::new(vec![(1, 0), (2, 100)]);
        assert!(l.expired(10).is_empty(), "a follower keeps no deadlines");
        assert_eq!(l.time_to_live(2).unwrap().ttl, 100);
        l.promote(Duration::ZERO);
        assert_eq!(l.expired(10), vec![1], "a TTL of 0 is due at once");
        assert!(
            l.expired(10).is_empty(),
            "a revoke under way is not proposed twice"
        );
        assert_eq!(l.renew(1), None, "an expired lease is not renewed");
        assert_eq!(l.renew(2), Some(100));
        assert!(l.time_to_live(2).unwrap().ttl >= 99);
        l.revoked(1);
        assert!(!l.exists(1));
        l.demote();
        assert!(l.expired(10).is_empty());
        assert_eq!(l.ids(), vec![2]);
    }

    #[tokio::test]
    async fn a_renewal_of_an_expired_lease_waits_for_its_revoke() {
        let l = std::sync::Arc::new(Lessor::new(vec![(1, 0)]));
        l.promote(Duration::ZERO);
        assert_eq!(l.renew(1), None);
        let waiter = tokio::spawn({
            let l = l.clone();
            async move { l.wait_gone(1).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "still there: the waiter waits");
        l.revoked(1);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the revoke")
            .unwrap();
    }

    #[test]
    fn min_ttl_follows_etcd() {
        let ms = Duration::from_millis;
        assert_eq!(min_ttl(ms(100), 10), 2, "etcd's defaults: 1.5 s → 2 s");
        assert_eq!(min_ttl(ms(100), 20), 3);
        assert_eq!(min_ttl(ms(100), 5), 1, "7 whole ticks");
    }
}
