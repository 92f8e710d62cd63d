//! [`Mutex`]: Go clientv3's `concurrency.Mutex`, key for key.

use crate::concurrency::{lease_key, wait_deletes, Session};
use crate::error::{Error, Result};
use crate::kv::{Compare, CompareOp, DeleteOptions, GetOptions, Kv, PutOptions, Txn, TxnOp};
use crate::{ResponseHeader, TxnResponse};

/// A distributed lock held by a [`Session`]. Interoperates with Go's `concurrency.NewMutex`
/// and `etcdctl lock` on the same prefix.
///
/// The lock is the key `<prefix>/<lease id in hex>`; the holder is the key with the lowest
/// create revision under `<prefix>/`. The lock ends with the session's lease, so guard writes
/// done under it with [`Mutex::is_owner`] in the same transaction (fencing).
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// use cairn_client::concurrency::{Mutex, Session, SessionOptions};
/// use cairn_client::{PutOptions, Txn, TxnOp};
/// let session = Session::new(&client, SessionOptions::new()).await?;
/// let mut mutex = Mutex::new(&session, "/locks/db-migration");
/// mutex.lock().await?;
/// let fenced = Txn::new()
///     .when([mutex.is_owner()])
///     .and_then([TxnOp::put("/db/schema", "v2", PutOptions::new())]);
/// client.kv().txn(fenced).await?;
/// mutex.unlock().await?;
/// # Ok(()) }
/// ```
pub struct Mutex {
    session: Session,
    /// `<prefix>/`.
    pfx: Vec<u8>,
    my_key: Vec<u8>,
    my_rev: i64,
    header: Option<ResponseHeader>,
}

/// Deletes a queued lock key if the attempt that made it is abandoned (its future dropped),
/// so an abandoned waiter does not block the queue until its session ends.
struct Abandon {
    kv: Kv,
    key: Option<Vec<u8>>,
}

impl Abandon {
    fn disarm(mut self) {
        self.key = None;
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if let (Some(key), Ok(rt)) = (self.key.take(), tokio::runtime::Handle::try_current()) {
            let kv = self.kv.clone();
            rt.spawn(async move {
                let _ = kv.delete(key, DeleteOptions::new()).await;
            });
        }
    }
}

impl Mutex {
    /// A lock on `prefix` for `session` (nothing is sent until [`Mutex::lock`]).
    pub fn new(session: &Session, prefix: impl Into<Vec<u8>>) -> Mutex {
        let mut pfx = prefix.into();
        pfx.push(b'/');
        Mutex {
            session: session.clone(),
            pfx,
            my_key: Vec::new(),
            my_rev: -1,
            header: None,
        }
    }

    /// Queues the session's key and returns whether it is at the head (Go's `tryAcquire`).
    async fn try_acquire(&mut self) -> Result<(TxnResponse, bool)> {
        let kv = self.session.client().kv();
        let lease = self.session.lease();
        let key = lease_key(&self.pfx, lease);
        let queue_head = || TxnOp::get(self.pfx.clone(), GetOptions::new().with_first_create());
        // Running it twice has the effect of once: the second finds the key and only reads.
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(key.clone(), "", PutOptions::new().with_lease(lease)),
                queue_head(),
            ])
            .or_else([TxnOp::get(key.clone(), GetOptions::new()), queue_head()])
            .idempotent();
        let resp = kv.txn(txn).await?;
        self.my_key = key;
        self.my_rev = resp.revision();
        if !resp.succeeded {
            let mine = resp
                .get(0)
                .and_then(|r| r.kvs.first())
                .ok_or(Error::SessionExpired)?;
            self.my_rev = mine.create_revision;
        }
        let owner = resp.get(1).and_then(|r| r.kvs.first());
        let owned = owner.is_none_or(|o| o.create_revision == self.my_rev);
        Ok((resp, owned))
    }

    /// Acquires the lock, waiting for earlier holders to release it. Fails with
    /// [`Error::SessionExpired`] if the session ends first. If the returned future is dropped
    /// before it completes, the queued key is deleted.
    pub async fn lock(&mut self) -> Result<()> {
        let kv = self.session.client().kv();
        // Armed from the start: the key may be queued as soon as the first request is sent.
        let guard = Abandon {
            kv: kv.clone(),
            key: Some(lease_key(&self.pfx, self.session.lease())),
        };
        let (resp, owned) = self.try_acquire().await?;
        if owned {
            guard.disarm();
            self.header = resp.header;
            return Ok(());
        }
        let watch = self.session.client().watch();
        let waited = tokio::select! {
            r = wait_deletes(&kv, &watch, &self.pfx, self.my_rev - 1) => r,
            e = self.session.expired() => Err(e),
        };
        if let Err(e) = waited {
            drop(guard); // deletes the key
            return Err(e);
        }
        // The key may have gone with the session's lease while waiting.
        let mine = kv.get(self.my_key.clone(), GetOptions::new()).await?;
        if mine.kvs.is_empty() {
            guard.disarm();
            return Err(Error::SessionExpired);
        }
        guard.disarm();
        self.header = mine.header;
        Ok(())
    }

    /// Acquires the lock if it is free; otherwise fails with [`Error::Locked`] at once.
    pub async fn try_lock(&mut self) -> Result<()> {
        let (resp, owned) = self.try_acquire().await?;
        if owned {
            self.header = resp.header;
            return Ok(());
        }
        self.session
            .client()
            .kv()
            .delete(self.my_key.clone(), DeleteOptions::new())
            .await?;
        self.my_key.clear();
        self.my_rev = -1;
        Err(Error::Locked)
    }

    /// Releases the lock ([`Error::LockReleased`] if it is not held).
    pub async fn unlock(&mut self) -> Result<()> {
        if self.my_key.is_empty() || self.my_rev <= 0 {
            return Err(Error::LockReleased);
        }
        self.session
            .client()
            .kv()
            .delete(self.my_key.clone(), DeleteOptions::new())
            .await?;
        self.my_key.clear();
        self.my_rev = -1;
        Ok(())
    }

    /// A guard that holds while this lock is held: put it in a transaction's `when` so that
    /// the transaction does nothing if the lock was lost meanwhile (fencing).
    pub fn is_owner(&self) -> Compare {
        Compare::create_revision(self.my_key.clone(), CompareOp::Equal, self.my_rev)
    }

    /// The lock's key (empty when not held).
    pub fn key(&self) -> &[u8] {
        &self.my_key
    }

    /// The header of the response that acquired the lock.
    pub fn header(&self) -> Option<&ResponseHeader> {
        self.header.as_ref()
    }
}
