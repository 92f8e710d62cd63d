//! TLS for the client and peer listeners and for the connections this member dials to its peers
//! (rustls with the `ring` provider). Only this module imports rustls.
//!
//! - [`TlsSettings`]: one side's flags (`--cert-file …` or `--peer-cert-file …`) turned into a
//!   rustls server config ([`TlsSettings::server_config`]) and client config ([`Dialer`]).
//! - [`ReloadingCert`]: the certificate and key files, read again when their modification time
//!   changes (checked at most every [`RELOAD_CHECK_INTERVAL`]), so a renewed certificate is served
//!   by new handshakes without a restart (etcd needs one). A pair that fails to load (a key that does
//!   not match its certificate, a half-written file) is logged and the previous pair kept.
//! - Client certificates ([`TlsSettings::client_cert_auth`]) are verified against the trusted CA
//!   file, then against the CRL file (`--client-crl-file`, `--peer-crl-file`; read again when it
//!   changes, like the certificates), then against the allowed identity
//!   (`--peer-cert-allowed-cn`, `--{client,peer}-cert-allowed-hostname`). The peer dialer holds a
//!   peer's server certificate to the same allowed identity, as etcd 3.4 does (its `baseConfig`
//!   serves both directions).
//! - [`accept`]: handshakes in their own tasks, so a slow or hostile client never stalls the
//!   accept loop; a refused handshake is logged as etcd does (`rejected connection from …`).
//! - [`Dialer`]: the tonic connector for peer URLs, `https://` over TLS with the peer certificate
//!   as client certificate.
//! - `--auto-tls`: a self-signed certificate generated once into `<data-dir>/fixtures/{client,peer}`
//!   (etcd's layout) and reused afterwards; its dialers skip verification, as etcd's do.
//!
//! **Boundary:** no request handling here; the client certificate's common name leaves this module
//! as a plain string ([`Stream::common_name`]), and `api` decides what it means.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_name, ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    SignatureScheme, SupportedProtocolVersion,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tonic::transport::{Channel, Endpoint, Uri};

/// How often a handshake may look at the certificate and CRL files' modification times.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// A client that has not finished its handshake after this long is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress on one listener, at most; more connections wait in the kernel's backlog.
const HANDSHAKES_PENDING_MAX: usize = 256;
/// Handshaken connections waiting for the server to pick them up, at most.
const ACCEPTED_QUEUE_LEN_MAX: usize = 64;

/// `--tls-min-version`, `--tls-max-version` and `--cipher-suites`, shared by both sides.
#[derive(Debug, Clone, Default)]
pub struct TlsPolicy {
    /// `TLS1.2` or `TLS1.3`; `None`: TLS1.2.
    pub min_version: Option<String>,
    /// `TLS1.2` or `TLS1.3`; `None`: TLS1.3.
    pub max_version: Option<String>,
    /// Go's names of TLS 1.2 cipher suites; empty: rustls's defaults. TLS 1.3 suites are not
    /// configurable (as in Go).
    pub cipher_suites: Vec<String>,
}

