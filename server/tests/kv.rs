//! Integration tests: a real `cairn` process, spoken to over gRPC and HTTP.

mod common;

use cairn_client::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn_client::proto::etcdserverpb::{
    compare, request_op, response_op, Compare, DefragmentRequest, DeleteRangeRequest,
    DowngradeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use cairn_client::proto::grpc_health_v1::health_check_response::ServingStatus;
use cairn_client::proto::grpc_health_v1::health_client::HealthClient;
use cairn_client::proto::grpc_health_v1::HealthCheckRequest;
use cairn_client::Client;
use common::{http_get, Kind, Member};
use tonic::Code;

fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: value.as_bytes().to_vec().into(),
            ..Default::default()
        })),
    }
}

fn get_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: key.as_bytes().to_vec().into(),
            ..Default::default()
        })),
    }
}

fn status_of(e: cairn_client::Error) -> tonic::Status {
    match e {
        cairn_client::Error::Status(s) => s,
        other => panic!("expected a status, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_basics_headers_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let m = Member::start(Kind::Cairn, &dir.path().join("m1"), &[]);
    let mut c = Client::connect(m.endpoint()).await.unwrap();

    let status = c.status().await.unwrap();
    let header = status.header.unwrap();
    assert_eq!(header.revision, 1, "an empty store is at revision 1");
    assert_ne!(header.cluster_id, 0);
    assert_eq!(status.leader, header.member_id, "a single member leads");
    assert_eq!(status.version, "3.4.23");

    let put = c.put("foo", "bar").await.unwrap();
    assert_eq!(put.header.unwrap().revision, 2);
    let kv = c.get("foo").await.unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 2, 1));
    assert_eq!(&kv.value[..], b"bar");

    // A txn runs at one revision and its reads see its own earlier writes.
    let txn = c
        .txn(TxnRequest {
            compare: vec![Compare {
                key: b"foo".to_vec().into(),
                target: compare::CompareTarget::Value as i32,
                target_union: Some(compare::TargetUnion::Value(b"bar".to_vec().into())),
                ..Default::default()
            }],
            success: vec![put_op("foo", "baz"), put_op("other", "1"), get_op("foo")],
            failure: vec![],
        })
        .await
        .unwrap();
    assert!(txn.succeeded);
    assert_eq!(txn.header.unwrap().revision, 3);
    match &txn.responses[2].response {
        Some(response_op::Response::ResponseRange(r)) => {
            assert_eq!(&r.kvs[0].value[..], b"baz");
            assert_eq!(r.kvs[0].mod_revision, 3);
        }
        other => panic!("unexpected {other:?}"),
    }

    // A read-only txn is served locally: it leaves no entry in the raft log.
    let raft_index = c.status().await.unwrap().raft_index;
    let read = c
        .txn(TxnRequest {
            success: vec![get_op("foo")],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(read.header.unwrap().revision, 3);
    assert_eq!(c.status().await.unwrap().raft_index, raft_index);

    // Deleting nothing does not bump the revision.
    let del = c
        .delete(DeleteRangeRequest {
            key: b"nothing".to_vec().into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((del.deleted, del.header.unwrap().revision), (0, 3));

    let e = status_of(c.put("", "v").await.unwrap_err());
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, "etcdserver: key is not provided")
    );
    let e = status_of(
        c.range(RangeRequest {
            key: b"foo".to_vec().into(),
            revision: 99,
            ..Default::default()
        })
        .await
        .unwrap_err(),
    );
    assert_eq!(
        (e.code(), e.message()),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision"
        )
    );
    c.compact(3, true).await.unwrap();
    let e = status_of(
        c.range(RangeRequest {
            key: b"foo".to_vec().into(),
            revision: 2,
            ..Default::default()
        })
        .await
        .unwrap_err(),
    );
    assert_eq!(
        (e.code(), e.message()),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted"
        )
    );
    let e = status_of(c.put("big", vec![b'x'; 1_600_000]).await.unwrap_err());
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, "etcdserver: request is too large")
    );
    let e = status_of(
        c.put_request(PutRequest {
            key: b"foo".to_vec().into(),
            lease: 7,
            ..Default::default()
        })
        .await
        .unwrap_err(),
    );
    assert_eq!(
        (e.code(), e.message()),
        (Code::NotFound, "etcdserver: requested lease not found")
    );

    // Services that are not built yet say which method is missing.
    let channel = tonic::transport::Endpoint::from_shared(m.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let e = MaintenanceClient::new(channel.clone())
        .downgrade(DowngradeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    assert!(
        e.message().contains("/etcdserverpb.Maintenance/Downgrade"),
        "{}",
        e.message()
    );

    let mut health = HealthClient::new(channel.clone());
    let serving = health
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(serving.status, ServingStatus::Serving as i32);

    // Probes (etcd 3.5.12+): plain `ok`, every check with `?verbose`, one check by sub-path.
    assert_eq!(
        http_get(&m.addr(), "/livez").unwrap(),
        (200, "ok\n".to_string())
    );
    let (code, body) = http_get(&m.addr(), "/readyz?verbose").unwrap();
    assert_eq!(code, 200);
    assert_eq!(
        body,
        "[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\n[+]non_learner ok\nok\n"
    );
    let (_, body) = http_get(&m.addr(), "/readyz?verbose&exclude=non_learner").unwrap();
    assert!(body.contains("[+]non_learner excluded: ok\n"), "{body}");
    let one = http_get(&m.addr(), "/readyz/linearizable_read").unwrap();
    assert_eq!(one, (200, "ok\n".to_string()));
    assert_eq!(http_get(&m.addr(), "/livez/nothing").unwrap().0, 404);

    let (code, body) = http_get(&m.addr(), "/version").unwrap();
    assert_eq!(code, 200);
    assert_eq!(
        body.trim(),
        r#"{"etcdserver":"3.4.23","etcdcluster":"3.4.0"}"#
    );
    let members = c.member_list().await.unwrap().members;
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].client_ur_ls, vec![m.endpoint()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_and_revisions_survive_restart_and_sigterm_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::start(Kind::Cairn, &dir.path().join("m1"), &[]);
    let mut c = Client::connect(m.endpoint()).await.unwrap();
    for i in 0..50 {
        c.put(format!("k{i:02}"), format!("v{i}")).await.unwrap();
    }
    c.delete(DeleteRangeRequest {
        key: b"k4".to_vec().into(),
        range_end: b"k5".to_vec().into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let before = c.get_prefix("k").await.unwrap();
    assert_eq!(before.count, 40);
    assert!(m.terminate().success(), "SIGTERM exits cleanly");

    // Like etcd, a member with data ignores the bootstrap flags.
    m.initial_cluster_state = "existing".into();
    m.restart();
    let mut c = Client::connect(m.endpoint()).await.unwrap();
    let after = c.get_prefix("k").await.unwrap();
    assert_eq!(after.kvs, before.kvs);
    assert_eq!(after.header.unwrap().revision, 52);
    // History from before the restart is still readable.
    let old = c
        .range(RangeRequest {
            key: b"k45".to_vec().into(),
            revision: 51,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(&old.kvs[0].value[..], b"v45");
    assert_eq!(
        c.put("new", "x").await.unwrap().header.unwrap().revision,
        53
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_and_defragment_give_space_back() {
    let dir = tempfile::tempdir().unwrap();
    let m = Member::start(Kind::Cairn, &dir.path().join("m1"), &[]);
    let mut c = Client::connect(m.endpoint()).await.unwrap();
    for i in 0..200 {
        c.put(format!("big/{i:03}"), vec![b'x'; 20_000])
            .await
            .unwrap();
    }
    let deleted = c
        .delete(DeleteRangeRequest {
            key: b"big/".to_vec().into(),
            range_end: b"big0".to_vec().into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(deleted.deleted, 200);
    let full = c.status().await.unwrap().db_size;
    c.compact(deleted.header.unwrap().revision, true)
        .await
        .unwrap();
    let channel = tonic::transport::Endpoint::from_shared(m.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    MaintenanceClient::new(channel)
        .defragment(DefragmentRequest {})
        .await
        .unwrap();
    let after = c.status().await.unwrap().db_size;
    assert!(
        after * 4 < full,
        "db size {full} -> {after} after compaction and defragment"
    );
}

#[test]
fn flags_are_checked_like_etcd() {
    let bin = env!("CARGO_BIN_EXE_cairn");
    let out = std::process::Command::new(bin)
        .arg("--no-such-flag")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
    let out = std::process::Command::new(bin)
        .arg("--peer-client-cert-file=client.pem")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--peer-client-cert-file"));
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("cairn "));
}
