//! A distributed lock around a critical section, with a fenced write: the write only
//! happens if the lock is still ours when it commits. Interoperates with
//! `etcdctl lock /locks/report` (Go's key layout).
//!
//! ```sh
//! cargo run -p cairn-client --example distributed_lock -- http://127.0.0.1:2379
//! ```

use std::time::Duration;

use cairn_client::concurrency::{Mutex, Session, SessionOptions};
use cairn_client::{Client, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let endpoints = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:2379".into());
    let client = Client::connect_with(endpoints.split(','), ConnectOptions::new()).await?;
    let session = Session::new(
        &client,
        SessionOptions::new().with_ttl(Duration::from_secs(10)),
    )
    .await?;
    let mut lock = Mutex::new(&session, "/locks/report");

    println!("waiting for the lock");
    lock.lock().await?;
    println!("locked with key {}", String::from_utf8_lossy(lock.key()));

    // The critical section: read, compute, write back, guarded by the lock.
    let current = client.kv().get("/reports/count", GetOptions::new()).await?;
    let n: u64 = current
        .kvs
        .first()
        .and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse().ok())
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(1)).await; // slow work
    let fenced = Txn::new().when([lock.is_owner()]).and_then([TxnOp::put(
        "/reports/count",
        (n + 1).to_string(),
        PutOptions::new(),
    )]);
    if client.kv().txn(fenced).await?.succeeded {
        println!("count is now {}", n + 1);
    } else {
        println!("lost the lock before writing; nothing written");
    }

    lock.unlock().await?;
    session.close().await?;
    Ok(())
}