/// Go's names for the TLS 1.2 suites rustls implements (etcd: `tlsutil.cipherSuites`).
const CIPHER_SUITES: &[(&str, rustls::CipherSuite)] = &[
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        rustls::CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        rustls::CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

/// Suites etcd accepts that rustls does not implement (CBC and RC4 modes, static RSA key exchange).
const CIPHER_SUITES_UNSUPPORTED: &[&str] = &[
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

fn tls_version(flag: &str, name: &str) -> Result<&'static SupportedProtocolVersion, String> {
    match name {
        "TLS1.2" => Ok(&rustls::version::TLS12),
        "TLS1.3" => Ok(&rustls::version::TLS13),
        "TLS1.0" | "TLS1.1" => Err(format!(
            "--{flag} {name}: cairn supports TLS1.2 and TLS1.3 only"
        )),
        other => Err(format!("unknown TLS version: {other}")),
    }
}

impl TlsPolicy {
    /// The crypto provider (its TLS 1.2 suites filtered by `--cipher-suites`) and the protocol
    /// versions allowed; errors name the offending flag value.
    pub fn resolve(
        &self,
    ) -> Result<(Arc<CryptoProvider>, Vec<&'static SupportedProtocolVersion>), String> {
        let min = match &self.min_version {
            Some(v) => tls_version("tls-min-version", v)?,
            None => &rustls::version::TLS12,
        };
        let max = match &self.max_version {
            Some(v) => tls_version("tls-max-version", v)?,
            None => &rustls::version::TLS13,
        };
        let rank = |v: &SupportedProtocolVersion| u16::from(v.version);
        if rank(min) > rank(max) {
            return Err(format!(
                "min version ({}) is greater than max version ({})",
                self.min_version.as_deref().unwrap_or("TLS1.2"),
                self.max_version.as_deref().unwrap_or("TLS1.3")
            ));
        }
        let versions: Vec<_> = [&rustls::version::TLS12, &rustls::version::TLS13]
            .into_iter()
            .filter(|v| rank(v) >= rank(min) && rank(v) <= rank(max))
            .collect();
        let mut provider = rustls::crypto::ring::default_provider();
        if !self.cipher_suites.is_empty() {
            if rank(min) == rank(&rustls::version::TLS13) {
                return Err(
                    "cipher suites cannot be configured when only TLS1.3 is enabled".to_string(),
                );
            }
            let mut wanted = vec![];
            for name in &self.cipher_suites {
                match CIPHER_SUITES.iter().find(|(n, _)| n == name) {
                    Some((_, suite)) => wanted.push(*suite),
                    None if CIPHER_SUITES_UNSUPPORTED.contains(&name.as_str()) => {
                        return Err(format!(
                            "TLS cipher suite {name:?} is not supported by cairn (rustls implements the ECDHE AEAD suites only)"
                        ))
                    }
                    None => return Err(format!("unexpected TLS cipher suite {name:?}")),
                }
            }
            provider
                .cipher_suites
                .retain(|s| s.version() == &rustls::version::TLS13 || wanted.contains(&s.suite()));
        }
        Ok((Arc::new(provider), versions))
    }
}

/// One side's TLS flags: the client side (`--cert-file …`) or the peer side (`--peer-cert-file …`).
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub trusted_ca_file: Option<PathBuf>,
    pub client_cert_auth: bool,
    pub auto_tls: bool,
    /// `--client-crl-file` / `--peer-crl-file`: client certificates it revokes are refused.
    pub crl_file: Option<PathBuf>,
    /// `--peer-cert-allowed-cn` (etcd 3.4 has no client-side twin).
    pub allowed_cn: Option<String>,
    /// `--client-cert-allowed-hostname` / `--peer-cert-allowed-hostname`.
    pub allowed_hostname: Option<String>,
}

/// Which side a [`TlsSettings`] configures, for messages and the `--auto-tls` directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Peer,
}

impl Side {
    fn fixtures(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Peer => "peer",
        }
    }

    fn flag_prefix(self) -> &'static str {
        match self {
            Side::Client => "",
            Side::Peer => "peer-",
        }
    }

    /// The prefix of the side's CRL and allowed-identity flags (`--client-crl-file`,
    /// `--peer-crl-file`).
    fn check_flag_prefix(self) -> &'static str {
        match self {
            Side::Client => "client-",
            Side::Peer => "peer-",
        }
    }
}

/// A side's TLS, ready for listeners and dialers (absent when the side's URLs are all `http://`).
#[derive(Clone)]
pub struct Tls {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
    /// Whether a listener requires and verifies client certificates.
    pub client_cert_auth: bool,
}

