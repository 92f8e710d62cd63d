//! KV, transactions, namespaces, errors and failover against a 3-member Cairn and a 3-member
//! etcd.

mod common;

use std::time::{Duration, Instant};

use cairn_client::{
    CompactOptions, Compare, CompareOp, ConnectOptions, DeleteOptions, Error, GetOptions,
    PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};
use common::{Backend, Cluster};

async fn kv_options_and_nested_transactions(backend: Backend) {
    let Some(cluster) = Cluster::start(backend, 3).await else {
        return;
    };
    let client = cluster.client().await;
    assert_eq!(client.endpoints().len(), 3, "MemberList discovery");
    let kv = client.kv();

    for (i, k) in ["p/a", "p/b", "p/c", "q"].iter().enumerate() {
        kv.put(*k, format!("v{i}"), PutOptions::new())
            .await
            .unwrap();
    }
    let r = kv.get("p/", GetOptions::new().with_prefix()).await.unwrap();
    assert_eq!(r.count, 3);
    let keys: Vec<_> = r.kvs.iter().map(|kv| kv.key.to_vec()).collect();
    assert_eq!(keys, [b"p/a".to_vec(), b"p/b".to_vec(), b"p/c".to_vec()]);

    let r = kv
        .get(
            "p/",
            GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Key, SortOrder::Descend)
                .with_limit(2)
                .with_keys_only(),
        )
        .await
        .unwrap();
    assert_eq!(r.kvs.len(), 2);
    assert!(r.more);
    assert_eq!(&r.kvs[0].key[..], b"p/c");
    assert!(r.kvs[0].value.is_empty());

    let r = kv
        .get("p/", GetOptions::new().with_prefix().with_count_only())
        .await
        .unwrap();
    assert_eq!((r.count, r.kvs.len()), (3, 0));
    let r = kv
        .get("p/b", GetOptions::new().with_from_key().with_serializable())
        .await
        .unwrap();
    assert_eq!(r.count, 3, "p/b, p/c, q");
    let r = kv.get("", GetOptions::new().with_all_keys()).await.unwrap();
    assert_eq!(r.count, 4);
    let r = kv
        .get("p/a", GetOptions::new().with_range("p/c"))
        .await
        .unwrap();
    assert_eq!(r.count, 2);

    // History: an old revision, then compaction.
    let first = kv.put("h", "1", PutOptions::new()).await.unwrap();
    let rev1 = first.header.unwrap().revision;
    let second = kv
        .put("h", "2", PutOptions::new().with_prev_key())
        .await
        .unwrap();
    assert_eq!(&second.prev_kv.unwrap().value[..], b"1");
    let rev2 = second.header.unwrap().revision;
    let old = kv
        .get("h", GetOptions::new().with_revision(rev1))
        .await
        .unwrap();
    assert_eq!(&old.kvs[0].value[..], b"1");
    let r = kv
        .get("h", GetOptions::new().with_min_mod_revision(rev2))
        .await
        .unwrap();
    assert_eq!(r.count, 1);
    kv.compact(rev2, CompactOptions::new().with_physical())
        .await
        .unwrap();
    let err = kv
        .get("h", GetOptions::new().with_revision(rev1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Compacted), "{err:?}");
    let err = kv
        .get("h", GetOptions::new().with_revision(rev2 + 1000))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::FutureRevision), "{err:?}");

    // ignore_value on a missing key, lease not found: etcd's errors by name.
    let err = kv
        .put("missing", "", PutOptions::new().with_ignore_value())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::KeyNotFound), "{err:?}");
    let err = kv
        .put("x", "1", PutOptions::new().with_lease(0x1234))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::LeaseNotFound), "{err:?}");

    // A compare-and-set, its failure branch, and a nested transaction.
    let cas = |expect: &'static str, new: &'static str| {
        Txn::new()
            .when([Compare::value("h", CompareOp::Equal, expect)])
            .and_then([TxnOp::put("h", new, PutOptions::new())])
            .or_else([TxnOp::get("h", GetOptions::new())])
    };
    let t = kv.txn(cas("2", "3")).await.unwrap();
    assert!(t.succeeded);
    assert!(matches!(t.responses[0], TxnOpResponse::Put(_)));
    let t = kv.txn(cas("2", "4")).await.unwrap();
    assert!(!t.succeeded);
    assert_eq!(&t.get(0).unwrap().kvs[0].value[..], b"3");

    let nested = Txn::new()
        .when([Compare::version("h", CompareOp::Greater, 0)])
        .and_then([
            TxnOp::txn(
                Txn::new()
                    .when([Compare::create_revision("n", CompareOp::Equal, 0)])
                    .and_then([TxnOp::put("n", "created", PutOptions::new())]),
            ),
            TxnOp::delete("p/", DeleteOptions::new().with_prefix().with_prev_key()),
        ]);
    let t = kv.txn(nested).await.unwrap();
    assert!(t.succeeded);
    let TxnOpResponse::Txn(inner) = &t.responses[0] else {
        panic!("{t:?}")
    };
    assert!(inner.succeeded);
    let TxnOpResponse::Delete(d) = &t.responses[1] else {
        panic!("{t:?}")
    };
    assert_eq!((d.deleted, d.prev_kvs.len()), (3, 3));
    let r = kv.get("n", GetOptions::new()).await.unwrap();
    assert_eq!(&r.kvs[0].value[..], b"created");
    let guard = Compare::mod_revision("p/", CompareOp::Equal, 0).with_prefix();
    let t = kv.txn(Txn::new().when([guard])).await.unwrap();
    assert!(t.succeeded, "every p/ key is gone");
    let err = kv
        .txn(Txn::new().and_then([
            TxnOp::put("d", "1", PutOptions::new()),
            TxnOp::put("d", "2", PutOptions::new()),
        ]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DuplicateKey), "{err:?}");

    // Namespaces: keys gain and lose the prefix, ranges stay inside.
    let app = client.with_namespace("app/");
    let nkv = app.kv();
    nkv.put("k1", "a", PutOptions::new()).await.unwrap();
    nkv.put("k2", "b", PutOptions::new()).await.unwrap();
    let raw = kv.get("app/k1", GetOptions::new()).await.unwrap();
    assert_eq!(&raw.kvs[0].value[..], b"a");
    let all = nkv
        .get("", GetOptions::new().with_all_keys())
        .await
        .unwrap();
    let keys: Vec<_> = all.kvs.iter().map(|kv| kv.key.to_vec()).collect();
    assert_eq!(keys, [b"k1".to_vec(), b"k2".to_vec()]);
    let t = nkv
        .txn(
            Txn::new()
                .when([Compare::value("k1", CompareOp::Equal, "a")])
                .and_then([TxnOp::get("k", GetOptions::new().with_prefix())]),
        )
        .await
        .unwrap();
    assert!(t.succeeded);
    assert_eq!(&t.get(0).unwrap().kvs[1].key[..], b"k2");
    let d = nkv
        .delete("", DeleteOptions::new().with_all_keys().with_prev_key())
        .await
        .unwrap();
    assert_eq!(d.deleted, 2);
    assert_eq!(&d.prev_kvs[0].key[..], b"k1");
    let r = kv.get("q", GetOptions::new()).await.unwrap();
    assert_eq!(r.count, 1, "a namespace's all-keys delete stays inside it");
}

