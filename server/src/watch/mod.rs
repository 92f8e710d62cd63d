//! The watch hub: where apply publishes each revision's events once, and where watch streams find
//! the events of their watchers.
//!
//! A watcher is either **synced** (in the [`Matcher`] index; apply's events reach it directly) or
//! **unsynced** (it still has history to read: it started in the past, its stream was too slow, or a
//! snapshot replaced the store under it). Each stream has one bounded queue of deliveries. Apply never
//! waits for a stream: when a stream's queue is full, the stream is demoted (all its synced watchers
//! become unsynced at the revision that did not fit) and later catches up from storage, at its own
//! pace, in windows of at most [`CATCH_UP_REVISIONS`] revisions ([`catch_up`]).
//!
//! **Invariant (gap- and duplicate-free):** every watcher has a next revision `next`; it has been given
//! every event below `next` and none at or above it. A synced watcher gets, from `publish`, exactly
//! the events at or above `next`; an unsynced watcher gets none from `publish` and is synced only
//! when `next` is past the last published revision, under the same lock as `publish`.
//! **Invariant (atomic revisions):** one delivery holds all of a revision's events for a watcher.
//! **Invariant:** apply publishes a revision only after writing it, so storage always has every
//! published revision; catch-up reads no further than the last published revision.

pub mod catch_up;
mod matcher;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use cairn_proto::mvccpb::event::EventType;
use cairn_proto::mvccpb::Event;
use prost::Message;
use tokio::sync::Notify;

use matcher::Matcher;
pub use matcher::{Bounds, End};

use crate::failpoints;

/// The most revisions one catch-up step reads (etcd: `maxWatchersPerSync`-style batches of 1000).
pub const CATCH_UP_REVISIONS: i64 = 1000;
/// A stream's queue never holds more than this many deliveries, unless it holds only one.
const QUEUE_DELIVERIES_MAX: usize = 1024;
/// A stream's queue never holds more than this many bytes of events, unless it holds only one
/// delivery.
const QUEUE_BYTES_MAX: usize = 8 << 20;

/// What a watcher asked for, fixed at creation.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    pub bounds: Bounds,
    pub no_put: bool,
    pub no_delete: bool,
    pub prev_kv: bool,
}

impl WatchSpec {
    fn wants(&self, kind: EventType) -> bool {
        match kind {
            EventType::Put => !self.no_put,
            EventType::Delete => !self.no_delete,
        }
    }
}

/// Events of one or more consecutive revisions for some watchers of one stream.
#[derive(Debug, Default)]
pub struct Delivery {
    /// The last revision this delivery covers.
    pub revision: i64,
    /// (watch id, its events in revision order).
    pub events: Vec<(i64, Vec<Event>)>,
}

/// A stream's next piece of work, taken from the hub in one step.
#[derive(Debug)]
pub enum Work {
    /// Events queued by apply, oldest first; if every watcher of the stream is synced, the revision up
    /// to which they will all have been given every event once these are delivered.
    Deliver {
        deliveries: Vec<Delivery>,
        synced_through: Option<i64>,
    },
    /// Some watchers must read history first.
    CatchUp(catch_up::Plan),
    /// Some watchers are behind but history cannot be read yet (a snapshot is being installed).
    Wait,
    /// Nothing to do: every watcher has been given every event up to `revision`.
    Idle { revision: i64 },
    /// The server is stopping: the stream ends.
    Closed,
}

#[derive(Debug)]
struct Watcher {
    spec: Arc<WatchSpec>,
    next: i64,
    synced: bool,
}

struct Stream {
    watchers: HashMap<i64, Watcher>,
    /// How many of `watchers` are unsynced.
    unsynced: usize,
    queue: VecDeque<Delivery>,
    queued_bytes: usize,
    wake: Arc<Notify>,
}

/// A watcher, as the index knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct WatcherRef {
    stream: u64,
    id: i64,
}

struct State {
    /// The last revision apply published.
    published: i64,
    /// Bumped when a snapshot install starts: reads of storage that began before it are void.
    epoch: u64,
    installing: bool,
    /// Set when the server stops.
    closed: bool,
    next_stream: u64,
    streams: HashMap<u64, Stream>,
    synced: Matcher<WatcherRef>,
}

/// The hub's size, as [`Hub::counts`] reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchCounts {
    pub streams: usize,
    pub watchers: usize,
    /// Watchers that still have history to read.
    pub unsynced: usize,
}

/// Shared by apply (publisher) and every watch stream.
pub struct Hub {
    state: Mutex<State>,
    /// A stream's queue never holds more deliveries than this, unless it holds only one.
    queue_deliveries_max: usize,
}

impl Hub {
    /// A hub whose store is at `revision`.
    pub fn new(revision: i64) -> Hub {
        Hub::with_queue_limit(revision, QUEUE_DELIVERIES_MAX)
    }

