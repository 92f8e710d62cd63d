//! Sessions, locks, elections and STM against a 3-member Cairn and etcd, including handover
//! when a holder's session ends and interoperation with `etcdctl lock` / `etcdctl elect`.

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_client::concurrency::{
    run_stm, Election, Isolation, Mutex, Session, SessionOptions, Stm, StmOptions,
};
use cairn_client::{Client, Error, GetOptions, PutOptions, Txn, TxnOp};
use common::{Backend, Cluster};
use futures::StreamExt;

fn short_session() -> SessionOptions {
    SessionOptions::new().with_ttl(Duration::from_secs(2))
}

async fn mutex_excludes_and_hands_over(backend: Backend) {
    let Some(cluster) = Cluster::start(backend, 3).await else {
        return;
    };
    let client = cluster.client().await;

    // Mutual exclusion among four sessions, in queue order.
    let holders = Arc::new(AtomicUsize::new(0));
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..4 {
        let client = client.clone();
        let holders = holders.clone();
        let order = order.clone();
        tasks.push(tokio::spawn(async move {
            let session = Session::new(&client, short_session()).await.unwrap();
            let mut m = Mutex::new(&session, "locks/a");
            for _ in 0..3 {
                m.lock().await.unwrap();
                assert_eq!(holders.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                order.lock().unwrap().push(i);
                // Fenced write: only the holder's transaction goes through.
                let t = client
                    .kv()
                    .txn(Txn::new().when([m.is_owner()]).and_then([TxnOp::put(
                        "locks/guarded",
                        format!("{i}"),
                        PutOptions::new(),
                    )]))
                    .await
                    .unwrap();
                assert!(t.succeeded);
                tokio::time::sleep(Duration::from_millis(20)).await;
                holders.fetch_sub(1, Ordering::SeqCst);
                m.unlock().await.unwrap();
            }
            session.close().await.unwrap();
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("the lock is handed over")
            .unwrap();
    }
    assert_eq!(order.lock().unwrap().len(), 12);

    // A holder that dies (its lease expires, nobody unlocks) hands the lock over.
    let dead = Session::new(&client, short_session()).await.unwrap();
    let mut held = Mutex::new(&dead, "locks/b");
    held.lock().await.unwrap();
    let live = Session::new(&client, short_session()).await.unwrap();
    let mut waiter = Mutex::new(&live, "locks/b");
    assert!(matches!(waiter.try_lock().await, Err(Error::Locked)));
    dead.orphan(); // the process "dies": no more renewals, no revoke
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(10), waiter.lock())
        .await
        .expect("the lock is released when the holder's lease expires")
        .unwrap();
    println!(
        "{backend:?}: lock handed over {:?} after the holder died",
        started.elapsed()
    );
    let fenced = Txn::new().when([held.is_owner()]).and_then([TxnOp::put(
        "locks/guarded",
        "stale",
        PutOptions::new(),
    )]);
    assert!(!client.kv().txn(fenced).await.unwrap().succeeded, "fencing");
    waiter.unlock().await.unwrap();
    assert!(matches!(waiter.unlock().await, Err(Error::LockReleased)));

    // A waiter that gives up leaves no key behind.
    let mut holder = Mutex::new(&live, "locks/c");
    holder.lock().await.unwrap();
    let other = Session::new(&client, short_session()).await.unwrap();
    let mut impatient = Mutex::new(&other, "locks/c");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), impatient.lock())
            .await
            .is_err()
    );
    common::eventually(
        "the abandoned waiter's key to go",
        Duration::from_secs(5),
        || {
            let kv = client.kv();
            async move {
                kv.get(
                    "locks/c/",
                    GetOptions::new().with_prefix().with_count_only(),
                )
                .await
                .unwrap()
                .count
                    == 1
            }
        },
    )
    .await;
    live.close().await.unwrap();
}

per_backend!(
    cairn_mutex_excludes_and_hands_over,
    etcd_mutex_excludes_and_hands_over,
    mutex_excludes_and_hands_over
);

