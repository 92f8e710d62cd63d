//! etcd's JSON gateway (grpc-gateway in etcd) on the client port: `POST /v3/<service>/<method>` with
//! the request message as JSON, for Patroni and any HTTP client (`/v3beta/` is an alias).
//!
//! Each call is translated, by reflection over the protos' descriptors, into the same gRPC call a
//! gRPC client would make, served in-process by the same services (and admission checks). JSON
//! follows etcd's conventions: proto field names, 64-bit integers as strings on output (strings or
//! numbers on input), bytes as base64, enums by name, zero values omitted, unknown input fields
//! ignored. Unary errors become etcd's HTTP status and `{"error","message","code"}` body; streaming
//! calls (watch, keep-alive, observe) answer with chunked `{"result":…}` lines, and the request body
//! may carry several concatenated JSON messages, read as they arrive.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::StreamExt;
use http_body_util::BodyExt;
use prost::Message;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions,
};
use serde_json::json;
use tokio::sync::mpsc;
use tower::ServiceExt;

/// Gateway path → gRPC method (etcd 3.4's table, plus the later `hashkv` and `auth/status`).
pub(crate) const ROUTES: &[(&str, &str)] = &[
    ("/v3/kv/range", "/etcdserverpb.KV/Range"),
    ("/v3/kv/put", "/etcdserverpb.KV/Put"),
    ("/v3/kv/deleterange", "/etcdserverpb.KV/DeleteRange"),
    ("/v3/kv/txn", "/etcdserverpb.KV/Txn"),
    ("/v3/kv/compaction", "/etcdserverpb.KV/Compact"),
    ("/v3/watch", "/etcdserverpb.Watch/Watch"),
    ("/v3/lease/grant", "/etcdserverpb.Lease/LeaseGrant"),
    ("/v3/lease/revoke", "/etcdserverpb.Lease/LeaseRevoke"),
    ("/v3/kv/lease/revoke", "/etcdserverpb.Lease/LeaseRevoke"),
    ("/v3/lease/keepalive", "/etcdserverpb.Lease/LeaseKeepAlive"),
    (
        "/v3/lease/timetolive",
        "/etcdserverpb.Lease/LeaseTimeToLive",
    ),
    (
        "/v3/kv/lease/timetolive",
        "/etcdserverpb.Lease/LeaseTimeToLive",
    ),
    ("/v3/lease/leases", "/etcdserverpb.Lease/LeaseLeases"),
    ("/v3/kv/lease/leases", "/etcdserverpb.Lease/LeaseLeases"),
    ("/v3/cluster/member/add", "/etcdserverpb.Cluster/MemberAdd"),
    (
        "/v3/cluster/member/remove",
        "/etcdserverpb.Cluster/MemberRemove",
    ),
    (
        "/v3/cluster/member/update",
        "/etcdserverpb.Cluster/MemberUpdate",
    ),
    (
        "/v3/cluster/member/list",
        "/etcdserverpb.Cluster/MemberList",
    ),
    (
        "/v3/cluster/member/promote",
        "/etcdserverpb.Cluster/MemberPromote",
    ),
    ("/v3/maintenance/alarm", "/etcdserverpb.Maintenance/Alarm"),
    ("/v3/maintenance/status", "/etcdserverpb.Maintenance/Status"),
    (
        "/v3/maintenance/defragment",
        "/etcdserverpb.Maintenance/Defragment",
    ),
    ("/v3/maintenance/hash", "/etcdserverpb.Maintenance/HashKV"),
    ("/v3/maintenance/hashkv", "/etcdserverpb.Maintenance/HashKV"),
    (
        "/v3/maintenance/snapshot",
        "/etcdserverpb.Maintenance/Snapshot",
    ),
    (
        "/v3/maintenance/transfer-leadership",
        "/etcdserverpb.Maintenance/MoveLeader",
    ),
    ("/v3/auth/enable", "/etcdserverpb.Auth/AuthEnable"),
    ("/v3/auth/disable", "/etcdserverpb.Auth/AuthDisable"),
    ("/v3/auth/status", "/etcdserverpb.Auth/AuthStatus"),
    ("/v3/auth/authenticate", "/etcdserverpb.Auth/Authenticate"),
    ("/v3/auth/user/add", "/etcdserverpb.Auth/UserAdd"),
    ("/v3/auth/user/get", "/etcdserverpb.Auth/UserGet"),
    ("/v3/auth/user/list", "/etcdserverpb.Auth/UserList"),
    ("/v3/auth/user/delete", "/etcdserverpb.Auth/UserDelete"),
    (
        "/v3/auth/user/changepw",
        "/etcdserverpb.Auth/UserChangePassword",
    ),
    ("/v3/auth/user/grant", "/etcdserverpb.Auth/UserGrantRole"),
    ("/v3/auth/user/revoke", "/etcdserverpb.Auth/UserRevokeRole"),
    ("/v3/auth/role/add", "/etcdserverpb.Auth/RoleAdd"),
    ("/v3/auth/role/get", "/etcdserverpb.Auth/RoleGet"),
    ("/v3/auth/role/list", "/etcdserverpb.Auth/RoleList"),
    ("/v3/auth/role/delete", "/etcdserverpb.Auth/RoleDelete"),
    (
        "/v3/auth/role/grant",
        "/etcdserverpb.Auth/RoleGrantPermission",
    ),
    (
        "/v3/auth/role/revoke",
        "/etcdserverpb.Auth/RoleRevokePermission",
    ),
    ("/v3/election/campaign", "/v3electionpb.Election/Campaign"),
    ("/v3/election/proclaim", "/v3electionpb.Election/Proclaim"),
    ("/v3/election/leader", "/v3electionpb.Election/Leader"),
    ("/v3/election/observe", "/v3electionpb.Election/Observe"),
    ("/v3/election/resign", "/v3electionpb.Election/Resign"),
    ("/v3/lock/lock", "/v3lockpb.Lock/Lock"),
    ("/v3/lock/unlock", "/v3lockpb.Lock/Unlock"),
];

