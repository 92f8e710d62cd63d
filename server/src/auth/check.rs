//! What each KV request needs (etcd: `server/etcdserver/apply_auth.go`): READ on every range it
//! reads or compares, WRITE on every key or range it writes, READ too where it returns previous
//! values; a txn needs all of it for both branches, nested txns included.

use cairn_proto::etcdserverpb::{
    request_op, DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest,
};

use super::{Access, AuthError, AuthState};

impl AuthState {
    fn need(&self, user: &str, access: Access, key: &[u8], end: &[u8]) -> Result<(), AuthError> {
        if self.permits(user, access, key, end) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    pub fn check_range(&self, user: &str, r: &RangeRequest) -> Result<(), AuthError> {
        self.need(user, Access::Read, &r.key, &r.range_end)
    }

    pub fn check_put(&self, user: &str, p: &PutRequest) -> Result<(), AuthError> {
        self.need(user, Access::Write, &p.key, &[])?;
        if p.prev_kv {
            self.need(user, Access::Read, &p.key, &[])?;
        }
        Ok(())
    }

    pub fn check_delete(&self, user: &str, d: &DeleteRangeRequest) -> Result<(), AuthError> {
        self.need(user, Access::Write, &d.key, &d.range_end)?;
        if d.prev_kv {
            self.need(user, Access::Read, &d.key, &d.range_end)?;
        }
        Ok(())
    }

    pub fn check_txn(&self, user: &str, t: &TxnRequest) -> Result<(), AuthError> {
        for c in &t.compare {
            self.need(user, Access::Read, &c.key, &c.range_end)?;
        }
        for op in t.success.iter().chain(&t.failure) {
            match &op.request {
                Some(request_op::Request::RequestRange(r)) => self.check_range(user, r)?,
                Some(request_op::Request::RequestPut(p)) => self.check_put(user, p)?,
                Some(request_op::Request::RequestDeleteRange(d)) => self.check_delete(user, d)?,
                Some(request_op::Request::RequestTxn(t)) => self.check_txn(user, t)?,
                None => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::authpb::{permission, Permission, Role, User};
    use cairn_proto::etcdserverpb::{compare, Compare, RequestOp};

    fn state() -> AuthState {
        let mut s = AuthState::default();
        s.users.insert(
            "u".into(),
            User {
                roles: vec!["r".into()],
                ..User::default()
            },
        );
        let perm = |t: permission::Type, key: &str| Permission {
            perm_type: t as i32,
            key: key.as_bytes().to_vec().into(),
            range_end: Default::default(),
        };
        s.roles.insert(
            "r".into(),
            Role {
                key_permission: vec![
                    perm(permission::Type::Read, "ro"),
                    perm(permission::Type::Readwrite, "rw"),
                    perm(permission::Type::Write, "wo"),
                ],
                ..Role::default()
            },
        );
        s
    }

    fn put(key: &str, prev_kv: bool) -> PutRequest {
        PutRequest {
            key: key.as_bytes().to_vec().into(),
            prev_kv,
            ..PutRequest::default()
        }
    }

    fn op(p: PutRequest) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(p)),
        }
    }

    #[test]
    fn prev_kv_needs_read_and_txns_need_every_branch() {
        let s = state();
        assert!(s.check_put("u", &put("wo", false)).is_ok());
        assert_eq!(
            s.check_put("u", &put("wo", true)),
            Err(AuthError::PermissionDenied)
        );
        assert!(s.check_put("u", &put("rw", true)).is_ok());
        let compare_ro = Compare {
            key: b"ro".to_vec().into(),
            target: compare::CompareTarget::Value as i32,
            ..Compare::default()
        };
        let ok = TxnRequest {
            compare: vec![compare_ro.clone()],
            success: vec![op(put("rw", false))],
            failure: vec![op(put("wo", false))],
        };
        assert!(s.check_txn("u", &ok).is_ok());
        let nested = TxnRequest {
            failure: vec![RequestOp {
                request: Some(request_op::Request::RequestTxn(TxnRequest {
                    success: vec![op(put("ro", false))],
                    ..TxnRequest::default()
                })),
            }],
            ..ok.clone()
        };
        assert_eq!(s.check_txn("u", &nested), Err(AuthError::PermissionDenied));
        let compare_wo = Compare {
            key: b"wo".to_vec().into(),
            ..compare_ro
        };
        let bad_compare = TxnRequest {
            compare: vec![compare_wo],
            ..ok
        };
        assert_eq!(
            s.check_txn("u", &bad_compare),
            Err(AuthError::PermissionDenied)
        );
    }
}
