//! The wire contract of Cairn: etcd's v3 gRPC API and Cairn's own member-to-member messages.
//!
//! This crate owns the `.proto` files under `protos/` and the Rust types and tonic
//! clients/servers generated from them by `build.rs` (protox + tonic-prost-build, no system
//! `protoc`). It holds no logic and must never grow any: servers implement the generated
//! `*_server` traits elsewhere, and everything else converts to its own types at that boundary.
//!
//! **Invariant:** the etcd protos are wire-identical to etcd 3.5 (plus the additive 3.6/3.7
//! fields and `KV.RangeStream`): same packages, services, methods, field numbers and proto field
//! names. Unmodified etcd clients address methods as `/<package>.<Service>/<Method>`, and the JSON
//! gateway keys on the proto field names, so neither may drift. `tests/wire.rs` pins both.
//!
//! # Module layout
//!
//! There is one module per proto package, all siblings at the crate root, each named after its
//! package:
//!
//! | module             | proto package    | file                       | services                                       |
//! |--------------------|------------------|----------------------------|------------------------------------------------|
//! | [`mvccpb`]         | `mvccpb`         | `etcd/kv.proto`            | —                                              |
//! | [`authpb`]         | `authpb`         | `etcd/auth.proto`          | —                                              |
//! | [`etcdserverpb`]   | `etcdserverpb`   | `etcd/rpc.proto`           | KV, Watch, Lease, Cluster, Maintenance, Auth   |
//! | [`v3lockpb`]       | `v3lockpb`       | `etcd/v3lock.proto`        | Lock                                           |
//! | [`v3electionpb`]   | `v3electionpb`   | `etcd/v3election.proto`    | Election                                       |
//! | [`grpc_health_v1`] | `grpc.health.v1` | `grpc/health.proto`        | Health                                         |
//! | [`cairnpb`]        | `cairnpb`        | `cairn/internal.proto`     | Peer                                           |
//!
//! prost writes a reference to another package as a path relative to the current package's
//! module: from `v3lockpb` it writes `super::etcdserverpb::ResponseHeader`, from a type nested in
//! a message (a oneof in `cairnpb`) `super::super::etcdserverpb::PutRequest`. Keeping every
//! single-segment package as a sibling at the crate root makes those paths resolve.
//! `grpc.health.v1` is the one dotted package; nothing imports it and it imports nothing, so its
//! generated code only refers to itself and it can live flat in [`grpc_health_v1`]. (A proto that
//! imported it would need a `grpc::health::v1` module chain instead.)
//!
//! # Naming in Rust
//!
//! prost converts names: `ID` → `id`, `TTL` → `ttl`, `grantedTTL` → `granted_ttl`,
//! `peerURLs` → `peer_ur_ls`, `clientURLs` → `client_ur_ls`, `isLearner` → `is_learner`,
//! `hashedPassword` → `hashed_password`, `Event.type` → `r#type`; messages `HashKVRequest` →
//! `HashKvRequest`; services `KV` → `kv_server::KvServer` / `kv_client::KvClient`. Enum fields are
//! stored as `i32`; the enum types (`range_request::SortOrder`, `compare::CompareTarget`, …) convert
//! with `TryFrom<i32>`. Oneofs become enums in the message's module: `request_op::Request`,
//! `response_op::Response`, `compare::TargetUnion`, `watch_request::RequestUnion`. Every proto
//! `bytes` field is `prost::bytes::Bytes`.

/// etcd's MVCC record types: `KeyValue` and watch `Event`.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd's persisted auth records: `User`, `Role`, `Permission`, `UserAddOptions`.
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// etcd's client API: the KV, Watch, Lease, Cluster, Maintenance and Auth services.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// etcd's server-side distributed lock service.
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

/// etcd's server-side leader election service.
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

/// The standard gRPC health service (`grpc.health.v1`), which etcd also serves.
pub mod grpc_health_v1 {
    tonic::include_proto!("grpc.health.v1");
}

/// The encoded `FileDescriptorSet` of every file above (for reflection: the JSON gateway).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// Cairn's internal messages: raft log entry payloads and the peer transport. Never seen by clients.
pub mod cairnpb {
    tonic::include_proto!("cairnpb");
}
