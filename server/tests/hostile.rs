//! Hostile input on the client and peer ports of a 3-member cluster: raw garbage on the sockets,
//! garbage gRPC messages to every method, and well-formed requests with random field values to
//! every client-facing method (a seeded, bounded fuzz). Afterwards every member still serves, the
//! history before the attack hashes the same as before on every member, and writes still work.
//!
//! Not attacked with well-formed messages: the peer port's raft stream and snapshot stream (like
//! etcd's, they trust whoever holds a member's identity; peer TLS is what keeps strangers out), and
//! client methods that change the cluster's shape or alarms (they are admin requests, not input).

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use common::{json_number, run_etcdctl, Cluster, Kind};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind as FieldKind, MessageDescriptor, Value};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// Messages sent as they are and answers kept as bytes.
#[derive(Clone, Copy)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Client methods left out of the structured fuzz (see the module docs).
const ADMIN_METHODS: &[&str] = &[
    "/etcdserverpb.KV/Compact",
    "/etcdserverpb.Maintenance/Alarm",
    "/etcdserverpb.Maintenance/MoveLeader",
    "/etcdserverpb.Maintenance/Snapshot",
    "/etcdserverpb.Maintenance/Downgrade",
    "/etcdserverpb.Cluster/MemberAdd",
    "/etcdserverpb.Cluster/MemberRemove",
    "/etcdserverpb.Cluster/MemberUpdate",
    "/etcdserverpb.Cluster/MemberPromote",
];

/// A message of type `desc` with random values in random fields (nested up to `depth`).
fn random_message(rng: &mut StdRng, desc: &MessageDescriptor, depth: u32) -> DynamicMessage {
    let mut msg = DynamicMessage::new(desc.clone());
    for field in desc.fields() {
        if !rng.random_bool(0.6) {
            continue;
        }
        let one = |rng: &mut StdRng| -> Option<Value> {
            Some(match field.kind() {
                FieldKind::Int32 | FieldKind::Sint32 | FieldKind::Sfixed32 => {
                    Value::I32(rng.random_range(-3..1000))
                }
                FieldKind::Int64 | FieldKind::Sint64 | FieldKind::Sfixed64 => Value::I64(
                    *[-1, 0, 1, 5, 1_000, i64::MAX, i64::MIN].get(rng.random_range(0..7))?,
                ),
                FieldKind::Uint32 | FieldKind::Fixed32 => Value::U32(rng.random()),
                FieldKind::Uint64 | FieldKind::Fixed64 => Value::U64(rng.random()),
                FieldKind::Bool => Value::Bool(rng.random()),
                FieldKind::Enum(_) => Value::EnumNumber(rng.random_range(-1..6)),
                FieldKind::String => Value::String(
                    (0..rng.random_range(0..12))
                        .map(|_| rng.random_range(' '..='~'))
                        .collect(),
                ),
                FieldKind::Bytes => {
                    let mut b = vec![0u8; rng.random_range(0..24)];
                    rng.fill_bytes(&mut b);
                    if rng.random_bool(0.3) {
                        b = vec![0];
                    }
                    Value::Bytes(b.into())
                }
                FieldKind::Message(m) if depth > 0 => {
                    Value::Message(random_message(rng, &m, depth - 1))
                }
                _ => return None,
            })
        };
        let value = if field.is_list() {
            Value::List(
                (0..rng.random_range(0..4))
                    .filter_map(|_| one(rng))
                    .collect(),
            )
        } else if let Some(v) = one(rng) {
            v
        } else {
            continue;
        };
        if field.is_map() {
            continue;
        }
        msg.set_field(&field, value);
    }
    msg
}

fn garbage(rng: &mut StdRng) -> Bytes {
    let mut b = vec![0u8; rng.random_range(0..300)];
    rng.fill_bytes(&mut b);
    b.into()
}

