//! Byte layouts of the MVCC column families. Pure functions; no I/O.
//!
//! - `kv_latest`:   raw user key → `KeyValue` (proto, `key` field left empty).
//! - `kv_history`:  escaped user key ‖ (u64::MAX − revision) big-endian → `KeyValue` without key, or
//!   empty for a tombstone. The escaping keeps user-key order bytewise (memcmp) and makes no escaped key
//!   a prefix of another; the inverted revision puts a key's newest version first, so one seek to
//!   `escaped(key) ‖ inv(R)` lands on the version visible at revision R.
//! - `kv_revision`: main revision ‖ sub revision, both big-endian → event kind byte ‖ user key.
//! - `lease`: `l` ‖ lease id (BE) → granted TTL (i64 BE); `k` ‖ lease id (BE) ‖ user key → empty, one
//!   per key attached to the lease (so a revoke finds its keys without a scan of the keyspace).

use std::cmp::Ordering;

/// Terminates an escaped key. Chosen greater than no escaped byte that follows a 0x00 so that a key
/// sorts before every key it is a proper prefix of.
const ESCAPE_END: [u8; 2] = [0x00, 0x01];
/// Stands for one 0x00 byte inside a key.
const ESCAPE_ZERO: [u8; 2] = [0x00, 0xFF];

/// Appends the order-preserving escaped form of `key` to `out`.
pub fn escape_key(key: &[u8], out: &mut Vec<u8>) {
    out.reserve(key.len() + 2);
    for &b in key {
        if b == 0 {
            out.extend_from_slice(&ESCAPE_ZERO);
        } else {
            out.push(b);
        }
    }
    out.extend_from_slice(&ESCAPE_END);
}

/// Splits an escaped key off the front of `bytes`, returning (user key, rest).
pub fn unescape_key(bytes: &[u8]) -> (Vec<u8>, &[u8]) {
    let mut key = Vec::with_capacity(bytes.len());
    let mut i = 0;
    loop {
        match bytes[i] {
            0 if bytes[i + 1] == 0xFF => {
                key.push(0);
                i += 2;
            }
            0 => {
                assert_eq!(bytes[i + 1], ESCAPE_END[1], "escaped key is malformed");
                return (key, &bytes[i + 2..]);
            }
            b => {
                key.push(b);
                i += 1;
            }
        }
    }
}

/// The `kv_history` key of `key` at main revision `rev`.
pub fn history_key(key: &[u8], rev: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 10);
    escape_key(key, &mut out);
    out.extend_from_slice(&invert(rev));
    out
}

/// The smallest `kv_history` key of user key `key` (its newest possible version).
pub fn history_key_prefix(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 2);
    escape_key(key, &mut out);
    out
}

/// Splits a `kv_history` key into (user key, revision).
pub fn decode_history_key(bytes: &[u8]) -> (Vec<u8>, i64) {
    let (key, rest) = unescape_key(bytes);
    (key, uninvert(rest))
}

fn invert(rev: i64) -> [u8; 8] {
    debug_assert!(rev >= 0);
    (u64::MAX - rev as u64).to_be_bytes()
}

/// The revision of a `kv_history` key's last 8 bytes.
pub fn uninvert(inverted: &[u8]) -> i64 {
    let inv = u64::from_be_bytes(inverted.try_into().expect("8 revision bytes"));
    (u64::MAX - inv) as i64
}

/// The `kv_revision` key of revision (main, sub).
pub fn revision_key(main: i64, sub: i64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&(main as u64).to_be_bytes());
    out[8..].copy_from_slice(&(sub as u64).to_be_bytes());
    out
}

pub fn decode_revision_key(bytes: &[u8]) -> (i64, i64) {
    let main = u64::from_be_bytes(bytes[..8].try_into().expect("16-byte revision key"));
    let sub = u64::from_be_bytes(bytes[8..16].try_into().expect("16-byte revision key"));
    (main as i64, sub as i64)
}

/// The `lease` key of lease `id`'s record.
pub fn lease_key(id: i64) -> [u8; 9] {
    let mut out = [b'l'; 9];
    out[1..].copy_from_slice(&id.to_be_bytes());
    out
}