async fn election_hands_over_and_is_observed(backend: Backend) {
    let Some(cluster) = Cluster::start(backend, 3).await else {
        return;
    };
    let client = cluster.client().await;
    let s1 = Session::new(&client, short_session()).await.unwrap();
    let s2 = Session::new(&client, short_session()).await.unwrap();
    let mut e1 = Election::new(&s1, "elect/x");
    let mut e2 = Election::new(&s2, "elect/x");
    let mut observer = e1.observe();

    e1.campaign("one").await.unwrap();
    let first = observer.next().await.unwrap().unwrap();
    assert_eq!(&first.value[..], b"one");
    assert_eq!(&e2.leader().await.unwrap().value[..], b"one");
    let second = tokio::spawn(async move {
        e2.campaign("two").await.unwrap();
        e2
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "only one leader at a time");
    e1.proclaim("one'").await.unwrap();
    let proclaimed = observer.next().await.unwrap().unwrap();
    assert_eq!(&proclaimed.value[..], b"one'");
    e1.resign().await.unwrap();
    let mut e2 = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the second candidate is elected after the resignation")
        .unwrap();
    let next = observer.next().await.unwrap().unwrap();
    assert_eq!(&next.value[..], b"two");
    assert!(matches!(
        e1.proclaim("x").await,
        Err(Error::ElectionNotLeader)
    ));

    // The leader's session ends: leadership goes with it.
    s2.close().await.unwrap();
    assert!(matches!(e2.leader().await, Err(Error::ElectionNoLeader)));
    assert!(matches!(
        e2.proclaim("y").await,
        Err(Error::ElectionNotLeader)
    ));
    s1.close().await.unwrap();
}

per_backend!(
    cairn_election_hands_over_and_is_observed,
    etcd_election_hands_over_and_is_observed,
    election_hands_over_and_is_observed
);

/// Concurrent transfers between accounts: every run of every transfer sees a consistent
/// snapshot, so the total is conserved and no balance goes negative.
async fn stm_transfers_conserve_the_total(backend: Backend) {
    let Some(cluster) = Cluster::start(backend, 3).await else {
        return;
    };
    let client = cluster.client().await;
    const ACCOUNTS: usize = 4;
    for isolation in [Isolation::SerializableSnapshot, Isolation::RepeatableReads] {
        let bank = client.with_namespace(format!("bank/{isolation:?}/"));
        for a in 0..ACCOUNTS {
            bank.kv()
                .put(format!("{a}"), "100", PutOptions::new())
                .await
                .unwrap();
        }
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for t in 0..4usize {
            let bank = bank.clone();
            let runs = runs.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..10usize {
                    let from = format!("{}", (t + i) % ACCOUNTS);
                    let to = format!("{}", (t + 2 * i + 1) % ACCOUNTS);
                    if from == to {
                        continue;
                    }
                    let amount = 1 + (t * 7 + i * 3) % 40;
                    let mut stm = Stm::new(&bank, StmOptions::new().with_isolation(isolation));
                    loop {
                        runs.fetch_add(1, Ordering::Relaxed);
                        let a = balance(stm.get(from.as_str()).await.unwrap());
                        let b = balance(stm.get(to.as_str()).await.unwrap());
                        if a >= amount as i64 {
                            stm.put(from.as_str(), (a - amount as i64).to_string());
                            stm.put(to.as_str(), (b + amount as i64).to_string());
                        }
                        if stm.commit().await.unwrap().is_some() {
                            break;
                        }
                    }
                }
            }));
        }
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .unwrap()
                .unwrap();
        }
        let all = bank
            .kv()
            .get("", GetOptions::new().with_all_keys())
            .await
            .unwrap();
        let balances: Vec<i64> = all
            .kvs
            .iter()
            .map(|kv| balance(Some(kv.value.to_vec())))
            .collect();
        println!(
            "{backend:?} {isolation:?}: balances {balances:?} after {} runs",
            runs.load(Ordering::Relaxed)
        );
        assert_eq!(balances.len(), ACCOUNTS);
        assert_eq!(balances.iter().sum::<i64>(), 100 * ACCOUNTS as i64);
        assert!(balances.iter().all(|b| *b >= 0));
    }

    // The closure form, with a read-only key prefetched and an abort.
    let bank = client.with_namespace("bank/SerializableSnapshot/");
    let total = run_stm(
        &bank,
        StmOptions::new().with_prefetch(["0", "1", "2", "3"]),
        async |stm| {
            let mut total = 0;
            for a in 0..ACCOUNTS {
                total += balance(stm.get(format!("{a}")).await?);
            }
            Ok(total)
        },
    )
    .await
    .unwrap();
    assert_eq!(total, 100 * ACCOUNTS as i64);
    let aborted: Result<(), Error> = run_stm(&bank, StmOptions::new(), async |stm| {
        stm.put("0", "0");
        Err(Error::Locked)
    })
    .await;
    assert!(matches!(aborted, Err(Error::Locked)));
    let r = bank.kv().get("0", GetOptions::new()).await.unwrap();
    assert_ne!(&r.kvs[0].value[..], b"0", "an aborted run writes nothing");
}

fn balance(v: Option<Vec<u8>>) -> i64 {
    v.map_or(0, |v| String::from_utf8(v).unwrap().parse().unwrap())
}

per_backend!(
    cairn_stm_transfers_conserve_the_total,
    etcd_stm_transfers_conserve_the_total,
    stm_transfers_conserve_the_total
);

