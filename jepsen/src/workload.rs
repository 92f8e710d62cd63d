//! Workloads: what each client thread asks of the store, and how a call becomes a completion.
//!
//! - `register` (Jepsen's etcd register): groups of `threads_per_key` threads share one key at a
//!   time and move to a fresh key every `ops_per_key` operations; half of each group only reads,
//!   the others put or compare-and-set unique values (a CAS expects the last value the group saw,
//!   so it often succeeds). Checked by `checker::linearizable`.
//! - `set`: half the threads add unique elements (a put of `jepsen/s/<element>`), the others read
//!   the whole prefix; every member is read again after healing. Checked by `checker::set`.
//! - `append` (Jepsen's etcd append): transactions of 1–4 reads and appends over 3 active keys
//!   holding lists. A client reads the keys in one txn, computes the reads and new lists, and
//!   commits with a txn guarded by every key's `mod_revision` (so a commit means the reads held
//!   at the commit's revision); a failed guard is a definite failure. Checked by `checker::elle`.
//!
//! - `watch`: every thread writes unique values under `jepsen/w/` (puts, multi-key txns, single
//!   deletes and multi-key range deletes) while watchers (`crate::watcher`) watch the prefix on
//!   every member and a compactor compacts behind them. Checked by `checker::watch`.
//!
//! - `lock-set` and `lock-etcd-set` (`crate::lock`): half the threads take an etcd lock (a lease
//!   and a key, lowest `create_revision` first) and read-modify-write a set held in one key
//!   under it, unfenced or fenced by the lock key; the others read the set. With the `pause`
//!   fault, lock holders are paused past their lease's TTL between their read and their write.
//!   Checked by `checker::set`: `lock-etcd-set` must lose nothing; `lock-set` is the negative
//!   control that must lose updates under pauses.
//! - `kv-robust` (etcd's robustness traffic): gets and prefix ranges, two thirds of them
//!   linearizable and a third at a recent past revision, puts, deletes of one key or a range, unconditional
//!   two-key txns and a conditional txn (`mod_revision` compare, put and delete, else get) on 6
//!   keys, while a compactor compacts behind. Checked by `checker::kv`.
//!
//! Values are unique across the run, so a read identifies the write it observed.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

use cairn_proto::mvccpb::KeyValue;
use rand::seq::SliceRandom;

use crate::client::{Cas, ClientError, EtcdClient};
use crate::history::{Call, EventKind, Kv, Mop, Reply, Value, Versioned};
use crate::lock;

/// Prefix of the register keys.
const REGISTER_PREFIX: &str = "jepsen/r/";
/// Prefix of the set's element keys.
pub const SET_PREFIX: &str = "jepsen/s/";
/// Prefix of the append workload's list keys.
const APPEND_PREFIX: &str = "jepsen/a/";
/// append: keys a transaction picks from (Elle's key-count).
const APPEND_ACTIVE_KEYS: u64 = 3;
/// append: transactions before the window of active keys slides by one key, keeping lists short.
const APPEND_TXNS_PER_KEY_SHIFT: u64 = 100;
/// append: micro-operations per transaction, at most (Elle's max-txn-length).
const APPEND_TXN_MOPS_MAX: usize = 4;
/// Prefix of the watch workload's keys (what the watchers watch).
pub const WATCH_PREFIX: &str = "jepsen/w/";
/// watch: keys written (`jepsen/w/0` … `jepsen/w/7`), few enough that puts often replace a value
/// and deletes often find one.
const WATCH_KEYS: usize = 8;
/// watch: keys in a multi-key txn, at most.
const WATCH_TXN_PUTS_MAX: usize = 3;
/// watch: keys a range delete spans, at most.
const WATCH_DELETE_RANGE_KEYS_MAX: usize = 4;
/// Prefix of the kv-robust keys.
pub const KV_PREFIX: &str = "jepsen/k/";
/// kv-robust: keys written (`jepsen/k/0` … `jepsen/k/5`), few, so that compares, deletes and
/// past reads often meet other clients' writes.
const KV_KEYS: usize = 6;
/// kv-robust: a read of the past reads at most this many revisions behind the highest one
/// acknowledged (some of them compacted).
const KV_STALE_REVISIONS_MAX: i64 = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    Register,
    Set,
    /// Elle list-append transactions (strict serializability).
    Append,
    /// Writers under a prefix while watchers on every member watch it (watch guarantees).
    Watch,
    /// A set read-modified-written under an etcd lock without a fence (negative control: loses
    /// updates when a lock holder pauses past its lease).
    LockSet,
    /// The same, with the write fenced by the lock key (must lose nothing).
    LockEtcdSet,
    /// etcd robustness's mixed KV traffic, with reads of the past and compaction.
    KvRobust,
}

