//! Integration tests of the Watch service: real `cairn` processes spoken to over gRPC, checking the
//! protocol as etcd's clients rely on it (created first, a header on every response, ids, cancel
//! reasons, compaction, progress, fragments) and the guarantees (ordered, gap-free, duplicate-free,
//! atomic revisions, resumable) under concurrent writers, slow readers and a member restart.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use cairn_client::proto::etcdserverpb::watch_client::WatchClient;
use cairn_client::proto::etcdserverpb::watch_create_request::FilterType;
use cairn_client::proto::etcdserverpb::watch_request::RequestUnion;
use cairn_client::proto::etcdserverpb::{
    request_op, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest, WatchCancelRequest,
    WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use cairn_client::proto::mvccpb::event::EventType;
use cairn_client::proto::mvccpb::Event;
use cairn_client::Client;
use common::{Cluster, Kind, Member};
use tokio::sync::mpsc;
use tonic::Streaming;

/// Longest wait for a response that must come.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stream must stay silent to show that nothing more comes.
const QUIET: Duration = Duration::from_millis(500);

/// One client-side watch stream.
struct Stream {
    requests: mpsc::Sender<WatchRequest>,
    responses: Streaming<WatchResponse>,
}

impl Stream {
    async fn open(endpoint: &str) -> Stream {
        Stream::open_with(endpoint, false).await
    }

    /// `requires_leader` sets the `hasleader` metadata, as clientv3's `WithRequireLeader` does.
    async fn open_with(endpoint: &str, requires_leader: bool) -> Stream {
        let mut client = WatchClient::connect(endpoint.to_string()).await.unwrap();
        let (requests, rx) = mpsc::channel(16);
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        if requires_leader {
            let value = "true".parse().unwrap();
            request.metadata_mut().insert("hasleader", value);
        }
        let responses = client.watch(request).await.unwrap().into_inner();
        Stream {
            requests,
            responses,
        }
    }

    async fn send(&self, request: RequestUnion) {
        let req = WatchRequest {
            request_union: Some(request),
        };
        self.requests.send(req).await.unwrap();
    }

    async fn create(&mut self, req: WatchCreateRequest) -> WatchResponse {
        self.send(RequestUnion::CreateRequest(req)).await;
        let resp = self.next().await;
        assert!(
            resp.created,
            "the first response to a create is `created`, got one for watch {} with {} events",
            resp.watch_id,
            resp.events.len()
        );
        resp
    }

    async fn next(&mut self) -> WatchResponse {
        let resp = tokio::time::timeout(RESPONSE_TIMEOUT, self.responses.message())
            .await
            .expect("a response within the timeout")
            .expect("the stream is healthy")
            .expect("the stream is open");
        assert!(
            resp.header.is_some(),
            "every response has a header: {resp:?}"
        );
        resp
    }

    async fn assert_quiet(&mut self) {
        if let Ok(r) = tokio::time::timeout(QUIET, self.responses.message()).await {
            panic!("expected no response, got {r:?}");
        }
    }

    /// Reads responses until `count` events of watcher `id` have arrived; checks that no response
    /// splits a revision (the next response never starts with the revision the last one ended with).
    async fn events(&mut self, id: i64, count: usize) -> Vec<Event> {
        let mut events: Vec<Event> = vec![];
        while events.len() < count {
            let resp = self.next().await;
            assert_eq!(resp.watch_id, id, "{resp:?}");
            assert!(!resp.events.is_empty(), "{resp:?}");
            if let (Some(last), Some(first)) = (events.last(), resp.events.first()) {
                assert!(
                    rev(first) > rev(last),
                    "revision split or reordered: {resp:?}"
                );
            }
            events.extend(resp.events);
        }
        assert_eq!(events.len(), count, "more events than expected");
        events
    }
}

fn rev(e: &Event) -> i64 {
    e.kv.as_ref().unwrap().mod_revision
}

fn create(key: &str, start: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: key.as_bytes().to_vec().into(),
        start_revision: start,
        ..WatchCreateRequest::default()
    }
}

