//! [`Election`]: Go clientv3's `concurrency.Election`, key for key.

use futures::StreamExt;
use tokio::sync::mpsc;

use crate::concurrency::{lease_key, wait_deletes, Session};
use crate::error::{Error, Result};
use crate::kv::{Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp};
use crate::stream::TaskStream;
use crate::watch::{EventKind, WatchOptions};
use crate::{Client, KeyValue, ResponseHeader};

/// Leader updates buffered for an observer.
const OBSERVE_BUFFER_MAX: usize = 16;

/// A leader election among sessions. Interoperates with Go's `concurrency.NewElection` and
/// `etcdctl elect` on the same prefix.
///
/// Candidates queue keys `<prefix>/<lease id in hex>` holding their proclamation; the leader
/// is the key with the lowest create revision. Leadership ends with the session's lease.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// use cairn_client::concurrency::{Election, Session, SessionOptions};
/// let session = Session::new(&client, SessionOptions::new()).await?;
/// let mut election = Election::new(&session, "/election/scheduler");
/// election.campaign("node-1").await?; // returns once elected
/// // ... lead, until session.done() ...
/// election.resign().await?;
/// # Ok(()) }
/// ```
pub struct Election {
    session: Session,
    /// `<prefix>/`.
    pfx: Vec<u8>,
    leader_key: Vec<u8>,
    leader_rev: i64,
    /// Whether this election object currently holds (or campaigns for) leadership.
    leading: bool,
    header: Option<ResponseHeader>,
}

impl Election {
    /// An election on `prefix` for `session`.
    pub fn new(session: &Session, prefix: impl Into<Vec<u8>>) -> Election {
        let mut pfx = prefix.into();
        pfx.push(b'/');
        Election {
            session: session.clone(),
            pfx,
            leader_key: Vec::new(),
            leader_rev: 0,
            leading: false,
            header: None,
        }
    }

    /// Resumes a leadership won earlier (Go's `ResumeElection`), from its key and revision.
    pub fn resume(
        session: &Session,
        prefix: impl Into<Vec<u8>>,
        leader_key: Vec<u8>,
        leader_rev: i64,
    ) -> Election {
        let mut e = Election::new(session, prefix);
        e.leader_key = leader_key;
        e.leader_rev = leader_rev;
        e.leading = true;
        e
    }

