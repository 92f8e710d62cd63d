//! Pairs a proposal with its outcome by request id (etcd: `pkg/wait`).
//!
//! The API registers an id before proposing and awaits the receiver; the apply worker triggers the id
//! when the entry is applied. Entries proposed by another member, or whose proposer gave up, find no
//! waiter and are simply applied.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Shards of the registry, to keep lock hold times short under many concurrent proposals.
const WAIT_SHARDS: usize = 16;

/// One shard: request id → the sender its proposer waits on.
type Shard<T> = Mutex<HashMap<u64, oneshot::Sender<T>>>;

pub struct Wait<T> {
    shards: Arc<[Shard<T>]>,
}

impl<T> Clone for Wait<T> {
    fn clone(&self) -> Self {
        Wait {
            shards: self.shards.clone(),
        }
    }
}

impl<T> Default for Wait<T> {
    fn default() -> Self {
        Wait {
            shards: (0..WAIT_SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl<T> Wait<T> {
    fn shard(&self, id: u64) -> &Shard<T> {
        &self.shards[(id as usize) % WAIT_SHARDS]
    }

    /// Registers `id`; the returned receiver gets the value passed to [`Wait::trigger`].
    pub fn register(&self, id: u64) -> oneshot::Receiver<T> {
        let (tx, rx) = oneshot::channel();
        let previous = self
            .shard(id)
            .lock()
            .expect("wait registry lock")
            .insert(id, tx);
        assert!(previous.is_none(), "request id {id} registered twice");
        rx
    }

    /// Delivers `value` to the waiter of `id`, if there is one.
    pub fn trigger(&self, id: u64, value: T) {
        let waiter = self
            .shard(id)
            .lock()
            .expect("wait registry lock")
            .remove(&id);
        if let Some(tx) = waiter {
            let _ = tx.send(value);
        }
    }

    /// Forgets `id` (its proposer gave up).
    pub fn cancel(&self, id: u64) {
        self.shard(id)
            .lock()
            .expect("wait registry lock")
            .remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn trigger_reaches_the_registered_waiter_only() {
        let wait = Wait::default();
        let rx = wait.register(7);
        wait.trigger(8, "other");
        wait.trigger(7, "mine");
        assert_eq!(rx.await.unwrap(), "mine");
        let rx = wait.register(9);
        wait.cancel(9);
        assert!(rx.await.is_err());
    }
}
