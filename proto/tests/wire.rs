//! Pins the wire contract against etcd: exact bytes for field numbers that are easy to get wrong,
//! service names, and the full gRPC method paths that etcd clients call.
//!
//! Expected bytes are written by hand from the protobuf encoding rules: a field's tag is
//! `(field_number << 3) | wire_type` as a varint (wire type 0 = varint, 2 = length-delimited).

use cairn_proto::{authpb, cairnpb, etcdserverpb, grpc_health_v1, mvccpb, v3electionpb, v3lockpb};
use prost::bytes::Bytes;
use prost::Message;

fn encode<M: Message>(message: &M) -> Vec<u8> {
    message.encode_to_vec()
}

#[test]
fn watch_response_events_is_field_11() {
    let response = etcdserverpb::WatchResponse {
        events: vec![mvccpb::Event::default()],
        ..Default::default()
    };
    // 11 << 3 | 2 = 0x5a, then an empty Event.
    assert_eq!(encode(&response), [0x5a, 0x00]);
}

#[test]
fn watch_response_fields_2_to_7() {
    let response = etcdserverpb::WatchResponse {
        watch_id: 1,
        created: true,
        canceled: true,
        compact_revision: 2,
        cancel_reason: "x".into(),
        fragment: true,
        ..Default::default()
    };
    assert_eq!(
        encode(&response),
        [0x10, 0x01, 0x18, 0x01, 0x20, 0x01, 0x28, 0x02, 0x32, 0x01, b'x', 0x38, 0x01]
    );
}

#[test]
fn compare_range_end_is_field_64() {
    let compare = etcdserverpb::Compare {
        range_end: Bytes::from_static(b"a"),
        ..Default::default()
    };
    // 64 << 3 | 2 = 514 = varint [0x82, 0x04].
    assert_eq!(encode(&compare), [0x82, 0x04, 0x01, b'a']);
}

#[test]
fn compare_target_union_keeps_explicit_zero() {
    use etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
    // `create_revision == 0` means "key absent"; the oneof member must be sent even when zero.
    let compare = etcdserverpb::Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: Bytes::from_static(b"k"),
        target_union: Some(TargetUnion::CreateRevision(0)),
        range_end: Bytes::new(),
    };
    let wire = encode(&compare);
    assert_eq!(wire, [0x10, 0x01, 0x1a, 0x01, b'k', 0x28, 0x00]);
    let decoded = etcdserverpb::Compare::decode(wire.as_slice()).expect("valid encoding");
    assert_eq!(decoded.target_union, Some(TargetUnion::CreateRevision(0)));

    let lease = etcdserverpb::Compare {
        target_union: Some(TargetUnion::Lease(3)),
        ..Default::default()
    };
    assert_eq!(encode(&lease), [0x40, 0x03]);
}

#[test]
fn compare_enum_values() {
    use etcdserverpb::compare::{CompareResult, CompareTarget};
    assert_eq!(CompareResult::NotEqual as i32, 3);
    assert_eq!(CompareResult::NotEqual.as_str_name(), "NOT_EQUAL");
    assert_eq!(CompareTarget::Lease as i32, 4);
    assert_eq!(CompareTarget::Value as i32, 3);
}

#[test]
fn range_request_revision_filters_are_fields_10_to_13() {
    let request = etcdserverpb::RangeRequest {
        min_mod_revision: 1,
        max_mod_revision: 2,
        min_create_revision: 3,
        max_create_revision: 4,
        ..Default::default()
    };
    assert_eq!(
        encode(&request),
        [0x50, 0x01, 0x58, 0x02, 0x60, 0x03, 0x68, 0x04]
    );
}

#[test]
fn range_request_sort_enums() {
    use etcdserverpb::range_request::{SortOrder, SortTarget};
    let request = etcdserverpb::RangeRequest {
        sort_order: SortOrder::Descend as i32,
        sort_target: SortTarget::Value as i32,
        ..Default::default()
    };
    assert_eq!(encode(&request), [0x28, 0x02, 0x30, 0x04]);
}

