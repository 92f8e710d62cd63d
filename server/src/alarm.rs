//! Alarms (etcd: `etcdserver/api/v3alarm` and the capped appliers): raised per member, replicated
//! through raft, stored with the state machine (so raft snapshots carry them), and gating apply:
//! - NOSPACE (a member found the backend over `--quota-backend-bytes`): puts, txns that put and
//!   lease grants are refused; reads, deletes, revokes and compaction still run, so an operator can
//!   make room, defragment and disarm.
//! - CORRUPT (members' hashes diverged): every mutation is refused; reads still run.
//!
//! **Invariant:** the gate depends only on applied state, so every member refuses the same entries.

use std::collections::BTreeSet;

use cairn_proto::cairnpb::internal_request::Request;
use cairn_proto::etcdserverpb::{request_op, AlarmMember, AlarmType, RequestOp, TxnRequest};

use crate::engine::{Batch, Cf, Engine, EngineError};

/// Meta keys `alarm/` ‖ member id (BE) ‖ alarm type (BE), with empty values.
const ALARM_PREFIX: &[u8] = b"alarm/";

/// etcd's quota cost of a put beyond its key and value (`kvOverhead`).
const PUT_OVERHEAD_BYTES: u64 = 256;
/// etcd's quota cost of a lease grant (`leaseOverhead`).
const LEASE_GRANT_BYTES: u64 = 64;

/// The alarms raised, as of the applied index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Alarms {
    /// (member id, alarm type).
    raised: BTreeSet<(u64, i32)>,
}

/// Why an active alarm refuses a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NoSpace,
    Corrupt,
}

fn alarm_key(member: u64, alarm: i32) -> Vec<u8> {
    let mut key = ALARM_PREFIX.to_vec();
    key.extend_from_slice(&member.to_be_bytes());
    key.extend_from_slice(&alarm.to_be_bytes());
    key
}

fn member(raised: (u64, i32)) -> AlarmMember {
    AlarmMember {
        member_id: raised.0,
        alarm: raised.1,
    }
}

impl Alarms {
    /// The alarms stored in `engine`.
    pub fn load(engine: &Engine) -> Result<Alarms, EngineError> {
        let mut raised = BTreeSet::new();
        let mut upper = ALARM_PREFIX.to_vec();
        *upper.last_mut().expect("non-empty prefix") += 1;
        let mut it = engine.iter(Cf::Meta, ALARM_PREFIX, Some(&upper));
        while let Some((k, _)) = it.current() {
            let rest = &k[ALARM_PREFIX.len()..];
            if let (Ok(m), Ok(a)) = (rest[..8].try_into(), rest[8..].try_into()) {
                raised.insert((u64::from_be_bytes(m), i32::from_be_bytes(a)));
            }
            it.advance();
        }
        it.check()?;
        Ok(Alarms { raised })
    }

    /// Raises `alarm` for `member_id` (stored through `batch`); answers the alarm, raised now or before.
    pub fn activate(&mut self, member_id: u64, alarm: i32, batch: &mut Batch) -> AlarmMember {
        if self.raised.insert((member_id, alarm)) {
            batch.put(Cf::Meta, &alarm_key(member_id, alarm), &[]);
        }
        member((member_id, alarm))
    }

    /// Clears `alarm` for `member_id`; answers it if it was raised.
    pub fn deactivate(
        &mut self,
        member_id: u64,
        alarm: i32,
        batch: &mut Batch,
    ) -> Option<AlarmMember> {
        if !self.raised.remove(&(member_id, alarm)) {
            return None;
        }
        batch.delete(Cf::Meta, &alarm_key(member_id, alarm));
        Some(member((member_id, alarm)))
    }

    /// The raised alarms of type `alarm` (`NONE`: all), by member id.
    pub fn get(&self, alarm: AlarmType) -> Vec<AlarmMember> {
        self.raised
            .iter()
            .filter(|r| alarm == AlarmType::None || r.1 == alarm as i32)
            .map(|&r| member(r))
            .collect()
    }

    pub fn is_raised(&self, alarm: AlarmType) -> bool {
        self.raised.iter().any(|r| r.1 == alarm as i32)
    }

    /// Whether the raised alarms refuse `request` (etcd's `applierV3Corrupt` / `applierV3Capped`).
    pub fn refuses(&self, request: &Request) -> Option<Refusal> {
        let mutates = matches!(
            request,
            Request::Put(_)
                | Request::DeleteRange(_)
                | Request::Txn(_)
                | Request::Compaction(_)
                | Request::LeaseGrant(_)
                | Request::LeaseRevoke(_)
        );
        if mutates && self.is_raised(AlarmType::Corrupt) {
            return Some(Refusal::Corrupt);
        }
        if self.is_raised(AlarmType::Nospace) && quota_cost(request) > 0 {
            return Some(Refusal::NoSpace);
        }
        None
    }
}

