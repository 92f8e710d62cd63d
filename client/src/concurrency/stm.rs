//! [`Stm`]: software transactional memory over etcd keys (Go clientv3's `concurrency.STM`).
//!
//! The apply function reads and writes through an [`Stm`]; reads go to the cluster (once per
//! key), writes are buffered. At the end everything is committed in one transaction guarded
//! by the isolation level's conflict checks; on conflict the function runs again with fresh
//! reads. Go: `client/v3/concurrency/stm.go`.

use std::collections::BTreeMap;

use cairn_proto::etcdserverpb::RangeResponse;

use crate::error::{Error, Result};
use crate::kv::{
    Compare, CompareOp, DeleteOptions, GetOptions, Kv, PutOptions, Txn, TxnOp, TxnOpResponse,
};
use crate::{Client, TxnResponse};

/// Default most runs of an apply function before [`run_stm`] gives up with
/// [`Error::StmConflict`].
pub const STM_ATTEMPTS_MAX_DEFAULT: u32 = 100;

/// How much an [`Stm`] isolates its apply function from concurrent writers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// All reads at the revision of the first read; the commit fails if any key read or
    /// written changed since that revision. Serializable, and free of write skew. (Default.)
    #[default]
    SerializableSnapshot,
    /// All reads at the revision of the first read; the commit fails if any key read changed.
    Serializable,
    /// Each key read at the latest revision when first read; the commit fails if any key read
    /// changed since.
    RepeatableReads,
    /// No conflict checks: the writes are committed whatever happened meanwhile.
    ReadCommitted,
}

/// Options of [`run_stm`].
#[derive(Debug, Clone)]
pub struct StmOptions {
    isolation: Isolation,
    attempts_max: u32,
    prefetch: Vec<Vec<u8>>,
}

impl Default for StmOptions {
    fn default() -> Self {
        StmOptions {
            isolation: Isolation::default(),
            attempts_max: STM_ATTEMPTS_MAX_DEFAULT,
            prefetch: Vec::new(),
        }
    }
}

impl StmOptions {
    /// Serializable snapshot isolation, at most 100 runs.
    pub fn new() -> Self {
        Self::default()
    }
    /// The isolation level.
    pub fn with_isolation(mut self, isolation: Isolation) -> Self {
        self.isolation = isolation;
        self
    }
    /// At most `attempts` runs of the apply function (≥ 1).
    pub fn with_attempts_max(mut self, attempts: u32) -> Self {
        self.attempts_max = attempts.max(1);
        self
    }
    /// Read these keys in one request before the first run.
    pub fn with_prefetch(mut self, keys: impl IntoIterator<Item = impl Into<Vec<u8>>>) -> Self {
        self.prefetch = keys.into_iter().map(Into::into).collect();
        self
    }
}

/// A buffered write.
#[derive(Debug, Clone)]
enum Write {
    Put { value: Vec<u8>, lease: i64 },
    Delete,
}

/// A software transactional memory over the keys: reads are cached and (with snapshot
/// isolation) pinned to one revision, writes are buffered until [`Stm::commit`], which applies
/// them in one transaction if the isolation level's guards hold.
///
/// Written as a loop, it can run in a spawned task:
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// use cairn_client::concurrency::{Stm, StmOptions};
/// let mut stm = Stm::new(&client, StmOptions::new());
/// loop {
///     let hits: u64 = match stm.get("hits").await? {
///         Some(v) => String::from_utf8_lossy(&v).parse().unwrap_or(0),
///         None => 0,
///     };
///     stm.put("hits", (hits + 1).to_string());
///     if stm.commit().await?.is_some() {
///         break; // committed; on a conflict the loop runs again with fresh reads
///     }
/// }
/// # Ok(()) }
/// ```
pub struct Stm {
    kv: Kv,
    isolation: Isolation,
    attempts: u32,
    attempts_max: u32,
    prefetch_keys: Vec<Vec<u8>>,
    /// Read responses by key (each has the revision it was read at in its header).
    rset: BTreeMap<Vec<u8>, RangeResponse>,
    wset: BTreeMap<Vec<u8>, Write>,
    /// Responses already fetched for the next run (after a conflict or a prefetch).
    prefetched: BTreeMap<Vec<u8>, RangeResponse>,
    /// The revision serializable reads are pinned to, once the first read is done.
    read_rev: Option<i64>,
}