per_backend!(
    cairn_kv_options_and_nested_transactions,
    etcd_kv_options_and_nested_transactions,
    kv_options_and_nested_transactions
);

/// Members die one by one and come back; reads keep working throughout and writes are
/// retried only where that is safe, so every acknowledged write is there exactly once.
async fn failover(backend: Backend) {
    let Some(mut cluster) = Cluster::start(backend, 3).await else {
        return;
    };
    let client = cluster
        .client_with(ConnectOptions::new().with_auto_sync_interval(None))
        .await;
    let kv = client.kv();
    let mut acked = 0u64;
    let mut ambiguous = 0u64;
    for round in 0..2 {
        let victim = cluster.leader().await;
        cluster.members[victim].kill();
        let started = Instant::now();
        for i in 0..20 {
            let key = format!("f/{round}/{i}");
            let t0 = Instant::now();
            let res = kv.put(key.as_str(), "v", PutOptions::new()).await;
            if t0.elapsed() > Duration::from_millis(300) {
                println!("{backend:?}: slow put {key}: {:?} {res:?}", t0.elapsed());
            }
            match res {
                Ok(_) => acked += 1,
                // The first write after the kill usually went to the dead leader through a
                // follower: the server times out and the client must not repeat it.
                Err(e) if e.is_unavailable() || matches!(e, Error::DeadlineExceeded) => {
                    ambiguous += 1
                }
                Err(e) => panic!("{backend:?}: put {key}: {e:?}"),
            }
            kv.get(key.as_str(), GetOptions::new())
                .await
                .unwrap_or_else(|e| panic!("{backend:?}: get {key} after a leader kill: {e:?}"));
        }
        println!(
            "{backend:?}: round {round}: 20 puts and gets in {:?} after killing the leader",
            started.elapsed()
        );
        cluster.restart(victim).await;
    }
    // Every acknowledged write exists once; the ambiguous ones may or may not.
    let r = kv
        .get("f/", GetOptions::new().with_prefix().with_count_only())
        .await
        .unwrap();
    assert!(
        r.count as u64 >= acked && r.count as u64 <= acked + ambiguous,
        "{backend:?}: {} keys, {acked} acknowledged, {ambiguous} ambiguous",
        r.count
    );
    assert!(
        acked >= 36,
        "{backend:?}: only {acked} of 40 puts succeeded"
    );
}

per_backend!(cairn_failover, etcd_failover, failover);

/// A member that is down when the client starts does not stop it; connect never blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoints_fail_with_a_deadline() {
    let dead = format!("http://127.0.0.1:{}", common::free_port());
    let client = cairn_client::Client::connect_with(
        [dead.as_str()],
        ConnectOptions::new()
            .with_timeout(Duration::from_millis(600))
            .with_auto_sync_interval(Some(Duration::from_secs(60))),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let err = client.kv().get("k", GetOptions::new()).await.unwrap_err();
    assert!(
        err.is_unavailable() || matches!(err, Error::DeadlineExceeded),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(matches!(
        cairn_client::Client::connect_with(["https://127.0.0.1:1"], ConnectOptions::new()).await,
        Err(Error::InvalidArgument(_))
    ));
}