/// The bytes `request` may add to the backend, as etcd's quota counts them (`backendQuota.Cost`):
/// a put's key and value plus overhead, a txn's costlier branch, a lease grant; nothing otherwise.
pub fn quota_cost(request: &Request) -> u64 {
    match request {
        Request::Put(p) => PUT_OVERHEAD_BYTES + (p.key.len() + p.value.len()) as u64,
        Request::Txn(t) => txn_cost(t),
        Request::LeaseGrant(_) => LEASE_GRANT_BYTES,
        _ => 0,
    }
}

fn txn_cost(txn: &TxnRequest) -> u64 {
    let branch = |ops: &[RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(request_op::Request::RequestPut(p)) => {
                    PUT_OVERHEAD_BYTES + (p.key.len() + p.value.len()) as u64
                }
                Some(request_op::Request::RequestTxn(t)) => txn_cost(t),
                _ => 0,
            })
            .sum()
    };
    branch(&txn.success).max(branch(&txn.failure))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::etcdserverpb::{
        CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest,
        RangeRequest,
    };

    fn put(key: &str, value: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.as_bytes().to_vec().into(),
                value: value.as_bytes().to_vec().into(),
                ..PutRequest::default()
            })),
        }
    }

    fn get(key: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: key.as_bytes().to_vec().into(),
                ..RangeRequest::default()
            })),
        }
    }

    fn scratch() -> (tempfile::TempDir, Engine) {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        (dir, engine)
    }

    #[test]
    fn stored_alarms_load_back_and_clear() {
        let (_dir, engine) = scratch();
        let mut alarms = Alarms::default();
        let mut batch = engine.batch();
        alarms.activate(7, AlarmType::Nospace as i32, &mut batch);
        alarms.activate(3, AlarmType::Corrupt as i32, &mut batch);
        let again = alarms.activate(7, AlarmType::Nospace as i32, &mut batch);
        assert_eq!(again.member_id, 7);
        engine
            .write(batch, crate::engine::Durability::Buffered)
            .unwrap();
        let loaded = Alarms::load(&engine).unwrap();
        assert_eq!(loaded, alarms);
        let all: Vec<u64> = loaded
            .get(AlarmType::None)
            .iter()
            .map(|m| m.member_id)
            .collect();
        assert_eq!(all, vec![3, 7]);
        assert_eq!(loaded.get(AlarmType::Nospace).len(), 1);

        let mut batch = engine.batch();
        assert!(alarms
            .deactivate(7, AlarmType::Nospace as i32, &mut batch)
            .is_some());
        assert!(alarms
            .deactivate(7, AlarmType::Nospace as i32, &mut batch)
            .is_none());
        engine
            .write(batch, crate::engine::Durability::Buffered)
            .unwrap();
        assert_eq!(Alarms::load(&engine).unwrap(), alarms);
        assert!(!alarms.is_raised(AlarmType::Nospace));
    }

    #[test]
    fn nospace_refuses_only_what_adds_data() {
        let mut alarms = Alarms::default();
        let (_dir, engine) = scratch();
        let mut batch = engine.batch();
        alarms.activate(1, AlarmType::Nospace as i32, &mut batch);
        let refused = |r: Request| alarms.refuses(&r);
        let put_req = PutRequest::default();
        assert_eq!(refused(Request::Put(put_req)), Some(Refusal::NoSpace));
        assert_eq!(
            refused(Request::LeaseGrant(LeaseGrantRequest::default())),
            Some(Refusal::NoSpace)
        );
        let reads_only = TxnRequest {
            success: vec![get("a")],
            ..TxnRequest::default()
        };
        assert_eq!(refused(Request::Txn(reads_only)), None);
        let nested_put = TxnRequest {
            failure: vec![RequestOp {
                request: Some(request_op::Request::RequestTxn(TxnRequest {
                    success: vec![put("k", "v")],
                    ..TxnRequest::default()
                })),
            }],
            ..TxnRequest::default()
        };
        assert_eq!(refused(Request::Txn(nested_put)), Some(Refusal::NoSpace));
        assert_eq!(
            refused(Request::DeleteRange(DeleteRangeRequest::default())),
            None
        );
        assert_eq!(
            refused(Request::Compaction(CompactionRequest::default())),
            None
        );
        assert_eq!(
            refused(Request::LeaseRevoke(LeaseRevokeRequest::default())),
            None
        );
    }

    #[test]
    fn corrupt_refuses_every_mutation() {
        let mut alarms = Alarms::default();
        let (_dir, engine) = scratch();
        let mut batch = engine.batch();
        alarms.activate(1, AlarmType::Corrupt as i32, &mut batch);
        for r in [
            Request::DeleteRange(DeleteRangeRequest::default()),
            Request::Compaction(CompactionRequest::default()),
            Request::LeaseRevoke(LeaseRevokeRequest::default()),
            Request::Txn(TxnRequest::default()),
        ] {
            assert_eq!(alarms.refuses(&r), Some(Refusal::Corrupt), "{r:?}");
        }
    }

    #[test]
    fn txn_cost_is_the_costlier_branch() {
        let txn = TxnRequest {
            success: vec![put("a", "1"), put("b", "22")],
            failure: vec![put("ccc", "")],
            ..TxnRequest::default()
        };
        assert_eq!(txn_cost(&txn), 2 * PUT_OVERHEAD_BYTES + 5);
    }
}
