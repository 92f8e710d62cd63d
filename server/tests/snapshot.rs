//! Backup and restore with real processes: `etcdctl snapshot save` (3.4.23) against Cairn members
//! while clients write, `cairn snapshot restore|status` into new data dirs, and the new cluster
//! started from them (etcd's disaster-recovery procedure, with etcdutl's flags).

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_client::proto::etcdserverpb::kv_client::KvClient;
use cairn_client::proto::etcdserverpb::lease_client::LeaseClient;
use cairn_client::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn_client::proto::etcdserverpb::watch_client::WatchClient;
use cairn_client::proto::etcdserverpb::watch_request::RequestUnion;
use cairn_client::proto::etcdserverpb::{
    request_op, CompactionRequest, DeleteRangeRequest, HashKvRequest, LeaseGrantRequest,
    LeaseTimeToLiveRequest, PutRequest, RangeRequest, RequestOp, SnapshotRequest, StatusRequest,
    TxnRequest, WatchCreateRequest, WatchRequest,
};
use cairn_client::proto::mvccpb::KeyValue;
use cairn_server::cluster::{cluster_id, member_id};
use common::{http_post, wait_for, Cluster, Kind, Member, START_TIMEOUT};
use tonic::transport::Channel;
use tonic::Code;

/// How long one `etcdctl snapshot save` or `cairn snapshot ...` may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

async fn channel(endpoint: &str) -> Channel {
    Channel::from_shared(endpoint.to_string())
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap()
}

/// Runs `cmd` to completion within [`COMMAND_TIMEOUT`] (killed and failed otherwise).
fn run_bounded(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("command starts");
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} did not finish within {COMMAND_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (mut stdout, mut stderr) = (vec![], vec![]);
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    Output {
        status: child.wait().unwrap(),
        stdout,
        stderr,
    }
}