/// Sends `messages` to `path` on `endpoint` as one call of any kind, reading answers briefly.
async fn call(endpoint: &str, path: &str, messages: Vec<Bytes>) {
    let Ok(channel) = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .unwrap()
        .timeout(Duration::from_secs(2))
        .connect()
        .await
    else {
        panic!("{endpoint} does not accept connections");
    };
    let mut grpc = tonic::client::Grpc::new(channel);
    if grpc.ready().await.is_err() {
        return;
    }
    let path = path.parse().unwrap();
    let request = tonic::Request::new(tokio_stream::iter(messages));
    let answer = grpc.streaming(request, path, RawCodec);
    let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(2), answer).await else {
        return;
    };
    let mut stream = response.into_inner();
    let _ = tokio::time::timeout(Duration::from_millis(300), async {
        while let Ok(Some(_)) = stream.message().await {}
    })
    .await;
}

/// Raw bytes on a socket, as a port scanner or a confused client would send.
fn raw(addr: &str, rng: &mut StdRng) {
    let mut s = TcpStream::connect(addr).expect("the port accepts connections");
    s.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut bytes = garbage(rng).to_vec();
    if rng.random_bool(0.5) {
        // A valid HTTP/2 preface first, so the garbage reaches the frame parser.
        let mut framed = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        framed.append(&mut bytes);
        bytes = framed;
    }
    let _ = s.write_all(&bytes);
}

fn hashkv(endpoint: &str, rev: &str) -> String {
    let out = run_etcdctl(endpoint, &format!("endpoint hashkv --rev={rev} -w json"));
    out.split("\"hash\":")
        .nth(1)
        .unwrap_or_else(|| panic!("no hash: {out}"))
        .split(',')
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_survive_hostile_input_with_their_data_intact() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(Kind::Cairn, 3, dir.path(), &[]);
    let endpoints = cluster.endpoints();
    for i in 0..20 {
        let out = run_etcdctl(&endpoints[0], &format!("put key{i} value{i}"));
        assert!(out.starts_with("exit Some(0)"), "{out}");
    }
    let out = run_etcdctl(&endpoints[0], "get key19 -w json");
    let rev = json_number(&out, "revision").to_string();
    let before = hashkv(&endpoints[0], &rev);

    let pool = DescriptorPool::decode(cairn_proto::FILE_DESCRIPTOR_SET).unwrap();
    let methods: Vec<(String, bool, MessageDescriptor)> = pool
        .services()
        .flat_map(|s| {
            s.methods()
                .map(|m| {
                    let path = format!("/{}/{}", s.full_name(), m.name());
                    let peer = s.full_name().starts_with("cairnpb.");
                    (path, peer, m.input())
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(0xCA1E);
    let target = &cluster.members[0];
    let peer_endpoint = target.peer_url();
    let peer_addr = peer_endpoint.trim_start_matches("http://").to_string();
    for _ in 0..10 {
        for (path, peer, input) in &methods {
            let endpoint = if *peer { &peer_endpoint } else { &endpoints[0] };
            let junk = (0..rng.random_range(1..3))
                .map(|_| garbage(&mut rng))
                .collect();
            call(endpoint, path, junk).await;
            if *peer || ADMIN_METHODS.contains(&path.as_str()) {
                continue;
            }
            let structured = (0..rng.random_range(1..4))
                .map(|_| random_message(&mut rng, input, 2).encode_to_vec().into())
                .collect();
            call(endpoint, path, structured).await;
        }
        for _ in 0..20 {
            raw(&target.addr(), &mut rng);
            raw(&peer_addr, &mut rng);
        }
    }

    for m in &cluster.members {
        assert!(!m.log().contains("panicked"), "{}", m.log());
    }
    for ep in &endpoints {
        assert_eq!(hashkv(ep, &rev), before, "{ep}: history changed");
        let out = run_etcdctl(ep, "put after-attack ok");
        assert!(out.starts_with("exit Some(0)"), "{ep}: {out}");
        // The fuzz may delete today's keys (a random range can cover them); history stays.
        let out = run_etcdctl(ep, &format!("get key7 --print-value-only --rev={rev}"));
        assert!(out.contains("value7"), "{ep}: {out}");
    }
}