#[test]
fn range_stream_response_wraps_range_response() {
    let chunk = etcdserverpb::RangeStreamResponse {
        range_response: Some(etcdserverpb::RangeResponse {
            count: 1,
            ..Default::default()
        }),
    };
    assert_eq!(encode(&chunk), [0x0a, 0x02, 0x20, 0x01]);
}

#[test]
fn status_response_fields_7_to_13() {
    let status = etcdserverpb::StatusResponse {
        raft_applied_index: 5,
        errors: vec!["e".into()],
        db_size_in_use: 6,
        is_learner: true,
        storage_version: "v".into(),
        db_size_quota: 7,
        downgrade_info: Some(etcdserverpb::DowngradeInfo {
            enabled: true,
            target_version: "t".into(),
        }),
        ..Default::default()
    };
    #[rustfmt::skip]
    let expected = [
        0x38, 0x05,             // 7 raftAppliedIndex
        0x42, 0x01, b'e',       // 8 errors
        0x48, 0x06,             // 9 dbSizeInUse
        0x50, 0x01,             // 10 isLearner
        0x5a, 0x01, b'v',       // 11 storageVersion
        0x60, 0x07,             // 12 dbSizeQuota
        0x6a, 0x05,             // 13 downgradeInfo
        0x08, 0x01,             //   1 enabled
        0x12, 0x01, b't',       //   2 targetVersion
    ];
    assert_eq!(encode(&status), expected);
}

#[test]
fn hash_kv_and_snapshot_3_6_fields() {
    let hash = etcdserverpb::HashKvResponse {
        hash_revision: 9,
        ..Default::default()
    };
    assert_eq!(encode(&hash), [0x20, 0x09]);
    let snapshot = etcdserverpb::SnapshotResponse {
        remaining_bytes: 1,
        blob: Bytes::from_static(b"b"),
        version: "3".into(),
        ..Default::default()
    };
    assert_eq!(
        encode(&snapshot),
        [0x10, 0x01, 0x1a, 0x01, b'b', 0x22, 0x01, b'3']
    );
}

#[test]
fn watch_request_union_and_create_filters() {
    use etcdserverpb::watch_create_request::FilterType;
    use etcdserverpb::watch_request::RequestUnion;
    let progress = etcdserverpb::WatchRequest {
        request_union: Some(RequestUnion::ProgressRequest(
            etcdserverpb::WatchProgressRequest {},
        )),
    };
    assert_eq!(encode(&progress), [0x1a, 0x00]);

    let create = etcdserverpb::WatchCreateRequest {
        filters: vec![FilterType::Noput as i32, FilterType::Nodelete as i32],
        prev_kv: true,
        watch_id: 7,
        fragment: true,
        ..Default::default()
    };
    // proto3 packs repeated enums: field 5, length 2, values 0 and 1.
    assert_eq!(
        encode(&create),
        [0x2a, 0x02, 0x00, 0x01, 0x30, 0x01, 0x38, 0x07, 0x40, 0x01]
    );
    // An unpacked encoding (one tag per value) must decode to the same thing.
    let unpacked = [0x28, 0x00, 0x28, 0x01];
    let decoded =
        etcdserverpb::WatchCreateRequest::decode(unpacked.as_slice()).expect("valid encoding");
    assert_eq!(decoded.filters, [0, 1]);
}