    /// Campaigns with `value` and returns once this session is the leader. Fails with
    /// [`Error::SessionExpired`] if the session ends first; dropping the future before it
    /// completes leaves the candidacy queued until [`Election::resign`] or the session's end.
    pub async fn campaign(&mut self, value: impl Into<Vec<u8>>) -> Result<()> {
        let value = value.into();
        let client = self.session.client().clone();
        let kv = client.kv();
        let lease = self.session.lease();
        let key = lease_key(&self.pfx, lease);
        // Idempotent: a second run finds the key and reads it.
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                value.clone(),
                PutOptions::new().with_lease(lease),
            )])
            .or_else([TxnOp::get(key.clone(), GetOptions::new())])
            .idempotent();
        let resp = kv.txn(txn).await?;
        self.leader_key = key;
        self.leader_rev = resp.revision();
        self.leading = true;
        if !resp.succeeded {
            let existing = resp
                .get(0)
                .and_then(|r| r.kvs.first())
                .ok_or(Error::SessionExpired)?
                .clone();
            self.leader_rev = existing.create_revision;
            if existing.value[..] != value[..] {
                if let Err(e) = self.proclaim(value).await {
                    let _ = self.resign().await;
                    return Err(e);
                }
            }
        }
        let watch = client.watch();
        let waited = tokio::select! {
            r = wait_deletes(&kv, &watch, &self.pfx, self.leader_rev - 1) => r,
            e = self.session.expired() => Err(e),
        };
        match waited {
            Ok(_) => {
                self.header = resp.header;
                Ok(())
            }
            Err(e) => {
                self.leading = false;
                Err(e)
            }
        }
    }

    /// Replaces the leader's value, if this session still leads ([`Error::ElectionNotLeader`]
    /// otherwise).
    pub async fn proclaim(&mut self, value: impl Into<Vec<u8>>) -> Result<()> {
        if !self.leading {
            return Err(Error::ElectionNotLeader);
        }
        let lease = self.session.lease();
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.leader_key.clone(),
                CompareOp::Equal,
                self.leader_rev,
            )])
            .and_then([TxnOp::put(
                self.leader_key.clone(),
                value,
                PutOptions::new().with_lease(lease),
            )])
            .idempotent();
        let resp = self.session.client().kv().txn(txn).await?;
        if !resp.succeeded {
            self.leading = false;
            self.leader_key.clear();
            return Err(Error::ElectionNotLeader);
        }
        self.header = resp.header;
        Ok(())
    }

    /// Gives up leadership (or the candidacy); a no-op if there is none.
    pub async fn resign(&mut self) -> Result<()> {
        if !self.leading {
            return Ok(());
        }
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.leader_key.clone(),
                CompareOp::Equal,
                self.leader_rev,
            )])
            .and_then([TxnOp::delete(self.leader_key.clone(), DeleteOptions::new())])
            .idempotent();
        let resp = self.session.client().kv().txn(txn).await;
        self.leading = false;
        self.leader_key.clear();
        self.header = resp?.header;
        Ok(())
    }

    /// The current leader's key and value ([`Error::ElectionNoLeader`] if nobody campaigns).
    pub async fn leader(&self) -> Result<KeyValue> {
        leader_of(self.session.client(), &self.pfx).await
    }

    /// A stream of the leader's key-values: the current leader (once there is one), then each
    /// proclamation and each new leader. Ends with an error if its watch fails for good.
    pub fn observe(&self) -> TaskStream<Result<KeyValue>> {
        let (tx, rx) = mpsc::channel(OBSERVE_BUFFER_MAX);
        let client = self.session.client().clone();
        let pfx = self.pfx.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = observe(&client, &pfx, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        TaskStream { rx, task }
    }

    /// This session's key in the election (empty if not campaigning).
    pub fn key(&self) -> &[u8] {
        &self.leader_key
    }

    /// The create revision of this session's key.
    pub fn rev(&self) -> i64 {
        self.leader_rev
    }

    /// The header of the last response that changed leadership or the value.
    pub fn header(&self) -> Option<&ResponseHeader> {
        self.header.as_ref()
    }
}

async fn leader_of(client: &Client, pfx: &[u8]) -> Result<KeyValue> {
    let resp = client
        .kv()
        .get(pfx.to_vec(), GetOptions::new().with_first_create())
        .await?;
    resp.kvs.into_iter().next().ok_or(Error::ElectionNoLeader)
}

/// Go's `observe`: wait for a leader, report it and its proclamations until its key is
/// deleted, repeat. Returns when the consumer goes away.
async fn observe(client: &Client, pfx: &[u8], tx: &mpsc::Sender<Result<KeyValue>>) -> Result<()> {
    let kv = client.kv();
    let watch = client.watch();
    loop {
        let resp = kv
            .get(pfx.to_vec(), GetOptions::new().with_first_create())
            .await?;
        let header_rev = resp.header.as_ref().map_or(0, |h| h.revision);
        let (leader, rev) = match resp.kvs.into_iter().next() {
            Some(kv) => (kv, header_rev),
            None => {
                // Wait for the first candidate's put.
                let mut w = watch
                    .watch(
                        pfx.to_vec(),
                        WatchOptions::new()
                            .with_prefix()
                            .with_start_revision(header_rev),
                    )
                    .await?;
                let mut found = None;
                while found.is_none() {
                    let Some(r) = w.next().await else {
                        return Ok(());
                    };
                    found = r?
                        .events
                        .into_iter()
                        .find(|e| e.kind == EventKind::Put)
                        .map(|e| e.kv);
                }
                let kv = found.expect("loop ends with a put");
                let rev = kv.mod_revision;
                (kv, rev)
            }
        };
        if tx.send(Ok(leader.clone())).await.is_err() {
            return Ok(());
        }
        let mut w = watch
            .watch(
                leader.key.to_vec(),
                WatchOptions::new().with_start_revision(rev + 1),
            )
            .await?;
        'leader: while let Some(r) = w.next().await {
            for e in r?.events {
                if e.kind == EventKind::Delete {
                    break 'leader;
                }
                if tx.send(Ok(e.kv)).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}