    /// A hub whose streams queue at most `deliveries` deliveries.
    pub fn with_queue_limit(revision: i64, deliveries: usize) -> Hub {
        Hub {
            queue_deliveries_max: deliveries,
            state: Mutex::new(State {
                published: revision,
                epoch: 0,
                installing: false,
                closed: false,
                next_stream: 0,
                streams: HashMap::new(),
                synced: Matcher::default(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("watch hub lock poisoned")
    }

    /// The last published revision.
    pub fn revision(&self) -> i64 {
        self.lock().published
    }

    /// How many streams and watchers there are (for metrics).
    pub fn counts(&self) -> WatchCounts {
        let st = self.lock();
        let mut counts = WatchCounts {
            streams: st.streams.len(),
            ..WatchCounts::default()
        };
        for s in st.streams.values() {
            counts.watchers += s.watchers.len();
            counts.unsynced += s.unsynced;
        }
        counts
    }

    /// Registers a stream; returns its id and the notifier that wakes it when work arrives.
    pub fn open_stream(&self) -> (u64, Arc<Notify>) {
        let mut st = self.lock();
        let id = st.next_stream;
        st.next_stream += 1;
        let wake = Arc::new(Notify::new());
        st.streams.insert(
            id,
            Stream {
                watchers: HashMap::new(),
                unsynced: 0,
                queue: VecDeque::new(),
                queued_bytes: 0,
                wake: wake.clone(),
            },
        );
        (id, wake)
    }

    /// Removes a stream and all its watchers.
    pub fn close_stream(&self, stream: u64) {
        let mut guard = self.lock();
        let st = &mut *guard;
        if let Some(s) = st.streams.remove(&stream) {
            for (id, w) in s.watchers {
                if w.synced {
                    st.synced.remove(&w.spec.bounds, WatcherRef { stream, id });
                }
            }
        }
    }

    /// Adds watcher `id` to `stream`, delivering events from `start` (0 = after the current
    /// revision). Returns the current revision, for the `created` response.
    pub fn add(&self, stream: u64, id: i64, spec: WatchSpec, start: i64) -> i64 {
        let mut guard = self.lock();
        let st = &mut *guard;
        let published = st.published;
        let next = if start == 0 { published + 1 } else { start };
        let synced = next > published && !st.installing;
        let spec = Arc::new(spec);
        if synced {
            st.synced.insert(&spec.bounds, WatcherRef { stream, id });
        }
        let s = st.streams.get_mut(&stream).expect("stream is open");
        s.watchers.insert(id, Watcher { spec, next, synced });
        if !synced {
            s.unsynced += 1;
            s.wake.notify_one();
        }
        published
    }

    /// Removes watcher `id` of `stream`; false if there is none.
    pub fn remove(&self, stream: u64, id: i64) -> bool {
        let mut guard = self.lock();
        let st = &mut *guard;
        let Some(s) = st.streams.get_mut(&stream) else {
            return false;
        };
        let Some(w) = s.watchers.remove(&id) else {
            return false;
        };
        if w.synced {
            st.synced.remove(&w.spec.bounds, WatcherRef { stream, id });
        } else {
            s.unsynced -= 1;
        }
        true
    }

    /// Delivers the events of `revision` (one committed request) to the synced watchers they
    /// concern. Called by apply, in revision order, after the revision is written.
    pub fn publish(&self, revision: i64, events: &[Event]) {
        let mut guard = self.lock();
        let st = &mut *guard;
        assert!(
            revision > st.published
                || failpoints::active(failpoints::Bug::ReuseRevision) && revision == st.published,
            "revisions are published in order ({revision} after {})",
            st.published
        );
        st.published = revision;
        if st.synced.len() == 0 {
            return;
        }
        let mut matched: Vec<(WatcherRef, usize)> = vec![];
        for (i, event) in events.iter().enumerate() {
            let key = event.kv.as_ref().map_or(&[][..], |kv| &kv.key);
            st.synced.matches(key, &mut |w| matched.push((w, i)));
        }
        // Group by stream, then watcher, keeping each watcher's events in sub-revision order.
        matched.sort_by_key(|(w, _)| (w.stream, w.id));
        let mut demoted = vec![];
        for group in matched.chunk_by(|a, b| a.0.stream == b.0.stream) {
            let stream = group[0].0.stream;
            let s = st
                .streams
                .get_mut(&stream)
                .expect("synced watchers have a stream");
            let mut delivery = Delivery {
                revision,
                events: vec![],
            };
            let mut bytes = 0;
            for watcher in group.chunk_by(|a, b| a.0.id == b.0.id) {
                let id = watcher[0].0.id;
                let w = &s.watchers[&id];
                if revision < w.next {
                    continue;
                }
                let mine: Vec<Event> = watcher
                    .iter()
                    .map(|&(_, i)| &events[i])
                    .filter(|e| w.spec.wants(e.r#type()))
                    .map(|e| event_for(e, w.spec.prev_kv))
                    .collect();
                if !mine.is_empty() {
                    bytes += mine.iter().map(|e| e.encoded_len()).sum::<usize>();
                    delivery.events.push((id, mine));
                }
            }
            if delivery.events.is_empty() {
                continue;
            }
            let full = !s.queue.is_empty()
                && (s.queue.len() >= self.queue_deliveries_max
                    || s.queued_bytes + bytes > QUEUE_BYTES_MAX);
            if full {
                demoted.push(stream);
            } else {
                s.queue.push_back(delivery);
                s.queued_bytes += bytes;
                s.wake.notify_one();
            }
        }
        for stream in demoted {
            tracing::debug!(
                stream,
                revision,
                "watch stream queue full: catching up from storage"
            );
            st.demote(stream, revision);
        }
    }

    /// A snapshot is about to replace the store: every watcher becomes unsynced, and no history is
    /// read until [`Hub::finish_install`].
    pub fn begin_install(&self) {
        let mut st = self.lock();
        st.epoch += 1;
        st.installing = true;
        let next = st.published + 1;
        let streams: Vec<u64> = st.streams.keys().copied().collect();
        for stream in streams {
            st.demote(stream, next);
        }
    }

    /// The store now holds a snapshot at `revision`; watchers catch up from its history.
    pub fn finish_install(&self, revision: i64) {
        let mut st = self.lock();
        st.installing = false;
        st.published = st.published.max(revision);
        for s in st.streams.values() {
            s.wake.notify_one();
        }
    }

    /// The next work of `stream`: its queued deliveries if any, else a catch-up plan for its
    /// unsynced watchers, else idle. Taken in one step, so a catch-up never starts while older
    /// deliveries are still queued.
    pub fn take(&self, stream: u64) -> Work {
        let mut st = self.lock();
        if st.closed {
            return Work::Closed;
        }
        let (published, epoch, installing) = (st.published, st.epoch, st.installing);
        let s = st.streams.get_mut(&stream).expect("stream is open");
        if !s.queue.is_empty() {
            s.queued_bytes = 0;
            return Work::Deliver {
                deliveries: s.queue.drain(..).collect(),
                synced_through: (s.unsynced == 0).then_some(published),
            };
        }
        if s.unsynced == 0 {
            return Work::Idle {
                revision: published,
            };
        }
        if installing {
            return Work::Wait;
        }
        let unsynced = s
            .watchers
            .iter()
            .filter(|(_, w)| !w.synced)
            .map(|(&id, w)| (id, w.spec.clone(), w.next))
            .collect();
        Work::CatchUp(catch_up::Plan::new(epoch, published, unsynced))
    }

    /// The server is stopping: every stream ends at its next step.
    pub fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        for s in st.streams.values() {
            s.wake.notify_one();
        }
    }

    /// Whether history read under `plan` is still valid (no snapshot install began since).
    pub fn still_valid(&self, plan: &catch_up::Plan) -> bool {
        let st = self.lock();
        !st.installing && st.epoch == plan.epoch
    }

    /// Records what a catch-up step delivered: each watcher's new next revision, and the watchers
    /// that were canceled because their history is compacted. A watcher whose next revision is past
    /// the last published one becomes synced.
    pub fn caught_up(&self, stream: u64, advanced: &[(i64, i64)], compacted: &[i64]) {
        let mut guard = self.lock();
        let st = &mut *guard;
        let (published, installing) = (st.published, st.installing);
        let mut newly_synced = vec![];
        let Some(s) = st.streams.get_mut(&stream) else {
            return;
        };
        for id in compacted {
            if s.watchers.remove(id).is_some_and(|w| !w.synced) {
                s.unsynced -= 1;
            }
        }
        for &(id, next) in advanced {
            if let Some(w) = s.watchers.get_mut(&id) {
                if w.synced {
                    continue;
                }
                w.next = w.next.max(next);
                if w.next > published && !installing {
                    w.synced = true;
                    s.unsynced -= 1;
                    newly_synced.push((id, w.spec.clone()));
                }
            }
        }
        for (id, spec) in newly_synced {
            st.synced.insert(&spec.bounds, WatcherRef { stream, id });
        }
    }
}

impl State {
    /// Takes every synced watcher of `stream` out of the index; it resumes from storage at `next`.
    fn demote(&mut self, stream: u64, next: i64) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        for (&id, w) in s.watchers.iter_mut().filter(|(_, w)| w.synced) {
            w.synced = false;
            s.unsynced += 1;
            w.next = w.next.max(next);
            self.synced
                .remove(&w.spec.bounds, WatcherRef { stream, id });
        }
        s.wake.notify_one();
    }
}

/// `event` as a watcher sees it: without the previous key-value unless it asked for it.
pub fn event_for(event: &Event, prev_kv: bool) -> Event {
    Event {
        r#type: event.r#type,
        kv: event.kv.clone(),
        prev_kv: if prev_kv { event.prev_kv.clone() } else { None },
    }
}