/// How reads are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ReadMode {
    /// Quorum reads (etcd's default): must be linearizable.
    Linearizable,
    /// `serializable: true`: a member's local state, which may be stale. A negative control:
    /// under partitions the linearizability checker should fail.
    Serializable,
}

/// One group of register threads: its progress through keys and the last value it saw.
struct Group {
    ops: AtomicU64,
    last_value: AtomicU64,
}

/// Hands out calls to client threads. Shared by all threads; lock-free.
pub struct Generator {
    workload: Workload,
    concurrency: usize,
    threads_per_key: usize,
    ops_per_key: u64,
    next_value: AtomicU64,
    groups: Vec<Group>,
    /// append: transactions handed out so far.
    txns: AtomicU64,
    /// The highest revision any acknowledged operation reported (for watchers' start revisions
    /// and the compactor).
    max_revision: AtomicI64,
    /// watch: the highest revision of an acknowledged put or txn of puts (a revision without
    /// deletes, for the compactor).
    max_put_revision: AtomicI64,
    /// kv-robust: the `mod_revision` each key last had, as far as this client saw (0: absent),
    /// for the conditional txn's compare.
    kv_mod_revisions: Vec<AtomicI64>,
    /// lock workloads: client pauses, when enabled (see [`Generator::client_pauses`]).
    client_pauses: Option<ClientPauses>,
}

/// lock workloads: when the next lock holder pauses. After a pause is claimed, none is for the
/// shortest pause plus `every`.
struct ClientPauses {
    start: std::time::Instant,
    every_ms: u64,
    /// Milliseconds since `start` when the next add carries a pause.
    next_ms: AtomicU64,
}

impl Generator {
    pub fn new(
        workload: Workload,
        concurrency: usize,
        threads_per_key: usize,
        ops_per_key: u64,
    ) -> Generator {
        let threads_per_key = threads_per_key.clamp(1, concurrency);
        Generator {
            workload,
            concurrency,
            threads_per_key,
            ops_per_key: ops_per_key.max(1),
            next_value: AtomicU64::new(1),
            groups: (0..concurrency.div_ceil(threads_per_key))
                .map(|_| Group {
                    ops: AtomicU64::new(0),
                    last_value: AtomicU64::new(0),
                })
                .collect(),
            txns: AtomicU64::new(0),
            max_revision: AtomicI64::new(1),
            max_put_revision: AtomicI64::new(0),
            kv_mod_revisions: (0..KV_KEYS).map(|_| AtomicI64::new(0)).collect(),
            client_pauses: None,
        }
    }

    /// lock workloads: pause a lock holder between its read and its write (past its lease's
    /// TTL, until another holder wrote, at most [`lock::CLIENT_PAUSE_MS`]; see `crate::lock`),
    /// at the first add from now on, then again `every` after the shortest pause would end (the
    /// `pause` fault's counterpart for clients).
    pub fn client_pauses(mut self, every: Duration) -> Generator {
        self.client_pauses = Some(ClientPauses {
            start: std::time::Instant::now(),
            every_ms: every.as_millis() as u64,
            next_ms: AtomicU64::new(0),
        });
        self
    }

    /// The pause the next add carries, claiming it (0: none).
    fn claim_client_pause(&self) -> u64 {
        let Some(pauses) = &self.client_pauses else {
            return 0;
        };
        let now = pauses.start.elapsed().as_millis() as u64;
        let next = pauses.next_ms.load(Ordering::Relaxed);
        let after = now + lock::CLIENT_PAUSE_MIN_MS + pauses.every_ms;
        if now >= next
            && pauses
                .next_ms
                .compare_exchange(next, after, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            lock::CLIENT_PAUSE_MS
        } else {
            0
        }
    }