impl TlsSettings {
    /// The side's TLS, when any of `urls` is `https://`: from the cert and key files, or from a
    /// self-signed pair generated into `data_dir` for `--auto-tls` (covering `hosts`).
    pub fn load(
        &self,
        side: Side,
        urls: &[String],
        hosts: &[String],
        data_dir: &Path,
        policy: &TlsPolicy,
    ) -> anyhow::Result<Option<Tls>> {
        let Some(https) = urls.iter().find(|u| u.starts_with("https://")) else {
            return Ok(None);
        };
        let p = side.flag_prefix();
        let (cert, key, self_signed) = match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => (c.clone(), k.clone(), false),
            (None, None) if self.auto_tls => {
                let (c, k) = self_signed(&data_dir.join("fixtures").join(side.fixtures()), hosts)?;
                (c, k, true)
            }
            _ => bail!(
                "TLS key/cert (--{p}cert-file, --{p}key-file) must be provided for {} url {https} with HTTPS scheme",
                match side {
                    Side::Client => "client",
                    Side::Peer => "peer",
                }
            ),
        };
        let allowed = self.allowed_identity(side)?;
        let (provider, versions) = policy.resolve().map_err(anyhow::Error::msg)?;
        let resolver = Arc::new(ReloadingCert::open(cert, key, provider.clone())?);
        let roots = match &self.trusted_ca_file {
            Some(path) => Some(Arc::new(load_roots(path)?)),
            None => None,
        };
        let verifier: Arc<dyn ClientCertVerifier> = match (&roots, self.client_cert_auth) {
            (Some(roots), true) => Arc::new(ClientVerifier::open(
                roots.clone(),
                provider.clone(),
                self.crl_file.clone(),
                allowed.clone(),
            )?),
            (None, true) => bail!("--{p}client-cert-auth needs --{p}trusted-ca-file"),
            (_, false) => {
                // Without client certificates there is nothing to revoke or to compare, and
                // accepting the flag would leave the listener open to anyone.
                let q = side.check_flag_prefix();
                if self.crl_file.is_some() {
                    bail!("--{q}crl-file needs --{p}client-cert-auth");
                }
                if let Some(allowed) = &allowed {
                    bail!("--{} needs --{p}client-cert-auth", allowed.flag(side));
                }
                WebPkiClientVerifier::no_client_auth()
            }
        };
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(resolver.clone());
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let server_verifier: Arc<dyn ServerCertVerifier> = match roots {
            Some(roots) if !self_signed => {
                WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .with_context(|| format!("--{p}trusted-ca-file"))?
            }
            // etcd: a self-signed certificate's dialer skips verification (`InsecureSkipVerify`);
            // so does one without a trusted CA file (Go would fall back to system roots, which
            // cannot know a cluster's own CA).
            _ => Arc::new(SkipServerVerification(provider.clone())),
        };
        // Only peers are dialed with the side's allowed identity: the client side's dialer
        // reaches other members' client URLs, whose certificates name servers, not clients.
        let server_verifier: Arc<dyn ServerCertVerifier> = match (side, allowed) {
            (Side::Peer, Some(allowed)) => Arc::new(CheckedServerVerifier {
                inner: server_verifier,
                allowed,
            }),
            _ => server_verifier,
        };
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions)?
            .dangerous()
            .with_custom_certificate_verifier(server_verifier)
            .with_client_cert_resolver(resolver);
        client.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Some(Tls {
            server: Arc::new(server),
            client: Arc::new(client),
            client_cert_auth: self.client_cert_auth,
        }))
    }

    /// The identity client certificates must show besides a trusted chain, if any. etcd refuses
    /// both flags together, at start, with this message.
    fn allowed_identity(&self, side: Side) -> anyhow::Result<Option<AllowedIdentity>> {
        match (&self.allowed_cn, &self.allowed_hostname) {
            (Some(cn), Some(hostname)) => bail!(
                "AllowedCN and AllowedHostname are mutually exclusive (cn={cn:?}, hostname={hostname:?})"
            ),
            (Some(cn), None) => Ok(Some(AllowedIdentity::CommonName(cn.clone()))),
            (None, Some(hostname)) => {
                // Go's `VerifyHostname` takes an IPv6 address with or without brackets.
                let bare = hostname.trim_start_matches('[').trim_end_matches(']');
                let name = ServerName::try_from(bare.to_string()).map_err(|e| {
                    anyhow::anyhow!(
                        "--{}cert-allowed-hostname {hostname:?}: not a DNS name or an IP address ({e})",
                        side.check_flag_prefix()
                    )
                })?;
                Ok(Some(AllowedIdentity::Hostname(name)))
            }
            (None, None) => Ok(None),
        }
    }
}

/// What a certificate must show besides a trusted chain (etcd: `TLSInfo.AllowedCN` and
/// `AllowedHostname`, checked on the leaf of the verified chain).
#[derive(Debug, Clone)]
enum AllowedIdentity {
    /// `--peer-cert-allowed-cn`: the subject's common name, exactly.
    CommonName(String),
    /// `--{client,peer}-cert-allowed-hostname`: a DNS name (wildcards allowed) or an IP address
    /// that the subject alternative names cover; the common name is not consulted (Go's
    /// `VerifyHostname` since Go 1.15).
    Hostname(ServerName<'static>),
}

impl AllowedIdentity {
    fn flag(&self, side: Side) -> String {
        let q = side.check_flag_prefix();
        match self {
            AllowedIdentity::CommonName(_) => format!("{q}cert-allowed-cn"),
            AllowedIdentity::Hostname(_) => format!("{q}cert-allowed-hostname"),
        }
    }

    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let mismatch = match self {
            AllowedIdentity::CommonName(allowed) => {
                let found = common_name(cert);
                if found.as_deref() == Some(allowed.as_str()) {
                    return Ok(());
                }
                format!(
                    "common name {:?} is not the allowed {allowed:?}",
                    found.unwrap_or_default()
                )
            }
            AllowedIdentity::Hostname(allowed) => {
                let parsed = ParsedCertificate::try_from(cert)?;
                if verify_server_name(&parsed, allowed).is_ok() {
                    return Ok(());
                }
                format!("not valid for the allowed hostname {}", allowed.to_str())
            }
        };
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(IdentityRefused(mismatch))),
        )))
    }
}

/// etcd's words for a certificate refused by the allowed identity, and why.
#[derive(thiserror::Error)]
#[error("client certificate authentication failed: {0}")]
struct IdentityRefused(String);

