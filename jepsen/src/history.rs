//! The history of a run: every client operation's invocation and completion, and the nemesis's
//! own events, in the order the harness observed them, with monotonic times.
//!
//! Owns the event model (Jepsen's `invoke`/`ok`/`fail`/`info`), the [`Recorder`] that stamps
//! events, the JSONL dump and load, and pairing invocations with completions into [`Op`]s for
//! the checkers. It never talks to a store.
//!
//! Semantics (consistency-testing.md §6.2): `fail` means the operation definitely did not take
//! effect; `info` means it may or may not have (a timeout, a reset after sending). A process
//! that receives `info` is retired and never invokes again, so every process stays sequential.

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// A logical client process. Sequential: at most one operation in flight.
pub type ProcessId = u64;

/// A register value or set element; unique across the run for writes and adds.
pub type Value = u64;

/// What a client asked the store to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum Call {
    /// Linearizable (or serializable, per the run's options) get of one register key.
    Read { key: String },
    /// Put of a unique value, asking for the previous key-value.
    Write { key: String, value: Value },
    /// Txn: if the key's value is `expect` then put `value`.
    Cas {
        key: String,
        expect: Value,
        value: Value,
    },
    /// Add one unique element to the set (a put of its own key under the set's prefix).
    Add { element: Value },
    /// Read the whole set (a range over the set's prefix).
    ReadSet,
    /// An Elle list-append transaction: micro-operations on lists, applied atomically.
    Txn { mops: Vec<Mop> },
    /// watch: a put of a unique value (a `PutRequest` with `prev_kv`).
    Put { key: String, value: Value },
    /// watch: puts of unique values to distinct keys in one unconditional txn (one revision).
    PutTxn { puts: Vec<(String, Value)> },
    /// watch: a `DeleteRange` with `prev_kv` of `key`, or of `[key, range_end)`.
    Delete {
        key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        range_end: Option<String>,
    },
    /// watch: compact the store's history up to `revision`.
    Compact { revision: i64 },
    /// watch: read every watched key (a range over the workload's prefix).
    ReadPrefix,
    /// lock-set / lock-etcd-set: take the lock, read the set (one key holding a list), add
    /// `element`, write the list back, release the lock. `fenced`: the write is a txn guarded
    /// by the lock key's `create_revision`. `pause_ms` > 0: the client process stalls this long
    /// between its read and its write, with its lease keep-alives stopped (a GC pause).
    LockAdd {
        element: Value,
        fenced: bool,
        #[serde(default)]
        pause_ms: u64,
    },
    /// lock-set / lock-etcd-set: read the set's key (no lock).
    LockRead,
    /// kv-robust: a range over `[key, range_end)` (only `key` without an end) at `revision`
    /// (0: linearizable, at the current revision; else a read of the past).
    KvRange {
        key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        range_end: Option<String>,
        revision: i64,
    },
    /// kv-robust: txn(if `mod_revision(key) == expect_mod_revision` (0: absent) then put
    /// `key = value` and delete `delete` (with `prev_kv`) else get `key`).
    KvCas {
        key: String,
        expect_mod_revision: i64,
        value: Value,
        delete: String,
    },
}

/// A micro-operation of a list-append transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "m", rename_all = "snake_case")]
pub enum Mop {
    /// Append a unique value to the key's list.
    Append { key: String, value: Value },
    /// Read the key's whole list.
    Read { key: String },
}

impl Mop {
    pub fn key(&self) -> &str {
        match self {
            Mop::Append { key, .. } | Mop::Read { key } => key,
        }
    }
}

impl Call {
    /// The register key this call touches, if any (the linearizability checker's partition).
    pub fn key(&self) -> Option<&str> {
        match self {
            Call::Read { key } | Call::Write { key, .. } | Call::Cas { key, .. } => Some(key),
            Call::Add { .. }
            | Call::ReadSet
            | Call::Txn { .. }
            | Call::Put { .. }
            | Call::PutTxn { .. }
            | Call::Delete { .. }
            | Call::Compact { .. }
            | Call::ReadPrefix
            | Call::LockAdd { .. }
            | Call::LockRead
            | Call::KvRange { .. }
            | Call::KvCas { .. } => None,
        }
    }
}

