//! TLS on the client and peer URLs: mutual TLS everywhere with auth on, the certificate's common
//! name as the user, refusals (no certificate, wrong CA, expired, plaintext), certificate reload
//! without restart, `--auto-tls`, revocation lists (`--client-crl-file`, `--peer-crl-file`, reloaded
//! without restart), the allowed peer common name and client hostname, and the same refusals
//! compared with etcd 3.4 using the same certificates. Every certificate and CRL is generated here
//! (rcgen).

mod common;

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cairn_client::{Client, ConnectOptions, GetOptions, PutOptions, TlsOptions};
use common::{run_etcdctl, wait_for, Cluster, Kind, Member};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber,
};

/// A certificate authority that writes the certificates it issues into a directory.
struct Authority {
    dir: PathBuf,
    name: String,
    issuer: Issuer<'static, KeyPair>,
    /// The serial number of each certificate issued, by certificate file.
    serials: RefCell<HashMap<PathBuf, u64>>,
}

impl Authority {
    fn new(dir: &Path, name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        Authority {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            issuer: Issuer::new(params, key),
            serials: RefCell::new(HashMap::new()),
        }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.join(format!("{}.pem", self.name))
    }

    /// Issues a certificate for `common_name` (valid for 127.0.0.1 and localhost), writes it as
    /// `<file>.pem` and `<file>-key.pem`, and returns the two paths.
    fn issue(&self, file: &str, common_name: &str, expired: bool) -> (PathBuf, PathBuf) {
        self.issue_for(file, common_name, &["127.0.0.1", "localhost"], expired)
    }

    /// Like [`Authority::issue`], with the subject alternative names `sans`.
    fn issue_for(
        &self,
        file: &str,
        common_name: &str,
        sans: &[&str],
        expired: bool,
    ) -> (PathBuf, PathBuf) {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).unwrap();
        // Distinct, with the high byte set so that every serial encodes in 8 bytes.
        let serial = 0x4000_0000_0000_0000 + self.serials.borrow().len() as u64;
        params.serial_number = Some(SerialNumber::from(serial));
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_file, key_file) = (
            self.dir.join(format!("{file}.pem")),
            self.dir.join(format!("{file}-key.pem")),
        );
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        self.serials.borrow_mut().insert(cert_file.clone(), serial);
        (cert_file, key_file)
    }

    /// A CRL signed by this authority that revokes the certificates in `revoked` (files this
    /// authority issued); `number` is the CRL number.
    fn crl(&self, number: u64, revoked: &[&Path]) -> rcgen::CertificateRevocationList {
        let serials = self.serials.borrow();
        let params = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2100, 1, 1),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|cert| RevokedCertParams {
                    serial_number: SerialNumber::from(serials[*cert]),
                    revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer).unwrap()
    }
}

/// Everything a test needs: the cluster's CA, a server/peer certificate, client certificates for
/// `root` and `alice`, one expired, and one from another CA.
struct Pki {
    ca: Authority,
    server: (PathBuf, PathBuf),
    root: (PathBuf, PathBuf),
    alice: (PathBuf, PathBuf),
    expired: (PathBuf, PathBuf),
    other_ca: Authority,
    foreign: (PathBuf, PathBuf),
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let ca = Authority::new(dir, "ca");
        let other_ca = Authority::new(dir, "other-ca");
        Pki {
            server: ca.issue("server", "server", false),
            root: ca.issue("root", "root", false),
            alice: ca.issue("alice", "alice", false),
            expired: ca.issue("expired", "root", true),
            foreign: other_ca.issue("foreign", "root", false),
            ca,
            other_ca,
        }
    }

    /// The server flags for mutual TLS on both the client and the peer URLs.
    fn server_flags(&self) -> Vec<String> {
        let mut flags = self.client_side_flags();
        flags.extend(self.peer_side_flags(&self.server));
        flags
    }

    /// Mutual TLS on the client URLs with the server certificate.
    fn client_side_flags(&self) -> Vec<String> {
        vec![
            format!("--cert-file={}", self.server.0.display()),
            format!("--key-file={}", self.server.1.display()),
            format!("--trusted-ca-file={}", self.ca.ca_file().display()),
            "--client-cert-auth".to_string(),
        ]
    }

    /// Mutual TLS on the peer URLs with the certificate `peer`.
    fn peer_side_flags(&self, peer: &(PathBuf, PathBuf)) -> Vec<String> {
        vec![
            format!("--peer-cert-file={}", peer.0.display()),
            format!("--peer-key-file={}", peer.1.display()),
            format!("--peer-trusted-ca-file={}", self.ca.ca_file().display()),
            "--peer-client-cert-auth".to_string(),
        ]
    }

    /// etcdctl's flags to present `identity` and trust `ca`.
    fn etcdctl_flags(ca: &Authority, identity: Option<&(PathBuf, PathBuf)>) -> String {
        let mut flags = format!("--cacert={}", ca.ca_file().display());
        if let Some((cert, key)) = identity {
            flags += &format!(" --cert={} --key={}", cert.display(), key.display());
        }
        flags
    }

    fn as_root(&self) -> String {
        Pki::etcdctl_flags(&self.ca, Some(&self.root))
    }
}

