//! Mutations of one corpus entry: byte-level (flips, interesting values, inserted, deleted and
//! duplicated ranges, truncation, splicing with another entry) and, where the input parses,
//! structure-aware ones that keep it well-formed enough to reach the checks behind the decoder:
//! protobuf (varints set to edge values, fields dropped, repeated or nested into themselves, with
//! every enclosing length recomputed) and JSON (values replaced by hostile ones).

use rand::rngs::StdRng;
use rand::{Rng, RngCore};
use serde_json::Value;

use super::Format;

/// Inputs grow no larger than this (the server's own request limit is 1.5 MiB; bigger inputs only
/// slow the search down).
const INPUT_BYTES_MAX: usize = 64 << 10;
/// Nested protobuf messages are looked into up to this depth.
const PROTO_DEPTH_MAX: usize = 12;

const INTERESTING_U64: &[u64] = &[
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 32,
    i64::MAX as u64,
    i64::MIN as u64,
    u64::MAX,
    u64::MAX - 1,
];

/// One to four stacked mutations of `base`, leaving its first `header` bytes to byte mutations.
pub(crate) fn mutate(
    rng: &mut StdRng,
    base: &[u8],
    corpus: &[Vec<u8>],
    header: usize,
    format: Format,
) -> Vec<u8> {
    let mut out = base.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let structured = rng.random_bool(0.5) && out.len() > header;
        let done = structured
            && match format {
                Format::Protobuf => proto_mutation(rng, &mut out, header, corpus),
                Format::Json => json_mutation(rng, &mut out, header),
            };
        if !done {
            byte_mutation(rng, &mut out, corpus);
        }
    }
    out.truncate(INPUT_BYTES_MAX);
    out
}

fn byte_mutation(rng: &mut StdRng, out: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    let len = out.len();
    match rng.random_range(0..9) {
        0 if len > 0 => {
            let i = rng.random_range(0..len);
            out[i] ^= 1 << rng.random_range(0..8);
        }
        1 if len > 0 => {
            let i = rng.random_range(0..len);
            out[i] = rng.random();
        }
        2 if len > 0 => {
            let i = rng.random_range(0..len);
            out[i] = [0, 1, 0x7f, 0x80, 0xff, b'"', b'{', b'0'][rng.random_range(0..8)];
        }
        3 => {
            let i = rng.random_range(0..=len);
            let mut bytes = vec![0; rng.random_range(1..=8)];
            rng.fill_bytes(&mut bytes);
            out.splice(i..i, bytes);
        }
        4 if len > 0 => {
            let i = rng.random_range(0..len);
            let n = rng.random_range(1..=(len - i).min(16));
            out.drain(i..i + n);
        }
        5 if len > 0 => {
            let i = rng.random_range(0..len);
            let n = rng.random_range(1..=(len - i).min(64));
            let copy = out[i..i + n].to_vec();
            let at = rng.random_range(0..=len);
            out.splice(at..at, copy);
        }
        6 if len > 0 => out.truncate(rng.random_range(0..len)),
        7 => {
            let other = &corpus[rng.random_range(0..corpus.len())];
            let keep = rng.random_range(0..=len);
            let from = rng.random_range(0..=other.len());
            out.truncate(keep);
            out.extend_from_slice(&other[from..]);
        }
        _ => {
            let i = rng.random_range(0..=len);
            let n = rng.random_range(1..=32);
            out.splice(i..i, std::iter::repeat_n(rng.random::<u8>(), n));
        }
    }
}

/// A protobuf field as read off the wire.
#[derive(Clone, Debug)]
struct Field {
    number: u64,
    value: Wire,
}

#[derive(Clone, Debug)]
enum Wire {
    Varint(u64),
    Fixed64(u64),
    /// Length-delimited: the bytes, and the fields they hold if they parse as a message.
    Bytes(Vec<u8>, Option<Vec<Field>>),
    Fixed32(u32),
}