/// A register's observed state: its value and etcd's per-key `version` (1 on creation, +1 on
/// every put), which makes the register a Jepsen-style versioned register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Versioned {
    pub value: Value,
    pub version: u64,
}

/// What the store answered to a call that completed `ok`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum Reply {
    /// `None`: the key does not exist. `mod_revision` is the key's (0 when absent).
    Read {
        found: Option<Versioned>,
        #[serde(default)]
        mod_revision: i64,
    },
    /// `prev_version` is 0 when the key did not exist before the put.
    Write {
        prev_version: u64,
    },
    /// `prev_version` is the version the put replaced; meaningful only when `succeeded`.
    Cas {
        succeeded: bool,
        prev_version: u64,
    },
    Add,
    ReadSet {
        elements: Vec<Value>,
    },
    /// One entry per micro-operation: the list read, or `None` for an append.
    Txn {
        reads: Vec<Option<Vec<Value>>>,
    },
    /// A put's previous key-value (`None`: the key was absent).
    Put {
        prev: Option<Kv>,
    },
    PutTxn,
    /// The key-values a delete removed, in key order (empty: it deleted nothing and made no
    /// revision).
    Delete {
        deleted: Vec<Kv>,
    },
    Compact,
    /// Every watched key-value, in key order.
    ReadPrefix {
        kvs: Vec<Kv>,
    },
    /// kv-robust: the key-values a range returned, in key order.
    Kvs {
        kvs: Vec<Kv>,
    },
    /// kv-robust: whether the guard held; the key-values the delete removed (when it held); the
    /// key's key-value (when it did not).
    KvCas {
        succeeded: bool,
        deleted: Vec<Kv>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        current: Option<Kv>,
    },
}

/// A key-value as etcd reports it (`mvccpb.KeyValue` without the lease). `value` is `None` when
/// empty (a delete event's key-value), else the decimal value (`u64::MAX` if unparseable).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Kv {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
}

/// `mvccpb.Event.EventType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Put,
    Delete,
}

/// One `mvccpb.Event` as a watcher received it. Its revision is `kv.mod_revision`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchedEvent {
    #[serde(rename = "type")]
    pub kind: EventType,
    pub kv: Kv,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_kv: Option<Kv>,
}

impl WatchedEvent {
    pub fn revision(&self) -> i64 {
        self.kv.mod_revision
    }
}

/// What a watcher saw (actor [`Actor::Watcher`]). A watcher's records form *sessions*: each
/// `Open` starts one (a new stream to the event's node, with one create request), which lasts
/// until it breaks, is canceled, or the watcher stops.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "w", rename_all = "snake_case")]
pub enum WatchRecord {
    /// A stream was opened and a create request sent: a prefix watch with `prev_kv` from
    /// `start_revision` (0: from now), with `require_leader` as clientv3's `WithRequireLeader`.
    Open {
        start_revision: i64,
        require_leader: bool,
    },
    /// The `created` response; `revision` is its header's.
    Created { revision: i64 },
    /// A response carrying events; `revision` is its header's.
    Events {
        revision: i64,
        events: Vec<WatchedEvent>,
    },
    /// A response with neither events nor a state change (a progress notification).
    Progress { revision: i64 },
    /// The watch was canceled by the server; `compact_revision` > 0 when its start was compacted.
    Canceled {
        compact_revision: i64,
        reason: String,
    },
    /// The watcher asked to cancel its watch (a voluntary restart); a `canceled` response should
    /// follow, possibly after more events.
    Cancel,
    /// The stream failed, ended, or stayed idle too long: the session is over.
    Broken { error: String },
    /// The watcher stopped on its own (a voluntary restart, or the end of the run).
    Stop,
}

/// Who produced an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    Client(ProcessId),
    Nemesis,
    /// A watcher of the watch workload: one ordered log of events, possibly across several
    /// streams (sessions) and members.
    Watcher(u64),
}

/// The body of an event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    Invoke {
        call: Call,
    },
    Ok {
        reply: Reply,
        /// The response header's revision.
        revision: i64,
    },
    Fail {
        error: String,
    },
    Info {
        error: String,
    },
    /// A fault started or stopped (actor is the nemesis).
    Nemesis {
        action: String,
    },
    /// Something a watcher received or did (actor is the watcher).
    Watch {
        record: WatchRecord,
    },
}