/// Request messages buffered between the HTTP body and the gRPC call.
const STREAM_REQUESTS_BUFFERED: usize = 16;

struct Rpc {
    path: &'static str,
    input: MessageDescriptor,
    output: MessageDescriptor,
    /// The response is a stream (answered as chunked `{"result":…}` lines).
    server_streaming: bool,
}

pub struct Gateway {
    grpc: Router,
    rpcs: HashMap<&'static str, Rpc>,
}

impl Gateway {
    /// A gateway onto `grpc`, the client port's gRPC services.
    pub fn new(grpc: Router) -> Gateway {
        let pool = DescriptorPool::decode(cairn_proto::FILE_DESCRIPTOR_SET)
            .expect("the compiled descriptors decode");
        let mut rpcs = HashMap::new();
        for &(route, path) in ROUTES {
            let (service, method) = path[1..].split_once('/').expect("/service/method");
            let method = pool
                .get_service_by_name(service)
                .and_then(|s| s.methods().find(|m| m.name() == method))
                .unwrap_or_else(|| panic!("{path} is in the protos"));
            rpcs.insert(
                route,
                Rpc {
                    path,
                    input: method.input(),
                    output: method.output(),
                    server_streaming: method.is_server_streaming(),
                },
            );
        }
        Gateway { grpc, rpcs }
    }

    /// The request message of `route` (the fuzz target reads bodies as the handler does).
    #[cfg(test)]
    pub(crate) fn request_descriptor(&self, route: &str) -> Option<&MessageDescriptor> {
        self.rpcs.get(route).map(|rpc| &rpc.input)
    }
}

/// Routes `/v3/*` and `/v3beta/*` to the gateway.
pub fn routes(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v3/{*rest}", axum::routing::any(handle))
        .route("/v3beta/{*rest}", axum::routing::any(handle))
        .with_state(gateway)
}