/// Runs etcdctl against `endpoint` with `flags` and `args`; exit code and output as one text.
fn ctl(endpoint: &str, flags: &str, args: &str) -> String {
    run_etcdctl(endpoint, &format!("{flags} --command-timeout=3s {args}"))
}

fn ok(out: &str) -> bool {
    out.starts_with("exit Some(0)")
}

fn cluster(kind: Kind, n: usize, dir: &Path, pki: &Pki, extra: &[&str]) -> Vec<Member> {
    let mut flags = pki.server_flags();
    flags.extend(extra.iter().map(|s| s.to_string()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut members = tls_members(kind, n, dir, pki, &flags);
    for m in &mut members {
        m.spawn_process();
    }
    for m in &mut members {
        m.wait_healthy();
    }
    members
}

/// `n` members with `https://` URLs and `flags`, not started; etcdctl checks them as root.
fn tls_members(kind: Kind, n: usize, dir: &Path, pki: &Pki, flags: &[&str]) -> Vec<Member> {
    let mut members = Cluster::unstarted(kind, n, dir, flags);
    for m in &mut members {
        m.tls = Some(pki.as_root());
    }
    let initial = members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url()))
        .collect::<Vec<_>>()
        .join(",");
    for m in &mut members {
        m.initial_cluster = initial.clone();
    }
    members
}