/// One line of `history.jsonl`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the history; strictly increasing.
    pub index: u64,
    /// Nanoseconds since the run started, from a monotonic clock; non-decreasing with `index`.
    pub time_ns: u64,
    pub actor: Actor,
    /// The member the client talks to (index into the cluster), if any.
    pub node: Option<usize>,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Stamps events with an index and a monotonic time, in one total order.
///
/// Cloning shares the history. The lock is held only to push one event, never across `.await`.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            start: Instant::now(),
            events: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Appends an event. The time is taken under the lock, so times follow indexes.
    pub fn record(&self, actor: Actor, node: Option<usize>, kind: EventKind) {
        let mut events = self.events.lock().expect("recorder lock is never poisoned");
        let time_ns = u64::try_from(self.start.elapsed().as_nanos()).expect("runs last < 584 y");
        let index = events.len() as u64;
        events.push(Event {
            index,
            time_ns,
            actor,
            node,
            kind,
        });
    }

    /// A copy of the history so far.
    pub fn snapshot(&self) -> Vec<Event> {
        self.events
            .lock()
            .expect("recorder lock is never poisoned")
            .clone()
    }
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder::new()
    }
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok {
        reply: Reply,
        revision: i64,
    },
    Fail,
    /// Indeterminate, or never completed before the history ended.
    Info,
}

/// An invocation paired with its completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub process: ProcessId,
    pub call: Call,
    pub outcome: Outcome,
    pub invoke_ns: u64,
    /// `None` for `info`: the operation may take effect at any time after its invocation.
    pub complete_ns: Option<u64>,
}

/// Errors in a history's shape: these are harness bugs or a corrupt file, never store anomalies.
#[derive(Debug, PartialEq, Eq)]
pub enum ShapeError {
    /// A process invoked while its previous operation was still in flight.
    ConcurrentInvoke { process: ProcessId, index: u64 },
    /// A completion without an invocation.
    OrphanCompletion { process: ProcessId, index: u64 },
    /// A process invoked again after an `info`.
    InvokeAfterInfo { process: ProcessId, index: u64 },
    /// Times go backwards.
    TimeBackwards { index: u64 },
}

impl std::fmt::Display for ShapeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed history: {self:?}")
    }
}

impl std::error::Error for ShapeError {}

/// Pairs every client invocation with the next completion of the same process. An invocation
/// with no completion becomes `info`. Nemesis events are skipped.
pub fn pair(events: &[Event]) -> Result<Vec<Op>, ShapeError> {
    use std::collections::{HashMap, HashSet};
    let mut open: HashMap<ProcessId, usize> = HashMap::new();
    let mut retired: HashSet<ProcessId> = HashSet::new();
    let mut ops: Vec<Op> = Vec::new();
    let mut last_ns = 0;
    for event in events {
        if event.time_ns < last_ns {
            return Err(ShapeError::TimeBackwards { index: event.index });
        }
        last_ns = event.time_ns;
        let Actor::Client(process) = event.actor else {
            continue;
        };
        let index = event.index;
        match &event.kind {
            EventKind::Invoke { call } => {
                if retired.contains(&process) {
                    return Err(ShapeError::InvokeAfterInfo { process, index });
                }
                if open.contains_key(&process) {
                    return Err(ShapeError::ConcurrentInvoke { process, index });
                }
                open.insert(process, ops.len());
                ops.push(Op {
                    process,
                    call: call.clone(),
                    outcome: Outcome::Info,
                    invoke_ns: event.time_ns,
                    complete_ns: None,
                });
            }
            EventKind::Ok { .. } | EventKind::Fail { .. } | EventKind::Info { .. } => {
                let at = open
                    .remove(&process)
                    .ok_or(ShapeError::OrphanCompletion { process, index })?;
                let op = &mut ops[at];
                match &event.kind {
                    EventKind::Ok { reply, revision } => {
                        op.outcome = Outcome::Ok {
                            reply: reply.clone(),
                            revision: *revision,
                        };
                        op.complete_ns = Some(event.time_ns);
                    }
                    EventKind::Fail { .. } => {
                        op.outcome = Outcome::Fail;
                        op.complete_ns = Some(event.time_ns);
                    }
                    _ => {
                        retired.insert(process);
                    }
                }
            }
            EventKind::Nemesis { .. } | EventKind::Watch { .. } => {}
        }
    }
    Ok(ops)
}