/// The `lease` key recording that `key` is attached to lease `id`.
pub fn lease_attachment_key(id: i64, key: &[u8]) -> Vec<u8> {
    let mut out = lease_attachments_prefix(id);
    out.extend_from_slice(key);
    out
}

/// The prefix of every attachment of lease `id`.
pub fn lease_attachments_prefix(id: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(9);
    out.push(b'k');
    out.extend_from_slice(&id.to_be_bytes());
    out
}

/// The smallest key greater than every key that starts with `prefix` (`prefix` must not be all 0xFF).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(&last) = end.last() {
        if last < 0xFF {
            *end.last_mut().expect("non-empty") += 1;
            return end;
        }
        end.pop();
    }
    panic!("a prefix of 0xFF bytes has no end")
}

/// What happened to a key at a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put = 0,
    Delete = 1,
}

pub fn revision_value(kind: EventKind, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 1);
    out.push(kind as u8);
    out.extend_from_slice(key);
    out
}

pub fn decode_revision_value(bytes: &[u8]) -> (EventKind, &[u8]) {
    let kind = match bytes[0] {
        0 => EventKind::Put,
        1 => EventKind::Delete,
        other => panic!("unknown event kind {other} in kv_revision"),
    };
    (kind, &bytes[1..])
}

/// The upper bound of a user-key range: `None` = to the end of the keyspace.
pub type KeyEnd<'a> = Option<&'a [u8]>;

/// Interprets etcd's (key, range_end): empty end = the single key; `"\0"` = every key ≥ key.
/// Returns `None` when the range is empty (key ≥ end).
pub fn key_range<'a>(key: &'a [u8], range_end: &'a [u8]) -> Option<KeyBounds<'a>> {
    match range_end {
        [] => Some(KeyBounds::Single(key)),
        [0] => Some(KeyBounds::Range(key, None)),
        end if key.cmp(end) == Ordering::Less => Some(KeyBounds::Range(key, Some(end))),
        _ => None,
    }
}

/// A non-empty set of user keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyBounds<'a> {
    Single(&'a [u8]),
    /// `[start, end)`, `end = None` meaning unbounded.
    Range(&'a [u8], KeyEnd<'a>),
}

impl KeyBounds<'_> {
    pub fn contains(&self, key: &[u8]) -> bool {
        match *self {
            KeyBounds::Single(k) => k == key,
            KeyBounds::Range(start, end) => key >= start && end.is_none_or(|e| key < e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn escaping_preserves_order_and_round_trips(a in prop::collection::vec(prop::sample::select(vec![0u8, 1, 0xFE, 0xFF, b'a']), 0..6),
                                                    b in prop::collection::vec(prop::sample::select(vec![0u8, 1, 0xFE, 0xFF, b'a']), 0..6),
                                                    ra in 0i64..1000, rb in 0i64..1000) {
            let ka = history_key(&a, ra);
            let kb = history_key(&b, rb);
            let expected = a.cmp(&b).then(rb.cmp(&ra));
            prop_assert_eq!(ka.cmp(&kb), expected);
            prop_assert_eq!(decode_history_key(&ka), (a, ra));
        }
    }

    #[test]
    fn revision_keys_sort_by_main_then_sub() {
        assert!(revision_key(2, 0) < revision_key(2, 1));
        assert!(revision_key(2, 9) < revision_key(3, 0));
        assert_eq!(decode_revision_key(&revision_key(7, 3)), (7, 3));
    }

    #[test]
    fn key_ranges_follow_etcd() {
        assert_eq!(key_range(b"a", b""), Some(KeyBounds::Single(b"a")));
        assert_eq!(key_range(b"a", b"\0"), Some(KeyBounds::Range(b"a", None)));
        assert_eq!(key_range(b"b", b"a"), None);
        assert_eq!(key_range(b"a", b"a"), None);
        let r = key_range(b"a", b"c").unwrap();
        assert!(r.contains(b"b") && r.contains(b"a") && !r.contains(b"c"));
    }
}
