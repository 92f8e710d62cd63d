//! Catching unsynced watchers up from storage: one step reads at most [`CATCH_UP_REVISIONS`]
//! revisions (fewer once [`STEP_BYTES_MAX`] of events are gathered), never splitting a revision, and
//! finds the watchers whose history is compacted.

use std::sync::Arc;

use cairn_proto::mvccpb::Event;
use prost::Message;

use super::matcher::Matcher;
use super::{event_for, WatchSpec, CATCH_UP_REVISIONS};
use crate::mvcc::{self, EventKind, EventSink, Store};

/// Bytes of events one step gathers before it stops at the next revision boundary.
const STEP_BYTES_MAX: usize = 4 << 20;

/// What a stream's unsynced watchers need, as of one moment of the hub.
#[derive(Debug)]
pub struct Plan {
    pub(super) epoch: u64,
    /// The last published revision: history is read no further.
    target: i64,
    /// (watch id, spec, next revision).
    watchers: Vec<(i64, Arc<WatchSpec>, i64)>,
}

/// The outcome of one step.
#[derive(Debug, Default)]
pub struct Step {
    /// The last revision the step covered for every watcher in `advanced`.
    pub revision: i64,
    /// (watch id, events in revision order); watchers with no events are absent.
    pub events: Vec<(i64, Vec<Event>)>,
    /// (watch id, new next revision).
    pub advanced: Vec<(i64, i64)>,
    /// Watchers whose next revision is compacted, and the compacted revision.
    pub compacted: Vec<i64>,
    pub compact_revision: i64,
}

impl Plan {
    pub(super) fn new(epoch: u64, target: i64, watchers: Vec<(i64, Arc<WatchSpec>, i64)>) -> Plan {
        Plan {
            epoch,
            target,
            watchers,
        }
    }

    /// Reads the next window of history for the plan's watchers (blocking I/O).
    pub fn run(&self, store: &Store) -> mvcc::Result<Step> {
        loop {
            let compact_revision = store.compact_revision()?;
            let (live, dead): (Vec<_>, Vec<_>) = self
                .watchers
                .iter()
                .partition(|(_, _, next)| *next >= compact_revision);
            let mut step = Step {
                revision: self.target,
                compacted: dead.iter().map(|(id, _, _)| *id).collect(),
                compact_revision,
                ..Step::default()
            };
            let Some(from) = live.iter().map(|(_, _, next)| *next).min() else {
                return Ok(step);
            };
            if from > self.target {
                step.advanced = live.iter().map(|(id, _, next)| (*id, *next)).collect();
                return Ok(step);
            }
            let to = self.target.min(from + CATCH_UP_REVISIONS - 1);
            let mut sink = Sink::new(&live);
            let end = match store.events(from, to, &mut sink) {
                Ok(end) => end,
                // Compacted between the check and the read: look again.
                Err(mvcc::Error::Compacted) => continue,
                Err(e) => return Err(e),
            };
            step.revision = end;
            step.advanced = live
                .iter()
                .filter(|(_, _, next)| *next <= end)
                .map(|(id, _, _)| (*id, end + 1))
                .collect();
            step.events = sink
                .events
                .into_iter()
                .enumerate()
                .filter(|(_, events)| !events.is_empty())
                .map(|(i, events)| (live[i].0, events))
                .collect();
            return Ok(step);
        }
    }
}

/// Distributes replayed events to the watchers they concern.
struct Sink<'a> {
    watchers: &'a [&'a (i64, Arc<WatchSpec>, i64)],
    matcher: Matcher<usize>,
    /// Indexes of the watchers that want the event being read.
    pending: Vec<usize>,
    events: Vec<Vec<Event>>,
    bytes: usize,
}

impl<'a> Sink<'a> {
    fn new(watchers: &'a [&'a (i64, Arc<WatchSpec>, i64)]) -> Sink<'a> {
        let mut matcher = Matcher::default();
        for (i, (_, spec, _)) in watchers.iter().enumerate() {
            matcher.insert(&spec.bounds, i);
        }
        Sink {
            watchers,
            matcher,
            pending: vec![],
            events: vec![vec![]; watchers.len()],
            bytes: 0,
        }
    }
}

impl EventSink for Sink<'_> {
    fn wants(&mut self, revision: i64, kind: EventKind, key: &[u8]) -> Option<bool> {
        self.pending.clear();
        let kind = match kind {
            EventKind::Put => cairn_proto::mvccpb::event::EventType::Put,
            EventKind::Delete => cairn_proto::mvccpb::event::EventType::Delete,
        };
        let watchers = self.watchers;
        let pending = &mut self.pending;
        self.matcher.matches(key, &mut |i| {
            let (_, spec, next) = watchers[i];
            if *next <= revision && spec.wants(kind) {
                pending.push(i);
            }
        });
        if self.pending.is_empty() {
            return None;
        }
        Some(self.pending.iter().any(|&i| self.watchers[i].1.prev_kv))
    }

    fn event(&mut self, event: Event) {
        for &i in &self.pending {
            let e = event_for(&event, self.watchers[i].1.prev_kv);
            self.bytes += e.encoded_len();
            self.events[i].push(e);
        }
    }

    fn full(&self) -> bool {
        self.bytes >= STEP_BYTES_MAX
    }
}
