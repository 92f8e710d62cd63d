//! Watches across member loss: the leader is killed while writers run, and every watcher still
//! sees the exact history, gap- and duplicate-free; compaction ends a watch explicitly.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_client::{
    Client, CompactOptions, ConnectOptions, DeleteOptions, Error, EventKind, GetOptions,
    PutOptions, WatchOptions, Watcher,
};
use common::{eventually, Backend, Cluster};
use futures::StreamExt;

/// One observed change: (revision, delete?, key, value).
type Seen = (i64, bool, Vec<u8>, Vec<u8>);

/// Collects a watcher's events until it sees key `end`.
async fn collect_until(mut w: Watcher, end: &'static [u8]) -> Result<Vec<Seen>, Error> {
    let mut seen = Vec::new();
    while let Some(resp) = w.next().await {
        for e in resp?.events {
            let done = e.kv.key == end;
            seen.push((
                e.kv.mod_revision,
                e.kind == EventKind::Delete,
                e.kv.key.to_vec(),
                e.kv.value.to_vec(),
            ));
            if done {
                return Ok(seen);
            }
        }
    }
    panic!("the watcher ended without an error");
}

async fn watch_survives_the_leader_kill(backend: Backend) {
    let Some(mut cluster) = Cluster::start(backend, 3).await else {
        return;
    };
    let options = ConnectOptions::new().with_auto_sync_interval(None);
    let writer = cluster.client_with(options.clone()).await;
    // One watcher per member: the client picks endpoints round-robin.
    let watching = cluster.client_with(options).await;
    let mut watchers = Vec::new();
    for _ in 0..3 {
        let w = watching
            .watch()
            .watch("w/", WatchOptions::new().with_prefix())
            .await
            .unwrap();
        watchers.push(w);
    }
    let first = watchers
        .iter()
        .map(Watcher::created_revision)
        .min()
        .unwrap();
    let collectors: Vec<_> = watchers
        .into_iter()
        .map(|w| {
            let from = w.created_revision();
            (from, tokio::spawn(collect_until(w, b"w/end")))
        })
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for t in 0..2 {
        let kv = writer.kv();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w/{t}/{}", i % 7);
                let res = if i % 5 == 4 {
                    kv.delete(key.as_str(), DeleteOptions::new())
                        .await
                        .map(|r| r.header.unwrap().revision)
                } else {
                    kv.put(key.as_str(), format!("{i}"), PutOptions::new())
                        .await
                        .map(|r| r.header.unwrap().revision)
                };
                match res {
                    Ok(rev) => acked.push(rev),
                    Err(e) if e.is_unavailable() || matches!(e, Error::DeadlineExceeded) => {}
                    Err(e) => panic!("write {key}: {e:?}"),
                }
                i += 1;
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let leader = cluster.leader().await;
    cluster.members[leader].kill();
    println!("{backend:?}: killed the leader m{}", leader + 1);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    let end = writer
        .kv()
        .put("w/end", "", PutOptions::new())
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    println!(
        "{backend:?}: {} acknowledged writes up to revision {end}",
        acked.len()
    );
    assert!(acked.len() > 20, "{backend:?}: the writers barely ran");

    // The truth: the history replayed by a fresh watch on a healthy member.
    let truth = collect_until(
        writer
            .watch()
            .watch(
                "w/",
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(first + 1),
            )
            .await
            .unwrap(),
        b"w/end",
    )
    .await
    .unwrap();
    let revisions: Vec<i64> = truth.iter().map(|s| s.0).collect();
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "one event per revision"
    );
    for rev in &acked {
        assert!(
            revisions.contains(rev),
            "acknowledged write at {rev} missing"
        );
    }
    for (from, collector) in collectors {
        let seen = tokio::time::timeout(Duration::from_secs(20), collector)
            .await
            .expect("every watcher reaches the end")
            .unwrap()
            .unwrap();
        let expected: Vec<Seen> = truth.iter().filter(|s| s.0 > from).cloned().collect();
        assert_eq!(
            seen.len(),
            expected.len(),
            "{backend:?}: a watcher from {from} saw {} events, the history has {}",
            seen.len(),
            expected.len()
        );
        assert_eq!(seen, expected, "{backend:?}: watcher from {from}");
    }
}