/// rustls logs the error's `Debug` form: make it the message.
impl fmt::Debug for IdentityRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// Verifies client certificates: a chain to the trusted CAs, not revoked by the CRL file (read
/// again when its modification time changes, at most every [`RELOAD_CHECK_INTERVAL`]), then the
/// allowed identity.
///
/// Revocation follows etcd, which refuses exactly the serial numbers its CRL lists: a certificate
/// whose issuer has no CRL in the file (unknown status) is accepted, and an expired CRL still
/// counts. Unlike etcd, a CRL counts only for certificates of the CA that signed it (webpki checks
/// the CRL's issuer and signature; a CRL that names a CA but fails its signature check refuses
/// all of that CA's certificates), and a CRL file that stops loading keeps the previous CRL in
/// force (logged) where etcd refuses every connection until it loads again.
struct ClientVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    crl_file: Option<PathBuf>,
    allowed: Option<AllowedIdentity>,
    /// The trusted CAs' subjects, offered to clients in the certificate request.
    root_hints: Vec<DistinguishedName>,
    current: Mutex<CurrentCrl>,
}

struct CurrentCrl {
    /// webpki's verifier with the CRLs last read.
    verifier: Arc<dyn ClientCertVerifier>,
    watch: FileWatch,
}

impl fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientVerifier")
            .field("crl_file", &self.crl_file)
            .field("allowed", &self.allowed)
            .finish()
    }
}

impl ClientVerifier {
    fn open(
        roots: Arc<RootCertStore>,
        provider: Arc<CryptoProvider>,
        crl_file: Option<PathBuf>,
        allowed: Option<AllowedIdentity>,
    ) -> anyhow::Result<ClientVerifier> {
        let watch = FileWatch::new(crl_file.as_deref().into_iter());
        let verifier = webpki_client_verifier(&roots, &provider, crl_file.as_deref())?;
        Ok(ClientVerifier {
            root_hints: roots.subjects(),
            roots,
            provider,
            crl_file,
            allowed,
            current: Mutex::new(CurrentCrl { verifier, watch }),
        })
    }

    /// webpki's verifier, rebuilt first if the CRL file changed since it was read.
    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        let mut current = self.current.lock().expect("CRL lock poisoned");
        let Some(crl_file) = &self.crl_file else {
            return current.verifier.clone();
        };
        if current.watch.changed(std::iter::once(crl_file.as_path())) {
            match webpki_client_verifier(&self.roots, &self.provider, Some(crl_file)) {
                Ok(verifier) => {
                    tracing::info!(crl = %crl_file.display(), "reloaded CRL");
                    current.verifier = verifier;
                }
                Err(e) => tracing::warn!("keeping the previous CRL: {e:#}"),
            }
        }
        current.verifier.clone()
    }
}

/// webpki's client certificate verifier over `roots`, with the CRLs in `crl_file`.
fn webpki_client_verifier(
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
    crl_file: Option<&Path>,
) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
    let crls = match crl_file {
        Some(path) => load_crls(path)?,
        None => vec![],
    };
    WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .with_crls(crls)
        // etcd refuses only the serials a CRL lists.
        .allow_unknown_revocation_status()
        .build()
        .with_context(|| match crl_file {
            Some(path) => format!("CRL file {}", path.display()),
            None => "trusted CA file".to_string(),
        })
}

/// The CRLs in a file: one DER CRL, or any number of PEM `X509 CRL` blocks (etcd reads either).
fn load_crls(path: &Path) -> anyhow::Result<Vec<CertificateRevocationListDer<'static>>> {
    /// A DER CRL is a SEQUENCE; PEM starts with text.
    const DER_SEQUENCE: u8 = 0x30;
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read CRL file {}", path.display()))?;
    if bytes.first() == Some(&DER_SEQUENCE) {
        return Ok(vec![CertificateRevocationListDer::from(bytes)]);
    }
    let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("cannot read CRL file {}", path.display()))?;
    if crls.is_empty() {
        bail!(
            "CRL file {} holds no CRL (PEM `X509 CRL` or DER)",
            path.display()
        );
    }
    Ok(crls)
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.root_hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .current()
            .verify_client_cert(end_entity, intermediates, now)?;
        if let Some(allowed) = &self.allowed {
            allowed.check(end_entity)?;
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A peer's server certificate: the usual verification, then the allowed identity.
#[derive(Debug)]
struct CheckedServerVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    allowed: AllowedIdentity,
}

impl ServerCertVerifier for CheckedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.allowed.check(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn load_roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read trusted CA file {}", path.display()))?;
    if certs.is_empty() {
        bail!("trusted CA file {} holds no certificate", path.display());
    }
    for cert in certs {
        roots
            .add(cert)
            .with_context(|| format!("trusted CA file {}", path.display()))?;
    }
    Ok(roots)
}