/// grpc-gateway's HTTP status for a gRPC code (`runtime.HTTPStatusFromCode`).
fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code::*;
    match code {
        Ok => StatusCode::OK,
        Cancelled => StatusCode::from_u16(499).expect("valid"),
        InvalidArgument | FailedPrecondition | OutOfRange => StatusCode::BAD_REQUEST,
        DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        NotFound => StatusCode::NOT_FOUND,
        AlreadyExists | Aborted => StatusCode::CONFLICT,
        PermissionDenied => StatusCode::FORBIDDEN,
        Unauthenticated => StatusCode::UNAUTHORIZED,
        ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Unknown | Internal | DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// etcd 3.4's unary error body.
fn error_response(code: tonic::Code, message: &str) -> Response {
    // In etcd's field order.
    let text = serde_json::to_string(message).expect("a string serializes");
    let body = format!(
        r#"{{"error":{text},"message":{text},"code":{}}}"#,
        code as i32
    );
    json_response(http_status(code), body)
}

fn json_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn serialize_options() -> SerializeOptions {
    SerializeOptions::new()
        .stringify_64_bit_integers(true)
        .use_proto_field_name(true)
        .skip_default_fields(true)
}

/// One protobuf message (gRPC framing: uncompressed flag, big-endian length, bytes).
fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(message.len() + 5);
    out.put_u8(0);
    out.put_u32(message.len() as u32);
    out.put_slice(message);
    out.freeze()
}

/// Decodes one JSON value as `desc` and encodes it as protobuf.
pub(crate) fn to_proto(
    desc: &MessageDescriptor,
    value: serde_json::Value,
) -> Result<Vec<u8>, String> {
    let options = DeserializeOptions::new().deny_unknown_fields(false);
    DynamicMessage::deserialize_with_options(desc.clone(), value, &options)
        .map(|m| m.encode_to_vec())
        .map_err(|e| e.to_string())
}

/// Decodes a protobuf `desc` message and writes it as JSON, fields in proto order (as etcd).
pub(crate) fn to_json(desc: &MessageDescriptor, message: &[u8]) -> Result<String, String> {
    let message = DynamicMessage::decode(desc.clone(), message).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    message
        .serialize_with_options(
            &mut serde_json::Serializer::new(&mut out),
            &serialize_options(),
        )
        .map_err(|e| e.to_string())?;
    String::from_utf8(out).map_err(|e| e.to_string())
}

/// The gRPC status in trailers (or in the headers of a trailers-only response).
fn grpc_status(headers: &HeaderMap) -> Option<(tonic::Code, String)> {
    let code = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .map(percent_decode)
        .unwrap_or_default();
    Some((tonic::Code::from(code), message))
}

/// Undoes gRPC's percent-encoding of `grpc-message`.
pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits complete JSON values off the front of `buf`; leaves an incomplete one in place.
pub(crate) fn take_json_values(buf: &mut BytesMut) -> Result<Vec<serde_json::Value>, String> {
    let mut values = vec![];
    let consumed = {
        let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<serde_json::Value>();
        loop {
            match it.next() {
                Some(Ok(v)) => values.push(v),
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => return Err(e.to_string()),
                None => break,
            }
        }
        it.byte_offset()
    };
    buf.advance(consumed);
    Ok(values)
}