fn tls_options(pki: &Pki, identity: &(PathBuf, PathBuf)) -> TlsOptions {
    TlsOptions::new()
        .with_ca_pem(std::fs::read(pki.ca.ca_file()).unwrap())
        .with_identity_pem(
            std::fs::read(&identity.0).unwrap(),
            std::fs::read(&identity.1).unwrap(),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_cluster_with_auth_serves_etcdctl_and_the_rust_client() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let members = cluster(Kind::Cairn, 3, dir.path(), &pki, &[]);
    let endpoints: Vec<String> = members.iter().map(|m| m.endpoint()).collect();
    let all = endpoints.join(",");
    let root = pki.as_root();

    let out = ctl(&all, &root, "member list");
    assert!(ok(&out), "{out}");
    for m in &members {
        assert!(
            out.contains(&m.peer_url()) && out.contains(&m.endpoint()),
            "{out}"
        );
    }
    let out = ctl(&all, &root, "endpoint health");
    assert_eq!(out.matches("is healthy").count(), 3, "{out}");

    // Auth on: the client certificate's common name is the user when no token is given.
    for args in [
        "user add root --new-user-password=rootpw",
        "user add alice --new-user-password=alicepw",
        "auth enable",
    ] {
        let out = ctl(&endpoints[0], &root, args);
        assert!(ok(&out), "{args}: {out}");
    }
    let out = ctl(&endpoints[1], &root, "put k v1");
    assert!(ok(&out), "{out}");
    let out = ctl(&endpoints[2], &root, "get k --print-value-only");
    assert_eq!(out, "exit Some(0)\nv1\n");
    let alice = Pki::etcdctl_flags(&pki.ca, Some(&pki.alice));
    let out = ctl(&endpoints[0], &alice, "put k v2");
    assert!(out.contains("etcdserver: permission denied"), "{out}");
    // A token wins over the certificate: alice's password makes the request alice's.
    let out = ctl(&endpoints[0], &root, "--user=alice:alicepw put k v2");
    assert!(out.contains("etcdserver: permission denied"), "{out}");

    // Refused at the handshake: no client certificate, another CA's, an expired one (etcdctl
    // 3.4 reports them all as `context deadline exceeded`, as with etcd; the server logs why).
    for identity in [None, Some(&pki.foreign), Some(&pki.expired)] {
        let flags = Pki::etcdctl_flags(&pki.ca, identity);
        let out = ctl(&endpoints[0], &flags, "get k");
        assert!(
            !ok(&out) && out.contains("context deadline exceeded"),
            "{out}"
        );
    }
    let log = members[0].log();
    for why in ["no certificates", "UnknownIssuer", "expired"] {
        assert!(
            log.lines()
                .any(|l| l.contains("rejected connection") && l.contains(why)),
            "{why}: {log}"
        );
    }
    // A client that does not trust the cluster's CA.
    let flags = Pki::etcdctl_flags(&pki.other_ca, Some(&pki.root));
    let out = ctl(&endpoints[0], &flags, "get k");
    assert!(!ok(&out), "{out}");
    // Plaintext HTTP to the TLS port gets no answer.
    assert!(!matches!(
        common::http_get(&members[0].addr(), "/health"),
        Ok((200, _))
    ));
    // A peer without a certificate from the cluster's CA is refused by the peer listener.
    let flags = Pki::etcdctl_flags(&pki.ca, Some(&pki.foreign));
    let out = ctl(&members[0].peer_url(), &flags, "endpoint health");
    assert!(!ok(&out), "{out}");

    // The HTTP endpoints share the TLS port.
    let out = Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(pki.ca.ca_file())
        .arg("--cert")
        .arg(&pki.root.0)
        .arg("--key")
        .arg(&pki.root.1)
        .arg(format!("{}/version", endpoints[0]))
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(body.contains("etcdserver"), "{body}");

    // The Rust client: by certificate (root), and by password over TLS.
    let client = Client::connect_with(
        endpoints.clone(),
        ConnectOptions::new().with_tls(tls_options(&pki, &pki.root)),
    )
    .await
    .unwrap();
    client
        .kv()
        .put("r", "by-cert", PutOptions::new())
        .await
        .unwrap();
    let got = client.kv().get("k", GetOptions::new()).await.unwrap();
    assert_eq!(got.kvs[0].value.as_ref(), b"v1");
    let alice_client = Client::connect_with(
        endpoints.clone(),
        ConnectOptions::new()
            .with_tls(tls_options(&pki, &pki.alice))
            .with_user("root", "rootpw"),
    )
    .await
    .unwrap();
    let got = alice_client.kv().get("r", GetOptions::new()).await.unwrap();
    assert_eq!(got.kvs[0].value.as_ref(), b"by-cert");
    let refused = Client::connect_with(
        vec![endpoints[0].clone()],
        ConnectOptions::new()
            .with_tls(tls_options(&pki, &pki.foreign))
            .with_timeout(Duration::from_secs(2)),
    )
    .await;
    let refused = match refused {
        Ok(c) => c.kv().get("k", GetOptions::new()).await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(refused.is_err(), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_client_certificates_are_refused_and_the_crl_is_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let revoked = pki.ca.issue("revoked", "root", false);
    let crl_file = dir.path().join("crl.pem");
    std::fs::write(&crl_file, pki.ca.crl(1, &[&revoked.0]).pem().unwrap()).unwrap();
    let crl_flag = format!("--client-crl-file={}", crl_file.display());
    let members = cluster(Kind::Cairn, 3, dir.path(), &pki, &[&crl_flag]);
    let endpoints: Vec<String> = members.iter().map(|m| m.endpoint()).collect();
    let revoked_flags = Pki::etcdctl_flags(&pki.ca, Some(&revoked));
    for endpoint in &endpoints {
        let out = ctl(endpoint, &pki.as_root(), "put k v");
        assert!(ok(&out), "{out}");
        let out = ctl(endpoint, &revoked_flags, "get k");
        assert!(
            !ok(&out) && out.contains("context deadline exceeded"),
            "{out}"
        );
    }
    for m in &members {
        let log = m.log();
        assert!(
            log.lines()
                .any(|l| l.contains("rejected connection") && l.contains("Revoked")),
            "{log}"
        );
    }

    // The Rust client: served with a good certificate, refused with the revoked one.
    let client = Client::connect_with(
        endpoints.clone(),
        ConnectOptions::new().with_tls(tls_options(&pki, &pki.root)),
    )
    .await
    .unwrap();
    let got = client.kv().get("k", GetOptions::new()).await.unwrap();
    assert_eq!(got.kvs[0].value.as_ref(), b"v");
    let refused = Client::connect_with(
        vec![endpoints[0].clone()],
        ConnectOptions::new()
            .with_tls(tls_options(&pki, &revoked))
            .with_timeout(Duration::from_secs(2)),
    )
    .await;
    let refused = match refused {
        Ok(c) => c.kv().get("k", GetOptions::new()).await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(refused.is_err(), "{refused:?}");

    // A new CRL, in DER this time, revokes alice too: new handshakes follow it, no restart.
    let alice = Pki::etcdctl_flags(&pki.ca, Some(&pki.alice));
    let out = ctl(&endpoints[1], &alice, "get k");
    assert!(ok(&out), "{out}");
    let crl = pki.ca.crl(2, &[&revoked.0, &pki.alice.0]);
    std::fs::write(&crl_file, crl.der()).unwrap();
    wait_for("the new CRL", Duration::from_secs(20), || {
        (!ok(&ctl(&endpoints[1], &alice, "get k"))).then_some(())
    });
    assert!(members[1].log().contains("reloaded CRL"));
    let out = ctl(&endpoints[1], &pki.as_root(), "get k");
    assert!(ok(&out), "{out}");
}

#[test]
fn peers_with_a_revoked_certificate_or_another_common_name_cannot_talk() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let peer = pki.ca.issue("peer", "peer", false);
    let revoked_peer = pki.ca.issue("revoked-peer", "peer", false);
    let intruder = pki.ca.issue("intruder", "intruder", false);
    let crl_file = dir.path().join("peer-crl.pem");
    std::fs::write(&crl_file, pki.ca.crl(1, &[&revoked_peer.0]).pem().unwrap()).unwrap();
    let mut flags = pki.client_side_flags();
    flags.push(format!("--peer-crl-file={}", crl_file.display()));
    flags.push("--peer-cert-allowed-cn=peer".to_string());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    // m1..m3 are a quorum of five; m4's certificate is revoked, m5's names another CN.
    let mut members = tls_members(Kind::Cairn, 5, dir.path(), &pki, &flags);
    let certs = [&peer, &peer, &peer, &revoked_peer, &intruder];
    for (m, cert) in members.iter_mut().zip(certs) {
        m.extra_args.extend(pki.peer_side_flags(cert));
        m.spawn_process();
    }
    for m in &mut members[..3] {
        m.wait_healthy();
    }
    let root = pki.as_root();
    let out = ctl(&members[0].endpoint(), &root, "put k v");
    assert!(ok(&out), "{out}");
    let out = ctl(&members[2].endpoint(), &root, "get k --print-value-only");
    assert_eq!(out, "exit Some(0)\nv\n");
    // The outsiders never get through: no member takes their messages, so they serve nothing.
    for m in &members[3..] {
        let out = ctl(&m.endpoint(), &root, "put k outsider");
        assert!(!ok(&out), "{}: {out}", m.name);
    }
    let out = ctl(&members[0].endpoint(), &root, "get k --print-value-only");
    assert_eq!(out, "exit Some(0)\nv\n");
    // (The log is JSON: the names' quotes are escaped there.)
    let why = [
        "Revoked",
        "client certificate authentication failed: common name",
    ];
    for why in why {
        wait_for(why, Duration::from_secs(10), || {
            members[..3]
                .iter()
                .any(|m| {
                    m.log()
                        .lines()
                        .any(|l| l.contains("rejected connection") && l.contains(why))
                })
                .then_some(())
        });
    }
}

#[test]
fn crl_and_allowed_hostname_refusals_match_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let revoked = pki.ca.issue("revoked", "root", false);
    let elsewhere = pki
        .ca
        .issue_for("elsewhere", "root", &["elsewhere.example"], false);
    let crl_file = dir.path().join("crl.pem");
    std::fs::write(&crl_file, pki.ca.crl(1, &[&revoked.0]).pem().unwrap()).unwrap();
    let crl_flag = format!("--client-crl-file={}", crl_file.display());
    let extra = [
        crl_flag.as_str(),
        "--client-cert-allowed-hostname=localhost",
    ];
    for sub in ["cairn", "etcd"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }
    let cairn = cluster(Kind::Cairn, 1, &dir.path().join("cairn"), &pki, &extra);
    let etcd = cluster(Kind::Etcd, 1, &dir.path().join("etcd"), &pki, &extra);
    let cases = [
        (pki.as_root(), "put k v"),
        (pki.as_root(), "get k"),
        (Pki::etcdctl_flags(&pki.ca, Some(&revoked)), "get k"),
        (Pki::etcdctl_flags(&pki.ca, Some(&elsewhere)), "get k"),
    ];
    for (flags, args) in cases {
        let answers: Vec<String> = [&cairn[0], &etcd[0]]
            .iter()
            .map(|m| normalized(&ctl(&m.endpoint(), &flags, args), &m.endpoint()))
            .collect();
        assert_eq!(answers[0], answers[1], "{flags} {args}");
    }
    let log = cairn[0].log();
    for why in ["Revoked", "not valid for the allowed hostname localhost"] {
        assert!(
            log.lines()
                .any(|l| l.contains("rejected connection") && l.contains(why)),
            "{why}: {log}"
        );
    }
}

#[test]
fn allowed_cn_and_hostname_together_are_refused_at_start_like_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    for kind in [Kind::Cairn, Kind::Etcd] {
        let bin = match kind {
            Kind::Cairn => env!("CARGO_BIN_EXE_cairn"),
            Kind::Etcd => "etcd",
        };
        let peer = format!("https://127.0.0.1:{}", common::free_port());
        let client = format!("http://127.0.0.1:{}", common::free_port());
        // `timeout` bounds a server that would start instead of refusing.
        let out = Command::new("timeout")
            .arg("20")
            .arg(bin)
            .arg("--data-dir")
            .arg(dir.path().join(format!("{kind:?}")))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .args(pki.peer_side_flags(&pki.server))
            .args([
                "--peer-cert-allowed-cn=server",
                "--peer-cert-allowed-hostname=localhost",
            ])
            .env_clear()
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{kind:?}: {stderr}");
        let expected = "AllowedCN and AllowedHostname are mutually exclusive (cn=\"server\", hostname=\"localhost\")";
        assert!(stderr.contains(expected), "{kind:?}: {stderr}");
    }
}

#[test]
fn certificate_files_are_reloaded_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let members = cluster(Kind::Cairn, 1, dir.path(), &pki, &[]);
    let endpoint = members[0].endpoint();
    // Before: a client that trusts only the other CA refuses the server's certificate.
    let other = Pki::etcdctl_flags(&pki.other_ca, Some(&pki.root));
    let out = ctl(&endpoint, &other, "put k v");
    assert!(!ok(&out), "{out}");
    // The server's files are replaced by a certificate from the other CA (and the client CA
    // file by the other CA): new handshakes use them.
    let (cert, key) = pki.other_ca.issue("renewed", "server", false);
    std::fs::copy(&key, &pki.server.1).unwrap();
    std::fs::copy(&cert, &pki.server.0).unwrap();
    wait_for("the renewed certificate", Duration::from_secs(10), || {
        ok(&ctl(&endpoint, &other, "put k v")).then_some(())
    });
    let out = ctl(&endpoint, &pki.as_root(), "get k");
    assert!(!ok(&out), "{out}");
    assert!(members[0].log().contains("reloaded TLS certificate"));
}

