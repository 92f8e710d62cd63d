//! Crash test: kill -9 under a concurrent write load, restart, and check that every acknowledged
//! write is present, nothing was applied twice and revisions stay contiguous.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_client::proto::etcdserverpb::RangeRequest;
use cairn_client::Client;
use common::{Kind, Member};

/// Concurrent writers during each crash round.
const WRITERS: usize = 8;
/// Kill rounds.
const ROUNDS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::start(Kind::Cairn, &dir.path().join("m1"), &[]);
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    for round in 0..ROUNDS {
        let mut writers = vec![];
        for w in 0..WRITERS {
            let endpoint = m.endpoint();
            let acked = acked.clone();
            writers.push(tokio::spawn(async move {
                let Ok(mut c) = Client::connect(endpoint).await else {
                    return;
                };
                // Each key is written once, so a key applied twice would show version 2.
                for i in 0.. {
                    let key = format!("crash/{round}/{w}/{i:06}");
                    match c.put(key.clone(), "v").await {
                        Ok(_) => {
                            acked.lock().unwrap().insert(key);
                        }
                        Err(_) => return,
                    }
                }
            }));
        }
        // Let the load run, then crash the member in the middle of it.
        common::wait_for("writes to be acknowledged", Duration::from_secs(30), || {
            (acked.lock().unwrap().len() >= (round + 1) * 200).then_some(())
        });
        m.kill9();
        for w in writers {
            w.await.unwrap();
        }
        m.restart();
    }

    let mut c = Client::connect(m.endpoint()).await.unwrap();
    let all = c
        .range(RangeRequest {
            key: b"crash/".to_vec().into(),
            range_end: b"crash0".to_vec().into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let present: HashSet<String> = all
        .kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.to_vec()).unwrap())
        .collect();
    let acked = acked.lock().unwrap();
    let lost: Vec<_> = acked.difference(&present).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(
        all.kvs.iter().all(|kv| kv.version == 1),
        "a write was applied twice"
    );
    // One put per revision, starting at 2, with no gap and no repeat.
    let mut revisions: Vec<i64> = all.kvs.iter().map(|kv| kv.mod_revision).collect();
    revisions.sort_unstable();
    let expected: Vec<i64> = (2..2 + revisions.len() as i64).collect();
    assert_eq!(revisions, expected, "revisions are not contiguous");
    assert_eq!(all.header.unwrap().revision, 1 + revisions.len() as i64);
}