async fn handle(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    let path = req.uri().path().replacen("/v3beta/", "/v3/", 1);
    let Some(rpc) = gw.rpcs.get(path.as_str()) else {
        return (StatusCode::NOT_FOUND, "Not Found\n").into_response();
    };
    if req.method() != Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n").into_response();
    }
    let token = req.headers().get(header::AUTHORIZATION).cloned();
    let (requests, body) = mpsc::channel::<Result<Bytes, std::io::Error>>(STREAM_REQUESTS_BUFFERED);
    // The request body: JSON messages as they arrive, each sent on as one gRPC message.
    let mut incoming = req.into_body().into_data_stream();
    let input = rpc.input.clone();
    let (first_error_tx, first_error) = tokio::sync::oneshot::channel::<String>();
    tokio::spawn(async move {
        let mut buf = BytesMut::new();
        let mut sent = 0;
        let mut report = Some(first_error_tx);
        while let Some(chunk) = incoming.next().await {
            let Ok(chunk) = chunk else { return };
            buf.extend_from_slice(&chunk);
            let values = match take_json_values(&mut buf) {
                Ok(values) => values,
                Err(e) => {
                    if let Some(r) = report.take() {
                        let _ = r.send(e);
                    }
                    return;
                }
            };
            for value in values {
                match to_proto(&input, value) {
                    Ok(message) => {
                        sent += 1;
                        if requests.send(Ok(frame(&message))).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        if let Some(r) = report.take() {
                            let _ = r.send(e);
                        }
                        return;
                    }
                }
            }
        }
        // An empty body is an empty request message, as grpc-gateway decodes it.
        if sent == 0 && buf.iter().all(u8::is_ascii_whitespace) {
            let _ = requests.send(Ok(frame(&[]))).await;
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(body));
    let mut grpc = http::Request::builder()
        .method(Method::POST)
        .uri(rpc.path)
        .header(header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers");
    if let Some(token) = token {
        grpc = grpc.header("token", token);
    }
    let grpc = grpc.body(body).expect("a valid request");
    let response = match gw.grpc.clone().oneshot(grpc).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    if rpc.server_streaming {
        stream_response(response, rpc.output.clone()).await
    } else {
        unary_response(response, &rpc.output, first_error).await
    }
}

/// Collects a unary call's response: its message as JSON, or its status as etcd's error.
async fn unary_response(
    response: Response,
    output: &MessageDescriptor,
    bad_request: tokio::sync::oneshot::Receiver<String>,
) -> Response {
    let (parts, mut body) = response.into_parts();
    if let Some((code, message)) =
        grpc_status(&parts.headers).filter(|(c, _)| *c != tonic::Code::Ok)
    {
        return unary_error(code, &message, bad_request);
    }
    let mut data = BytesMut::new();
    let mut status = None;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Some(trailers) = frame.trailers_ref() {
            status = grpc_status(trailers);
        } else if let Ok(bytes) = frame.into_data() {
            data.extend_from_slice(&bytes);
        }
    }
    if let Some((code, message)) = status.filter(|(c, _)| *c != tonic::Code::Ok) {
        return unary_error(code, &message, bad_request);
    }
    if data.len() < 5 {
        return error_response(tonic::Code::Internal, "no response message");
    }
    match to_json(output, &data[5..]) {
        Ok(json) => json_response(StatusCode::OK, json),
        Err(e) => error_response(tonic::Code::Internal, &e),
    }
}

/// A request body that did not decode is the client's error (400), whatever the call then said.
fn unary_error(
    code: tonic::Code,
    message: &str,
    mut bad_request: tokio::sync::oneshot::Receiver<String>,
) -> Response {
    match bad_request.try_recv() {
        Ok(e) => error_response(tonic::Code::InvalidArgument, &e),
        Err(_) => error_response(code, message),
    }
}

/// A mid-stream error line, as grpc-gateway writes it.
fn stream_error(code: tonic::Code, message: &str) -> String {
    let status = http_status(code);
    let error = json!({"error": {
        "grpc_code": code as i32,
        "http_code": status.as_u16(),
        "message": message,
        "http_status": status.canonical_reason().unwrap_or_default(),
    }});
    error.to_string()
}

/// Streams a server-streaming call's messages as chunked `{"result":…}` lines, then its error, if
/// any, as `{"error":{…}}`.
async fn stream_response(response: Response, output: MessageDescriptor) -> Response {
    let (parts, mut body) = response.into_parts();
    if let Some((code, message)) =
        grpc_status(&parts.headers).filter(|(c, _)| *c != tonic::Code::Ok)
    {
        return error_response(code, &message);
    }
    // A call that fails before its first message gets the error's HTTP status (grpc-gateway
    // writes the status line only with the first message).
    let mut first = body.frame().await;
    if let Some(Ok(frame)) = &first {
        let failed = frame
            .trailers_ref()
            .and_then(grpc_status)
            .filter(|(c, _)| *c != tonic::Code::Ok);
        if let Some((code, message)) = failed {
            let body = format!("{}\n", stream_error(code, &message));
            return json_response(http_status(code), body);
        }
    }
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(STREAM_REQUESTS_BUFFERED);
    tokio::spawn(async move {
        let mut data = BytesMut::new();
        loop {
            let frame = match first.take() {
                Some(frame) => frame,
                None => match body.frame().await {
                    Some(frame) => frame,
                    None => return,
                },
            };
            let Ok(frame) = frame else { return };
            if let Some(trailers) = frame.trailers_ref() {
                if let Some((code, message)) =
                    grpc_status(trailers).filter(|(c, _)| *c != tonic::Code::Ok)
                {
                    let error = stream_error(code, &message);
                    let _ = tx.send(Ok(Bytes::from(format!("{error}\n")))).await;
                }
                return;
            }
            let Ok(bytes) = frame.into_data() else {
                continue;
            };
            data.extend_from_slice(&bytes);
            while data.len() >= 5 {
                let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
                if data.len() < 5 + len {
                    break;
                }
                let message = data.split_to(5 + len);
                let line = match to_json(&output, &message[5..]) {
                    Ok(json) => format!(r#"{{"result":{json}}}"#),
                    Err(e) => stream_error(tonic::Code::Internal, &e),
                };
                if tx.send(Ok(Bytes::from(format!("{line}\n")))).await.is_err() {
                    return;
                }
            }
        }
    });
    let mut response =
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_names_a_method_of_the_protos() {
        let gw = Gateway::new(Router::new());
        assert_eq!(gw.rpcs.len(), ROUTES.len());
        assert!(gw.rpcs["/v3/watch"].server_streaming);
        assert!(!gw.rpcs["/v3/kv/range"].server_streaming);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Hostile bodies: any bytes split into JSON values, and any JSON value decoded as the
        /// input of every route, fail cleanly or give a message that encodes back to JSON.
        #[test]
        fn hostile_bodies_never_panic(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            text in "[{}\\[\\]\":,a-z0-9 .-]{0,80}",
        ) {
            let gw = Gateway::new(Router::new());
            let mut buf = BytesMut::from(&body[..]);
            let _ = take_json_values(&mut buf);
            let _ = percent_decode(&String::from_utf8_lossy(&body));
            let mut buf = BytesMut::from(text.as_bytes());
            let values = take_json_values(&mut buf).unwrap_or_default();
            for value in values {
                for rpc in gw.rpcs.values() {
                    if let Ok(proto) = to_proto(&rpc.input, value.clone()) {
                        proptest::prop_assert!(to_json(&rpc.input, &proto).is_ok());
                    }
                }
            }
        }
    }

    #[test]
    fn json_follows_etcd_conventions() {
        let gw = Gateway::new(Router::new());
        let put = &gw.rpcs["/v3/kv/put"];
        let proto = to_proto(
            &put.input,
            json!({"key": "Zm9v", "value": "YmFy", "lease": "7", "unknown": 1}),
        )
        .unwrap();
        let req = cairn_proto::etcdserverpb::PutRequest::decode(proto.as_slice()).unwrap();
        assert_eq!(
            (req.key.as_ref(), req.value.as_ref(), req.lease),
            (&b"foo"[..], &b"bar"[..], 7)
        );
        let range = &gw.rpcs["/v3/kv/range"];
        let resp = cairn_proto::etcdserverpb::RangeResponse {
            header: Some(cairn_proto::etcdserverpb::ResponseHeader {
                cluster_id: 1,
                member_id: 2,
                revision: 3,
                raft_term: 0,
            }),
            kvs: vec![],
            more: false,
            count: 0,
        };
        let json = to_json(&range.output, &resp.encode_to_vec()).unwrap();
        assert_eq!(
            json,
            r#"{"header":{"cluster_id":"1","member_id":"2","revision":"3"}}"#
        );
        let lease = &gw.rpcs["/v3/lease/grant"];
        let grant = cairn_proto::etcdserverpb::LeaseGrantResponse {
            header: None,
            id: 5,
            ttl: 30,
            error: String::new(),
        };
        let json = to_json(&lease.output, &grant.encode_to_vec()).unwrap();
        assert_eq!(json, r#"{"ID":"5","TTL":"30"}"#);
    }

    #[test]
    fn concatenated_json_messages_are_split_as_they_complete() {
        let mut buf = BytesMut::from(&br#"{"a":1} {"b":2}{"c":"#[..]);
        let values = take_json_values(&mut buf).unwrap();
        assert_eq!(values, vec![json!({"a": 1}), json!({"b": 2})]);
        assert_eq!(&buf[..], br#"{"c":"#);
        buf.extend_from_slice(b"3}");
        assert_eq!(take_json_values(&mut buf).unwrap(), vec![json!({"c": 3})]);
        assert!(take_json_values(&mut BytesMut::from(&b"{x"[..])).is_err());
    }
}
