//! Request checks done before a request is proposed (etcd: `api/v3rpc/key.go`:
//! checkRangeRequest, checkPutRequest, checkDeleteRequest, checkTxnRequest, checkIntervals).

use std::collections::HashSet;

use cairn_proto::etcdserverpb::{
    request_op, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

use super::error::ApiError;

pub fn check_range(r: &RangeRequest) -> Result<(), ApiError> {
    if r.key.is_empty() {
        return Err(ApiError::EmptyKey);
    }
    Ok(())
}

pub fn check_put(r: &PutRequest) -> Result<(), ApiError> {
    if r.key.is_empty() {
        return Err(ApiError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(ApiError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(ApiError::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete(r: &DeleteRangeRequest) -> Result<(), ApiError> {
    if r.key.is_empty() {
        return Err(ApiError::EmptyKey);
    }
    Ok(())
}

/// The whole txn check: sizes, keys, then the duplicate-key rule on both branches.
pub fn check_txn(r: &TxnRequest, max_txn_ops: usize) -> Result<(), ApiError> {
    check_txn_ops(r, max_txn_ops)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

fn check_txn_ops(r: &TxnRequest, max_txn_ops: usize) -> Result<(), ApiError> {
    let ops = r.compare.len().max(r.success.len()).max(r.failure.len());
    if ops > max_txn_ops {
        return Err(ApiError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(ApiError::EmptyKey);
    }
    for op in r.success.iter().chain(&r.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(x)) => check_range(x)?,
            Some(request_op::Request::RequestPut(x)) => check_put(x)?,
            Some(request_op::Request::RequestDeleteRange(x)) => check_delete(x)?,
            // A nested txn gets what its parent leaves of the budget.
            Some(request_op::Request::RequestTxn(x)) => {
                check_txn_ops(x, max_txn_ops.saturating_sub(ops))?
            }
            None => {}
        }
    }
    Ok(())
}

/// A deleted key interval, compared as etcd's string-affine intervals: `[start, end)`; a single key
/// `k` is `[k, k\0)`. A literal `range_end` of "\0" is compared as the string "\0", as etcd does.
struct Interval {
    start: Vec<u8>,
    end: Vec<u8>,
}

impl Interval {
    fn contains(&self, key: &[u8]) -> bool {
        self.start.as_slice() <= key && key < self.end.as_slice()
    }
}

/// etcd `checkIntervals`: no key may be put twice, or put and deleted, by ops that can both run.
/// Returns the keys put and the intervals deleted by `ops`.
fn check_intervals(ops: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Vec<Interval>), ApiError> {
    let mut dels: Vec<Interval> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(request_op::Request::RequestDeleteRange(d)) => Some(Interval {
                start: d.key.to_vec(),
                end: if d.range_end.is_empty() {
                    let mut e = d.key.to_vec();
                    e.push(0);
                    e
                } else {
                    d.range_end.to_vec()
                },
            }),
            _ => None,
        })
        .collect();
    let deleted = |dels: &[Interval], k: &[u8]| dels.iter().any(|i| i.contains(k));
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(request_op::Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || deleted(&dels, k) {
                return Err(ApiError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in puts_else {
            // The two branches of one txn never both run: a key in both is fine.
            if (puts.contains(&k) && !puts_then.contains(&k)) || deleted(&dels, &k) {
                return Err(ApiError::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(request_op::Request::RequestPut(p)) = &op.request else {
            continue;
        };
        let k = p.key.to_vec();
        if puts.contains(&k) || deleted(&dels, &k) {
            return Err(ApiError::DuplicateKey);
        }
        puts.insert(k);
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: k.as_bytes().to_vec().into(),
                ..Default::default()
            })),
        }
    }

    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: k.as_bytes().to_vec().into(),
                    range_end: end.as_bytes().to_vec().into(),
                    ..Default::default()
                },
            )),
        }
    }

    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                success,
                failure,
                ..Default::default()
            })),
        }
    }

    fn check(success: Vec<RequestOp>) -> Result<(), ApiError> {
        check_txn(
            &TxnRequest {
                success,
                ..Default::default()
            },
            128,
        )
    }

    #[test]
    fn duplicate_keys_follow_etcd() {
        assert!(matches!(
            check(vec![put("a"), put("a")]),
            Err(ApiError::DuplicateKey)
        ));
        assert!(matches!(
            check(vec![del("a", "c"), put("b")]),
            Err(ApiError::DuplicateKey)
        ));
        assert!(matches!(
            check(vec![del("a", ""), put("a")]),
            Err(ApiError::DuplicateKey)
        ));
        assert!(check(vec![del("a", ""), put("b")]).is_ok());
        // Both branches of a nested txn may write the same key; an outer put may not.
        assert!(check(vec![txn(vec![put("x")], vec![put("x")])]).is_ok());
        assert!(matches!(
            check(vec![txn(vec![put("x")], vec![]), put("x")]),
            Err(ApiError::DuplicateKey)
        ));
        assert!(matches!(
            check(vec![del("w", "y"), txn(vec![put("x")], vec![])]),
            Err(ApiError::DuplicateKey)
        ));
    }

    /// A txn that touches every kind of op, compare and option: the seed the fuzzer mutates.
    fn seed_txn() -> TxnRequest {
        use cairn_proto::etcdserverpb::{compare, Compare, RangeRequest};
        let range = RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: b"a".to_vec().into(),
                range_end: b"z".to_vec().into(),
                limit: 3,
                revision: 2,
                sort_order: 1,
                sort_target: 2,
                min_mod_revision: 1,
                max_create_revision: 9,
                ..Default::default()
            })),
        };
        TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Greater as i32,
                target: compare::CompareTarget::Mod as i32,
                key: b"k".to_vec().into(),
                range_end: b"l".to_vec().into(),
                target_union: Some(compare::TargetUnion::ModRevision(1)),
            }],
            success: vec![put("p"), range, del("d", "e")],
            failure: vec![txn(vec![put("q")], vec![del("r", "")])],
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Hostile txns (a valid one with bytes overwritten, decoded as the server would): the
        /// checks never panic, and whatever passes them applies without panicking (an error
        /// answer is fine) on a store with history.
        #[test]
        fn mutated_txns_are_refused_or_applied_without_panic(
            flips in proptest::collection::vec((0usize..512, proptest::prelude::any::<u8>()), 1..3),
        ) {
            use prost::Message;
            let mut bytes = seed_txn().encode_to_vec();
            for (i, b) in flips {
                let n = bytes.len();
                bytes[i % n] = b;
            }
            let Ok(req) = TxnRequest::decode(bytes.as_slice()) else {
                return Ok(());
            };
            if check_txn(&req, 128).is_err() {
                return Ok(());
            }
            let dir = tempfile::tempdir().unwrap();
            let engine = crate::engine::Engine::open(dir.path()).unwrap();
            let mut w = crate::mvcc::Writer::open(engine).unwrap();
            for (i, k) in ["a", "k", "p", "q"].iter().enumerate() {
                let p = PutRequest {
                    key: k.as_bytes().to_vec().into(),
                    value: b"v".to_vec().into(),
                    ..Default::default()
                };
                w.put(&p, i as u64 + 1).unwrap();
            }
            let _ = w.txn(&req, 10);
        }
    }

    #[test]
    fn op_count_limit_is_inclusive() {
        let ok = TxnRequest {
            success: (0..128).map(|i| put(&format!("k{i}"))).collect(),
            ..Default::default()
        };
        assert!(check_txn(&ok, 128).is_ok());
        let too_many = TxnRequest {
            success: (0..129).map(|i| put(&format!("k{i}"))).collect(),
            ..Default::default()
        };
        assert!(matches!(
            check_txn(&too_many, 128),
            Err(ApiError::TooManyOps)
        ));
    }
}
