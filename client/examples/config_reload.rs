//! Configuration reload: a service reads its configuration from keys under a prefix (in its
//! own namespace), applies it, and applies each new version as it changes — whole
//! revisions at a time, so a multi-key update made in one transaction is never seen half
//! done.
//!
//! ```sh
//! cargo run -p cairn-client --example config_reload -- http://127.0.0.1:2379
//! etcdctl txn <<< $'\nput /config/web/port 8080\nput /config/web/workers 4\n\n'
//! ```

use std::collections::BTreeMap;

use cairn_client::{Client, ConnectOptions, EventKind, GetOptions, WatchOptions};
use futures::StreamExt;

/// The configuration: key (inside the namespace) -> value.
type Config = BTreeMap<String, String>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let endpoints = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:2379".into());
    let client = Client::connect_with(endpoints.split(','), ConnectOptions::new()).await?;
    // Every key this service sees is under /config/web/; inside, they are "port", "workers".
    let config_space = client.with_namespace("/config/web/");

    let current = config_space
        .kv()
        .get("", GetOptions::new().with_all_keys())
        .await?;
    let mut config: Config = current
        .kvs
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
            )
        })
        .collect();
    apply(&config);

    let from = current.header.map_or(0, |h| h.revision) + 1;
    let mut changes = config_space
        .watch()
        .watch(
            "",
            WatchOptions::new()
                .with_from_key()
                .with_start_revision(from),
        )
        .await?;
    while let Some(resp) = changes.next().await {
        // One response holds whole revisions: apply once per response, not per key.
        for event in resp?.events {
            let key = String::from_utf8_lossy(&event.kv.key).into_owned();
            match event.kind {
                EventKind::Put => {
                    config.insert(key, String::from_utf8_lossy(&event.kv.value).into_owned());
                }
                EventKind::Delete => {
                    config.remove(&key);
                }
            }
        }
        apply(&config);
    }
    Ok(())
}

fn apply(config: &Config) {
    println!("applying configuration: {config:?}");
}