/// Writes one JSON object per line.
pub fn write_jsonl(path: &Path, events: &[Event]) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for event in events {
        serde_json::to_writer(&mut out, event)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Reads a file written by [`write_jsonl`].
pub fn read_jsonl(path: &Path) -> anyhow::Result<Vec<Event>> {
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut events = Vec::new();
    for (n, line) in file.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let event: Event = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), n + 1))?;
        events.push(event);
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(index: u64, process: ProcessId, kind: EventKind) -> Event {
        Event {
            index,
            time_ns: index * 10,
            actor: Actor::Client(process),
            node: Some(0),
            kind,
        }
    }

    fn read(key: &str) -> EventKind {
        EventKind::Invoke {
            call: Call::Read { key: key.into() },
        }
    }

    #[test]
    fn pairs_completions_and_leaves_unfinished_as_info() {
        let events = vec![
            ev(0, 1, read("k")),
            ev(1, 2, read("k")),
            ev(
                2,
                1,
                EventKind::Ok {
                    reply: Reply::Read {
                        found: None,
                        mod_revision: 0,
                    },
                    revision: 1,
                },
            ),
            ev(
                3,
                1,
                EventKind::Invoke {
                    call: Call::Write {
                        key: "k".into(),
                        value: 7,
                    },
                },
            ),
            ev(4, 1, EventKind::Fail { error: "x".into() }),
        ];
        let ops = pair(&events).unwrap();
        assert_eq!(ops.len(), 3);
        assert_eq!(ops[0].process, 1);
        assert_eq!(ops[0].complete_ns, Some(20));
        assert_eq!(ops[1].process, 2);
        assert_eq!(ops[1].outcome, Outcome::Info);
        assert_eq!(ops[1].complete_ns, None);
        assert_eq!(ops[2].outcome, Outcome::Fail);
    }

    #[test]
    fn rejects_malformed_histories() {
        let concurrent = vec![ev(0, 1, read("k")), ev(1, 1, read("k"))];
        assert_eq!(
            pair(&concurrent),
            Err(ShapeError::ConcurrentInvoke {
                process: 1,
                index: 1
            })
        );
        let after_info = vec![
            ev(0, 1, read("k")),
            ev(
                1,
                1,
                EventKind::Info {
                    error: "timeout".into(),
                },
            ),
            ev(2, 1, read("k")),
        ];
        assert_eq!(
            pair(&after_info),
            Err(ShapeError::InvokeAfterInfo {
                process: 1,
                index: 2
            })
        );
        let orphan = vec![ev(0, 3, EventKind::Fail { error: "x".into() })];
        assert_eq!(
            pair(&orphan),
            Err(ShapeError::OrphanCompletion {
                process: 3,
                index: 0
            })
        );
    }

    #[test]
    fn jsonl_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let recorder = Recorder::new();
        recorder.record(
            Actor::Client(4),
            Some(2),
            EventKind::Invoke {
                call: Call::Cas {
                    key: "r0".into(),
                    expect: 1,
                    value: 2,
                },
            },
        );
        recorder.record(
            Actor::Nemesis,
            None,
            EventKind::Nemesis {
                action: "kill n1".into(),
            },
        );
        recorder.record(
            Actor::Client(4),
            Some(2),
            EventKind::Ok {
                reply: Reply::Cas {
                    succeeded: true,
                    prev_version: 3,
                },
                revision: 9,
            },
        );
        let kv = |value| Kv {
            key: "jepsen/w/1".into(),
            value,
            create_revision: 3,
            mod_revision: 7,
            version: 2,
        };
        recorder.record(
            Actor::Watcher(5),
            Some(1),
            EventKind::Watch {
                record: WatchRecord::Events {
                    revision: 8,
                    events: vec![
                        WatchedEvent {
                            kind: EventType::Put,
                            kv: kv(Some(12)),
                            prev_kv: Some(kv(Some(11))),
                        },
                        WatchedEvent {
                            kind: EventType::Delete,
                            kv: kv(None),
                            prev_kv: None,
                        },
                    ],
                },
            },
        );
        let events = recorder.snapshot();
        write_jsonl(&path, &events).unwrap();
        assert_eq!(read_jsonl(&path).unwrap(), events);
    }
}
