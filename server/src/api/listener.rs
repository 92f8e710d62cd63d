//! The client listener, and a repair of the HTTP/2 `:authority` header that etcd's Go clients get wrong.
//!
//! etcdctl 3.4 dials per-endpoint calls (`endpoint status`, `hashkv`, `defrag`, `move-leader`, every
//! `--cluster` command) with `:authority` = the endpoint URL (`http://127.0.0.1:2379`), and clientv3
//! 3.5.0 sends `#initially=[…]`. Go's server accepts them; the Rust `h2` server resets such streams
//! with PROTOCOL_ERROR and has no option to relax it (hyperium/h2#525). So for HTTP/2 connections
//! [`AuthorityFix`] sits between the socket and hyper: it decodes every client header block with its
//! own HPACK decoder, replaces an invalid `:authority` with the host:port inside it (or drops it), and
//! re-encodes the block for h2 with its own HPACK encoder. HTTP/1.1 connections pass through untouched.
//!
//! A client's first header block decides: the HPACK dynamic table is empty before it, so it can be
//! decoded on its own. If its `:authority` is valid, the connection passes through untouched from
//! then on (well-behaved clients pay nothing); otherwise every header block of the connection is
//! rewritten.
//!
//! **Invariant:** a rewriting connection re-encodes every header block, from its first one, so that
//! the HPACK dynamic tables of our encoder and h2's decoder stay in step.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use fluke_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::tls::{Stream, Tls};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The smallest SETTINGS_MAX_FRAME_SIZE a peer may announce: frames we write to h2 never exceed it.
const FRAME_PAYLOAD_MAX: usize = 16_384;
/// A client frame larger than this closes the connection before it is buffered (the server
/// announces h2's default SETTINGS_MAX_FRAME_SIZE of 16 KiB, so honest clients stay far below).
const FRAME_IN_PAYLOAD_MAX: usize = 1 << 20;
/// A header block (HEADERS plus CONTINUATIONs) larger than this closes the connection.
const HEADER_BLOCK_BYTES_MAX: usize = 1 << 20;
/// The HPACK table size both sides use (HTTP/2's default SETTINGS_HEADER_TABLE_SIZE, h2's setting).
const HPACK_TABLE_BYTES: usize = 4096;
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// Accepts client connections, in clear or over TLS (see [`crate::tls::accept`]), wrapped in
/// [`AuthorityFix`].
pub struct ClientListener {
    incoming: mpsc::Receiver<(Stream, SocketAddr)>,
    local: SocketAddr,
}

impl ClientListener {
    pub fn new(listener: TcpListener, tls: Option<&Tls>) -> io::Result<ClientListener> {
        let local = listener.local_addr()?;
        let incoming = crate::tls::accept(listener, tls.map(|t| t.server.clone()));
        Ok(ClientListener { incoming, local })
    }
}

/// Where a client connection comes from, and the common name of the certificate it was verified
/// with (`--client-cert-auth`). Handlers see it as axum's `ConnectInfo`.
#[derive(Debug, Clone)]
pub struct ClientAddr {
    pub addr: SocketAddr,
    pub common_name: Option<String>,
}

impl axum::serve::Listener for ClientListener {
    type Io = AuthorityFix<Stream>;
    type Addr = ClientAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some((stream, addr)) => {
                let common_name = stream.common_name();
                (AuthorityFix::new(stream), ClientAddr { addr, common_name })
            }
            // The acceptor only stops when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<ClientAddr> {
        Ok(ClientAddr {
            addr: self.local,
            common_name: None,
        })
    }
}

/// Serves `router` over HTTP/1.1 and HTTP/2 on every connection `listener` accepts, until `stop`;
/// then stops accepting, lets each connection finish its requests (graceful shutdown) and returns
/// once all are closed. Handlers see the connection's [`ClientAddr`] as axum's `ConnectInfo`.
///
/// An HTTP/2 connection takes up to `max_streams` concurrent streams (etcd's
/// `--max-concurrent-streams`, unlimited by default): hyper's own default of 200 would stall a
/// client that multiplexes more watches or calls on one connection, as Go clients do.
pub async fn serve_clients(
    mut listener: ClientListener,
    router: axum::Router,
    max_streams: u32,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use axum::serve::Listener;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    use tower::ServiceExt;

    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (io, client) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|&s| s) => break,
        };
        let service = router
            .clone()
            .map_request(move |mut req: http::Request<_>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(client.clone()));
                req
            });
        let mut stop = stop.clone();
        connections.spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http2().max_concurrent_streams(max_streams);
            let service = hyper_util::service::TowerToHyperService::new(service);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stop.wait_for(|&s| s) => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
}