#[test]
fn txn_request_oneofs_round_trip() {
    use etcdserverpb::request_op::Request;
    use etcdserverpb::response_op::Response;
    let put = etcdserverpb::RequestOp {
        request: Some(Request::RequestPut(etcdserverpb::PutRequest {
            key: Bytes::from_static(b"k"),
            ..Default::default()
        })),
    };
    let nested = etcdserverpb::RequestOp {
        request: Some(Request::RequestTxn(etcdserverpb::TxnRequest::default())),
    };
    let txn = etcdserverpb::TxnRequest {
        compare: vec![],
        success: vec![put],
        failure: vec![nested],
    };
    let wire = encode(&txn);
    // success(2) { request_put(2) { key(1) "k" } }, failure(3) { request_txn(4) {} }
    assert_eq!(
        wire,
        [0x12, 0x05, 0x12, 0x03, 0x0a, 0x01, b'k', 0x1a, 0x02, 0x22, 0x00]
    );
    assert_eq!(
        etcdserverpb::TxnRequest::decode(wire.as_slice()).expect("valid encoding"),
        txn
    );

    let response = etcdserverpb::ResponseOp {
        response: Some(Response::ResponseDeleteRange(
            etcdserverpb::DeleteRangeResponse {
                deleted: 1,
                ..Default::default()
            },
        )),
    };
    assert_eq!(encode(&response), [0x1a, 0x02, 0x10, 0x01]);
}

#[test]
fn lease_and_member_field_names_and_numbers() {
    let ttl = etcdserverpb::LeaseTimeToLiveResponse {
        id: 1,
        ttl: 2,
        granted_ttl: 3,
        keys: vec![Bytes::from_static(b"k")],
        ..Default::default()
    };
    assert_eq!(
        encode(&ttl),
        [0x10, 0x01, 0x18, 0x02, 0x20, 0x03, 0x2a, 0x01, b'k']
    );
    let grant = etcdserverpb::LeaseGrantRequest { ttl: 5, id: 6 };
    assert_eq!(encode(&grant), [0x08, 0x05, 0x10, 0x06]);
    let checkpoint = etcdserverpb::LeaseCheckpoint {
        id: 1,
        remaining_ttl: 2,
    };
    assert_eq!(encode(&checkpoint), [0x08, 0x01, 0x10, 0x02]);

    let member = etcdserverpb::Member {
        id: 1,
        name: "n".into(),
        peer_ur_ls: vec!["p".into()],
        client_ur_ls: vec!["c".into()],
        is_learner: true,
    };
    assert_eq!(
        encode(&member),
        [0x08, 0x01, 0x12, 0x01, b'n', 0x1a, 0x01, b'p', 0x22, 0x01, b'c', 0x28, 0x01]
    );
}

#[test]
fn maintenance_and_auth_fields() {
    use etcdserverpb::alarm_request::AlarmAction;
    let alarm = etcdserverpb::AlarmRequest {
        action: AlarmAction::Deactivate as i32,
        member_id: 4,
        alarm: etcdserverpb::AlarmType::Corrupt as i32,
    };
    assert_eq!(encode(&alarm), [0x08, 0x02, 0x10, 0x04, 0x18, 0x02]);
    let move_leader = etcdserverpb::MoveLeaderRequest { target_id: 3 };
    assert_eq!(encode(&move_leader), [0x08, 0x03]);

    let user_add = etcdserverpb::AuthUserAddRequest {
        options: Some(authpb::UserAddOptions { no_password: true }),
        hashed_password: "h".into(),
        ..Default::default()
    };
    assert_eq!(
        encode(&user_add),
        [0x1a, 0x02, 0x08, 0x01, 0x22, 0x01, b'h']
    );
    let status = etcdserverpb::AuthStatusResponse {
        enabled: true,
        auth_revision: 2,
        ..Default::default()
    };
    assert_eq!(encode(&status), [0x10, 0x01, 0x18, 0x02]);
    let permission = authpb::Permission {
        perm_type: authpb::permission::Type::Readwrite as i32,
        key: Bytes::from_static(b"a"),
        range_end: Bytes::from_static(b"b"),
    };
    assert_eq!(
        encode(&permission),
        [0x08, 0x02, 0x12, 0x01, b'a', 0x1a, 0x01, b'b']
    );
}

#[test]
fn mvcc_key_value_and_event() {
    let kv = mvccpb::KeyValue {
        key: Bytes::from_static(b"k"),
        create_revision: 2,
        mod_revision: 3,
        version: 4,
        value: Bytes::from_static(b"v"),
        lease: 6,
    };
    assert_eq!(
        encode(&kv),
        [0x0a, 0x01, b'k', 0x10, 0x02, 0x18, 0x03, 0x20, 0x04, 0x2a, 0x01, b'v', 0x30, 0x06]
    );
    let event = mvccpb::Event {
        r#type: mvccpb::event::EventType::Delete as i32,
        kv: None,
        prev_kv: Some(mvccpb::KeyValue::default()),
    };
    assert_eq!(encode(&event), [0x08, 0x01, 0x1a, 0x00]);
}

