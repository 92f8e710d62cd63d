//! The TLS transport: a tonic connector that dials `https://` endpoints with rustls (ring), and
//! `http://` ones in clear. Only this module imports rustls.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::{Error, Result};
use crate::options::TlsOptions;

/// [`TlsOptions`] made into a rustls configuration, and the server name to expect.
#[derive(Clone)]
pub(crate) struct TlsConnector {
    config: Arc<rustls::ClientConfig>,
    domain: Option<String>,
}

fn invalid(what: &str, e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("TLS {what}: {e}"))
}

impl TlsConnector {
    pub(crate) fn new(options: &TlsOptions) -> Result<TlsConnector> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        let ca = options
            .ca_pem
            .as_ref()
            .ok_or_else(|| invalid("options", "a CA certificate is required (with_ca_pem)"))?;
        for cert in CertificateDer::pem_slice_iter(ca) {
            roots
                .add(cert.map_err(|e| invalid("CA", e))?)
                .map_err(|e| invalid("CA", e))?;
        }
        if roots.is_empty() {
            return Err(invalid("CA", "no certificate in the PEM"));
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("options", e))?
            .with_root_certificates(roots);
        let mut config = match &options.identity_pem {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(cert)
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| invalid("client certificate", e))?;
                let key =
                    PrivateKeyDer::from_pem_slice(key).map_err(|e| invalid("client key", e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| invalid("client certificate", e))?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(TlsConnector {
            config: Arc::new(config),
            domain: options.domain.clone(),
        })
    }

    /// A channel to `endpoint` through this connector, connected on first use.
    pub(crate) fn connect_lazy(&self, endpoint: Endpoint) -> Channel {
        endpoint.connect_with_connector_lazy(self.clone())
    }
}

impl tower::Service<Uri> for TlsConnector {
    type Response = TokioIo<Stream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = io::Result<TokioIo<Stream>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(dial(uri, self.clone()))
    }
}

async fn dial(uri: Uri, tls: TlsConnector) -> io::Result<TokioIo<Stream>> {
    let https = uri.scheme_str() == Some("https");
    let host = uri
        .host()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri}: no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port)).await?;
    tcp.set_nodelay(true)?;
    if !https {
        return Ok(TokioIo::new(Stream::Plain(tcp)));
    }
    let name = ServerName::try_from(tls.domain.unwrap_or(host))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let stream = tokio_rustls::TlsConnector::from(tls.config)
        .connect(name, tcp)
        .await?;
    Ok(TokioIo::new(Stream::Tls(Box::new(stream))))
}

/// A connection to a member, in clear or over TLS.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}