enum Mode {
    /// Not enough bytes yet to tell HTTP/1.1 from the HTTP/2 preface.
    Detect,
    /// Bytes pass untouched: HTTP/1.1, or HTTP/2 from a client whose first request had a valid
    /// `:authority`.
    Passthrough,
    /// HTTP/2 until the first header block shows whether the client needs repairs.
    Http2Undecided,
    /// HTTP/2 from a client that sent an invalid `:authority`: every header block is re-encoded.
    Http2Rewrite,
}

/// A header block split across HEADERS and CONTINUATION frames, waiting for END_HEADERS.
struct PendingBlock {
    /// The frames as received, for a connection that turns out to need no repair.
    frames: Vec<u8>,
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

pub struct AuthorityFix<S> {
    inner: S,
    mode: Mode,
    /// Bytes read from the socket, not processed yet.
    raw: BytesMut,
    /// Processed bytes, ready for hyper.
    out: BytesMut,
    pending: Option<PendingBlock>,
    decoder: Decoder<'static>,
    encoder: Encoder<'static>,
    eof: bool,
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// A valid authority for `value`: itself, the host:port inside a URL, or nothing.
pub fn repair_authority(value: &[u8]) -> Option<Vec<u8>> {
    let valid = |v: &[u8]| !v.is_empty() && ::http::uri::Authority::try_from(v).is_ok();
    if valid(value) {
        return Some(value.to_vec());
    }
    let text = String::from_utf8_lossy(value);
    let after_scheme = text.split_once("://").map_or(&text[..], |(_, rest)| rest);
    let host: String = after_scheme
        .chars()
        .take_while(|c| !matches!(c, '/' | ']' | ';' | ',' | '#' | '?'))
        .collect();
    valid(host.as_bytes()).then(|| host.into_bytes())
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> AuthorityFix<S> {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(HPACK_TABLE_BYTES);
        let mut encoder = Encoder::new();
        encoder.set_max_table_size(HPACK_TABLE_BYTES);
        AuthorityFix {
            inner,
            mode: Mode::Detect,
            raw: BytesMut::new(),
            out: BytesMut::new(),
            pending: None,
            decoder,
            encoder,
            eof: false,
        }
    }

    /// Moves whatever `raw` holds that is complete into `out`.
    fn process(&mut self) -> io::Result<()> {
        if let Mode::Detect = self.mode {
            let n = self.raw.len().min(PREFACE.len());
            if self.raw[..n] != PREFACE[..n] {
                self.mode = Mode::Passthrough;
            } else if n == PREFACE.len() {
                self.mode = Mode::Http2Undecided;
                self.out.extend_from_slice(&self.raw.split_to(n));
            } else if self.eof {
                self.mode = Mode::Passthrough;
            } else {
                return Ok(());
            }
        }
        match self.mode {
            Mode::Detect => unreachable!("decided above"),
            Mode::Passthrough => {
                let all = self.raw.split();
                self.out.extend_from_slice(&all);
            }
            Mode::Http2Undecided | Mode::Http2Rewrite => {
                while self.raw.len() >= FRAME_HEADER_LEN && !matches!(self.mode, Mode::Passthrough)
                {
                    let len = (usize::from(self.raw[0]) << 16)
                        | (usize::from(self.raw[1]) << 8)
                        | usize::from(self.raw[2]);
                    if len > FRAME_IN_PAYLOAD_MAX {
                        return Err(invalid("HTTP/2 frame too large"));
                    }
                    if self.raw.len() < FRAME_HEADER_LEN + len {
                        break;
                    }
                    let frame = self.raw.split_to(FRAME_HEADER_LEN + len);
                    self.on_frame(&frame)?;
                }
                if let Mode::Passthrough = self.mode {
                    let rest = self.raw.split();
                    self.out.extend_from_slice(&rest);
                }
            }
        }
        Ok(())
    }

    fn on_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        let kind = frame[3];
        let flags = frame[4];
        let stream_id = u32::from_be_bytes(frame[5..9].try_into().expect("4 bytes")) & 0x7FFF_FFFF;
        let mut payload = &frame[FRAME_HEADER_LEN..];
        match kind {
            FRAME_HEADERS => {
                if flags & FLAG_PADDED != 0 {
                    let pad = usize::from(*payload.first().ok_or_else(|| invalid("bad padding"))?);
                    if pad + 1 > payload.len() {
                        return Err(invalid("bad padding"));
                    }
                    payload = &payload[1..payload.len() - pad];
                }
                let priority = if flags & FLAG_PRIORITY != 0 {
                    if payload.len() < 5 {
                        return Err(invalid("bad priority"));
                    }
                    let p: [u8; 5] = payload[..5].try_into().expect("5 bytes");
                    payload = &payload[5..];
                    Some(p)
                } else {
                    None
                };
                let block = PendingBlock {
                    frames: frame.to_vec(),
                    stream_id,
                    end_stream: flags & FLAG_END_STREAM != 0,
                    priority,
                    fragment: payload.to_vec(),
                };
                if flags & FLAG_END_HEADERS != 0 {
                    self.emit(block)
                } else {
                    self.pending = Some(block);
                    Ok(())
                }
            }
            FRAME_CONTINUATION
                if self
                    .pending
                    .as_ref()
                    .is_some_and(|p| p.stream_id == stream_id) =>
            {
                let block = self.pending.as_mut().expect("checked");
                block.fragment.extend_from_slice(payload);
                block.frames.extend_from_slice(frame);
                if block.fragment.len() > HEADER_BLOCK_BYTES_MAX {
                    return Err(invalid("header block too large"));
                }
                if flags & FLAG_END_HEADERS != 0 {
                    let block = self.pending.take().expect("checked");
                    self.emit(block)
                } else {
                    Ok(())
                }
            }
            // Anything else (including protocol violations, which h2 will report) passes as is.
            _ => {
                self.out.extend_from_slice(frame);
                Ok(())
            }
        }
    }

