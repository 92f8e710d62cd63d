//! Distributed-systems recipes on top of the KV, Lease and Watch APIs, with Go clientv3's
//! `concurrency` package semantics and key layouts, so that Rust and Go processes (and
//! `etcdctl lock` / `etcdctl elect`) contend for the same locks and elections:
//!
//! - [`Session`]: a lease kept alive in the background; the lifetime of what it owns.
//! - [`Mutex`]: a lock; the holder is the key `<prefix>/<lease id in hex>` with the lowest
//!   create revision under `<prefix>/`; waiters watch the deletion of the key just before
//!   theirs (no thundering herd). [`Mutex::is_owner`] is a fencing guard for transactions.
//! - [`Election`]: the same queue, where the head is the leader and its value is the
//!   proclamation; [`Election::observe`] follows the leader.
//! - [`Stm`] and [`run_stm`]: optimistic transactions over several keys, re-run on conflict.
//!
//! Each recipe works inside a namespace ([`Client::with_namespace`](crate::Client::with_namespace)).

use futures::StreamExt;

use crate::error::{Error, Result};
use crate::kv::{GetOptions, Kv};
use crate::watch::{EventKind, Watch, WatchOptions};
use crate::ResponseHeader;

mod election;
mod mutex;
mod session;
mod stm;

pub use election::Election;
pub use mutex::Mutex;
pub use session::{Session, SessionOptions};
pub use stm::{run_stm, Isolation, Stm, StmOptions};

/// The key of `lease` under `prefix`: `<prefix><lease id in lower-case hex>` (Go's `%x`).
fn lease_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    key
}

/// Waits until no key under `prefix` has a create revision ≤ `max_create_rev` (Go's
/// `waitDeletes`): repeatedly finds the newest such key and waits for its deletion.
async fn wait_deletes(
    kv: &Kv,
    watch: &Watch,
    prefix: &[u8],
    max_create_rev: i64,
) -> Result<ResponseHeader> {
    loop {
        let resp = kv
            .get(
                prefix.to_vec(),
                GetOptions::new()
                    .with_last_create()
                    .with_max_create_revision(max_create_rev),
            )
            .await?;
        let header = resp.header.unwrap_or_default();
        let Some(last) = resp.kvs.into_iter().next() else {
            return Ok(header);
        };
        wait_delete(watch, &last.key, header.revision).await?;
    }
}

/// Waits for the deletion of `key`, watching from `rev`.
async fn wait_delete(watch: &Watch, key: &[u8], rev: i64) -> Result<()> {
    let mut w = watch
        .watch(key.to_vec(), WatchOptions::new().with_start_revision(rev))
        .await?;
    while let Some(resp) = w.next().await {
        if resp?.events.iter().any(|e| e.kind == EventKind::Delete) {
            return Ok(());
        }
    }
    Err(Error::WatchCanceled {
        reason: "watch ended".into(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn lease_keys_use_go_hex() {
        assert_eq!(
            super::lease_key(b"lock/", 0x694d7e1a2b3c),
            b"lock/694d7e1a2b3c"
        );
    }
}
