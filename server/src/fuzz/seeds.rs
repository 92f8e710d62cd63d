//! The seed corpus: real encoded messages of every kind each target reads, written under
//! `server/fuzz/corpus/<target>/<name>`. Messages are written here as etcd's JSON (proto field
//! names, bytes in base64) and encoded through the protos' descriptors, so each seed is exactly
//! what a client, the gateway or a proposer would send.
//!
//! `CAIRN_FUZZ_WRITE_SEEDS=1 cargo test -p cairn-server --lib fuzz::seeds` rewrites the files;
//! without it the test checks that the committed files match (inputs the fuzzer found, named
//! `crash-*` or `grown-*`, are left alone).

use cairn_proto::cairnpb::{InternalRequest, RaftBatch};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};
use raft::eraftpb;

use super::targets::METHODS;
use crate::api::gateway;

/// Requests for every method the client port serves: `(method, JSON)`.
const REQUESTS: &[(&str, &str)] = &[
    (
        "/etcdserverpb.KV/Range",
        r#"{"key":"YQ==","range_end":"eg==","limit":"3","revision":"4","sort_order":"DESCEND","sort_target":"MOD","min_mod_revision":"1","max_create_revision":"9"}"#,
    ),
    (
        "/etcdserverpb.KV/Range",
        r#"{"key":"AA==","range_end":"AA==","serializable":true,"keys_only":true,"count_only":true}"#,
    ),
    (
        "/etcdserverpb.KV/Put",
        r#"{"key":"Zm9v","value":"YmFy","lease":"7","prev_kv":true}"#,
    ),
    (
        "/etcdserverpb.KV/Put",
        r#"{"key":"Zm9v","ignore_value":true,"ignore_lease":true}"#,
    ),
    (
        "/etcdserverpb.KV/DeleteRange",
        r#"{"key":"YQ==","range_end":"Yw==","prev_kv":true}"#,
    ),
    (
        "/etcdserverpb.KV/Txn",
        r#"{"compare":[{"result":"EQUAL","target":"VALUE","key":"YQ==","value":"MQ=="},{"result":"LESS","target":"MOD","key":"aw==","range_end":"bA==","mod_revision":"9"},{"target":"LEASE","key":"bA==","lease":"7"}],"success":[{"request_put":{"key":"cA==","value":"dg=="}},{"request_range":{"key":"YQ==","range_end":"eg==","revision":"5"}},{"request_delete_range":{"key":"ZA==","range_end":"ZQ=="}},{"request_txn":{"compare":[{"target":"VERSION","key":"YQ==","version":"1"}],"success":[{"request_put":{"key":"cQ=="}}],"failure":[{"request_delete_range":{"key":"cg=="}}]}}],"failure":[{"request_range":{"key":"YQ==","serializable":true}}]}"#,
    ),
    (
        "/etcdserverpb.KV/Txn",
        r#"{"compare":[{"result":"GREATER","target":"CREATE","key":"YQ==","create_revision":"1"}],"success":[{"request_range":{"key":"YQ==","count_only":true}},{"request_txn":{"success":[{"request_range":{"key":"Yg==","revision":"2"}}]}}]}"#,
    ),
    (
        "/etcdserverpb.KV/Compact",
        r#"{"revision":"3","physical":true}"#,
    ),
    (
        "/etcdserverpb.Watch/Watch",
        r#"{"create_request":{"key":"YQ==","range_end":"eg==","start_revision":"2","progress_notify":true,"filters":["NOPUT"],"prev_kv":true,"watch_id":"5","fragment":true}}"#,
    ),
    (
        "/etcdserverpb.Watch/Watch",
        r#"{"cancel_request":{"watch_id":"5"}}"#,
    ),
    ("/etcdserverpb.Watch/Watch", r#"{"progress_request":{}}"#),
    ("/etcdserverpb.Lease/LeaseGrant", r#"{"TTL":"60","ID":"7"}"#),
    ("/etcdserverpb.Lease/LeaseRevoke", r#"{"ID":"7"}"#),
    ("/etcdserverpb.Lease/LeaseKeepAlive", r#"{"ID":"7"}"#),
    (
        "/etcdserverpb.Lease/LeaseTimeToLive",
        r#"{"ID":"7","keys":true}"#,
    ),
    ("/etcdserverpb.Lease/LeaseLeases", r#"{}"#),
    (
        "/etcdserverpb.Cluster/MemberAdd",
        r#"{"peerURLs":["http://127.0.0.1:2380","https://10.0.0.2:2380"],"isLearner":true}"#,
    ),
    ("/etcdserverpb.Cluster/MemberRemove", r#"{"ID":"12345"}"#),
    (
        "/etcdserverpb.Cluster/MemberUpdate",
        r#"{"ID":"12345","peerURLs":["http://[::1]:2380"]}"#,
    ),
    (
        "/etcdserverpb.Cluster/MemberList",
        r#"{"linearizable":true}"#,
    ),
    ("/etcdserverpb.Cluster/MemberPromote", r#"{"ID":"12345"}"#),
    (
        "/etcdserverpb.Maintenance/Alarm",
        r#"{"action":"ACTIVATE","memberID":"1","alarm":"NOSPACE"}"#,
    ),
    ("/etcdserverpb.Maintenance/Status", r#"{}"#),
    ("/etcdserverpb.Maintenance/Defragment", r#"{}"#),
    ("/etcdserverpb.Maintenance/Hash", r#"{}"#),
    ("/etcdserverpb.Maintenance/HashKV", r#"{"revision":"4"}"#),
    ("/etcdserverpb.Maintenance/Snapshot", r#"{}"#),
    (
        "/etcdserverpb.Maintenance/MoveLeader",
        r#"{"targetID":"2"}"#,
    ),
    (
        "/etcdserverpb.Maintenance/Downgrade",
        r#"{"action":"ENABLE","version":"3.4"}"#,
    ),
    ("/etcdserverpb.Auth/AuthEnable", r#"{}"#),
    ("/etcdserverpb.Auth/AuthDisable", r#"{}"#),
    ("/etcdserverpb.Auth/AuthStatus", r#"{}"#),
    (
        "/etcdserverpb.Auth/Authenticate",
        r#"{"name":"root","password":"secret"}"#,
    ),
    (
        "/etcdserverpb.Auth/UserAdd",
        r#"{"name":"u","password":"p","options":{"no_password":false}}"#,
    ),
    ("/etcdserverpb.Auth/UserGet", r#"{"name":"u"}"#),
    ("/etcdserverpb.Auth/UserList", r#"{}"#),
    ("/etcdserverpb.Auth/UserDelete", r#"{"name":"u"}"#),
    (
        "/etcdserverpb.Auth/UserChangePassword",
        r#"{"name":"u","password":"q"}"#,
    ),
    (
        "/etcdserverpb.Auth/UserGrantRole",
        r#"{"user":"u","role":"r"}"#,
    ),
    (
        "/etcdserverpb.Auth/UserRevokeRole",
        r#"{"name":"u","role":"r"}"#,
    ),
    ("/etcdserverpb.Auth/RoleAdd", r#"{"name":"r"}"#),
    ("/etcdserverpb.Auth/RoleGet", r#"{"role":"r"}"#),
    ("/etcdserverpb.Auth/RoleList", r#"{}"#),
    ("/etcdserverpb.Auth/RoleDelete", r#"{"role":"r"}"#),
    (
        "/etcdserverpb.Auth/RoleGrantPermission",
        r#"{"name":"r","perm":{"permType":"READWRITE","key":"YQ==","range_end":"eg=="}}"#,
    ),
    (
        "/etcdserverpb.Auth/RoleRevokePermission",
        r#"{"role":"r","key":"YQ==","range_end":"eg=="}"#,
    ),
    (
        "/v3electionpb.Election/Campaign",
        r#"{"name":"ZWxlY3Rpb24=","lease":"7","value":"djE="}"#,
    ),
    (
        "/v3electionpb.Election/Proclaim",
        r#"{"leader":{"name":"ZWxlY3Rpb24=","key":"ZWxlY3Rpb24vNw==","rev":"5","lease":"7"},"value":"djI="}"#,
    ),
    (
        "/v3electionpb.Election/Leader",
        r#"{"name":"ZWxlY3Rpb24="}"#,
    ),
    (
        "/v3electionpb.Election/Observe",
        r#"{"name":"ZWxlY3Rpb24="}"#,
    ),
    (
        "/v3electionpb.Election/Resign",
        r#"{"leader":{"name":"ZWxlY3Rpb24=","key":"ZWxlY3Rpb24vNw==","rev":"5","lease":"7"}}"#,
    ),
    ("/v3lockpb.Lock/Lock", r#"{"name":"bG9jaw==","lease":"7"}"#),
    ("/v3lockpb.Lock/Unlock", r#"{"key":"bG9jay83"}"#),
    ("/grpc.health.v1.Health/Check", r#"{"service":""}"#),
    (
        "/grpc.health.v1.Health/Watch",
        r#"{"service":"etcdserverpb.KV"}"#,
    ),
];

/// Committed entries: every `InternalRequest` variant (and every auth change), as proposed.
const INTERNAL_REQUESTS: &[(&str, &str)] = &[
    (
        "put",
        r#"{"id":"101","put":{"key":"bg==","value":"dg==","lease":"7","prev_kv":true}}"#,
    ),
    (
        "put-ignore",
        r#"{"id":"102","put":{"key":"YQ==","ignore_value":true,"ignore_lease":true}}"#,
    ),
    (
        "delete-range",
        r#"{"id":"103","delete_range":{"key":"YQ==","range_end":"AA==","prev_kv":true}}"#,
    ),
    (
        "txn",
        r#"{"id":"104","txn":{"compare":[{"result":"EQUAL","target":"VALUE","key":"YQ==","value":"MQ=="},{"result":"NOT_EQUAL","target":"LEASE","key":"bA==","lease":"7"}],"success":[{"request_put":{"key":"cA==","value":"dg==","lease":"7"}},{"request_range":{"key":"YQ==","range_end":"eg==","revision":"5","limit":"1"}},{"request_delete_range":{"key":"ZA==","range_end":"ZQ=="}},{"request_txn":{"compare":[{"target":"MOD","key":"Yg==","mod_revision":"3"}],"success":[{"request_put":{"key":"cQ==","ignore_value":true}}],"failure":[{"request_delete_range":{"key":"cg=="}}]}}],"failure":[{"request_range":{"key":"YQ=="}}]}}"#,
    ),
    (
        "compaction",
        r#"{"id":"105","compaction":{"revision":"5","physical":true}}"#,
    ),
    (
        "member-attributes",
        r#"{"id":"106","member_attributes":{"member_id":"1","name":"m1","client_urls":["http://127.0.0.1:2379"]}}"#,
    ),
    (
        "member-peer-urls",
        r#"{"id":"107","member_peer_urls":{"member_id":"1","peer_urls":["http://127.0.0.1:12380"]}}"#,
    ),
    (
        "lease-grant",
        r#"{"id":"108","lease_grant":{"TTL":"30","ID":"8"}}"#,
    ),
    ("lease-revoke", r#"{"id":"109","lease_revoke":{"ID":"7"}}"#),
    (
        "alarm-activate",
        r#"{"id":"110","alarm":{"action":"ACTIVATE","memberID":"1","alarm":"NOSPACE"}}"#,
    ),
    (
        "alarm-deactivate",
        r#"{"id":"111","alarm":{"action":"DEACTIVATE","memberID":"1","alarm":"CORRUPT"}}"#,
    ),
    ("auth-enable", r#"{"id":"112","auth":{"enable":{}}}"#),
    (
        "auth-disable",
        r#"{"id":"113","auth":{"disable":{}},"username":"root","auth_revision":"4"}"#,
    ),
    (
        "auth-authenticate",
        r#"{"id":"114","auth":{"authenticate":{"name":"root","token_prefix":"abcdef"}}}"#,
    ),
    (
        "auth-user-add",
        r#"{"id":"115","auth":{"user_add":{"name":"v","hashedPassword":"$2a$10$abcdefghijklmnopqrstuv","options":{"no_password":false}}}}"#,
    ),
    (
        "auth-user-delete",
        r#"{"id":"116","auth":{"user_delete":{"name":"u"}}}"#,
    ),
    (
        "auth-user-change-password",
        r#"{"id":"117","auth":{"user_change_password":{"name":"u","hashedPassword":"$2a$10$zz"}}}"#,
    ),
    (
        "auth-user-grant-role",
        r#"{"id":"118","auth":{"user_grant_role":{"user":"u","role":"root"}}}"#,
    ),
    (
        "auth-user-revoke-role",
        r#"{"id":"119","auth":{"user_revoke_role":{"name":"u","role":"r"}}}"#,
    ),
    (
        "auth-role-add",
        r#"{"id":"120","auth":{"role_add":{"name":"s"}}}"#,
    ),
    (
        "auth-role-delete",
        r#"{"id":"121","auth":{"role_delete":{"role":"r"}}}"#,
    ),
    (
        "auth-role-grant-permission",
        r#"{"id":"122","auth":{"role_grant_permission":{"name":"r","perm":{"permType":"WRITE","key":"YQ==","range_end":"AA=="}}}}"#,
    ),
    (
        "auth-role-revoke-permission",
        r#"{"id":"123","auth":{"role_revoke_permission":{"role":"r","key":"YQ==","range_end":"eg=="}}}"#,
    ),
    (
        "put-as-user",
        r#"{"id":"124","put":{"key":"YQ==","value":"dg=="},"username":"u","auth_revision":"1"}"#,
    ),
];

/// Membership changes' contexts.
const MEMBER_CHANGES: &[(&str, &str)] = &[
    (
        "add",
        r#"{"id":"201","member_id":"2","peer_urls":["http://127.0.0.1:22380"]}"#,
    ),
    (
        "add-learner",
        r#"{"id":"202","member_id":"3","peer_urls":["http://127.0.0.1:32380"],"is_learner":true,"kind":"ADD"}"#,
    ),
    ("remove", r#"{"id":"203","member_id":"1","kind":"REMOVE"}"#),
    (
        "promote",
        r#"{"id":"204","member_id":"1","kind":"PROMOTE"}"#,
    ),
];

/// The history every fuzzed member starts from: keys with several versions, a deletion, a lease
/// with a key, a compaction, users and roles (auth off).
const BASE_STATE: &[&str] = &[
    r#"{"id":"1","put":{"key":"YQ==","value":"MQ=="}}"#,
    r#"{"id":"2","put":{"key":"Yg==","value":"Mg=="}}"#,
    r#"{"id":"3","put":{"key":"Yw==","value":"Mw=="}}"#,
    r#"{"id":"4","lease_grant":{"TTL":"60","ID":"7"}}"#,
    r#"{"id":"5","put":{"key":"bA==","value":"bA==","lease":"7"}}"#,
    r#"{"id":"6","delete_range":{"key":"Yw=="}}"#,
    r#"{"id":"7","put":{"key":"YQ==","value":"NA=="}}"#,
    r#"{"id":"8","compaction":{"revision":"3"}}"#,
    r#"{"id":"9","put":{"key":"aw==","value":"dg=="}}"#,
    r#"{"id":"10","auth":{"user_add":{"name":"root","hashedPassword":"$2a$10$abcdefghijklmnopqrstuv"}}}"#,
    r#"{"id":"11","auth":{"role_add":{"name":"root"}}}"#,
    r#"{"id":"12","auth":{"user_grant_role":{"user":"root","role":"root"}}}"#,
    r#"{"id":"13","auth":{"role_add":{"name":"r"}}}"#,
    r#"{"id":"14","auth":{"role_grant_permission":{"name":"r","perm":{"permType":"READWRITE","key":"YQ==","range_end":"eg=="}}}}"#,
    r#"{"id":"15","auth":{"user_add":{"name":"u","options":{"no_password":true}}}}"#,
    r#"{"id":"16","auth":{"user_grant_role":{"user":"u","role":"r"}}}"#,
];

fn pool() -> DescriptorPool {
    DescriptorPool::decode(cairn_proto::FILE_DESCRIPTOR_SET).expect("the compiled descriptors")
}

/// `json` as the protobuf message `full_name`.
fn encode(pool: &DescriptorPool, full_name: &str, json: &str) -> Vec<u8> {
    let desc = pool
        .get_message_by_name(full_name)
        .unwrap_or_else(|| panic!("{full_name} is in the protos"));
    let mut de = serde_json::Deserializer::from_str(json);
    DynamicMessage::deserialize(desc, &mut de)
        .unwrap_or_else(|e| panic!("{full_name} {json}: {e}"))
        .encode_to_vec()
}

pub(crate) fn base_state() -> Vec<InternalRequest> {
    let pool = pool();
    BASE_STATE
        .iter()
        .map(|json| {
            let bytes = encode(&pool, "cairnpb.InternalRequest", json);
            InternalRequest::decode(bytes.as_slice()).expect("encoded just now")
        })
        .collect()
}

fn method_input(pool: &DescriptorPool, method: &str) -> String {
    let (service, name) = method[1..].split_once('/').expect("/service/method");
    pool.get_service_by_name(service)
        .and_then(|s| s.methods().find(|m| m.name() == name))
        .unwrap_or_else(|| panic!("{method} is in the protos"))
        .input()
        .full_name()
        .to_string()
}

fn raft_message(kind: eraftpb::MessageType, edit: impl FnOnce(&mut eraftpb::Message)) -> Vec<u8> {
    use protobuf::Message as _;
    let mut m = eraftpb::Message::default();
    m.set_msg_type(kind);
    m.from = 2;
    m.to = 1;
    m.term = 3;
    edit(&mut m);
    m.write_to_bytes().expect("a raft message encodes")
}

fn raft_batches(pool: &DescriptorPool) -> Vec<(String, Vec<u8>)> {
    use eraftpb::MessageType as T;
    let put = encode(pool, "cairnpb.InternalRequest", INTERNAL_REQUESTS[0].1);
    let change = encode(pool, "cairnpb.MemberChange", MEMBER_CHANGES[0].1);
    let entry = |index: u64, kind: eraftpb::EntryType, data: Vec<u8>| {
        let mut e = eraftpb::Entry::default();
        e.set_entry_type(kind);
        e.term = 3;
        e.index = index;
        e.data = data.into();
        e
    };
    let append = raft_message(T::MsgAppend, |m| {
        m.index = 9;
        m.log_term = 3;
        m.commit = 9;
        m.set_entries(
            vec![
                entry(10, eraftpb::EntryType::EntryNormal, put.clone()),
                entry(11, eraftpb::EntryType::EntryNormal, vec![]),
                entry(12, eraftpb::EntryType::EntryConfChangeV2, change.clone()),
            ]
            .into(),
        );
    });
    let messages: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("append", vec![append]),
        (
            "heartbeats",
            vec![
                raft_message(T::MsgHeartbeat, |m| m.commit = 12),
                raft_message(T::MsgHeartbeatResponse, |m| {
                    m.context = b"read-index-ctx".to_vec().into()
                }),
            ],
        ),
        (
            "votes",
            vec![
                raft_message(T::MsgRequestVote, |m| {
                    m.index = 12;
                    m.log_term = 3;
                }),
                raft_message(T::MsgRequestPreVoteResponse, |m| m.reject = true),
                raft_message(T::MsgTimeoutNow, |_| {}),
            ],
        ),
        (
            "responses",
            vec![
                raft_message(T::MsgAppendResponse, |m| {
                    m.index = 12;
                    m.reject = true;
                    m.reject_hint = 4;
                }),
                raft_message(T::MsgReadIndex, |m| {
                    let e = eraftpb::Entry {
                        data: b"ctx".to_vec().into(),
                        ..Default::default()
                    };
                    m.set_entries(vec![e].into());
                }),
                raft_message(T::MsgReadIndexResp, |m| m.index = 12),
            ],
        ),
        (
            "propose",
            vec![raft_message(T::MsgPropose, |m| {
                m.set_entries(vec![entry(0, eraftpb::EntryType::EntryNormal, put.clone())].into());
            })],
        ),
        (
            "snapshot-message",
            vec![raft_message(T::MsgSnapshot, |m| {
                let meta = m.mut_snapshot().mut_metadata();
                meta.index = 40;
                meta.term = 3;
                meta.mut_conf_state().voters = vec![1, 2, 3];
                meta.mut_conf_state().learners = vec![4];
            })],
        ),
    ];
    messages
        .into_iter()
        .map(|(name, messages)| {
            let batch = RaftBatch {
                from: 2,
                to: 1,
                cluster_id: 0xc1,
                messages: messages.into_iter().map(Into::into).collect(),
            };
            (name.to_string(), batch.encode_to_vec())
        })
        .collect()
}

/// Every seed: `(target, file name, bytes)`.
pub(crate) fn all() -> Vec<(&'static str, String, Vec<u8>)> {
    let pool = pool();
    let mut seeds = vec![];
    let mut counts = std::collections::HashMap::new();
    for &(method, json) in REQUESTS {
        let kind = METHODS
            .iter()
            .position(|(m, _)| *m == method)
            .unwrap_or_else(|| panic!("{method} is in METHODS"));
        let n = counts.entry(method).or_insert(0);
        *n += 1;
        let name = format!("{}-{n}", method[1..].replace('/', "."));
        let mut bytes = vec![kind as u8];
        bytes.extend(encode(&pool, &method_input(&pool, method), json));
        seeds.push(("request", name, bytes));
    }
    for (i, (route, method)) in gateway::ROUTES.iter().enumerate() {
        let json = REQUESTS
            .iter()
            .find(|(m, _)| m == method)
            .map_or("{}", |(_, json)| json);
        let name = route.trim_start_matches("/v3/").replace('/', ".");
        let mut bytes = vec![i as u8];
        bytes.extend_from_slice(json.as_bytes());
        seeds.push(("gateway", name, bytes));
    }
    let watch = gateway::ROUTES
        .iter()
        .position(|(r, _)| *r == "/v3/watch")
        .expect("a watch route");
    let mut stream = vec![watch as u8];
    stream.extend_from_slice(
        br#"{"create_request":{"key":"YQ=="}} {"progress_request":{}}{"cancel_request":{"watch_id":"0"}}"#,
    );
    seeds.push(("gateway", "watch-stream".into(), stream));
    for (name, json) in INTERNAL_REQUESTS {
        let bytes = encode(&pool, "cairnpb.InternalRequest", json);
        seeds.push(("internal_request", name.to_string(), bytes));
    }
    for (name, json) in MEMBER_CHANGES {
        let bytes = encode(&pool, "cairnpb.MemberChange", json);
        seeds.push(("member_change", name.to_string(), bytes));
    }
    seeds.push(("member_change", "raft-own".into(), vec![]));
    for (name, bytes) in raft_batches(&pool) {
        seeds.push(("raft_batch", name, bytes));
    }
    let membership = r#"{"cluster_id":14923450925393566514,"members":[{"id":10276657743932975437,"name":"m1","peer_urls":["http://127.0.0.1:2380"],"client_urls":["http://127.0.0.1:2379"],"is_learner":false},{"id":2,"name":"","peer_urls":["https://[::1]:2380"],"client_urls":[],"is_learner":true}],"removed":[3,4]}"#;
    seeds.push(("membership", "three-members".into(), membership.into()));
    seeds
}

#[test]
fn seeds_match_the_corpus() {
    let write = std::env::var("CAIRN_FUZZ_WRITE_SEEDS").is_ok_and(|v| v == "1");
    let root = super::corpus_root();
    for (target, name, bytes) in all() {
        let path = root.join(target).join(&name);
        if write {
            std::fs::create_dir_all(path.parent().expect("a target directory")).unwrap();
            std::fs::write(&path, &bytes).unwrap();
            continue;
        }
        let stored = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (CAIRN_FUZZ_WRITE_SEEDS=1 writes the seeds)",
                path.display()
            )
        });
        assert_eq!(
            stored,
            bytes,
            "{} differs from its generator (CAIRN_FUZZ_WRITE_SEEDS=1 rewrites the seeds)",
            path.display()
        );
    }
}
