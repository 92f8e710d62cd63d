//! A leader-elected controller: every replica campaigns; the leader does the work until it
//! loses its session, then campaigns again. Run several copies and kill the leader.
//!
//! ```sh
//! cargo run -p cairn-client --example leader_election -- http://127.0.0.1:2379 replica-1
//! ```
//! `etcdctl elect -l /controllers/scheduler` shows who leads (the same key layout as Go).

use std::time::Duration;

use cairn_client::concurrency::{Election, Session, SessionOptions};
use cairn_client::{Client, Compare, CompareOp, ConnectOptions, PutOptions, Txn, TxnOp};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let endpoints = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:2379".into());
    let me = args
        .next()
        .unwrap_or_else(|| format!("replica-{}", std::process::id()));
    let client = Client::connect_with(endpoints.split(','), ConnectOptions::new()).await?;

    loop {
        // The session's lease is our liveness: if this process dies, the leadership passes on
        // after the TTL.
        let session = Session::new(
            &client,
            SessionOptions::new().with_ttl(Duration::from_secs(5)),
        )
        .await?;
        let mut election = Election::new(&session, "/controllers/scheduler");
        println!("{me}: campaigning");
        election.campaign(me.as_str()).await?;
        println!("{me}: leading");

        // Lead until the session is lost or the work fails.
        tokio::select! {
            r = lead(&client, &election, &me) => eprintln!("{me}: stopped leading: {r:?}"),
            _ = session.done() => eprintln!("{me}: session lost"),
            _ = tokio::signal::ctrl_c() => {
                let _ = election.resign().await;
                let _ = session.close().await;
                return Ok(());
            }
        }
        let _ = session.close().await;
    }
}

/// The leader's work: a heartbeat every second, written only while still the leader.
async fn lead(client: &Client, election: &Election, me: &str) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        // Guarded: if leadership was lost meanwhile (a long pause, a partition), the write
        // does nothing.
        let still_leader =
            Compare::create_revision(election.key().to_vec(), CompareOp::Equal, election.rev());
        let t = client
            .kv()
            .txn(Txn::new().when([still_leader]).and_then([TxnOp::put(
                "/controllers/scheduler-heartbeat",
                me,
                PutOptions::new(),
            )]))
            .await?;
        if !t.succeeded {
            anyhow::bail!("lost the leadership");
        }
    }
}