per_backend!(
    cairn_watch_survives_the_leader_kill,
    etcd_watch_survives_the_leader_kill,
    watch_survives_the_leader_kill
);

async fn compaction_ends_a_watch_explicitly(backend: Backend) {
    let Some(mut cluster) = Cluster::start(backend, 3).await else {
        return;
    };
    let client = cluster.client().await;
    let kv = client.kv();
    let mut revs = Vec::new();
    for i in 0..5 {
        let r = kv
            .put("c/k", format!("{i}"), PutOptions::new())
            .await
            .unwrap();
        revs.push(r.header.unwrap().revision);
    }
    kv.compact(revs[3], CompactOptions::new().with_physical())
        .await
        .unwrap();
    // Watches are served by any member without a barrier (as in etcd): wait until every member
    // has applied the compaction.
    for endpoint in cluster.endpoints() {
        let member = Client::connect(endpoint).await.unwrap();
        let old = GetOptions::new().with_serializable().with_revision(revs[0]);
        let applied = || {
            let (member, old) = (member.clone(), old.clone());
            async move { matches!(member.kv().get("c/k", old).await, Err(Error::Compacted)) }
        };
        eventually(
            "every member to apply the compaction",
            Duration::from_secs(10),
            applied,
        )
        .await;
    }

    // A start below the compacted revision: the first item says so, then the stream ends.
    let mut w = client
        .watch()
        .watch("c/k", WatchOptions::new().with_start_revision(revs[0]))
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(first, Err(Error::WatchCompacted { compact_revision }) if compact_revision == revs[3]),
        "{backend:?}: {first:?}"
    );
    assert!(w.next().await.is_none());

    // From the compacted revision on, history is there, with previous values.
    let mut w = client
        .watch()
        .watch(
            "c/k",
            WatchOptions::new()
                .with_start_revision(revs[3])
                .with_prev_key(),
        )
        .await
        .unwrap();
    let mut events = Vec::new();
    while events.len() < 2 {
        events.extend(w.next().await.unwrap().unwrap().events);
    }
    assert_eq!(events[0].revision(), revs[3]);
    assert_eq!(events[1].revision(), revs[4]);
    assert_eq!(&events[1].prev_kv.as_ref().unwrap().value[..], b"3");

    // A watcher whose only member goes away while its history is compacted cannot resume:
    // it reports the compaction instead of skipping events.
    // (A follower, so that the writes below do not wait for an election.)
    let pinned_member = (cluster.leader().await + 1) % 3;
    let only = cluster.members[pinned_member].endpoint();
    let pinned = cairn_client::Client::connect_with(
        [only.as_str()],
        ConnectOptions::new().with_auto_sync_interval(None),
    )
    .await
    .unwrap();
    let mut w = pinned
        .watch()
        .watch("c/", WatchOptions::new().with_prefix())
        .await
        .unwrap();
    kv.put("c/seen", "1", PutOptions::new()).await.unwrap();
    let resp = w.next().await.unwrap().unwrap();
    assert_eq!(&resp.events[0].kv.key[..], b"c/seen");
    cluster.members[pinned_member].kill();
    // Writes through a surviving member only: a put in flight to the member just killed has an
    // unknown outcome, which the client reports rather than repeating it.
    let survivor = cluster.members[(pinned_member + 1) % 3].endpoint();
    let writer = cairn_client::Client::connect_with(
        [survivor.as_str()],
        ConnectOptions::new().with_auto_sync_interval(None),
    )
    .await
    .unwrap();
    let kv = writer.kv();
    let mut last = 0;
    for i in 0..3 {
        last = kv
            .put("c/missed", format!("{i}"), PutOptions::new())
            .await
            .unwrap()
            .header
            .unwrap()
            .revision;
    }
    kv.compact(last, CompactOptions::new().with_physical())
        .await
        .unwrap();
    cluster.restart(pinned_member).await;
    let item = tokio::time::timeout(Duration::from_secs(15), w.next())
        .await
        .expect("the watcher reports within the deadline")
        .unwrap();
    assert!(
        matches!(item, Err(Error::WatchCompacted { compact_revision }) if compact_revision == last),
        "{backend:?}: {item:?}"
    );
    assert!(w.next().await.is_none());
    let _ = kv.get("c/", GetOptions::new().with_prefix()).await.unwrap();
}

