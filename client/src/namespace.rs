//! Key prefixing for namespaced views ([`Client::with_namespace`](crate::Client::with_namespace)),
//! with the semantics of Go's `clientv3/namespace`: every key and range sent gains the prefix,
//! every key received loses it, and a range to the end of the keyspace (`range_end = "\0"`) ends
//! at the end of the namespace instead.

use bytes::Bytes;
use cairn_proto::etcdserverpb::{
    request_op, response_op, Compare, DeleteRangeResponse, PutResponse, RangeResponse, RequestOp,
    TxnRequest, TxnResponse,
};
use cairn_proto::mvccpb::KeyValue;

use crate::prefix_end;

/// A key prefix; empty means no namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Namespace(pub(crate) Bytes);

impl Namespace {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `prefix ‖ key`.
    pub(crate) fn key(&self, key: &[u8]) -> Bytes {
        if self.is_empty() {
            return Bytes::copy_from_slice(key);
        }
        let mut k = Vec::with_capacity(self.0.len() + key.len());
        k.extend_from_slice(&self.0);
        k.extend_from_slice(key);
        k.into()
    }

    /// A range end inside the namespace: empty stays empty (one key), `"\0"` (to the end of
    /// the keyspace) becomes the end of the namespace, anything else gains the prefix.
    pub(crate) fn range_end(&self, end: &[u8]) -> Bytes {
        if self.is_empty() || end.is_empty() {
            return Bytes::copy_from_slice(end);
        }
        if end == [0] {
            return prefix_end(&self.0).into();
        }
        self.key(end)
    }

    /// Removes the prefix from a key the server returned.
    pub(crate) fn strip(&self, key: &mut Bytes) {
        if !self.is_empty() && key.starts_with(&self.0) {
            *key = key.slice(self.0.len()..);
        }
    }

    pub(crate) fn strip_kv(&self, kv: &mut KeyValue) {
        self.strip(&mut kv.key);
    }

    pub(crate) fn strip_range(&self, r: &mut RangeResponse) {
        r.kvs.iter_mut().for_each(|kv| self.strip_kv(kv));
    }

    pub(crate) fn strip_put(&self, r: &mut PutResponse) {
        if let Some(kv) = r.prev_kv.as_mut() {
            self.strip_kv(kv);
        }
    }

    pub(crate) fn strip_delete(&self, r: &mut DeleteRangeResponse) {
        r.prev_kvs.iter_mut().for_each(|kv| self.strip_kv(kv));
    }

    /// Prefixes every compare and operation of a transaction, nested ones included.
    pub(crate) fn txn_request(&self, t: &mut TxnRequest) {
        if self.is_empty() {
            return;
        }
        for c in &mut t.compare {
            self.compare(c);
        }
        for op in t.success.iter_mut().chain(t.failure.iter_mut()) {
            self.request_op(op);
        }
    }

    fn compare(&self, c: &mut Compare) {
        c.key = self.key(&c.key);
        c.range_end = self.range_end(&c.range_end);
    }

    fn request_op(&self, op: &mut RequestOp) {
        match op.request.as_mut() {
            Some(request_op::Request::RequestRange(r)) => {
                r.key = self.key(&r.key);
                r.range_end = self.range_end(&r.range_end);
            }
            Some(request_op::Request::RequestPut(p)) => p.key = self.key(&p.key),
            Some(request_op::Request::RequestDeleteRange(d)) => {
                d.key = self.key(&d.key);
                d.range_end = self.range_end(&d.range_end);
            }
            Some(request_op::Request::RequestTxn(t)) => self.txn_request(t),
            None => {}
        }
    }

    /// Strips the prefix from every key in a transaction's responses, nested ones included.
    pub(crate) fn txn_response(&self, t: &mut TxnResponse) {
        if self.is_empty() {
            return;
        }
        for r in &mut t.responses {
            match r.response.as_mut() {
                Some(response_op::Response::ResponseRange(r)) => self.strip_range(r),
                Some(response_op::Response::ResponsePut(p)) => self.strip_put(p),
                Some(response_op::Response::ResponseDeleteRange(d)) => self.strip_delete(d),
                Some(response_op::Response::ResponseTxn(t)) => self.txn_response(t),
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_ranges_stay_inside_the_namespace() {
        let ns = Namespace(Bytes::from_static(b"app/"));
        assert_eq!(&ns.key(b"k")[..], b"app/k");
        assert_eq!(&ns.range_end(b"")[..], b"");
        assert_eq!(&ns.range_end(b"\0")[..], b"app0");
        assert_eq!(&ns.range_end(b"l")[..], b"app/l");
        let mut k = Bytes::from_static(b"app/k");
        ns.strip(&mut k);
        assert_eq!(&k[..], b"k");
        let none = Namespace::default();
        assert_eq!(&none.range_end(b"\0")[..], b"\0");
    }
}