/// Generates `cert.pem` and `key.pem` in `dir` unless both exist (etcd: `transport.SelfCert`).
fn self_signed(dir: &Path, hosts: &[String]) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut params = rcgen::CertificateParams::new(hosts.to_vec())?;
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "etcd");
    let key_pair = rcgen::KeyPair::generate()?;
    let generated = params.self_signed(&key_pair)?;
    write_private(&key, key_pair.serialize_pem().as_bytes())?;
    std::fs::write(&cert, generated.pem())
        .with_context(|| format!("cannot write {}", cert.display()))?;
    tracing::info!(dir = %dir.display(), ?hosts, "generated a self-signed certificate (auto TLS)");
    Ok((cert, key))
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(bytes)?;
    Ok(())
}

/// A certificate and key read from files, and read again when either file's modification time
/// changes. Serves as both the server's and the dialer's certificate.
pub struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Mutex<Loaded>,
}

struct Loaded {
    key: Arc<CertifiedKey>,
    /// The files' modification times when `key` was read.
    watch: FileWatch,
}

/// Files' modification times as last seen, looked at again at most every
/// [`RELOAD_CHECK_INTERVAL`].
struct FileWatch {
    stamps: Vec<Option<SystemTime>>,
    checked: Instant,
}

impl FileWatch {
    /// Takes the stamps before the files are read, so that a change during the read is seen.
    fn new<'a>(files: impl Iterator<Item = &'a Path>) -> FileWatch {
        FileWatch {
            stamps: files.map(modified).collect(),
            checked: Instant::now(),
        }
    }

    /// Whether a file's modification time changed since the last look; false until
    /// [`RELOAD_CHECK_INTERVAL`] has passed since then.
    fn changed<'a>(&mut self, files: impl Iterator<Item = &'a Path>) -> bool {
        if self.checked.elapsed() < RELOAD_CHECK_INTERVAL {
            return false;
        }
        self.checked = Instant::now();
        let stamps: Vec<_> = files.map(modified).collect();
        if stamps == self.stamps {
            return false;
        }
        self.stamps = stamps;
        true
    }
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish()
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reads a certificate chain and its private key, and checks that they belong together.
fn load_pair(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_file_iter(cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read certificate file {}", cert_file.display()))?;
    if chain.is_empty() {
        bail!(
            "certificate file {} holds no certificate",
            cert_file.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .with_context(|| format!("cannot read key file {}", key_file.display()))?;
    CertifiedKey::from_der(chain, key, provider).with_context(|| {
        format!(
            "certificate {} and key {} do not make a pair",
            cert_file.display(),
            key_file.display()
        )
    })
}

impl ReloadingCert {
    pub fn open(
        cert_file: PathBuf,
        key_file: PathBuf,
        provider: Arc<CryptoProvider>,
    ) -> anyhow::Result<ReloadingCert> {
        let watch = FileWatch::new([cert_file.as_path(), key_file.as_path()].into_iter());
        let key = Arc::new(load_pair(&cert_file, &key_file, &provider)?);
        Ok(ReloadingCert {
            cert_file,
            key_file,
            provider,
            current: Mutex::new(Loaded { key, watch }),
        })
    }

    /// The current pair, read again first if the files changed since it was read.
    fn get(&self) -> Arc<CertifiedKey> {
        let mut current = self.current.lock().expect("cert lock poisoned");
        let files = [self.cert_file.as_path(), self.key_file.as_path()];
        if current.watch.changed(files.into_iter()) {
            match load_pair(&self.cert_file, &self.key_file, &self.provider) {
                Ok(key) => {
                    tracing::info!(cert = %self.cert_file.display(), "reloaded TLS certificate");
                    current.key = Arc::new(key);
                }
                Err(e) => tracing::warn!("keeping the previous TLS certificate: {e:#}"),
            }
        }
        current.key.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl ResolvesClientCert for ReloadingCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Accepts any server certificate but checks the handshake's signatures (etcd's
/// `InsecureSkipVerify` for self-signed certificates).
#[derive(Debug)]
struct SkipServerVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for SkipServerVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A connection, in clear or over TLS (either end).
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl Stream {
    /// The common name of the verified client certificate a client presented, if any.
    pub fn common_name(&self) -> Option<String> {
        let Stream::Tls(tls) = self else {
            return None;
        };
        let (_, conn) = tls.get_ref();
        let cert = conn.peer_certificates()?.first()?;
        common_name(cert)
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            Stream::Tls($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}

impl tonic::transport::server::Connected for Stream {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

/// Accepts connections on `listener`: in clear without `tls`, otherwise each after its handshake,
/// which runs in its own task (at most [`HANDSHAKES_PENDING_MAX`] at once, each within
/// [`HANDSHAKE_TIMEOUT`]). Stops when the receiver is dropped.
pub fn accept(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> mpsc::Receiver<(Stream, SocketAddr)> {
    let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE_LEN_MAX);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_PENDING_MAX));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                _ = tx.closed() => return,
                p = handshakes.clone().acquire_owned() => p.expect("never closed"),
            };
            let (tcp, addr) = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off rather than spin.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            // Latency matters more than packet count for request/response traffic.
            let _ = tcp.set_nodelay(true);
            let Some(acceptor) = acceptor.clone() else {
                if tx.send((Stream::Plain(tcp), addr)).await.is_err() {
                    return;
                }
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                let stream = match handshake.await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::warn!("rejected connection from {addr} (error: {e})");
                        return;
                    }
                    Err(_) => {
                        tracing::warn!(
                            "rejected connection from {addr} (error: handshake timed out)"
                        );
                        return;
                    }
                };
                drop(permit);
                let stream = Stream::Tls(Box::new(tokio_rustls::TlsStream::Server(stream)));
                let _ = tx.send((stream, addr)).await;
            });
        }
    });
    rx
}