#[test]
fn lock_election_and_health_fields() {
    let lock = v3lockpb::LockResponse {
        header: None,
        key: Bytes::from_static(b"k"),
    };
    assert_eq!(encode(&lock), [0x12, 0x01, b'k']);
    let leader = v3electionpb::LeaderKey {
        rev: 3,
        lease: 4,
        ..Default::default()
    };
    assert_eq!(encode(&leader), [0x18, 0x03, 0x20, 0x04]);
    let health = grpc_health_v1::HealthCheckResponse {
        status: grpc_health_v1::health_check_response::ServingStatus::ServiceUnknown as i32,
    };
    assert_eq!(encode(&health), [0x08, 0x03]);
}

#[test]
fn cairn_internal_request_wraps_etcd_requests() {
    let request = cairnpb::InternalRequest {
        id: 1,
        request: Some(cairnpb::internal_request::Request::Compaction(
            etcdserverpb::CompactionRequest {
                revision: 2,
                physical: false,
            },
        )),
        ..Default::default()
    };
    assert_eq!(encode(&request), [0x08, 0x01, 0x2a, 0x02, 0x08, 0x02]);
    // The caller of an authorised request rides along (fields 12 and 13).
    let request = cairnpb::InternalRequest {
        username: "u".into(),
        auth_revision: 3,
        ..request
    };
    assert_eq!(
        encode(&request),
        [0x08, 0x01, 0x2a, 0x02, 0x08, 0x02, 0x62, 0x01, b'u', 0x68, 0x03]
    );
}

/// Service names as tonic routes them; naming each server type also proves it was generated.
#[test]
fn service_names() {
    use tonic::server::NamedService;
    fn name<S: NamedService>() -> &'static str {
        S::NAME
    }
    assert_eq!(
        name::<etcdserverpb::kv_server::KvServer<()>>(),
        "etcdserverpb.KV"
    );
    assert_eq!(
        name::<etcdserverpb::watch_server::WatchServer<()>>(),
        "etcdserverpb.Watch"
    );
    assert_eq!(
        name::<etcdserverpb::lease_server::LeaseServer<()>>(),
        "etcdserverpb.Lease"
    );
    assert_eq!(
        name::<etcdserverpb::cluster_server::ClusterServer<()>>(),
        "etcdserverpb.Cluster"
    );
    assert_eq!(
        name::<etcdserverpb::maintenance_server::MaintenanceServer<()>>(),
        "etcdserverpb.Maintenance"
    );
    assert_eq!(
        name::<etcdserverpb::auth_server::AuthServer<()>>(),
        "etcdserverpb.Auth"
    );
    assert_eq!(
        name::<v3lockpb::lock_server::LockServer<()>>(),
        "v3lockpb.Lock"
    );
    assert_eq!(
        name::<v3electionpb::election_server::ElectionServer<()>>(),
        "v3electionpb.Election"
    );
    assert_eq!(
        name::<grpc_health_v1::health_server::HealthServer<()>>(),
        "grpc.health.v1.Health"
    );
    assert_eq!(
        name::<cairnpb::peer_server::PeerServer<()>>(),
        "cairnpb.Peer"
    );
}