fn read_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        value |= ((b & 0x7f) as u64) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The fields of a message, if all of `bytes` parses as one (nested messages up to `depth`).
fn parse(bytes: &[u8], depth: usize) -> Option<Vec<Field>> {
    let mut fields = vec![];
    let mut at = 0;
    while at < bytes.len() {
        let key = read_varint(bytes, &mut at)?;
        let number = key >> 3;
        if number == 0 {
            return None;
        }
        let value = match key & 7 {
            0 => Wire::Varint(read_varint(bytes, &mut at)?),
            1 => {
                let b = bytes.get(at..at + 8)?;
                at += 8;
                Wire::Fixed64(u64::from_le_bytes(b.try_into().expect("8 bytes")))
            }
            2 => {
                let n = usize::try_from(read_varint(bytes, &mut at)?).ok()?;
                let b = bytes.get(at..at.checked_add(n)?)?.to_vec();
                at += n;
                let inner = if depth > 0 && !b.is_empty() {
                    parse(&b, depth - 1)
                } else {
                    None
                };
                Wire::Bytes(b, inner)
            }
            5 => {
                let b = bytes.get(at..at + 4)?;
                at += 4;
                Wire::Fixed32(u32::from_le_bytes(b.try_into().expect("4 bytes")))
            }
            _ => return None,
        };
        fields.push(Field { number, value });
    }
    Some(fields)
}

fn serialize(fields: &[Field], out: &mut Vec<u8>) {
    for f in fields {
        let wire = match f.value {
            Wire::Varint(_) => 0,
            Wire::Fixed64(_) => 1,
            Wire::Bytes(..) => 2,
            Wire::Fixed32(_) => 5,
        };
        write_varint(out, (f.number << 3) | wire);
        match &f.value {
            Wire::Varint(v) => write_varint(out, *v),
            Wire::Fixed64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Wire::Fixed32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Wire::Bytes(raw, inner) => {
                let mut body = vec![];
                match inner {
                    Some(fields) => serialize(fields, &mut body),
                    None => body.extend_from_slice(raw),
                }
                write_varint(out, body.len() as u64);
                out.extend_from_slice(&body);
            }
        }
    }
}

/// Every message (field list) in the tree, outermost first, as paths of field indexes.
fn message_paths(fields: &[Field], path: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
    out.push(path.clone());
    for (i, f) in fields.iter().enumerate() {
        if let Wire::Bytes(_, Some(inner)) = &f.value {
            path.push(i);
            message_paths(inner, path, out);
            path.pop();
        }
    }
}

fn message_at<'a>(fields: &'a mut Vec<Field>, path: &[usize]) -> &'a mut Vec<Field> {
    match path.split_first() {
        None => fields,
        Some((&i, rest)) => match &mut fields[i].value {
            Wire::Bytes(_, Some(inner)) => message_at(inner, rest),
            _ => unreachable!("paths lead through messages"),
        },
    }
}

fn proto_mutation(rng: &mut StdRng, out: &mut Vec<u8>, header: usize, corpus: &[Vec<u8>]) -> bool {
    let Some(mut root) = parse(&out[header..], PROTO_DEPTH_MAX) else {
        return false;
    };
    let mut paths = vec![];
    message_paths(&root, &mut vec![], &mut paths);
    let path = paths[rng.random_range(0..paths.len())].clone();
    let message = message_at(&mut root, &path);
    match rng.random_range(0..7) {
        // A varint to an edge value (ids, revisions, limits, enums, lengths-as-numbers).
        0 | 1 => {
            let varints: Vec<usize> = (0..message.len())
                .filter(|&i| matches!(message[i].value, Wire::Varint(_)))
                .collect();
            let Some(&i) = varints.get(rng.random_range(0..varints.len().max(1))) else {
                return false;
            };
            let v = INTERESTING_U64[rng.random_range(0..INTERESTING_U64.len())];
            message[i].value = Wire::Varint(if rng.random_bool(0.2) { v ^ 1 } else { v });
        }
        // Drop a field.
        2 if !message.is_empty() => {
            message.remove(rng.random_range(0..message.len()));
        }
        // Repeat a field (repeated fields grow; for singular ones the last wins).
        3 if !message.is_empty() => {
            let f = message[rng.random_range(0..message.len())].clone();
            for _ in 0..rng.random_range(1..=8) {
                message.push(f.clone());
            }
        }
        // Nest a message inside a copy of itself (deep txns, deep oneofs).
        4 => {
            let copy = message.clone();
            let mut nested = copy.clone();
            for _ in 0..rng.random_range(1..=16) {
                let mut outer = copy.clone();
                let slot = outer
                    .iter_mut()
                    .find(|f| matches!(f.value, Wire::Bytes(_, Some(_))));
                let Some(slot) = slot else {
                    return false;
                };
                slot.value = Wire::Bytes(vec![], Some(nested));
                nested = outer;
            }
            *message = nested;
        }
        // A bytes or string field to something hostile.
        5 => {
            let strings: Vec<usize> = (0..message.len())
                .filter(|&i| matches!(message[i].value, Wire::Bytes(..)))
                .collect();
            let Some(&i) = strings.get(rng.random_range(0..strings.len().max(1))) else {
                return false;
            };
            let bytes = match rng.random_range(0..5) {
                0 => vec![],
                1 => vec![0],
                2 => vec![0xff; rng.random_range(1..300)],
                3 => corpus[rng.random_range(0..corpus.len())].clone(),
                _ => {
                    let mut b = vec![0; rng.random_range(1..32)];
                    rng.fill_bytes(&mut b);
                    b
                }
            };
            message[i].value = Wire::Bytes(bytes, None);
        }
        // A field under another number or wire type.
        _ if !message.is_empty() => {
            let i = rng.random_range(0..message.len());
            if rng.random_bool(0.5) {
                message[i].number = rng.random_range(1..20);
            } else {
                message[i].value = Wire::Varint(rng.random());
            }
        }
        _ => return false,
    }
    let mut bytes = out[..header].to_vec();
    serialize(&root, &mut bytes);
    *out = bytes;
    true
}