/// Dials URLs for tonic: `http://` in clear, `https://` over TLS with this side's client config.
#[derive(Clone, Default)]
pub struct Dialer {
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Dialer {
    pub fn new(tls: Option<&Tls>) -> Dialer {
        Dialer {
            tls: tls.map(|t| t.client.clone()),
        }
    }

    /// A channel to `endpoint` that connects on first use.
    pub fn connect_lazy(&self, endpoint: Endpoint) -> Channel {
        endpoint.connect_with_connector_lazy(self.connector())
    }

    /// A channel to `endpoint`, connected now.
    pub async fn connect(&self, endpoint: Endpoint) -> Result<Channel, tonic::transport::Error> {
        endpoint.connect_with_connector(self.connector()).await
    }

    fn connector(&self) -> Connector {
        Connector {
            tls: self.tls.clone(),
        }
    }
}

/// The tower service tonic calls to open a connection.
#[derive(Clone)]
pub struct Connector {
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = io::Result<TokioIo<Stream>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(dial(uri, self.tls.clone()))
    }
}

async fn dial(uri: Uri, tls: Option<Arc<rustls::ClientConfig>>) -> io::Result<TokioIo<Stream>> {
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
    let tls = tls.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{uri}: https URL but no TLS configured for it"),
        )
    })?;
    let name =
        ServerName::try_from(host).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await?;
    Ok(TokioIo::new(Stream::Tls(Box::new(
        tokio_rustls::TlsStream::Client(stream),
    ))))
}

/// The subject's common name of a DER certificate (etcd: `AuthInfoFromTLS` reads
/// `Subject.CommonName`). Walks just enough DER to reach it.
pub fn common_name(cert: &[u8]) -> Option<String> {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    const CONTEXT_0: u8 = 0xA0;
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    let (tag, certificate, _) = der(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, mut tbs, _) = der(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, _, rest) = der(tbs)?;
    if tag == CONTEXT_0 {
        tbs = rest;
    }
    // serial number, signature algorithm, issuer, validity; then the subject.
    for _ in 0..4 {
        tbs = der(tbs)?.2;
    }
    let (tag, mut names, _) = der(tbs)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut found = None;
    while !names.is_empty() {
        let (tag, mut set, rest) = der(names)?;
        names = rest;
        if tag != SET {
            return None;
        }
        while !set.is_empty() {
            let (_, pair, rest) = der(set)?;
            set = rest;
            let (tag, oid, value) = der(pair)?;
            if tag == OID && oid == CN {
                let (_, text, _) = der(value)?;
                // The last CN wins, as in Go's pkix.Name.
                found = Some(String::from_utf8_lossy(text).into_owned());
            }
        }
    }
    found
}