#[test]
fn auto_tls_generates_a_certificate_into_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::new(
        Kind::Cairn,
        "m1",
        &dir.path().join("m1"),
        &["--auto-tls", "--peer-auto-tls"],
    );
    // etcdctl 3.4 needs `--insecure-transport=false` to use TLS without any certificate flag.
    let skip_verify = "--insecure-skip-tls-verify --insecure-transport=false";
    m.tls = Some(skip_verify.to_string());
    m.initial_cluster = format!("m1={}", m.peer_url());
    m.spawn_process();
    m.wait_healthy();
    for side in ["client", "peer"] {
        let fixtures = m.data_dir.join("fixtures").join(side);
        assert!(fixtures.join("cert.pem").exists() && fixtures.join("key.pem").exists());
    }
    let out = ctl(&m.endpoint(), skip_verify, "put k v");
    assert!(ok(&out), "{out}");
    let out = ctl(&m.endpoint(), "--insecure-transport=false", "get k");
    assert!(!ok(&out), "{out}");
}

/// etcdctl's output without what differs between two runs: the address, and the timestamps and
/// client ids of its JSON log lines (their `error` stays).
fn normalized(out: &str, endpoint: &str) -> String {
    out.replace(endpoint.trim_start_matches("https://"), "ADDR")
        .lines()
        .map(|l| match l.find("\"error\":") {
            Some(i) if l.starts_with('{') => &l[i..],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn refusals_match_etcd_with_the_same_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    for sub in ["cairn", "etcd"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }
    let cairn = cluster(Kind::Cairn, 1, &dir.path().join("cairn"), &pki, &[]);
    let etcd = cluster(Kind::Etcd, 1, &dir.path().join("etcd"), &pki, &[]);
    let root = pki.as_root();
    for m in [&cairn[0], &etcd[0]] {
        for args in [
            "user add root --new-user-password=rootpw",
            "user add alice --new-user-password=alicepw",
            "auth enable",
        ] {
            let out = ctl(&m.endpoint(), &root, args);
            assert!(ok(&out), "{:?} {args}: {out}", m.kind);
        }
    }
    let alice = Pki::etcdctl_flags(&pki.ca, Some(&pki.alice));
    let cases = [
        (root.clone(), "put k v"),
        (root.clone(), "get k"),
        (alice, "put k v"),
        (Pki::etcdctl_flags(&pki.ca, None), "get k"),
        (Pki::etcdctl_flags(&pki.ca, Some(&pki.foreign)), "get k"),
        (Pki::etcdctl_flags(&pki.ca, Some(&pki.expired)), "get k"),
        (Pki::etcdctl_flags(&pki.other_ca, Some(&pki.root)), "get k"),
    ];
    for (flags, args) in cases {
        let answers: Vec<String> = [&cairn[0], &etcd[0]]
            .iter()
            .map(|m| normalized(&ctl(&m.endpoint(), &flags, args), &m.endpoint()))
            .collect();
        assert_eq!(answers[0], answers[1], "{flags} {args}");
    }
}

#[test]
fn https_urls_without_certificates_are_refused_at_start_like_etcd() {
    let dir = tempfile::tempdir().unwrap();
    for kind in [Kind::Cairn, Kind::Etcd] {
        let bin = match kind {
            Kind::Cairn => env!("CARGO_BIN_EXE_cairn"),
            Kind::Etcd => "etcd",
        };
        let client = format!("https://127.0.0.1:{}", common::free_port());
        let out = Command::new(bin)
            .arg("--data-dir")
            .arg(dir.path().join(format!("{kind:?}")))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .env_clear()
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        let expected = format!(
            "TLS key/cert (--cert-file, --key-file) must be provided for client url {client} with HTTPS scheme"
        );
        assert!(stderr.contains(&expected), "{kind:?}: {stderr}");
    }
}
