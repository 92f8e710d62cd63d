//! The lock workloads' client side: etcd's lock recipe (clientv3 `concurrency.Mutex`, `etcdctl
//! lock`) built from plain KV and lease calls, and the read-modify-write of a set under it.
//!
//! A waiter grants a lease of [`LOCK_TTL_S`], keeps it alive, and puts `jepsen/lock/<lease hex>`
//! attached to it; the key's `create_revision` is its place in line. It holds the lock once its
//! key has the lowest `create_revision` under the prefix (it polls the prefix, each poll a
//! linearizable range). It then reads the set — one key holding a list — and writes the list
//! back with its element appended:
//! - `lock-set`: with a plain put, trusting that it still holds the lock;
//! - `lock-etcd-set`: with a txn guarded by its lock key's `create_revision` (the fencing token
//!   clientv3's `Mutex.IsOwner` gives), so a holder whose lease expired cannot write.
//!
//! A *client pause* (`pause_ms` in the call) stops the holder's keep-alives and stalls it between
//! its read and its write, as a GC pause or SIGSTOP of the client process would: the lease
//! expires, a waiter takes the lock and writes, then the paused holder writes. With the fence its
//! write is refused; without, it overwrites the other's element, a lost update (the negative
//! control). Like a nemesis timing its fault, the pause lasts until the set's key has changed
//! since the holder read it (someone else wrote under the lock), at most `pause_ms`: the harness
//! watches the store for that, the paused client takes no part in the protocol meanwhile. So
//! every pause that ends before its bound produces the interleaving the lock exists to prevent,
//! and `lock-set` is caught by design, not by chance. Everything here is bounded by the request
//! deadline,
//! [`ACQUIRE_TIMEOUT`] and the pause.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::{ClientError, EtcdClient};
use crate::history::{EventKind, Reply, Value};

/// Prefix of the lock keys (one per waiter: `<prefix><lease id in hex>`).
pub const LOCK_PREFIX: &str = "jepsen/lock/";
/// The key holding the set, as a comma-separated list of elements.
pub const LOCK_SET_KEY: &str = "jepsen/ls";
/// TTL of a waiter's lease, seconds: etcd's minimum with its default timing (1.5 election
/// timeouts of 1 s, rounded up).
pub const LOCK_TTL_S: i64 = 2;
/// A client pause, at most: long enough for the lease to expire and a waiter to take the lock and
/// write. The TTL alone is not: every leader change (member pauses cause them) extends every
/// lease by an election timeout plus its TTL, as etcd's lessor does on promotion, so a lease can
/// outlive its TTL by as long as the member faults go on.
pub const CLIENT_PAUSE_MS: u64 = 15_000;
/// A client pause, at least: past the TTL (until then nobody else can hold the lock).
pub const CLIENT_PAUSE_MIN_MS: u64 = LOCK_TTL_S as u64 * 1000 + 1000;
/// Between looks at the set's key during a client pause.
const PAUSE_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Between keep-alives of a held lease (clientv3 sends one every TTL / 3).
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_millis(500);
/// Between polls of the lock prefix while waiting in line.
const ACQUIRE_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// A waiter gives up (a definite failure: it wrote nothing) after this long: longer than a
/// client pause, so waiters outlast a paused holder.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(20);

/// A held lock: the lease, the key and its `create_revision`, and the keep-alive task.
struct Held {
    lease: i64,
    key: String,
    create_revision: i64,
    keep_alive: JoinHandle<()>,
}

/// Keeps `lease` alive until aborted or the lease is gone.
fn keep_alive(mut client: EtcdClient, lease: i64) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(KEEP_ALIVE_INTERVAL).await;
            if matches!(client.lease_keep_alive_once(lease).await, Ok(ttl) if ttl <= 0) {
                return;
            }
        }
    })
}

/// Gives the lock back: stops the keep-alives and revokes the lease, which deletes the key. A
/// failed revoke leaves the key to expire with the lease.
async fn release(client: &mut EtcdClient, held: Held) {
    held.keep_alive.abort();
    let _ = client.lease_revoke(held.lease).await;
}