/// Splits one DER element off `input`: (tag, contents, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_name_is_read_from_the_subject() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "cairn");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(common_name(cert.der()).as_deref(), Some("alice"));
        params.distinguished_name = rcgen::DistinguishedName::new();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(common_name(cert.der()), None);
        assert_eq!(common_name(b"\x30\x05garbage"), None);
    }

    /// A CA, and certificates it issued: (DER, serial number).
    struct TestCa {
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
        der: CertificateDer<'static>,
    }

    impl TestCa {
        fn new(name: &str) -> TestCa {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            params.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::CrlSign,
            ];
            let key = rcgen::KeyPair::generate().unwrap();
            let der = params.self_signed(&key).unwrap().der().clone();
            TestCa {
                issuer: rcgen::Issuer::new(params, key),
                der,
            }
        }

        fn issue(&self, common_name: &str, sans: &[&str], serial: u64) -> CertificateDer<'static> {
            let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
            let mut params = rcgen::CertificateParams::new(sans).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, common_name);
            params.serial_number = Some(serial.into());
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            let key = rcgen::KeyPair::generate().unwrap();
            params.signed_by(&key, &self.issuer).unwrap().der().clone()
        }

        fn crl(&self, revoked: &[u64]) -> rcgen::CertificateRevocationList {
            rcgen::CertificateRevocationListParams {
                this_update: rcgen::date_time_ymd(2024, 1, 1),
                next_update: rcgen::date_time_ymd(2025, 1, 1),
                crl_number: 1.into(),
                issuing_distribution_point: None,
                revoked_certs: revoked
                    .iter()
                    .map(|&serial| rcgen::RevokedCertParams {
                        serial_number: serial.into(),
                        revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                        reason_code: None,
                        invalidity_date: None,
                    })
                    .collect(),
                key_identifier_method: rcgen::KeyIdMethod::Sha256,
            }
            .signed_by(&self.issuer)
            .unwrap()
        }

        fn roots(&self) -> Arc<RootCertStore> {
            let mut roots = RootCertStore::empty();
            roots.add(self.der.clone()).unwrap();
            Arc::new(roots)
        }
    }

    const GOOD: u64 = 0x4000_0000_0000_0001;
    const REVOKED: u64 = 0x4000_0000_0000_0002;

    fn verifier(
        ca: &TestCa,
        crl_file: Option<&Path>,
        allowed: Option<AllowedIdentity>,
    ) -> ClientVerifier {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        ClientVerifier::open(
            ca.roots(),
            provider,
            crl_file.map(Path::to_path_buf),
            allowed,
        )
        .unwrap()
    }

    #[test]
    fn a_crl_revokes_the_serials_it_lists_in_pem_or_der() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("ca");
        let (good, revoked) = (
            ca.issue("peer", &["localhost"], GOOD),
            ca.issue("peer", &["localhost"], REVOKED),
        );
        // The CRL's next update is past: etcd does not look at it, nor do we.
        let crl = ca.crl(&[REVOKED]);
        let (pem, der) = (dir.path().join("crl.pem"), dir.path().join("crl.der"));
        std::fs::write(&pem, crl.pem().unwrap()).unwrap();
        std::fs::write(&der, crl.der()).unwrap();
        let now = UnixTime::now();
        for file in [&pem, &der] {
            let v = verifier(&ca, Some(file), None);
            assert!(v.verify_client_cert(&good, &[], now).is_ok());
            let e = v.verify_client_cert(&revoked, &[], now).unwrap_err();
            assert_eq!(
                e,
                rustls::Error::InvalidCertificate(CertificateError::Revoked)
            );
        }
        // Another CA's CRL says nothing about this CA's certificates: unknown status is accepted.
        let other = TestCa::new("other-ca");
        std::fs::write(&pem, other.crl(&[REVOKED]).pem().unwrap()).unwrap();
        let v = verifier(&ca, Some(&pem), None);
        assert!(v.verify_client_cert(&revoked, &[], now).is_ok());
        // A CRL that names this CA as its issuer but does not verify with its key fails closed:
        // every certificate of the CA is refused.
        let impostor = TestCa::new("ca");
        std::fs::write(&pem, impostor.crl(&[]).pem().unwrap()).unwrap();
        let v = verifier(&ca, Some(&pem), None);
        assert!(v.verify_client_cert(&good, &[], now).is_err());
        // A file without a CRL is refused at start.
        std::fs::write(&pem, "not a CRL").unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let e = ClientVerifier::open(ca.roots(), provider, Some(pem.clone()), None).unwrap_err();
        assert!(format!("{e:#}").contains("holds no CRL"), "{e:#}");
    }

    #[test]
    fn the_allowed_identity_is_checked_after_the_chain() {
        let ca = TestCa::new("ca");
        let now = UnixTime::now();
        let peer = ca.issue("peer", &["peer.example", "127.0.0.1"], GOOD);
        let intruder = ca.issue("intruder", &["*.intruder.example"], GOOD + 1);
        let cn = verifier(&ca, None, Some(AllowedIdentity::CommonName("peer".into())));
        assert!(cn.verify_client_cert(&peer, &[], now).is_ok());
        let e = cn.verify_client_cert(&intruder, &[], now).unwrap_err();
        assert!(
            e.to_string().contains(
                "client certificate authentication failed: common name \"intruder\" is not the allowed \"peer\""
            ),
            "{e}"
        );
        let host = |name: &str| {
            let name = ServerName::try_from(name.to_string()).unwrap();
            verifier(&ca, None, Some(AllowedIdentity::Hostname(name)))
        };
        assert!(host("peer.example")
            .verify_client_cert(&peer, &[], now)
            .is_ok());
        assert!(host("127.0.0.1")
            .verify_client_cert(&peer, &[], now)
            .is_ok());
        assert!(host("a.intruder.example")
            .verify_client_cert(&intruder, &[], now)
            .is_ok());
        // The common name is not a hostname (Go 1.15+).
        assert!(host("peer").verify_client_cert(&peer, &[], now).is_err());
        assert!(host("127.0.0.2")
            .verify_client_cert(&peer, &[], now)
            .is_err());
        // A certificate of another CA is refused before its name is looked at.
        let other = TestCa::new("other-ca").issue("peer", &["peer.example"], GOOD);
        let e = cn.verify_client_cert(&other, &[], now).unwrap_err();
        assert_eq!(
            e,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        );
    }

    #[test]
    fn crl_and_identity_flags_need_client_cert_auth_and_exclude_each_other() {
        let settings = |cn: Option<&str>, hostname: Option<&str>| TlsSettings {
            allowed_cn: cn.map(str::to_string),
            allowed_hostname: hostname.map(str::to_string),
            ..TlsSettings::default()
        };
        let e = settings(Some("peer"), Some("127.0.0.1"))
            .allowed_identity(Side::Peer)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "AllowedCN and AllowedHostname are mutually exclusive (cn=\"peer\", hostname=\"127.0.0.1\")"
        );
        let e = settings(None, Some("not a name"))
            .allowed_identity(Side::Client)
            .unwrap_err();
        assert!(
            e.to_string().starts_with("--client-cert-allowed-hostname"),
            "{e}"
        );
        assert!(matches!(
            settings(None, Some("[::1]")).allowed_identity(Side::Peer),
            Ok(Some(AllowedIdentity::Hostname(ServerName::IpAddress(_))))
        ));

        // Without client certificates there is nothing to check: refused, naming the flags.
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_file, key_file) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        let load = |settings: TlsSettings, side: Side| {
            let settings = TlsSettings {
                cert_file: Some(cert_file.clone()),
                key_file: Some(key_file.clone()),
                ..settings
            };
            let urls = ["https://127.0.0.1:2380".to_string()];
            settings
                .load(side, &urls, &[], dir.path(), &TlsPolicy::default())
                .map(|_| ())
                .unwrap_err()
                .to_string()
        };
        let crl = TlsSettings {
            crl_file: Some(dir.path().join("crl.pem")),
            ..TlsSettings::default()
        };
        assert_eq!(
            load(crl, Side::Client),
            "--client-crl-file needs --client-cert-auth"
        );
        assert_eq!(
            load(settings(Some("peer"), None), Side::Peer),
            "--peer-cert-allowed-cn needs --peer-client-cert-auth"
        );
    }

    #[test]
    fn versions_and_cipher_suites_follow_etcd() {
        let policy = |min: Option<&str>, max: Option<&str>, suites: &[&str]| TlsPolicy {
            min_version: min.map(str::to_string),
            max_version: max.map(str::to_string),
            cipher_suites: suites.iter().map(|s| s.to_string()).collect(),
        };
        let (_, versions) = policy(None, None, &[]).resolve().unwrap();
        assert_eq!(versions.len(), 2);
        let (_, versions) = policy(Some("TLS1.3"), None, &[]).resolve().unwrap();
        assert_eq!(versions, vec![&rustls::version::TLS13]);
        let e = policy(Some("TLS1.3"), Some("TLS1.2"), &[])
            .resolve()
            .unwrap_err();
        assert_eq!(
            e,
            "min version (TLS1.3) is greater than max version (TLS1.2)"
        );
        assert!(policy(Some("TLS1.1"), None, &[]).resolve().is_err());
        let suite = "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256";
        let (provider, _) = policy(None, None, &[suite]).resolve().unwrap();
        let tls12: Vec<_> = provider
            .cipher_suites
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS12)
            .map(|s| s.suite())
            .collect();
        assert_eq!(
            tls12,
            vec![rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]
        );
        let e = policy(None, None, &["TLS_NOPE"]).resolve().unwrap_err();
        assert_eq!(e, "unexpected TLS cipher suite \"TLS_NOPE\"");
        let e = policy(None, None, &["TLS_RSA_WITH_AES_128_CBC_SHA"])
            .resolve()
            .unwrap_err();
        assert!(e.contains("not supported by cairn"), "{e}");
        let e = policy(Some("TLS1.3"), None, &[suite])
            .resolve()
            .unwrap_err();
        assert!(e.contains("only TLS1.3"), "{e}");
    }
}