    /// The highest revision of an acknowledged put or txn of puts so far (0 before any).
    pub fn max_put_revision(&self) -> i64 {
        self.max_put_revision.load(Ordering::Relaxed)
    }

    /// The highest revision an acknowledged operation has reported so far (1 before any).
    pub fn max_revision(&self) -> i64 {
        self.max_revision.load(Ordering::Relaxed)
    }

    fn fresh_value(&self) -> Value {
        self.next_value.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether `thread` only reads (half of each group, rounded down, at least one writer).
    fn is_reader(&self, thread: usize) -> bool {
        let (slot, size) = match self.workload {
            Workload::Register => {
                let group = thread / self.threads_per_key;
                let start = group * self.threads_per_key;
                let size = self.threads_per_key.min(self.concurrency - start);
                (thread - start, size)
            }
            Workload::Set | Workload::Append | Workload::LockSet | Workload::LockEtcdSet => {
                (thread, self.concurrency)
            }
            Workload::Watch | Workload::KvRobust => return false,
        };
        slot < size / 2
    }

    /// The next call for `thread`.
    pub fn next_call(&self, thread: usize, rng: &mut impl Rng) -> Call {
        match self.workload {
            Workload::Watch => self.next_watch_call(rng),
            Workload::KvRobust => self.next_kv_call(rng),
            Workload::LockSet | Workload::LockEtcdSet => {
                if self.is_reader(thread) {
                    Call::LockRead
                } else {
                    Call::LockAdd {
                        element: self.fresh_value(),
                        fenced: self.workload == Workload::LockEtcdSet,
                        pause_ms: self.claim_client_pause(),
                    }
                }
            }
            Workload::Append => {
                let base = self.txns.fetch_add(1, Ordering::Relaxed) / APPEND_TXNS_PER_KEY_SHIFT;
                let len = rng.random_range(1..=APPEND_TXN_MOPS_MAX);
                let mops = (0..len)
                    .map(|_| {
                        let key = format!(
                            "{APPEND_PREFIX}{}",
                            base + rng.random_range(0..APPEND_ACTIVE_KEYS)
                        );
                        if rng.random_bool(0.5) {
                            Mop::Append {
                                key,
                                value: self.fresh_value(),
                            }
                        } else {
                            Mop::Read { key }
                        }
                    })
                    .collect();
                Call::Txn { mops }
            }
            Workload::Set => {
                if self.is_reader(thread) {
                    Call::ReadSet
                } else {
                    Call::Add {
                        element: self.fresh_value(),
                    }
                }
            }
            Workload::Register => {
                let g = thread / self.threads_per_key;
                let group = &self.groups[g];
                let done = group.ops.fetch_add(1, Ordering::Relaxed);
                let key_index = g as u64 + self.groups.len() as u64 * (done / self.ops_per_key);
                let key = format!("{REGISTER_PREFIX}{key_index}");
                if self.is_reader(thread) {
                    Call::Read { key }
                } else if rng.random_bool(0.5) {
                    Call::Write {
                        key,
                        value: self.fresh_value(),
                    }
                } else {
                    Call::Cas {
                        key,
                        expect: group.last_value.load(Ordering::Relaxed),
                        value: self.fresh_value(),
                    }
                }
            }
        }
    }

    /// watch: a put (40 %), a txn of 2–3 puts (25 %), a delete of one key (20 %) or of a range
    /// of 2–4 keys (15 %).
    fn next_watch_call(&self, rng: &mut impl Rng) -> Call {
        let key = |k: usize| format!("{WATCH_PREFIX}{k}");
        match rng.random_range(0..20) {
            0..=7 => Call::Put {
                key: key(rng.random_range(0..WATCH_KEYS)),
                value: self.fresh_value(),
            },
            8..=12 => {
                let mut keys: Vec<usize> = (0..WATCH_KEYS).collect();
                keys.shuffle(rng);
                keys.truncate(rng.random_range(2..=WATCH_TXN_PUTS_MAX));
                Call::PutTxn {
                    puts: keys
                        .into_iter()
                        .map(|k| (key(k), self.fresh_value()))
                        .collect(),
                }
            }
            13..=16 => Call::Delete {
                key: key(rng.random_range(0..WATCH_KEYS)),
                range_end: None,
            },
            _ => {
                let first = rng.random_range(0..WATCH_KEYS - 1);
                let end =
                    (first + rng.random_range(2..=WATCH_DELETE_RANGE_KEYS_MAX)).min(WATCH_KEYS);
                Call::Delete {
                    key: key(first),
                    range_end: Some(key(end)),
                }
            }
        }
    }

    /// kv-robust: a linearizable get (20 %) or a get of the past (10 %) of one key, a range of
    /// every key, now (10 %) or in the past (5 %), a put (20 %), a delete of one key (10 %) or a
    /// range of 2–3 (5 %), an unconditional txn putting 2 keys (5 %), a conditional txn
    /// (15 %).
    fn next_kv_call(&self, rng: &mut impl Rng) -> Call {
        let key = |k: usize| format!("{KV_PREFIX}{k}");
        let head = self.max_revision();
        let past = rng.random_range((head - KV_STALE_REVISIONS_MAX).max(1)..=head);
        let all_end =
            String::from_utf8(crate::client::prefix_end(KV_PREFIX.as_bytes())).expect("ASCII");
        let k = rng.random_range(0..KV_KEYS);
        match rng.random_range(0..20) {
            0..=3 => Call::KvRange {
                key: key(k),
                range_end: None,
                revision: 0,
            },
            4..=5 => Call::KvRange {
                key: key(k),
                range_end: None,
                revision: past,
            },
            6..=7 => Call::KvRange {
                key: KV_PREFIX.into(),
                range_end: Some(all_end.clone()),
                revision: 0,
            },
            8 => Call::KvRange {
                key: KV_PREFIX.into(),
                range_end: Some(all_end.clone()),
                revision: past,
            },
            9..=12 => Call::Put {
                key: key(k),
                value: self.fresh_value(),
            },
            13..=14 => Call::Delete {
                key: key(k),
                range_end: None,
            },
            15 => {
                let first = rng.random_range(0..KV_KEYS - 1);
                let end = (first + rng.random_range(2..=3)).min(KV_KEYS);
                Call::Delete {
                    key: key(first),
                    range_end: Some(key(end)),
                }
            }
            16 => {
                let other = (k + rng.random_range(1..KV_KEYS)) % KV_KEYS;
                Call::PutTxn {
                    puts: vec![
                        (key(k), self.fresh_value()),
                        (key(other), self.fresh_value()),
                    ],
                }
            }
            _ => Call::KvCas {
                key: key(k),
                expect_mod_revision: self.kv_mod_revisions[k].load(Ordering::Relaxed),
                value: self.fresh_value(),
                delete: key((k + rng.random_range(1..KV_KEYS)) % KV_KEYS),
            },
        }
    }

    /// kv-robust: remembers a key's `mod_revision` (0: absent).
    fn saw_kv(&self, key: &str, mod_revision: i64) {
        let slot = key
            .strip_prefix(KV_PREFIX)
            .and_then(|k| k.parse::<usize>().ok())
            .and_then(|k| self.kv_mod_revisions.get(k));
        if let Some(slot) = slot {
            slot.store(mod_revision, Ordering::Relaxed);
        }
    }

    /// Learns from a completion (the value a register group last saw, for its next CAS; the
    /// highest revision seen).
    pub fn observe(&self, thread: usize, call: &Call, completion: &EventKind) {
        let EventKind::Ok { reply, revision } = completion else {
            return;
        };
        self.max_revision.fetch_max(*revision, Ordering::Relaxed);
        if matches!(call, Call::Put { .. } | Call::PutTxn { .. }) {
            self.max_put_revision
                .fetch_max(*revision, Ordering::Relaxed);
        }
        match (call, reply) {
            (
                Call::KvRange {
                    key,
                    revision: 0,
                    range_end: None,
                },
                Reply::Kvs { kvs },
            ) => self.saw_kv(key, kvs.first().map_or(0, |kv| kv.mod_revision)),
            (Call::Put { key, .. }, _) => self.saw_kv(key, *revision),
            (
                Call::KvCas { key, .. },
                Reply::KvCas {
                    succeeded: true, ..
                },
            ) => self.saw_kv(key, *revision),
            (Call::KvCas { key, .. }, Reply::KvCas { current, .. }) => {
                self.saw_kv(key, current.as_ref().map_or(0, |kv| kv.mod_revision))
            }
            _ => {}
        }
        let seen = match (call, reply) {
            (
                _,
                Reply::Read {
                    found: Some(Versioned { value, .. }),
                    ..
                },
            ) => *value,
            (Call::Write { value, .. }, Reply::Write { .. }) => *value,
            (
                Call::Cas { value, .. },
                Reply::Cas {
                    succeeded: true, ..
                },
            ) => *value,
            _ => return,
        };
        if let Some(group) = self.groups.get(thread / self.threads_per_key) {
            group.last_value.store(seen, Ordering::Relaxed);
        }
    }
}

/// The read every member answers once more after healing, so that every acknowledged add has
/// a read that began after it (set-checked workloads only).
pub fn final_read_call(workload: Workload) -> Option<Call> {
    match workload {
        Workload::Set => Some(Call::ReadSet),
        Workload::LockSet | Workload::LockEtcdSet => Some(Call::LockRead),
        Workload::Register | Workload::Append | Workload::Watch | Workload::KvRobust => None,
    }
}

/// A key-value as the history records it.
pub fn kv_of(kv: &KeyValue) -> Kv {
    Kv {
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        value: (!kv.value.is_empty()).then(|| parse_value(&kv.value)),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
    }
}

/// Values are stored as decimal text; anything else reads as `u64::MAX`, which is never
/// written, so the checkers flag it.
fn parse_value(bytes: &[u8]) -> Value {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(u64::MAX)
}

/// A list as stored: decimal values separated by commas.
pub(crate) fn encode_list(list: &[Value]) -> Vec<u8> {
    list.iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join(",")
        .into_bytes()
}

pub(crate) fn parse_list(bytes: &[u8]) -> Vec<Value> {
    bytes
        .split(|&b| b == b',')
        .filter(|part| !part.is_empty())
        .map(parse_value)
        .collect()
}

/// Runs a list-append transaction: read every key in one snapshot, compute the reads and new
/// lists, commit guarded by every key's `mod_revision`.
async fn invoke_txn(client: &mut EtcdClient, mops: &[Mop], serializable: bool) -> EventKind {
    let mut keys: Vec<&str> = Vec::new();
    for mop in mops {
        if !keys.contains(&mop.key()) {
            keys.push(mop.key());
        }
    }
    let (snapshot, snapshot_revision) = match client.snapshot(&keys, serializable).await {
        Ok(snapshot) => snapshot,
        // Nothing was written yet.
        Err(e) => return read_error(e),
    };
    let mut lists: Vec<Vec<Value>> = snapshot
        .iter()
        .map(|(value, _)| value.as_deref().map_or_else(Vec::new, parse_list))
        .collect();
    let mut appended = vec![false; keys.len()];
    let mut reads = Vec::with_capacity(mops.len());
    for mop in mops {
        let at = keys
            .iter()
            .position(|k| *k == mop.key())
            .expect("every key was collected");
        match mop {
            Mop::Append { value, .. } => {
                lists[at].push(*value);
                appended[at] = true;
                reads.push(None);
            }
            Mop::Read { .. } => reads.push(Some(lists[at].clone())),
        }
    }
    if !appended.contains(&true) {
        return EventKind::Ok {
            reply: Reply::Txn { reads },
            revision: snapshot_revision,
        };
    }
    let guards: Vec<(&str, i64)> = keys
        .iter()
        .zip(&snapshot)
        .map(|(key, (_, mod_revision))| (*key, *mod_revision))
        .collect();
    let puts: Vec<(&str, Vec<u8>)> = keys
        .iter()
        .zip(&lists)
        .zip(&appended)
        .filter(|(_, appended)| **appended)
        .map(|((key, list), _)| (*key, encode_list(list)))
        .collect();
    match client.guarded_put(&guards, &puts).await {
        Ok((true, revision)) => EventKind::Ok {
            reply: Reply::Txn { reads },
            revision,
        },
        Ok((false, _)) => EventKind::Fail {
            error: "guard failed: a key changed since it was read".into(),
        },
        Err(e) => write_error(e),
    }
}

/// A write's error: definite → `fail`, indefinite → `info`.
fn write_error(error: ClientError) -> EventKind {
    let text = error.to_string();
    match error {
        ClientError::Definite(_) => EventKind::Fail { error: text },
        ClientError::Indefinite(_) => EventKind::Info { error: text },
    }
}

/// A read's error is always `fail`: a read has no effect, so whether it ran does not matter.
fn read_error(error: ClientError) -> EventKind {
    EventKind::Fail {
        error: error.to_string(),
    }
}

/// Performs `call` and describes its completion.
pub async fn invoke(client: &mut EtcdClient, call: &Call, reads: ReadMode) -> EventKind {
    let serializable = reads == ReadMode::Serializable;
    match call {
        Call::Read { key } => match client.get(key, serializable).await {
            Ok(got) => EventKind::Ok {
                reply: Reply::Read {
                    mod_revision: got.kv.as_ref().map_or(0, |kv| kv.mod_revision),
                    found: got.kv.map(|kv| Versioned {
                        value: parse_value(&kv.value),
                        version: kv.version as u64,
                    }),
                },
                revision: got.revision,
            },
            Err(e) => read_error(e),
        },
        Call::Write { key, value } => match client.put(key, value.to_string().as_bytes()).await {
            Ok((prev_version, revision)) => EventKind::Ok {
                reply: Reply::Write { prev_version },
                revision,
            },
            Err(e) => write_error(e),
        },
        Call::Cas { key, expect, value } => {
            let (expect, value) = (expect.to_string(), value.to_string());
            match client.cas(key, expect.as_bytes(), value.as_bytes()).await {
                Ok((succeeded, prev_version, revision)) => EventKind::Ok {
                    reply: Reply::Cas {
                        succeeded,
                        prev_version,
                    },
                    revision,
                },
                Err(e) => write_error(e),
            }
        }
        Call::Add { element } => match client.put(&format!("{SET_PREFIX}{element}"), b"").await {
            Ok((_, revision)) => EventKind::Ok {
                reply: Reply::Add,
                revision,
            },
            Err(e) => write_error(e),
        },
        Call::ReadSet => match client.get_prefix(SET_PREFIX, serializable).await {
            Ok((kvs, revision)) => EventKind::Ok {
                reply: Reply::ReadSet {
                    elements: kvs
                        .iter()
                        .map(|kv| parse_value(&kv.key[SET_PREFIX.len()..]))
                        .collect(),
                },
                revision,
            },
            Err(e) => read_error(e),
        },
        Call::Txn { mops } => invoke_txn(client, mops, serializable).await,
        Call::Put { key, value } => {
            match client.put_prev(key, value.to_string().as_bytes()).await {
                Ok((prev, revision)) => EventKind::Ok {
                    reply: Reply::Put {
                        prev: prev.as_ref().map(kv_of),
                    },
                    revision,
                },
                Err(e) => write_error(e),
            }
        }
        Call::PutTxn { puts } => {
            let puts: Vec<(&str, Vec<u8>)> = puts
                .iter()
                .map(|(key, value)| (key.as_str(), value.to_string().into_bytes()))
                .collect();
            match client.put_txn(&puts).await {
                Ok(revision) => EventKind::Ok {
                    reply: Reply::PutTxn,
                    revision,
                },
                Err(e) => write_error(e),
            }
        }
        Call::Delete { key, range_end } => match client.delete(key, range_end.as_deref()).await {
            Ok((deleted, revision)) => EventKind::Ok {
                reply: Reply::Delete {
                    deleted: deleted.iter().map(kv_of).collect(),
                },
                revision,
            },
            Err(e) => write_error(e),
        },
        Call::Compact { revision } => match client.compact(*revision).await {
            Ok(revision) => EventKind::Ok {
                reply: Reply::Compact,
                revision,
            },
            Err(e) => write_error(e),
        },
        Call::LockAdd {
            element,
            fenced,
            pause_ms,
        } => lock::invoke_add(client, *element, *fenced, *pause_ms).await,
        Call::LockRead => lock::invoke_read(client).await,
        Call::KvRange {
            key,
            range_end,
            revision,
        } => match client
            .range_at(key, range_end.as_deref(), *revision, serializable)
            .await
        {
            Ok((kvs, revision)) => EventKind::Ok {
                reply: Reply::Kvs {
                    kvs: kvs.iter().map(kv_of).collect(),
                },
                revision,
            },
            Err(e) => read_error(e),
        },
        Call::KvCas {
            key,
            expect_mod_revision,
            value,
            delete,
        } => {
            let value = value.to_string();
            let cas = Cas {
                key,
                expect_mod_revision: *expect_mod_revision,
                value: value.as_bytes(),
                delete,
            };
            match client.cas_txn(&cas).await {
                Ok(reply) => EventKind::Ok {
                    reply: Reply::KvCas {
                        succeeded: reply.succeeded,
                        deleted: reply.deleted.iter().map(kv_of).collect(),
                        current: reply.current.as_ref().map(kv_of),
                    },
                    revision: reply.revision,
                },
                Err(e) => write_error(e),
            }
        }
        Call::ReadPrefix => match client.get_prefix(WATCH_PREFIX, serializable).await {
            Ok((kvs, revision)) => EventKind::Ok {
                reply: Reply::ReadPrefix {
                    kvs: kvs.iter().map(kv_of).collect(),
                },
                revision,
            },
            Err(e) => read_error(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn register_groups_split_readers_and_move_to_fresh_keys() {
        let generator = Generator::new(Workload::Register, 10, 5, 4);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        // Threads 0..2 read, 2..5 write, in group 0; group 1 is threads 5..10.
        assert!(matches!(
            generator.next_call(0, &mut rng),
            Call::Read { .. }
        ));
        assert!(!matches!(
            generator.next_call(4, &mut rng),
            Call::Read { .. }
        ));
        let keys: Vec<String> = (0..4)
            .map(|_| generator.next_call(1, &mut rng).key().unwrap().to_string())
            .collect();
        // Group 0 has made 6 calls: ops 0..3 on key 0, ops 4..5 on key 2 (group 1 owns 1, 3, ...).
        assert_eq!(
            keys,
            ["jepsen/r/0", "jepsen/r/0", "jepsen/r/2", "jepsen/r/2"]
        );
        assert_eq!(
            generator.next_call(5, &mut rng).key().unwrap(),
            "jepsen/r/1"
        );
    }

    #[test]
    fn values_are_unique_and_cas_expects_the_last_seen_value() {
        let generator = Generator::new(Workload::Register, 2, 2, 100);
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let mut values = std::collections::HashSet::new();
        for _ in 0..50 {
            match generator.next_call(1, &mut rng) {
                Call::Write { value, .. } | Call::Cas { value, .. } => {
                    assert!(values.insert(value))
                }
                other => panic!("thread 1 writes, got {other:?}"),
            }
        }
        let read = Call::Read {
            key: "jepsen/r/0".into(),
        };
        let completion = EventKind::Ok {
            reply: Reply::Read {
                found: Some(Versioned {
                    value: 42,
                    version: 3,
                }),
                mod_revision: 8,
            },
            revision: 9,
        };
        generator.observe(0, &read, &completion);
        let cas = (0..20)
            .map(|_| generator.next_call(1, &mut rng))
            .find_map(|c| match c {
                Call::Cas { expect, .. } => Some(expect),
                _ => None,
            });
        assert_eq!(cas, Some(42));
    }

    #[test]
    fn set_threads_split_into_readers_and_adders() {
        let generator = Generator::new(Workload::Set, 4, 4, 1);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        assert_eq!(generator.next_call(1, &mut rng), Call::ReadSet);
        assert!(matches!(
            generator.next_call(2, &mut rng),
            Call::Add { element: 1 }
        ));
        assert!(matches!(
            generator.next_call(3, &mut rng),
            Call::Add { element: 2 }
        ));
    }

    #[test]
    fn append_txns_use_a_sliding_window_of_three_keys() {
        let generator = Generator::new(Workload::Append, 4, 1, 1);
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let mut keys = std::collections::BTreeSet::new();
        for _ in 0..APPEND_TXNS_PER_KEY_SHIFT {
            let Call::Txn { mops } = generator.next_call(0, &mut rng) else {
                panic!("append hands out txns");
            };
            assert!((1..=APPEND_TXN_MOPS_MAX).contains(&mops.len()));
            keys.extend(mops.iter().map(|m| m.key().to_string()));
        }
        assert_eq!(keys.len(), 3, "{keys:?}");
        let Call::Txn { mops } = generator.next_call(0, &mut rng) else {
            panic!("append hands out txns");
        };
        assert!(mops.iter().all(|m| m.key() != "jepsen/a/0"), "{mops:?}");
    }

    #[test]
    fn lists_round_trip() {
        assert_eq!(parse_list(&encode_list(&[3, 1, 2])), vec![3, 1, 2]);
        assert_eq!(parse_list(b""), Vec::<Value>::new());
    }

    #[test]
    fn unparseable_values_never_match_a_written_value() {
        assert_eq!(parse_value(b"17"), 17);
        assert_eq!(parse_value(b"x"), u64::MAX);
    }

    #[test]
    fn kv_robust_mixes_reads_of_now_and_the_past_with_writes_and_compares_last_seen() {
        let generator = Generator::new(Workload::KvRobust, 4, 1, 1);
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let done = EventKind::Ok {
            reply: Reply::Kvs { kvs: vec![] },
            revision: 500,
        };
        generator.observe(
            0,
            &Call::Put {
                key: "jepsen/k/3".into(),
                value: 1,
            },
            &done,
        );
        let calls: Vec<Call> = (0..400).map(|_| generator.next_call(0, &mut rng)).collect();
        let past: Vec<i64> = calls
            .iter()
            .filter_map(|c| match c {
                Call::KvRange { revision, .. } if *revision > 0 => Some(*revision),
                _ => None,
            })
            .collect();
        assert!(past.len() > 30, "{}", past.len());
        assert!(past.iter().all(|r| (400..=500).contains(r)), "{past:?}");
        assert!(calls.iter().any(|c| matches!(
            c,
            Call::Delete {
                range_end: Some(_),
                ..
            }
        )));
        assert!(calls.iter().any(|c| matches!(c, Call::PutTxn { .. })));
        let expects: Vec<i64> = calls
            .iter()
            .filter_map(|c| match c {
                Call::KvCas {
                    key,
                    expect_mod_revision,
                    delete,
                    ..
                } => {
                    assert_ne!(key, delete);
                    (key == "jepsen/k/3").then_some(*expect_mod_revision)
                }
                _ => None,
            })
            .collect();
        assert!(
            !expects.is_empty() && expects.iter().all(|&e| e == 500),
            "{expects:?}"
        );
    }

    #[test]
    fn a_client_pause_goes_to_the_first_add_and_not_to_the_next() {
        let generator =
            Generator::new(Workload::LockEtcdSet, 2, 1, 1).client_pauses(Duration::from_secs(60));
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        let pauses: Vec<u64> = (0..3)
            .map(|_| match generator.next_call(1, &mut rng) {
                Call::LockAdd {
                    pause_ms, fenced, ..
                } => {
                    assert!(fenced);
                    pause_ms
                }
                other => panic!("thread 1 adds, got {other:?}"),
            })
            .collect();
        assert_eq!(pauses, [lock::CLIENT_PAUSE_MS, 0, 0]);
        assert_eq!(generator.next_call(0, &mut rng), Call::LockRead);
        let unpaused = Generator::new(Workload::LockSet, 2, 1, 1);
        assert!(matches!(
            unpaused.next_call(1, &mut rng),
            Call::LockAdd {
                pause_ms: 0,
                fenced: false,
                ..
            }
        ));
    }
}