per_backend!(
    cairn_compaction_ends_a_watch_explicitly,
    etcd_compaction_ends_a_watch_explicitly,
    compaction_ends_a_watch_explicitly
);

/// Namespaced watches see their keys without the prefix; filters and progress requests work.
async fn namespaced_watch_and_progress(backend: Backend) {
    let Some(cluster) = Cluster::start(backend, 3).await else {
        return;
    };
    let client = cluster.client().await;
    let ns = client.with_namespace("tenant/");
    let mut w = ns
        .watch()
        .watch("", WatchOptions::new().with_from_key().with_no_delete())
        .await
        .unwrap();
    client
        .kv()
        .put("other", "x", PutOptions::new())
        .await
        .unwrap();
    ns.kv().put("a", "1", PutOptions::new()).await.unwrap();
    ns.kv().delete("a", DeleteOptions::new()).await.unwrap();
    let r = ns.kv().put("b", "2", PutOptions::new()).await.unwrap();
    let mut keys = Vec::new();
    while keys.len() < 2 {
        for e in w.next().await.unwrap().unwrap().events {
            assert_eq!(e.kind, EventKind::Put);
            keys.push(e.kv.key.to_vec());
        }
    }
    assert_eq!(keys, [b"a".to_vec(), b"b".to_vec()]);
    w.request_progress().await.unwrap();
    let progress = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(progress.is_progress_notify(), "{progress:?}");
    assert!(progress.revision() >= r.header.unwrap().revision);
}

per_backend!(
    cairn_namespaced_watch_and_progress,
    etcd_namespaced_watch_and_progress,
    namespaced_watch_and_progress
);

/// A revision bigger than the server's message limit arrives in fragments, reassembled into
/// one response.
async fn large_revisions_arrive_whole(backend: Backend) {
    let Some(cluster) = Cluster::start(backend, 3).await else {
        return;
    };
    let client = cluster.client().await;
    let kv = client.kv();
    let big = |c: u8| vec![c; 600 * 1024];
    kv.put("big/a", big(b'a'), PutOptions::new()).await.unwrap();
    let written = kv.put("big/b", big(b'b'), PutOptions::new()).await.unwrap();
    // From the revision after the puts: a watch "from now" on a member that has not applied them
    // yet would start before them (in etcd too).
    let after = written.header.unwrap().revision + 1;
    let mut w = client
        .watch()
        .watch(
            "big/",
            WatchOptions::new()
                .with_prefix()
                .with_prev_key()
                .with_start_revision(after),
        )
        .await
        .unwrap();
    // With previous values, this one revision's events are ~2.4 MB: over the 1.5 MiB limit.
    let t = kv
        .txn(cairn_client::Txn::new().and_then([
            cairn_client::TxnOp::put("big/a", big(b'c'), PutOptions::new()),
            cairn_client::TxnOp::put("big/b", big(b'd'), PutOptions::new()),
        ]))
        .await
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        resp.events.len(),
        2,
        "{backend:?}: the whole revision at once"
    );
    for (e, (now, before)) in resp.events.iter().zip([(b'c', b'a'), (b'd', b'b')]) {
        assert_eq!(e.revision(), t.revision());
        assert_eq!(e.kv.value.len(), 600 * 1024);
        assert!(e.kv.value.iter().all(|c| *c == now));
        assert!(e
            .prev_kv
            .as_ref()
            .unwrap()
            .value
            .iter()
            .all(|c| *c == before));
    }
}

per_backend!(
    cairn_large_revisions_arrive_whole,
    etcd_large_revisions_arrive_whole,
    large_revisions_arrive_whole
);
