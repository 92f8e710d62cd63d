//! A watch-and-react controller, in the list-then-watch pattern of Kubernetes informers:
//! list the desired state at a revision, reconcile it, then watch from the next revision
//! and react to each change. The watch survives member failures by itself; only a
//! compaction (the history it needs is gone) makes it list again.
//!
//! ```sh
//! cargo run -p cairn-client --example watch_controller -- http://127.0.0.1:2379
//! etcdctl put /desired/web replicas=3
//! ```

use std::collections::BTreeMap;

use cairn_client::{Client, ConnectOptions, Error, EventKind, GetOptions, WatchOptions};
use futures::StreamExt;

const PREFIX: &str = "/desired/";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let endpoints = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:2379".into());
    let client = Client::connect_with(endpoints.split(','), ConnectOptions::new()).await?;
    loop {
        // List.
        let list = client
            .kv()
            .get(PREFIX, GetOptions::new().with_prefix())
            .await?;
        let revision = list.header.as_ref().map_or(0, |h| h.revision);
        // Our view of the desired state: key -> value.
        let mut desired: BTreeMap<Vec<u8>, Vec<u8>> = list
            .kvs
            .into_iter()
            .map(|kv| (kv.key.to_vec(), kv.value.to_vec()))
            .collect();
        reconcile_all(&desired);

        // Watch from just after the list: no change is missed, none is seen twice.
        let mut watcher = client
            .watch()
            .watch(
                PREFIX,
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            )
            .await?;
        while let Some(resp) = watcher.next().await {
            match resp {
                Ok(resp) => {
                    for event in resp.events {
                        let key = event.kv.key.to_vec();
                        match event.kind {
                            EventKind::Put => {
                                desired.insert(key.clone(), event.kv.value.to_vec());
                                reconcile(&key, desired.get(&key));
                            }
                            EventKind::Delete => {
                                desired.remove(&key);
                                reconcile(&key, None);
                            }
                        }
                    }
                }
                Err(Error::WatchCompacted { compact_revision }) => {
                    eprintln!("history compacted at {compact_revision}: listing again");
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn reconcile_all(desired: &BTreeMap<Vec<u8>, Vec<u8>>) {
    println!("reconciling {} objects", desired.len());
    for (k, v) in desired {
        reconcile(k, Some(v));
    }
}

fn reconcile(key: &[u8], value: Option<&Vec<u8>>) {
    match value {
        Some(v) => println!(
            "ensure {} = {}",
            String::from_utf8_lossy(key),
            String::from_utf8_lossy(v)
        ),
        None => println!("remove {}", String::from_utf8_lossy(key)),
    }
}