/// `cairn <args>`: exit code and stdout + stderr.
fn cairn(args: &[&str]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.args(args).env_clear();
    let out = run_bounded(cmd);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// `etcdctl snapshot save <file>` against `endpoint`; checks what etcdctl prints.
fn save(endpoint: &str, file: &Path) {
    let mut cmd = common::etcdctl(endpoint, "snapshot save");
    cmd.arg(file);
    let out = run_bounded(cmd);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("Snapshot saved at {}", file.display())),
        "etcdctl snapshot save: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The revision in the file's header, as `cairn snapshot status -w json` reports it.
fn snapshot_revision(file: &Path) -> i64 {
    let (code, out) = cairn(&["snapshot", "status", file.to_str().unwrap(), "-w", "json"]);
    assert_eq!(code, 0, "{out}");
    let status: serde_json::Value = serde_json::from_str(out.trim()).expect(&out);
    assert_eq!(
        status["totalSize"].as_u64().unwrap() + 32,
        std::fs::metadata(file).unwrap().len()
    );
    status["revision"].as_i64().unwrap()
}

/// Every key at `revision` (0: the current one) and the header's revision.
async fn range_all(endpoint: &str, revision: i64) -> Result<(i64, Vec<KeyValue>), tonic::Status> {
    let resp = KvClient::new(channel(endpoint).await)
        .range(RangeRequest {
            key: vec![0].into(),
            range_end: vec![0].into(),
            revision,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok((resp.header.unwrap().revision, resp.kvs))
}

async fn put(endpoint: &str, key: &str, value: &str, lease: i64) -> i64 {
    KvClient::new(channel(endpoint).await)
        .put(PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: value.as_bytes().to_vec().into(),
            lease,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision
}

/// Writes history worth restoring: several versions, deletes, a lease with two keys, a
/// compaction. Returns (lease id, the compacted revision, a later revision to read history at).
async fn write_history(endpoint: &str) -> (i64, i64, i64) {
    let mut kv = KvClient::new(channel(endpoint).await);
    for v in 1..=3 {
        put(endpoint, "a", &format!("a{v}"), 0).await;
    }
    put(endpoint, "b", "b1", 0).await;
    let compacted = put(endpoint, "c", "c1", 0).await;
    kv.delete_range(DeleteRangeRequest {
        key: b"b".to_vec().into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let lease = LeaseClient::new(channel(endpoint).await)
        .lease_grant(LeaseGrantRequest { ttl: 600, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    put(endpoint, "leased/1", "l1", lease).await;
    let historical = put(endpoint, "leased/2", "l2", lease).await;
    put(endpoint, "a", "a4", 0).await;
    put(endpoint, "c", "c2", 0).await;
    kv.compact(CompactionRequest {
        revision: compacted,
        physical: true,
    })
    .await
    .unwrap();
    (lease, compacted, historical)
}

/// Members m1..mn under `dir` (created), not started, of a new cluster with `token`.
fn new_members(dir: &Path, n: usize, token: &str) -> Vec<Member> {
    std::fs::create_dir_all(dir).unwrap();
    Cluster::unstarted(Kind::Cairn, n, dir, &["--initial-cluster-token", token])
}

/// `cairn snapshot restore` of `file` for member `m` (its name, data dir and cluster flags).
fn restore(file: &Path, m: &Member, token: &str, extra: &[&str]) -> (i32, String) {
    let mut args = vec![
        "snapshot",
        "restore",
        file.to_str().unwrap(),
        "--name",
        &m.name,
        "--data-dir",
        m.data_dir.to_str().unwrap(),
        "--initial-cluster",
        &m.initial_cluster,
        "--initial-cluster-token",
        token,
    ];
    let peer = m.peer_url();
    args.extend(["--initial-advertise-peer-urls", &peer]);
    args.extend(extra);
    cairn(&args)
}

/// Restores `file` into each member and starts them all.
fn restore_and_start(file: &Path, members: &mut [Member], token: &str, extra: &[&str]) {
    for m in members.iter() {
        let (code, out) = restore(file, m, token, extra);
        assert_eq!(code, 0, "restore {}: {out}", m.name);
    }
    for m in members.iter_mut() {
        m.spawn_process();
    }
    for m in members.iter_mut() {
        m.wait_healthy();
    }
}

/// A single member (its own cluster) with the history of [`write_history`].
async fn source_member(dir: &Path) -> Member {
    let m = Member::start(Kind::Cairn, &dir.join("source"), &[]);
    write_history(&m.endpoint()).await;
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_saved_under_writes_restores_a_new_three_member_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let source_dir = dir.path().join("source");
    std::fs::create_dir(&source_dir).unwrap();
    let source = Cluster::start(Kind::Cairn, 3, &source_dir, &[]);
    let endpoint = source.members[1].endpoint();
    let (lease, compacted, historical) = write_history(&endpoint).await;

    // Writers keep going on every member while a follower streams its snapshot.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = source
        .endpoints()
        .into_iter()
        .enumerate()
        .map(|(w, e)| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut kv = KvClient::new(channel(&e).await);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let req = PutRequest {
                        key: format!("load/{w}/{n}").into_bytes().into(),
                        value: vec![b'x'; 100].into(),
                        ..Default::default()
                    };
                    // Only the snapshot's content matters here: a failed write is not retried.
                    if kv.put(req).await.is_ok() {
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let file = dir.path().join("backup.db");
    let save_endpoint = endpoint.clone();
    let save_file = file.clone();
    tokio::task::spawn_blocking(move || save(&save_endpoint, &save_file))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut written = 0;
    for w in writers {
        written += w.await.unwrap();
    }
    let revision = snapshot_revision(&file);
    let (now, _) = range_all(&endpoint, 0).await.unwrap();
    assert!(
        written > 0 && revision > historical && revision < now,
        "the snapshot is a point in time between writes: {historical} < {revision} < {now}"
    );
    let (_, at_snapshot) = range_all(&endpoint, revision).await.unwrap();
    let (_, at_historical) = range_all(&endpoint, historical).await.unwrap();
    assert!(at_snapshot.iter().any(|kv| kv.key.starts_with(b"load/")));

    let token = "restored-cluster";
    let mut restored = new_members(&dir.path().join("restored"), 3, token);
    let file_path = file.clone();
    let restored = tokio::task::spawn_blocking(move || {
        restore_and_start(&file_path, &mut restored, token, &[]);
        restored
    })
    .await
    .unwrap();

    // A new cluster: ids from the new flags.
    let ids: Vec<u64> = restored
        .iter()
        .map(|m| member_id(&[m.peer_url()], token))
        .collect();
    let source_status = MaintenanceClient::new(channel(&endpoint).await)
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    for (m, id) in restored.iter().zip(&ids) {
        let header = MaintenanceClient::new(channel(&m.endpoint()).await)
            .status(StatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap();
        assert_eq!(header.member_id, *id);
        assert_eq!(header.cluster_id, cluster_id(&ids));
        assert_ne!(header.cluster_id, source_status.header.unwrap().cluster_id);
    }

    // Every member serves exactly the state at the snapshot's revision, and its history, and
    // hashes it as the source does.
    let hash_at = |endpoint: String| async move {
        MaintenanceClient::new(channel(&endpoint).await)
            .hash_kv(HashKvRequest { revision })
            .await
            .unwrap()
            .into_inner()
            .hash
    };
    let source_hash = hash_at(endpoint.clone()).await;
    for m in &restored {
        assert_eq!(hash_at(m.endpoint()).await, source_hash, "{}", m.name);
    }
    for m in &restored {
        let (rev, kvs) = range_all(&m.endpoint(), 0).await.unwrap();
        assert_eq!(rev, revision, "{}", m.name);
        assert_eq!(kvs, at_snapshot, "{}", m.name);
        let (_, old) = range_all(&m.endpoint(), historical).await.unwrap();
        assert_eq!(old, at_historical, "{}", m.name);
        let err = range_all(&m.endpoint(), compacted - 1).await.unwrap_err();
        assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    }

    // The lease survived with its keys (its TTL restarts at the new leader).
    let ttl = LeaseClient::new(channel(&restored[2].endpoint()).await)
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: lease,
            keys: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ttl.granted_ttl, 600);
    assert!(ttl.ttl > 500, "{ttl:?}");
    let keys: Vec<&[u8]> = ttl.keys.iter().map(|k| k.as_ref()).collect();
    assert_eq!(keys, vec![&b"leased/1"[..], b"leased/2"]);

    // New writes continue the revision sequence, on any member.
    assert_eq!(
        put(&restored[0].endpoint(), "after", "1", lease).await,
        revision + 1
    );
    assert_eq!(
        put(&restored[1].endpoint(), "after", "2", 0).await,
        revision + 2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bump_revision_and_mark_compacted_behave_as_etcdutl_documents() {
    let dir = tempfile::tempdir().unwrap();
    let source = source_member(dir.path()).await;
    let file = dir.path().join("backup.db");
    save(&source.endpoint(), &file);
    let revision = snapshot_revision(&file);
    let (_, kvs) = range_all(&source.endpoint(), revision).await.unwrap();

    let mut members = new_members(&dir.path().join("restored"), 1, "bumped");
    let (code, out) = restore(&file, &members[0], "bumped", &["--bump-revision", "1000"]);
    assert_eq!(code, 2, "etcdutl requires both flags together: {out}");
    assert!(out.contains("--mark-compacted required"), "{out}");
    let (code, out) = restore(&file, &members[0], "bumped", &["--mark-compacted"]);
    assert_eq!(code, 2, "{out}");
    assert!(!members[0].data_dir.exists(), "nothing written");

    restore_and_start(
        &file,
        &mut members,
        "bumped",
        &["--bump-revision", "1000", "--mark-compacted"],
    );
    let endpoint = members[0].endpoint();
    let bumped = revision + 1000;
    assert_eq!(range_all(&endpoint, 0).await.unwrap(), (bumped, kvs));
    let err = range_all(&endpoint, revision).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert!(err.message().contains("compacted"), "{err:?}");

    // A watcher from before the bump learns that its history is compacted.
    let (requests, rx) = tokio::sync::mpsc::channel(1);
    requests
        .send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: b"a".to_vec().into(),
                start_revision: revision,
                ..Default::default()
            })),
        })
        .await
        .unwrap();
    let mut responses = WatchClient::new(channel(&endpoint).await)
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let canceled = loop {
        let resp = tokio::time::timeout(Duration::from_secs(10), responses.message())
            .await
            .expect("a watch response")
            .unwrap()
            .expect("the stream is open");
        if resp.canceled {
            break resp;
        }
        assert!(resp.created && resp.events.is_empty(), "{resp:?}");
    };
    assert_eq!(canceled.compact_revision, bumped);
    assert_eq!(put(&endpoint, "a", "new", 0).await, bumped + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_truncated_and_misdirected_restores_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let source = source_member(dir.path()).await;
    let value = "v".repeat(4000);
    put(&source.endpoint(), "big", &value, 0).await;
    let file = dir.path().join("backup.db");
    save(&source.endpoint(), &file);
    let bytes = std::fs::read(&file).unwrap();
    let members = new_members(&dir.path().join("restored"), 1, "t");
    let m = &members[0];
    let no_member_dir = |m: &Member| {
        !m.data_dir.join("member").exists() && !m.data_dir.join("member.restoring").exists()
    };

    // A flipped byte inside a value: refused, unless the hash check is skipped.
    let mut flipped = bytes.clone();
    let at = flipped
        .windows(value.len())
        .position(|w| w == value.as_bytes())
        .unwrap();
    flipped[at + 10] ^= 0x01;
    let corrupt = dir.path().join("corrupt.db");
    std::fs::write(&corrupt, &flipped).unwrap();
    let (code, out) = restore(&corrupt, m, "t", &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("corrupt") && out.contains("SHA-256"),
        "a clear error: {out}"
    );
    assert!(no_member_dir(m), "a refused restore leaves no member data");
    let (code, out) = cairn(&["snapshot", "status", corrupt.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");

    let truncated = dir.path().join("truncated.db");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    let (code, out) = restore(&truncated, m, "t", &["--skip-hash-check"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("truncated"), "{out}");
    assert!(no_member_dir(m));

    // The local member must be in --initial-cluster with its advertised URLs.
    let mut stranger = new_members(&dir.path().join("stranger"), 1, "t").remove(0);
    stranger.name = "s1".into();
    stranger.initial_cluster = m.initial_cluster.clone();
    let (code, out) = restore(&file, &stranger, "t", &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("\"s1\""), "{out}");

    let (code, out) = restore(&corrupt, m, "t", &["--skip-hash-check"]);
    assert_eq!(
        code, 0,
        "--skip-hash-check restores a file whose content changed: {out}"
    );
    let (code, out) = restore(&file, m, "t", &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("not empty"),
        "a used data dir is refused: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_streams_the_same_bytes_as_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let source = source_member(dir.path()).await;
    let file = dir.path().join("backup.db");
    save(&source.endpoint(), &file);
    let addr = source.addr();
    let (status, body) = tokio::task::spawn_blocking(move || {
        http_post(&addr, "/v3/maintenance/snapshot", "{}", None).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(status, 200);
    let mut bytes = vec![];
    let lines: Vec<serde_json::Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).expect(l))
        .collect();
    for line in &lines {
        let blob = line["result"]["blob"].as_str().expect("a blob");
        bytes.extend(base64_decode(blob));
        assert_eq!(line["result"]["version"], "3.4.0");
    }
    let header = &lines[0]["result"]["header"];
    assert_eq!(
        header["revision"].as_str().unwrap(),
        snapshot_revision(&file).to_string()
    );
    assert_eq!(bytes, std::fs::read(&file).unwrap());
}

/// Standard base64 with padding, as the gateway writes bytes.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let mut out = vec![];
    for chunk in text.trim_end_matches('=').as_bytes().chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &c)| n | u32::from(value(c)) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// The `backup-*` checkpoints in a member's snapshot dir.
fn checkpoints(data_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(data_dir.join("member").join("snap"))
        .map(|entries| {
            entries
                .map(|e| e.unwrap().path())
                .filter(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with("backup-")
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_stream_leaves_no_checkpoint_and_streams_are_limited() {
    let dir = tempfile::tempdir().unwrap();
    let source = Member::start(Kind::Cairn, &dir.path().join("source"), &[]);
    let endpoint = source.endpoint();
    // About 16 MiB: far more than the stream's buffers.
    let mut kv = KvClient::new(channel(&endpoint).await);
    for batch in 0..16 {
        let success = (0..100)
            .map(|i| RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: format!("k/{batch}/{i}").into_bytes().into(),
                    value: vec![b'x'; 10_000].into(),
                    ..Default::default()
                })),
            })
            .collect();
        let txn = TxnRequest {
            success,
            ..Default::default()
        };
        kv.txn(txn).await.unwrap();
    }

    let mut streams = vec![];
    for _ in 0..2 {
        let mut stream = MaintenanceClient::new(channel(&endpoint).await)
            .snapshot(SnapshotRequest {})
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().unwrap();
        assert!(
            first.remaining_bytes > 10_000_000,
            "{}",
            first.remaining_bytes
        );
        streams.push(stream);
    }
    let err = MaintenanceClient::new(channel(&endpoint).await)
        .snapshot(SnapshotRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(checkpoints(&source.data_dir).len(), 2);
    // Writes go on while checkpoints are held.
    put(&endpoint, "during", "1", 0).await;

    drop(streams);
    let data_dir = source.data_dir.clone();
    wait_for("the checkpoints to be removed", START_TIMEOUT, || {
        checkpoints(&data_dir).is_empty().then_some(())
    });
    let file = dir.path().join("after.db");
    save(&endpoint, &file);
}