impl Stm {
    /// A transaction on `client`'s keys (and namespace).
    pub fn new(client: &Client, options: StmOptions) -> Stm {
        Stm {
            kv: client.kv(),
            isolation: options.isolation,
            attempts: 0,
            attempts_max: options.attempts_max,
            prefetch_keys: options.prefetch,
            rset: BTreeMap::new(),
            wset: BTreeMap::new(),
            prefetched: BTreeMap::new(),
            read_rev: None,
        }
    }

    /// Forgets this run's reads and writes (kept: what the failure branch prefetched).
    fn reset(&mut self) {
        self.rset.clear();
        self.wset.clear();
        self.read_rev = None;
    }

    fn pinned(&self) -> bool {
        matches!(
            self.isolation,
            Isolation::SerializableSnapshot | Isolation::Serializable
        )
    }

    /// The response for `key`, from the read set, the prefetch, or the cluster.
    async fn fetch(&mut self, key: &[u8]) -> Result<&RangeResponse> {
        if self.attempts == 0 {
            self.attempts = 1;
            let keys = std::mem::take(&mut self.prefetch_keys);
            self.prefetch(&keys).await?;
        }
        if !self.rset.contains_key(key) {
            let resp = match self.prefetched.remove(key) {
                Some(r) => r,
                None => {
                    let mut options = GetOptions::new();
                    match (self.pinned(), self.read_rev) {
                        // Pinned reads stay linearizable so that a lagging member cannot
                        // answer "future revision".
                        (true, Some(rev)) => options = options.with_revision(rev),
                        (true, None) => {}
                        (false, _) => options = options.with_serializable(),
                    }
                    self.kv.get(key.to_vec(), options).await?
                }
            };
            if self.pinned() && self.read_rev.is_none() {
                self.read_rev = Some(resp.header.as_ref().map_or(0, |h| h.revision));
            }
            self.rset.insert(key.to_vec(), resp);
        }
        Ok(self.rset.get(key).expect("inserted above"))
    }

    /// The value of `key` as this transaction sees it (its own writes included); `None` if
    /// the key does not exist.
    pub async fn get(&mut self, key: impl Into<Vec<u8>>) -> Result<Option<Vec<u8>>> {
        let key = key.into();
        match self.wset.get(&key) {
            Some(Write::Put { value, .. }) => return Ok(Some(value.clone())),
            Some(Write::Delete) => return Ok(None),
            None => {}
        }
        let resp = self.fetch(&key).await?;
        Ok(resp.kvs.first().map(|kv| kv.value.to_vec()))
    }

    /// The revision that last modified `key` as read (0 if it does not exist).
    pub async fn rev(&mut self, key: impl Into<Vec<u8>>) -> Result<i64> {
        let key = key.into();
        let resp = self.fetch(&key).await?;
        Ok(resp.kvs.first().map_or(0, |kv| kv.mod_revision))
    }