/// `etcdctl lock` and `etcdctl elect` (Go's recipes) and the Rust recipes share a queue.
async fn recipes_interoperate_with_etcdctl(backend: Backend) {
    if !std::path::Path::new("/usr/bin/etcdctl").exists() {
        println!("skipped: /usr/bin/etcdctl not found (apt-get install etcd-client)");
        return;
    }
    let Some(cluster) = Cluster::start(backend, 3).await else {
        return;
    };
    let client = cluster.client().await;
    let endpoints = cluster.endpoints().join(",");
    let etcdctl = |args: &[&str]| {
        let mut cmd = Command::new("/usr/bin/etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        cmd
    };

    // Rust holds the lock: etcdctl waits, and runs its command once Rust releases it.
    let session = Session::new(&client, short_session()).await.unwrap();
    let mut m = Mutex::new(&session, "shared-lock");
    m.lock().await.unwrap();
    let waiting = etcdctl(&["lock", "shared-lock", "echo", "etcdctl-got-it"])
        .spawn()
        .unwrap();
    let pid = waiting.id();
    common::eventually(
        "etcdctl to queue behind the Rust holder",
        Duration::from_secs(10),
        || {
            let kv = client.kv();
            async move {
                kv.get(
                    "shared-lock/",
                    GetOptions::new().with_prefix().with_count_only(),
                )
                .await
                .unwrap()
                .count
                    == 2
            }
        },
    )
    .await;
    m.unlock().await.unwrap();
    let out = tokio::task::spawn_blocking(move || waiting.wait_with_output().unwrap());
    let out = tokio::time::timeout(Duration::from_secs(10), out)
        .await
        .unwrap_or_else(|_| {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            panic!("etcdctl lock did not get the lock")
        })
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("etcdctl-got-it"));

    // etcdctl holds it: Rust's try_lock sees it taken; once etcdctl is stopped, Rust gets it.
    let mut holder = etcdctl(&["lock", "shared-lock"]).spawn().unwrap();
    let holder_pid = holder.id();
    common::eventually("etcdctl to hold the lock", Duration::from_secs(10), || {
        let kv = client.kv();
        async move {
            kv.get(
                "shared-lock/",
                GetOptions::new().with_prefix().with_count_only(),
            )
            .await
            .unwrap()
            .count
                == 1
        }
    })
    .await;
    assert!(matches!(m.try_lock().await, Err(Error::Locked)));
    let _ = Command::new("kill")
        .args(["-TERM", &holder_pid.to_string()])
        .status();
    let _ = tokio::task::spawn_blocking(move || holder.wait()).await;
    tokio::time::timeout(Duration::from_secs(10), m.lock())
        .await
        .expect("the lock is free once etcdctl stopped")
        .unwrap();
    m.unlock().await.unwrap();

    // A Rust leader is seen by `etcdctl elect -l`.
    let mut e = Election::new(&session, "shared-election");
    e.campaign("rust-leader").await.unwrap();
    let mut listener = etcdctl(&["elect", "-l", "shared-election"])
        .spawn()
        .unwrap();
    let listener_pid = listener.id();
    let stdout = listener.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(stdout).lines();
        // `elect -l` prints the key, then the value.
        lines.next();
        lines.next().map(|l| l.unwrap())
    });
    let line = tokio::time::timeout(Duration::from_secs(10), line).await;
    let _ = Command::new("kill").arg(listener_pid.to_string()).status();
    let _ = listener.wait();
    assert_eq!(line.unwrap().unwrap().as_deref(), Some("rust-leader"));
    e.resign().await.unwrap();
    session.close().await.unwrap();
}

per_backend!(
    cairn_recipes_interoperate_with_etcdctl,
    etcd_recipes_interoperate_with_etcdctl,
    recipes_interoperate_with_etcdctl
);

/// The server-side Lock and Election services.
async fn server_lock_and_election_services(backend: Backend) {
    let Some(cluster) = Cluster::start(backend, 3).await else {
        return;
    };
    let client: Client = cluster.client().await;
    let session = Session::new(&client, short_session()).await.unwrap();
    let (key, _) = client
        .lock()
        .lock("svc-lock", session.lease())
        .await
        .unwrap();
    assert!(key.starts_with(b"svc-lock/"));
    let other = Session::new(&client, short_session()).await.unwrap();
    let blocked = tokio::time::timeout(
        Duration::from_millis(500),
        client.lock().lock("svc-lock", other.lease()),
    )
    .await;
    assert!(blocked.is_err(), "the second lock waits");
    client.lock().unlock(key).await.unwrap();
    let (key2, _) = tokio::time::timeout(
        Duration::from_secs(10),
        client.lock().lock("svc-lock", other.lease()),
    )
    .await
    .unwrap()
    .unwrap();
    client.lock().unlock(key2).await.unwrap();

    let elections = client.election();
    let mut observed = elections.observe("svc-election");
    let leader = elections
        .campaign("svc-election", "first", session.lease())
        .await
        .unwrap();
    assert_eq!(
        &elections.leader("svc-election").await.unwrap().value[..],
        b"first"
    );
    let seen = tokio::time::timeout(Duration::from_secs(10), observed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&seen.value[..], b"first");
    elections.proclaim(leader.clone(), "second").await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(10), observed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&seen.value[..], b"second");
    elections.resign(leader.clone()).await.unwrap();
    let err = elections.leader("svc-election").await.unwrap_err();
    assert!(
        matches!(err, Error::ElectionNoLeader),
        "{backend:?}: {err:?}"
    );
    let err = elections.proclaim(leader, "third").await.unwrap_err();
    assert!(
        matches!(err, Error::ElectionNotLeader),
        "{backend:?}: {err:?}"
    );
    session.close().await.unwrap();
    other.close().await.unwrap();
}

per_backend!(
    cairn_server_lock_and_election_services,
    etcd_server_lock_and_election_services,
    server_lock_and_election_services
);