    /// Decodes a complete header block, repairs `:authority`, and writes it re-encoded — or, for the
    /// first block of a client that needs no repair, writes it as received and stops inspecting.
    fn emit(&mut self, block: PendingBlock) -> io::Result<()> {
        let fields = self
            .decoder
            .decode(&block.fragment)
            .map_err(|e| invalid(&format!("HPACK: {e:?}")))?;
        if let Mode::Http2Undecided = self.mode {
            let needs_repair = fields
                .iter()
                .any(|(n, v)| n == b":authority" && repair_authority(v).as_deref() != Some(v));
            if !needs_repair {
                self.mode = Mode::Passthrough;
                self.out.extend_from_slice(&block.frames);
                return Ok(());
            }
            self.mode = Mode::Http2Rewrite;
        }
        let fields: Vec<(Vec<u8>, Vec<u8>)> = fields
            .into_iter()
            .filter_map(|(name, value)| {
                if name == b":authority" {
                    repair_authority(&value).map(|v| (name, v))
                } else {
                    Some((name, value))
                }
            })
            .collect();
        let encoded = self
            .encoder
            .encode(fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let mut first = true;
        let mut rest: &[u8] = &encoded;
        loop {
            let prefix = if first {
                block.priority.map_or(0, |_| 5)
            } else {
                0
            };
            let take = rest.len().min(FRAME_PAYLOAD_MAX - prefix);
            let (chunk, tail) = rest.split_at(take);
            let mut flags = if tail.is_empty() { FLAG_END_HEADERS } else { 0 };
            let kind = if first {
                if block.end_stream {
                    flags |= FLAG_END_STREAM;
                }
                if block.priority.is_some() {
                    flags |= FLAG_PRIORITY;
                }
                FRAME_HEADERS
            } else {
                FRAME_CONTINUATION
            };
            let len = prefix + chunk.len();
            self.out.put_slice(&(len as u32).to_be_bytes()[1..]);
            self.out.put_u8(kind);
            self.out.put_u8(flags);
            self.out.put_u32(block.stream_id);
            if first {
                if let Some(p) = block.priority {
                    self.out.put_slice(&p);
                }
            }
            self.out.put_slice(chunk);
            first = false;
            rest = tail;
            if rest.is_empty() {
                return Ok(());
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if let Mode::Passthrough = this.mode {
                // Nothing to inspect: read straight into the caller's buffer.
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut chunk = [0u8; READ_CHUNK_BYTES];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    if read.filled().is_empty() {
                        this.eof = true;
                    }
                    this.raw.extend_from_slice(read.filled());
                    this.process()?;
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn authorities_are_repaired_or_dropped() {
        assert_eq!(
            repair_authority(b"127.0.0.1:2379").unwrap(),
            b"127.0.0.1:2379"
        );
        assert_eq!(
            repair_authority(b"http://127.0.0.1:2379").unwrap(),
            b"127.0.0.1:2379"
        );
        assert_eq!(
            repair_authority(b"#initially=[https://example.com:2379;https://b:2379]").unwrap(),
            b"example.com:2379"
        );
        assert_eq!(repair_authority(b"#initially=[]"), None);
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.push(kind);
        f.push(flags);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Splits a byte stream into (type, flags, stream, payload) frames after the preface.
    fn frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut rest = &bytes[PREFACE.len()..];
        let mut out = vec![];
        while !rest.is_empty() {
            let len =
                (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
            let stream = u32::from_be_bytes(rest[5..9].try_into().unwrap());
            out.push((rest[3], rest[4], stream, rest[9..9 + len].to_vec()));
            rest = &rest[9 + len..];
        }
        out
    }

    #[tokio::test]
    async fn h2_header_blocks_are_rewritten_and_other_frames_pass() {
        let mut client = Encoder::new();
        let headers: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/etcdserverpb.Maintenance/Status"),
            (b":authority", b"http://127.0.0.1:2379"),
            (b"content-type", b"application/grpc"),
        ];
        let block = client.encode(headers.iter().copied());
        let (a, b) = block.split_at(block.len() / 2);
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        input.extend(frame(
            FRAME_HEADERS,
            FLAG_PADDED,
            1,
            &[&[2u8][..], a, &[0, 0]].concat(),
        ));
        input.extend(frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 1, b));
        input.extend(frame(0x0, FLAG_END_STREAM, 1, b"data"));
        // A second request on the same connection uses the client's dynamic table.
        let block2 = client.encode(headers.iter().copied());
        input.extend(frame(
            FRAME_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            3,
            &block2,
        ));

        let mut fixed = AuthorityFix::new(&input[..]);
        let mut out = vec![];
        fixed.read_to_end(&mut out).await.unwrap();
        let got = frames(&out);
        assert_eq!(got.len(), 4);
        assert_eq!(
            (got[0].0, got[2].0, &got[2].3[..]),
            (0x4, 0x0, &b"data"[..])
        );
        let mut h2 = Decoder::new();
        for (i, stream) in [(1usize, 1u32), (3, 3)] {
            let (kind, flags, id, payload) = &got[i];
            assert_eq!((*kind, *id), (FRAME_HEADERS, stream));
            assert_ne!(flags & FLAG_END_HEADERS, 0);
            assert_eq!(flags & FLAG_PADDED, 0);
            let fields = h2.decode(payload).unwrap();
            let authority = fields.iter().find(|(n, _)| n == b":authority").unwrap();
            assert_eq!(authority.1, b"127.0.0.1:2379");
            assert_eq!(fields.len(), headers.len());
        }
        assert_ne!(got[3].1 & FLAG_END_STREAM, 0);
    }

    #[tokio::test]
    async fn h2_with_a_valid_authority_passes_through_unchanged() {
        let mut client = Encoder::new();
        let headers: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":path", b"/etcdserverpb.KV/Range"),
            (b":authority", b"127.0.0.1:2379"),
        ];
        let mut input = PREFACE.to_vec();
        let block = client.encode(headers.iter().copied());
        input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &block));
        input.extend(frame(0x0, FLAG_END_STREAM, 1, b"data"));
        let block = client.encode(headers.iter().copied());
        input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 3, &block));
        let mut fixed = AuthorityFix::new(&input[..]);
        let mut out = vec![];
        fixed.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, input);
    }

    #[tokio::test]
    async fn http1_passes_through_unchanged() {
        let input = b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        let mut fixed = AuthorityFix::new(&input[..]);
        let mut out = vec![];
        fixed.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, input);
    }
}
