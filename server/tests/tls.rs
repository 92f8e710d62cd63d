//! TLS on the client and peer URLs: mutual TLS everywhere with auth on, the certificate's common
//! name as the user, refusals (no certificate, wrong CA, expired, plaintext), certificate reload
//! without restart, `--auto-tls`, and the same refusals compared with etcd 3.4 using the same
//! certificates. Every certificate is generated here (rcgen).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cairn_client::{Client, ConnectOptions, GetOptions, PutOptions, TlsOptions};
use common::{run_etcdctl, wait_for, Cluster, Kind, Member};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate authority that writes the certificates it issues into a directory.
struct Authority {
    dir: PathBuf,
    name: String,
    issuer: Issuer<'static, KeyPair>,
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
        }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.join(format!("{}.pem", self.name))
    }

    /// Issues a certificate for `common_name` (valid for 127.0.0.1 and localhost), writes it as
    /// `<file>.pem` and `<file>-key.pem`, and returns the two paths.
    fn issue(&self, file: &str, common_name: &str, expired: bool) -> (PathBuf, PathBuf) {
        let sans = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let mut params = CertificateParams::new(sans).unwrap();
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
        (cert_file, key_file)
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
        let p = |p: &Path| p.display().to_string();
        let (cert, key, ca) = (p(&self.server.0), p(&self.server.1), p(&self.ca.ca_file()));
        vec![
            format!("--cert-file={cert}"),
            format!("--key-file={key}"),
            format!("--trusted-ca-file={ca}"),
            "--client-cert-auth".to_string(),
            format!("--peer-cert-file={cert}"),
            format!("--peer-key-file={key}"),
            format!("--peer-trusted-ca-file={ca}"),
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
    let mut members = Cluster::unstarted(kind, n, dir, &flags);
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
        m.spawn_process();
    }
    for m in &mut members {
        m.wait_healthy();
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