/// Waits in line for the lock; an error once it cannot hold it.
async fn acquire(client: &mut EtcdClient) -> Result<Held, String> {
    let deadline = Instant::now() + ACQUIRE_TIMEOUT;
    let lease = client
        .lease_grant(LOCK_TTL_S)
        .await
        .map_err(|e| format!("lease grant: {e}"))?;
    let mut held = Held {
        lease,
        key: format!("{LOCK_PREFIX}{lease:x}"),
        create_revision: 0,
        keep_alive: keep_alive(client.clone(), lease),
    };
    match client.put_with_lease(&held.key, b"", lease).await {
        // The key is new (its lease is), so the put created it at this revision.
        Ok(revision) => held.create_revision = revision,
        Err(e) => {
            release(client, held).await;
            return Err(format!("lock key put: {e}"));
        }
    }
    loop {
        let line = client.get_prefix(LOCK_PREFIX, false).await;
        let first = line.as_ref().map(|(kvs, _)| {
            (
                kvs.iter().map(|kv| kv.create_revision).min(),
                kvs.iter().any(|kv| kv.key == held.key.as_bytes()),
            )
        });
        match first {
            Ok((Some(first), true)) if first == held.create_revision => return Ok(held),
            Ok((_, false)) => {
                release(client, held).await;
                return Err("the lock key vanished (its lease expired)".into());
            }
            _ if Instant::now() >= deadline => {
                release(client, held).await;
                return Err(format!(
                    "not first in line after {} s",
                    ACQUIRE_TIMEOUT.as_secs()
                ));
            }
            _ => tokio::time::sleep(ACQUIRE_POLL_INTERVAL).await,
        }
    }
}

/// Reads the set's list (linearizable), its `mod_revision` (0: absent) and the revision.
async fn read_list(client: &mut EtcdClient) -> Result<(Vec<Value>, i64, i64), ClientError> {
    let got = client.get(LOCK_SET_KEY, false).await?;
    let mod_revision = got.kv.as_ref().map_or(0, |kv| kv.mod_revision);
    let list = got
        .kv
        .map_or_else(Vec::new, |kv| crate::workload::parse_list(&kv.value));
    Ok((list, mod_revision, got.revision))
}

/// A client pause: after [`CLIENT_PAUSE_MIN_MS`], until the set's key is no longer at
/// `read_mod_revision` (another holder wrote), at most `pause_ms`.
async fn pause(client: &mut EtcdClient, read_mod_revision: i64, pause_ms: u64) {
    let start = Instant::now();
    let min = Duration::from_millis(CLIENT_PAUSE_MIN_MS.min(pause_ms));
    let max = Duration::from_millis(pause_ms);
    tokio::time::sleep(min).await;
    while start.elapsed() < max {
        if matches!(read_list(client).await, Ok((_, m, _)) if m != read_mod_revision) {
            return;
        }
        tokio::time::sleep(PAUSE_POLL_INTERVAL.min(max.saturating_sub(start.elapsed()))).await;
    }
}

/// `LockRead`: the set as it is now.
pub async fn invoke_read(client: &mut EtcdClient) -> EventKind {
    match read_list(client).await {
        Ok((elements, _, revision)) => EventKind::Ok {
            reply: Reply::ReadSet { elements },
            revision,
        },
        Err(e) => EventKind::Fail {
            error: e.to_string(),
        },
    }
}

/// `LockAdd`: lock, read, (pause,) write, unlock. Only the write can have taken effect, so
/// anything that fails before it is a definite failure.
pub async fn invoke_add(
    client: &mut EtcdClient,
    element: Value,
    fenced: bool,
    pause_ms: u64,
) -> EventKind {
    let held = match acquire(client).await {
        Ok(held) => held,
        Err(e) => return EventKind::Fail { error: e },
    };
    let (mut list, read_mod_revision) = match read_list(client).await {
        Ok((list, mod_revision, _)) => (list, mod_revision),
        Err(e) => {
            release(client, held).await;
            return EventKind::Fail {
                error: format!("read under the lock: {e}"),
            };
        }
    };
    if pause_ms > 0 {
        held.keep_alive.abort();
        pause(client, read_mod_revision, pause_ms).await;
    }
    list.push(element);
    let value = crate::workload::encode_list(&list);
    let written = if fenced {
        client
            .fenced_put(&held.key, held.create_revision, LOCK_SET_KEY, &value)
            .await
    } else {
        client
            .put(LOCK_SET_KEY, &value)
            .await
            .map(|(_, revision)| (true, revision))
    };
    release(client, held).await;
    match written {
        Ok((true, revision)) => EventKind::Ok {
            reply: Reply::Add,
            revision,
        },
        Ok((false, _)) => EventKind::Fail {
            error: "fenced write refused: the lock key is gone (the lease expired)".into(),
        },
        Err(e @ ClientError::Definite(_)) => EventKind::Fail {
            error: e.to_string(),
        },
        Err(e @ ClientError::Indefinite(_)) => EventKind::Info {
            error: e.to_string(),
        },
    }
}