fn prefix(p: &str, start: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        range_end: cairn_client::prefix_end(p.as_bytes()).into(),
        ..create(p, start)
    }
}

fn put_op(key: &str, value: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: value.to_vec().into(),
            ..PutRequest::default()
        })),
    }
}

fn summary(events: &[Event]) -> Vec<(i64, &'static str, String, String)> {
    events
        .iter()
        .map(|e| {
            let kv = e.kv.as_ref().unwrap();
            let kind = match e.r#type() {
                EventType::Put => "PUT",
                EventType::Delete => "DELETE",
            };
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            (kv.mod_revision, kind, text(&kv.key), text(&kv.value))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_protocol_follows_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let m = Member::start(
        Kind::Cairn,
        &dir.path().join("m1"),
        &["--watch-progress-notify-interval=1s"],
    );
    let mut c = Client::connect(m.endpoint()).await.unwrap();
    c.put("a", "1").await.unwrap(); // 2
    c.put("b", "1").await.unwrap(); // 3
    c.put("a", "2").await.unwrap(); // 4
    let txn = TxnRequest {
        success: vec![put_op("a/x", b"3"), put_op("a/y", b"3")],
        ..TxnRequest::default()
    };
    c.txn(txn).await.unwrap(); // 5
    c.delete(DeleteRangeRequest {
        key: "a/".into(),
        range_end: cairn_client::prefix_end(b"a/").into(),
        ..DeleteRangeRequest::default()
    })
    .await
    .unwrap(); // 6

    let mut s = Stream::open(&m.endpoint()).await;
    // Ids count from 0; `created` carries the current revision and comes before any event.
    let created = s.create(prefix("a", 1)).await;
    assert_eq!((created.watch_id, created.header.unwrap().revision), (0, 6));
    let replay = s.events(0, 6).await;
    assert_eq!(
        summary(&replay),
        vec![
            (2, "PUT", "a".into(), "1".into()),
            (4, "PUT", "a".into(), "2".into()),
            (5, "PUT", "a/x".into(), "3".into()),
            (5, "PUT", "a/y".into(), "3".into()),
            (6, "DELETE", "a/x".into(), "".into()),
            (6, "DELETE", "a/y".into(), "".into()),
        ]
    );
    // Without prev_kv, no previous values.
    assert!(replay.iter().all(|e| e.prev_kv.is_none()));

    // A client-chosen id; then the same id again, and an empty range, are refused as etcd does.
    let created = s
        .create(WatchCreateRequest {
            watch_id: 7,
            prev_kv: true,
            ..create("a", 0)
        })
        .await;
    assert_eq!(created.watch_id, 7);
    let dup = s
        .create(WatchCreateRequest {
            watch_id: 7,
            ..create("b", 0)
        })
        .await;
    assert_eq!(
        (dup.watch_id, dup.canceled, dup.cancel_reason.as_str()),
        (
            -1,
            true,
            "mvcc: duplicate watch ID provided on the WatchStream"
        )
    );
    let empty = s
        .create(WatchCreateRequest {
            range_end: "a".into(),
            ..create("b", 0)
        })
        .await;
    assert_eq!(
        (empty.watch_id, empty.canceled, empty.cancel_reason.as_str()),
        (-1, true, "mvcc: watcher range is empty")
    );
    // The next automatic id skips none and reuses none.
    let filtered = s
        .create(WatchCreateRequest {
            filters: vec![FilterType::Noput as i32],
            ..create("b", 0)
        })
        .await;
    assert_eq!(filtered.watch_id, 1);

    // Live events: prev_kv on watcher 7; the NOPUT watcher sees only the delete.
    c.put("a", "3").await.unwrap(); // 7
    c.put("b", "2").await.unwrap(); // 8
    c.delete(DeleteRangeRequest {
        key: "b".into(),
        ..DeleteRangeRequest::default()
    })
    .await
    .unwrap(); // 9
    let mut by_id: BTreeMap<i64, Vec<Event>> = BTreeMap::new();
    while by_id.values().map(Vec::len).sum::<usize>() < 3 {
        let resp = s.next().await;
        by_id.entry(resp.watch_id).or_default().extend(resp.events);
    }
    let a = &by_id[&0];
    assert_eq!(summary(a), vec![(7, "PUT", "a".into(), "3".into())]);
    let seven = &by_id[&7];
    assert_eq!(seven[0].prev_kv.as_ref().unwrap().value, "2".as_bytes());
    assert_eq!(
        summary(&by_id[&1]),
        vec![(9, "DELETE", "b".into(), "".into())]
    );

    // A progress request is answered once every watcher is synced, with watch id -1.
    s.send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
        .await;
    let progress = s.next().await;
    assert_eq!(
        (progress.watch_id, progress.header.unwrap().revision),
        (-1, 9)
    );

    // Cancel: acknowledged, then nothing more for that watcher.
    s.send(RequestUnion::CancelRequest(WatchCancelRequest {
        watch_id: 0,
    }))
    .await;
    let canceled = s.next().await;
    assert_eq!((canceled.watch_id, canceled.canceled), (0, true));
    // A cancel of an unknown id gets no answer.
    s.send(RequestUnion::CancelRequest(WatchCancelRequest {
        watch_id: 42,
    }))
    .await;
    c.put("c", "1").await.unwrap(); // 10, concerns no watcher
    s.assert_quiet().await;

    // Compaction: a watcher from below it is created, then canceled with the compacted revision
    // and a header without revision.
    c.compact(8, true).await.unwrap();
    let mut s2 = Stream::open(&m.endpoint()).await;
    let created = s2.create(create("a", 7)).await;
    assert_eq!(created.watch_id, 0);
    let compacted = s2.next().await;
    assert_eq!(
        (
            compacted.watch_id,
            compacted.canceled,
            compacted.compact_revision
        ),
        (0, true, 8)
    );
    assert_eq!(compacted.header.unwrap().revision, 0);
    // From the compacted revision itself, history is still there.
    let created = s2.create(create("b", 8)).await;
    assert_eq!(created.watch_id, 1);
    assert_eq!(
        summary(&s2.events(1, 2).await)[0],
        (8, "PUT", "b".into(), "2".into())
    );

    // Progress notifications: a watcher that asked for them, with no events, gets one per interval.
    let mut s3 = Stream::open(&m.endpoint()).await;
    s3.create(WatchCreateRequest {
        progress_notify: true,
        ..create("idle", 0)
    })
    .await;
    let notify = s3.next().await;
    assert_eq!((notify.watch_id, notify.events.len()), (0, 0));
    assert_eq!(notify.header.unwrap().revision, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_revisions_are_fragmented_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let m = Member::start(
        Kind::Cairn,
        &dir.path().join("m1"),
        &["--max-request-bytes=100000"],
    );
    let mut c = Client::connect(m.endpoint()).await.unwrap();
    let value = vec![b'x'; 45_000];
    c.put("f/1", value.clone()).await.unwrap();
    c.put("f/2", value.clone()).await.unwrap();
    let mut s = Stream::open(&m.endpoint()).await;
    for fragment in [true, false] {
        s.create(WatchCreateRequest {
            prev_kv: true,
            fragment,
            ..prefix("f/", 0)
        })
        .await;
    }
    // One revision, two events of ~90 kB each with their previous values: above the limit.
    let txn = TxnRequest {
        success: vec![put_op("f/1", &value), put_op("f/2", &value)],
        ..TxnRequest::default()
    };
    c.txn(txn).await.unwrap();
    let mut parts: BTreeMap<i64, Vec<(bool, usize)>> = BTreeMap::new();
    while parts
        .values()
        .map(|p| p.iter().map(|x| x.1).sum::<usize>())
        .sum::<usize>()
        < 4
    {
        let resp = s.next().await;
        parts
            .entry(resp.watch_id)
            .or_default()
            .push((resp.fragment, resp.events.len()));
    }
    assert_eq!(parts[&0], vec![(true, 1), (false, 1)], "fragmented watcher");
    assert_eq!(
        parts[&1],
        vec![(false, 2)],
        "a watcher without fragment gets it whole"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_catches_up_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let m = Member::start(Kind::Cairn, &dir.path().join("m1"), &[]);
    let mut s = Stream::open(&m.endpoint()).await;
    s.create(prefix("slow/", 0)).await;
    // Far more than the stream's queue and gRPC's buffers hold while the client reads nothing.
    const WRITERS: usize = 8;
    const PUTS: usize = 400;
    let value = vec![b'v'; 2048];
    let mut tasks = vec![];
    for w in 0..WRITERS {
        let endpoint = m.endpoint();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(endpoint).await.unwrap();
            for i in 0..PUTS {
                c.put(format!("slow/{w}/{i}"), value.clone()).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let events = s.events(0, WRITERS * PUTS).await;
    let revisions: Vec<i64> = events.iter().map(rev).collect();
    let expected: Vec<i64> = (2..2 + (WRITERS * PUTS) as i64).collect();
    assert_eq!(revisions, expected, "every revision once, in order");
    s.assert_quiet().await;
}

/// Writers on every member (puts, txns, multi-key deletes) while watchers on a follower stream the
/// keyspace; the follower restarts mid-way and its watchers resume from their last revision + 1.
/// Every watcher's log must be a gap-free slice of one canonical log, which must hold every
/// acknowledged write at its revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_watches_survive_a_restart_and_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(Kind::Cairn, 3, dir.path(), &[]);
    let endpoints = cluster.endpoints();
    let mut status = Client::connect(endpoints[0].clone()).await.unwrap();
    let leader = status.status().await.unwrap().leader;
    let mut follower = 0;
    for (i, e) in endpoints.iter().enumerate() {
        let mut c = Client::connect(e.clone()).await.unwrap();
        if c.status().await.unwrap().header.unwrap().member_id != leader {
            follower = i;
        }
    }

    let writers: Vec<_> = (0..3)
        .map(|w| {
            let endpoint = endpoints[w].clone();
            tokio::spawn(async move { write_mix(endpoint, w).await })
        })
        .collect();

    // Three watchers from different starting points, on the follower (ids 0, 1, 2). All creates go
    // at once: events of a watcher may arrive before the next one is created.
    let mut logs: Vec<Vec<Event>> = vec![vec![]; 3];
    let starts = [1i64, 0, 5];
    let mut stream = Stream::open(&endpoints[follower]).await;
    for &start in &starts {
        let create = WatchCreateRequest {
            prev_kv: true,
            ..prefix("mix/", start)
        };
        stream.send(RequestUnion::CreateRequest(create)).await;
    }
    let mut created = [false; 3];
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(Ok(Some(resp))) =
        tokio::time::timeout_at(deadline, stream.responses.message()).await
    {
        let id = resp.watch_id as usize;
        if resp.created {
            created[id] = true;
            // A watcher from "now" starts after the revision its `created` reports: mark it.
            if starts[id] == 0 {
                logs[id].push(Event {
                    kv: Some(cairn_client::proto::mvccpb::KeyValue {
                        mod_revision: resp.header.unwrap().revision,
                        ..Default::default()
                    }),
                    ..Event::default()
                });
            }
        }
        assert!(created[id], "watch {id}: events before `created`");
        logs[id].extend(resp.events);
    }
    assert_eq!(created, [true; 3]);

    // Restart the follower under load, then resume every watcher on it from its next revision.
    drop(stream);
    tokio::task::block_in_place(|| {
        cluster.members[follower].terminate();
        std::thread::sleep(Duration::from_millis(300));
        cluster.members[follower].restart();
    });
    // All three creates at once: events of a watcher may arrive before the next one is created.
    let mut stream = Stream::open(&endpoints[follower]).await;
    for (id, log) in logs.iter().enumerate() {
        let next = log.last().map_or(starts[id], |e| rev(e) + 1);
        let create = WatchCreateRequest {
            prev_kv: true,
            watch_id: id as i64 + 100,
            ..prefix("mix/", next)
        };
        stream.send(RequestUnion::CreateRequest(create)).await;
    }
    let mut acknowledged = vec![];
    for w in writers {
        acknowledged.extend(w.await.unwrap());
    }
    let mut c = Client::connect(endpoints[follower].clone()).await.unwrap();
    let final_rev = c.status().await.unwrap().header.unwrap().revision;
    let mut resumed: Vec<Vec<Event>> = vec![vec![]; 3];
    let mut created = [false; 3];
    while resumed
        .iter()
        .zip(&logs)
        .any(|(r, l)| r.last().or(l.last()).map_or(0, rev) < final_rev)
    {
        let resp = stream.next().await;
        let i = (resp.watch_id - 100) as usize;
        assert!(
            created[i] || resp.created,
            "watch {i}: events before `created`"
        );
        created[i] = true;
        resumed[i].extend(resp.events);
    }
    for (log, more) in logs.iter_mut().zip(resumed) {
        log.extend(more);
    }

    // The canonical log, read from history through another member.
    let other = (follower + 1) % 3;
    let mut s = Stream::open(&endpoints[other]).await;
    s.create(WatchCreateRequest {
        prev_kv: true,
        ..prefix("mix/", 1)
    })
    .await;
    let mut canonical = vec![];
    while canonical.last().map_or(0, rev) < final_rev {
        canonical.extend(s.next().await.events);
    }
    for (id, log) in logs.iter().enumerate() {
        // A watcher from "now" starts after the revision its `created` reported.
        let (from, log) = match starts[id] {
            0 => (rev(&log[0]) + 1, &log[1..]),
            s => (s, &log[..]),
        };
        let want: Vec<&Event> = canonical.iter().filter(|e| rev(e) >= from).collect();
        assert_eq!(log.len(), want.len(), "watcher {id}: gap or duplicate");
        for (got, want) in log.iter().zip(want) {
            assert_eq!(got, want, "watcher {id}");
        }
    }
    for (revision, key, value) in acknowledged {
        let found = canonical.iter().any(|e| {
            let kv = e.kv.as_ref().unwrap();
            kv.mod_revision == revision && kv.key == key.as_bytes() && kv.value == value.as_bytes()
        });
        assert!(
            found,
            "acknowledged put of {key} at {revision} is in the log"
        );
    }
}

/// A stream that requires a leader ends with etcd's `no leader` error once its member has had none
/// for a few election timeouts; one that does not require a leader stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_that_require_a_leader_end_when_it_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(Kind::Cairn, 3, dir.path(), &[]);
    let endpoint = cluster.members[0].endpoint();
    let mut strict = Stream::open_with(&endpoint, true).await;
    strict.create(create("k", 0)).await;
    let mut lenient = Stream::open(&endpoint).await;
    lenient.create(create("k", 0)).await;
    tokio::task::block_in_place(|| {
        cluster.members[1].kill9();
        cluster.members[2].kill9();
    });
    let ended = tokio::time::timeout(Duration::from_secs(20), strict.responses.message())
        .await
        .expect("the stream ends within a few election timeouts");
    let status = ended.expect_err("the stream ends with an error");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.message(), "etcdserver: no leader");
    lenient.assert_quiet().await;
    // A new stream that requires a leader is refused at once.
    let mut client = WatchClient::connect(endpoint).await.unwrap();
    let (_tx, rx) = mpsc::channel::<WatchRequest>(1);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("hasleader", "true".parse().unwrap());
    let refused = client.watch(request).await.expect_err("refused");
    assert_eq!(refused.message(), "etcdserver: no leader");
}

/// Watchers are created and canceled while writers keep their key busy: after a watcher's `canceled`
/// response no event of it arrives. Then a progress request sent while a new watcher still reads a
/// long history is answered only once that history is delivered (etcd ≥ 3.4.31).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_races_and_deferred_progress() {
    let dir = tempfile::tempdir().unwrap();
    let m = Member::start(Kind::Cairn, &dir.path().join("m1"), &[]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (endpoint, stop) = (m.endpoint(), stop.clone());
            tokio::spawn(async move {
                let mut c = Client::connect(endpoint).await.unwrap();
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || i < 400 {
                    i += 1;
                    c.put("race", format!("{w}-{i}")).await.unwrap();
                }
            })
        })
        .collect();
    let mut s = Stream::open(&m.endpoint()).await;
    let mut canceled = HashSet::new();
    let check = |resp: &WatchResponse, canceled: &HashSet<i64>| {
        assert!(
            resp.events.is_empty() || !canceled.contains(&resp.watch_id),
            "events for watcher {} after it was canceled",
            resp.watch_id
        );
    };
    for _ in 0..30 {
        s.send(RequestUnion::CreateRequest(create("race", 0))).await;
        let id = loop {
            let resp = s.next().await;
            check(&resp, &canceled);
            if resp.created {
                break resp.watch_id;
            }
        };
        s.send(RequestUnion::CancelRequest(WatchCancelRequest {
            watch_id: id,
        }))
        .await;
        loop {
            let resp = s.next().await;
            check(&resp, &canceled);
            if resp.canceled {
                assert_eq!(resp.watch_id, id);
                canceled.insert(id);
                break;
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    s.assert_quiet().await;

    let mut c = Client::connect(m.endpoint()).await.unwrap();
    let current = c.status().await.unwrap().header.unwrap().revision;
    assert!(
        current > 1600,
        "history spans more than one catch-up window"
    );
    let mut s = Stream::open(&m.endpoint()).await;
    s.send(RequestUnion::CreateRequest(create("race", 1))).await;
    s.send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
        .await;
    let mut last = 0;
    loop {
        let resp = s.next().await;
        if resp.watch_id == -1 {
            assert_eq!(resp.header.unwrap().revision, current);
            assert_eq!(last, current, "progress only after the whole history");
            break;
        }
        last = resp.events.last().map_or(last, rev);
    }
}

/// A stopping member ends its watch streams with etcd's `server stopped` (clients then resume
/// elsewhere) instead of holding its shutdown open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_watch_streams() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::start(Kind::Cairn, &dir.path().join("m1"), &[]);
    let mut s = Stream::open(&m.endpoint()).await;
    s.create(create("k", 0)).await;
    let exit = tokio::task::block_in_place(|| m.terminate());
    assert!(exit.success(), "clean exit: {exit:?}");
    let status = s
        .responses
        .message()
        .await
        .expect_err("the stream ends with an error");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.message(), "etcdserver: server stopped");
}

/// Puts, two-key txns and prefix deletes through one member for a while; returns the acknowledged
/// puts as (revision, key, value).
async fn write_mix(endpoint: String, w: usize) -> Vec<(i64, String, String)> {
    let mut c = Client::connect(endpoint).await.unwrap();
    let mut acked = vec![];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    let mut i = 0;
    while tokio::time::Instant::now() < deadline {
        i += 1;
        let (key, value) = (format!("mix/{w}/{}", i % 5), format!("{w}-{i}"));
        let result = match i % 7 {
            3 => {
                let txn = TxnRequest {
                    success: vec![
                        put_op(&key, value.as_bytes()),
                        put_op(&format!("mix/{w}/t"), value.as_bytes()),
                    ],
                    ..TxnRequest::default()
                };
                c.txn(txn).await.map(|r| r.header.unwrap().revision)
            }
            6 => {
                let prefix = format!("mix/{w}/");
                let del = DeleteRangeRequest {
                    key: prefix.clone().into_bytes().into(),
                    range_end: cairn_client::prefix_end(prefix.as_bytes()).into(),
                    ..DeleteRangeRequest::default()
                };
                c.delete(del).await.map(|_| 0)
            }
            _ => c
                .put(key.clone(), value.clone())
                .await
                .map(|r| r.header.unwrap().revision),
        };
        match result {
            Ok(0) => {}
            Ok(revision) => acked.push((revision, key, value)),
            // The restarting member refuses or times out some writes; they are simply not acked.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    acked
}

/// Go clients multiplex every call and watch stream of a client on one HTTP/2 connection; etcd
/// lets a connection carry any number of streams (`--max-concurrent-streams`, unlimited by
/// default). 300 watch streams on one connection, each with a watcher, must all be created and
/// all get the next put, on both systems.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_streams_share_one_connection() {
    const STREAMS: usize = 300;
    for kind in [Kind::Cairn, Kind::Etcd] {
        let dir = tempfile::tempdir().unwrap();
        let m = Member::start(kind, &dir.path().join("m1"), &[]);
        let channel = tonic::transport::Endpoint::from_shared(m.endpoint())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut streams = vec![];
        for _ in 0..STREAMS {
            // etcd (grpc-go) sends a stream's headers with its first message: the create goes
            // out before the call waits for them.
            let (requests, rx) = mpsc::channel(16);
            let create = WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(create("shared", 0))),
            };
            requests.send(create).await.unwrap();
            let responses = WatchClient::new(channel.clone())
                .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            let mut s = Stream {
                requests,
                responses,
            };
            assert!(s.next().await.created, "{kind:?}");
            streams.push(s);
        }
        let mut c = Client::connect(m.endpoint()).await.unwrap();
        c.put("shared", "v").await.unwrap();
        for s in &mut streams {
            let events = s.events(0, 1).await;
            assert_eq!(events[0].kv.as_ref().unwrap().value, &b"v"[..], "{kind:?}");
        }
    }
}