/// Clients exist for every service too (the types are named; nothing is connected).
#[allow(dead_code)]
type Clients = (
    etcdserverpb::kv_client::KvClient<tonic::transport::Channel>,
    etcdserverpb::watch_client::WatchClient<tonic::transport::Channel>,
    etcdserverpb::lease_client::LeaseClient<tonic::transport::Channel>,
    etcdserverpb::cluster_client::ClusterClient<tonic::transport::Channel>,
    etcdserverpb::maintenance_client::MaintenanceClient<tonic::transport::Channel>,
    etcdserverpb::auth_client::AuthClient<tonic::transport::Channel>,
    v3lockpb::lock_client::LockClient<tonic::transport::Channel>,
    v3electionpb::election_client::ElectionClient<tonic::transport::Channel>,
    grpc_health_v1::health_client::HealthClient<tonic::transport::Channel>,
    cairnpb::peer_client::PeerClient<tonic::transport::Channel>,
);

/// Every method path etcd clients call (etcd-api.md §1.2), as it appears in the generated routing.
const ETCD_METHOD_PATHS: &[&str] = &[
    "/etcdserverpb.KV/Range",
    "/etcdserverpb.KV/RangeStream",
    "/etcdserverpb.KV/Put",
    "/etcdserverpb.KV/DeleteRange",
    "/etcdserverpb.KV/Txn",
    "/etcdserverpb.KV/Compact",
    "/etcdserverpb.Watch/Watch",
    "/etcdserverpb.Lease/LeaseGrant",
    "/etcdserverpb.Lease/LeaseRevoke",
    "/etcdserverpb.Lease/LeaseKeepAlive",
    "/etcdserverpb.Lease/LeaseTimeToLive",
    "/etcdserverpb.Lease/LeaseLeases",
    "/etcdserverpb.Cluster/MemberAdd",
    "/etcdserverpb.Cluster/MemberRemove",
    "/etcdserverpb.Cluster/MemberUpdate",
    "/etcdserverpb.Cluster/MemberList",
    "/etcdserverpb.Cluster/MemberPromote",
    "/etcdserverpb.Maintenance/Alarm",
    "/etcdserverpb.Maintenance/Status",
    "/etcdserverpb.Maintenance/Defragment",
    "/etcdserverpb.Maintenance/Hash",
    "/etcdserverpb.Maintenance/HashKV",
    "/etcdserverpb.Maintenance/Snapshot",
    "/etcdserverpb.Maintenance/MoveLeader",
    "/etcdserverpb.Maintenance/Downgrade",
    "/etcdserverpb.Auth/AuthEnable",
    "/etcdserverpb.Auth/AuthDisable",
    "/etcdserverpb.Auth/AuthStatus",
    "/etcdserverpb.Auth/Authenticate",
    "/etcdserverpb.Auth/UserAdd",
    "/etcdserverpb.Auth/UserGet",
    "/etcdserverpb.Auth/UserList",
    "/etcdserverpb.Auth/UserDelete",
    "/etcdserverpb.Auth/UserChangePassword",
    "/etcdserverpb.Auth/UserGrantRole",
    "/etcdserverpb.Auth/UserRevokeRole",
    "/etcdserverpb.Auth/RoleAdd",
    "/etcdserverpb.Auth/RoleGet",
    "/etcdserverpb.Auth/RoleList",
    "/etcdserverpb.Auth/RoleDelete",
    "/etcdserverpb.Auth/RoleGrantPermission",
    "/etcdserverpb.Auth/RoleRevokePermission",
    "/v3electionpb.Election/Campaign",
    "/v3electionpb.Election/Proclaim",
    "/v3electionpb.Election/Leader",
    "/v3electionpb.Election/Observe",
    "/v3electionpb.Election/Resign",
    "/v3lockpb.Lock/Lock",
    "/v3lockpb.Lock/Unlock",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
];

#[test]
fn every_etcd_method_path_is_routed() {
    let generated = [
        include_str!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs")),
        include_str!(concat!(env!("OUT_DIR"), "/v3electionpb.rs")),
        include_str!(concat!(env!("OUT_DIR"), "/v3lockpb.rs")),
        include_str!(concat!(env!("OUT_DIR"), "/grpc.health.v1.rs")),
    ]
    .concat();
    for path in ETCD_METHOD_PATHS {
        // The server's router matches on the quoted path followed by `=>`.
        let route = format!("\"{path}\" =>");
        assert!(generated.contains(&route), "no server route for {path}");
    }
}