fn hostile_json(rng: &mut StdRng) -> Value {
    match rng.random_range(0..12) {
        0 => Value::Null,
        1 => Value::Bool(rng.random()),
        2 => Value::from(INTERESTING_U64[rng.random_range(0..INTERESTING_U64.len())]),
        3 => Value::from(-(rng.random_range(0..i64::MAX))),
        4 => Value::from(rng.random::<f64>() * 1e300),
        5 => Value::from(""),
        6 => Value::from("AA=="),
        7 => Value::from("not base64!"),
        8 => Value::from(i64::MIN.to_string()),
        9 => Value::from("18446744073709551616"),
        10 => Value::Array(vec![Value::from(1), Value::from("x")]),
        _ => serde_json::json!({"key": "YQ==", "range_end": "AA=="}),
    }
}

/// Every value in the tree, as paths of object keys and array indexes.
fn json_paths(value: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(path.clone());
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                path.push(k.clone());
                json_paths(v, path, out);
                path.pop();
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                path.push(i.to_string());
                json_paths(v, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn json_at<'a>(value: &'a mut Value, path: &[String]) -> &'a mut Value {
    match path.split_first() {
        None => value,
        Some((k, rest)) => {
            let next = match value {
                Value::Object(map) => map.get_mut(k),
                Value::Array(items) => k.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
                _ => None,
            };
            json_at(next.expect("paths lead through the tree"), rest)
        }
    }
}

fn json_mutation(rng: &mut StdRng, out: &mut Vec<u8>, header: usize) -> bool {
    let Ok(mut root) = serde_json::from_slice::<Value>(&out[header..]) else {
        return false;
    };
    let mut paths = vec![];
    json_paths(&root, &mut vec![], &mut paths);
    let path = paths[rng.random_range(0..paths.len())].clone();
    let at = json_at(&mut root, &path);
    match rng.random_range(0..4) {
        0 | 1 => *at = hostile_json(rng),
        // An array of it, or it nested in itself (repeated fields, deep txns).
        2 => *at = Value::Array(vec![at.clone(); rng.random_range(1..4)]),
        _ => {
            if let Value::Object(map) = at {
                let copy = Value::Object(map.clone());
                let key = map
                    .keys()
                    .nth(rng.random_range(0..map.len().max(1)))
                    .cloned();
                match key {
                    Some(k) => {
                        map.insert(k, copy);
                    }
                    None => return false,
                }
            } else {
                return false;
            }
        }
    }
    let mut bytes = out[..header].to_vec();
    serde_json::to_writer(&mut bytes, &root).expect("a value serializes");
    *out = bytes;
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn protobuf_trees_serialize_back_to_their_bytes() {
        use cairn_proto::etcdserverpb::{request_op, PutRequest, RequestOp, TxnRequest};
        use prost::Message;
        let txn = TxnRequest {
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: b"k".to_vec().into(),
                    lease: 300,
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        let bytes = txn.encode_to_vec();
        let tree = parse(&bytes, PROTO_DEPTH_MAX).unwrap();
        let mut again = vec![];
        serialize(&tree, &mut again);
        assert_eq!(again, bytes);
        // Structure-aware mutations keep a message decodable much of the time.
        let mut rng = StdRng::seed_from_u64(7);
        let decodable = (0..200)
            .filter(|_| {
                let mut m = bytes.clone();
                proto_mutation(&mut rng, &mut m, 0, std::slice::from_ref(&bytes))
                    && TxnRequest::decode(m.as_slice()).is_ok()
            })
            .count();
        assert!(decodable > 50, "{decodable}");
    }
}