    /// Buffers `key = value`.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.put_with_lease(key, value, 0);
    }

    /// Buffers `key = value` attached to `lease`.
    pub fn put_with_lease(
        &mut self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        lease: i64,
    ) {
        self.wset.insert(
            key.into(),
            Write::Put {
                value: value.into(),
                lease,
            },
        );
    }

    /// Buffers the deletion of `key`.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.wset.insert(key.into(), Write::Delete);
    }

    /// The commit's guards for this isolation level.
    fn conflicts(&self) -> Vec<Compare> {
        let read_set = || {
            self.rset.iter().map(|(k, r)| {
                let rev = r.kvs.first().map_or(0, |kv| kv.mod_revision);
                Compare::mod_revision(k.clone(), CompareOp::Equal, rev)
            })
        };
        match self.isolation {
            Isolation::SerializableSnapshot => {
                let first = self
                    .rset
                    .values()
                    .map(|r| r.header.as_ref().map_or(0, |h| h.revision))
                    .min()
                    .unwrap_or(i64::MAX - 1);
                read_set()
                    .chain(
                        self.wset
                            .keys()
                            .map(|k| Compare::mod_revision(k.clone(), CompareOp::Less, first + 1)),
                    )
                    .collect()
            }
            Isolation::Serializable | Isolation::RepeatableReads => read_set().collect(),
            Isolation::ReadCommitted => Vec::new(),
        }
    }

    /// Commits the buffered writes if the guards hold: `Some(response)`. On a conflict it
    /// returns `None` and is ready for the next run (reads and writes forgotten; with pinned
    /// reads the failure branch already re-read the read set, one round trip saved, as Go
    /// does). After `attempts_max` conflicts it fails with [`Error::StmConflict`]. A commit
    /// whose outcome is unknown (its member failed) returns the error: do not run it again
    /// blindly.
    pub async fn commit(&mut self) -> Result<Option<TxnResponse>> {
        if self.attempts == 0 {
            // Prefetching belongs before the first run; a commit without reads still counts.
            self.attempts = 1;
        }
        let committed = self.commit_once().await?;
        if committed.is_some() {
            self.reset();
            self.attempts = 0;
            return Ok(committed);
        }
        self.reset();
        if self.attempts >= self.attempts_max {
            let attempts = self.attempts;
            self.attempts = 0;
            return Err(Error::StmConflict { attempts });
        }
        self.attempts += 1;
        Ok(None)
    }

    /// One commit attempt; `Some` if the guards held.
    async fn commit_once(&mut self) -> Result<Option<TxnResponse>> {
        let writes = self.wset.iter().map(|(k, w)| match w {
            Write::Put { value, lease } => TxnOp::put(
                k.clone(),
                value.clone(),
                PutOptions::new().with_lease(*lease),
            ),
            Write::Delete => TxnOp::delete(k.clone(), DeleteOptions::new()),
        });
        let keys: Vec<Vec<u8>> = if self.pinned() {
            self.rset.keys().cloned().collect()
        } else {
            Vec::new()
        };
        let txn = Txn::new().when(self.conflicts()).and_then(writes).or_else(
            keys.iter()
                .map(|k| TxnOp::get(k.clone(), GetOptions::new())),
        );
        let resp = self.kv.txn(txn).await?;
        if resp.succeeded {
            return Ok(Some(resp));
        }
        for (k, r) in keys.into_iter().zip(resp.responses) {
            if let TxnOpResponse::Get(r) = r {
                self.prefetched.insert(k, r);
            }
        }
        Ok(None)
    }

    async fn prefetch(&mut self, keys: &[Vec<u8>]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let txn = Txn::new().and_then(
            keys.iter()
                .map(|k| TxnOp::get(k.clone(), GetOptions::new())),
        );
        let resp = self.kv.txn(txn).await?;
        for (k, r) in keys.iter().zip(resp.responses) {
            if let TxnOpResponse::Get(r) = r {
                self.prefetched.insert(k.clone(), r);
            }
        }
        Ok(())
    }
}

/// Runs `apply` as a transaction: re-runs it on conflict until it commits (at most
/// `attempts_max` times). An error from `apply` aborts without writing anything; a commit
/// whose outcome is unknown (the member failed) is not re-run and returns the error.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// use cairn_client::concurrency::{run_stm, StmOptions};
/// // Move 10 from a to b, atomically, whatever else runs concurrently.
/// run_stm(&client, StmOptions::new(), async |stm| {
///     let a: i64 = String::from_utf8(stm.get("a").await?.unwrap_or_default()).unwrap().parse().unwrap_or(0);
///     let b: i64 = String::from_utf8(stm.get("b").await?.unwrap_or_default()).unwrap().parse().unwrap_or(0);
///     stm.put("a", (a - 10).to_string());
///     stm.put("b", (b + 10).to_string());
///     Ok(())
/// })
/// .await?;
/// # Ok(()) }
/// ```
///
/// Today's compiler cannot prove the future of an async closure `Send` for every borrow of
/// its argument, so `run_stm` does not compile inside `tokio::spawn`; there, write the loop
/// of [`Stm`] by hand.
pub async fn run_stm<T, F>(client: &Client, options: StmOptions, mut apply: F) -> Result<T>
where
    F: AsyncFnMut(&mut Stm) -> Result<T>,
{
    let mut stm = Stm::new(client, options);
    loop {
        let out = apply(&mut stm).await?;
        if stm.commit().await?.is_some() {
            return Ok(out);
        }
    }
}