/// `--max-watchers-per-stream`: past the limit a create is answered created-and-canceled with id
/// -1 and a reason naming the flag (etcd's shape for a refused watcher); canceling one makes room,
/// and other streams have limits of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_per_stream_are_limited_by_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let m = Member::start(
        Kind::Cairn,
        &dir.path().join("m1"),
        &["--max-watchers-per-stream=3"],
    );
    let endpoint = m.endpoint();
    let mut stream = Stream::open(&endpoint).await;
    let mut ids = vec![];
    for key in ["a", "b", "c"] {
        let resp = stream.create(create(key, 0)).await;
        assert!(!resp.canceled, "{resp:?}");
        ids.push(resp.watch_id);
    }
    let refused = stream.create(create("d", 0)).await;
    assert!(refused.canceled, "{refused:?}");
    assert_eq!(refused.watch_id, -1);
    assert_eq!(
        refused.cancel_reason,
        "cairn: too many watchers on this stream (--max-watchers-per-stream=3)"
    );

    let mut other = Stream::open(&endpoint).await;
    assert!(!other.create(create("d", 0)).await.canceled);

    stream
        .send(RequestUnion::CancelRequest(WatchCancelRequest {
            watch_id: ids[0],
        }))
        .await;
    assert!(stream.next().await.canceled);
    let resp = stream.create(create("d", 0)).await;
    assert!(!resp.canceled, "{resp:?}");

    // The watchers it kept still work.
    let mut client = Client::connect(endpoint).await.unwrap();
    client.put("b", "v").await.unwrap();
    let events = stream.events(ids[1], 1).await;
    assert_eq!(events[0].kv.as_ref().unwrap().key, &b"b"[..]);
}
