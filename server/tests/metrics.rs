//! `/metrics` against etcd 3.4.23 as the oracle: the same workload runs on a 3-member etcd and a
//! 3-member Cairn (`--metrics=extensive`), and every metric that etcd's alert mixin and dashboards
//! read (`docs/etcd-ops.md` §2.1) must exist on Cairn with etcd's type, help, label names and
//! bucket boundaries; then the values Cairn reports must follow the workload. A single member
//! checks the `basic` level, `--listen-metrics-urls` and `etcdctl check datascale` (which reads
//! `process_resident_memory_bytes`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{
    free_port, http_get, http_post, run_etcdctl, spawn_etcdctl, stop_etcdctl, wait_for, Cluster,
    Kind, Member,
};

/// Metrics etcd's mixin (alerts and dashboard) and operators read, which Cairn must export as etcd
/// does. Peer metrics need a cluster; `etcd_network_peer_sent_failures_total` and
/// `etcd_network_disconnected_peers_total` appear once a peer is down.
const REQUIRED: &[&str] = &[
    // The mixin's alerts and dashboard.
    "etcd_server_has_leader",
    "etcd_server_leader_changes_seen_total",
    "etcd_server_proposals_failed_total",
    "etcd_server_quota_backend_bytes",
    "etcd_disk_wal_fsync_duration_seconds",
    "etcd_disk_backend_commit_duration_seconds",
    "etcd_mvcc_db_total_size_in_bytes",
    "etcd_mvcc_db_total_size_in_use_in_bytes",
    "etcd_network_peer_sent_failures_total",
    "etcd_network_peer_round_trip_time_seconds",
    "etcd_network_peer_sent_bytes_total",
    "etcd_network_peer_received_bytes_total",
    "etcd_network_client_grpc_sent_bytes_total",
    "etcd_network_client_grpc_received_bytes_total",
    "grpc_server_started_total",
    "grpc_server_handled_total",
    "grpc_server_handling_seconds",
    "process_resident_memory_bytes",
    // The rest of the stable set that Cairn exports.
    "etcd_server_is_leader",
    "etcd_server_is_learner",
    "etcd_server_id",
    "etcd_server_version",
    "etcd_cluster_version",
    "etcd_server_proposals_committed_total",
    "etcd_server_proposals_applied_total",
    "etcd_server_proposals_pending",
    "etcd_server_read_indexes_failed_total",
    "etcd_server_slow_read_indexes_total",
    "etcd_server_heartbeat_send_failures_total",
    "etcd_server_slow_apply_total",
    "etcd_server_snapshot_apply_in_progress_total",
    "etcd_disk_wal_write_bytes_total",
    "etcd_mvcc_put_total",
    "etcd_mvcc_range_total",
    "etcd_mvcc_delete_total",
    "etcd_mvcc_txn_total",
    "etcd_debugging_mvcc_current_revision",
    "etcd_debugging_mvcc_compact_revision",
    "etcd_debugging_mvcc_watcher_total",
    "etcd_debugging_mvcc_slow_watcher_total",
    "etcd_debugging_mvcc_watch_stream_total",
    "etcd_debugging_lease_granted_total",
    "etcd_debugging_lease_revoked_total",
    "etcd_debugging_lease_renewed_total",
    "etcd_debugging_server_lease_expired_total",
    "etcd_network_active_peers",
    "etcd_network_disconnected_peers_total",
    "grpc_server_msg_received_total",
    "grpc_server_msg_sent_total",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_virtual_memory_bytes",
    "process_virtual_memory_max_bytes",
    "process_start_time_seconds",
    "os_fd_used",
    "os_fd_limit",
];

/// One metric family of a scrape.
#[derive(Debug, Default)]
struct Family {
    kind: String,
    help: String,
    samples: Vec<Sample>,
}

#[derive(Debug)]
struct Sample {
    /// The sample's own name (`_bucket`, `_sum`, `_count` for histograms).
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

impl Family {
    /// Label names, without a histogram's `le`.
    fn label_names(&self) -> BTreeSet<String> {
        self.samples
            .iter()
            .flat_map(|s| s.labels.keys())
            .filter(|l| *l != "le")
            .cloned()
            .collect()
    }

    /// A histogram's bucket boundaries.
    fn buckets(&self) -> BTreeSet<String> {
        self.samples
            .iter()
            .filter_map(|s| s.labels.get("le").cloned())
            .map(|le| match le.parse::<f64>() {
                Ok(v) if v.is_finite() => format!("{v}"),
                _ => le,
            })
            .collect()
    }

    /// The value of the sample named `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }
}

/// Parses Prometheus's text format (version 0.0.4) into families by name.
fn parse(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            families.entry(name.to_string()).or_default().help = help.to_string();
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            families.entry(name.to_string()).or_default().kind = kind.to_string();
        } else if !line.is_empty() && !line.starts_with('#') {
            let sample = parse_sample(line);
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|suffix| sample.name.strip_suffix(suffix))
                .find(|base| {
                    families
                        .get(*base)
                        .is_some_and(|f| f.kind == "histogram" || f.kind == "summary")
                })
                .unwrap_or(&sample.name)
                .to_string();
            families.entry(family).or_default().samples.push(sample);
        }
    }
    families
}

fn parse_sample(line: &str) -> Sample {
    let (head, value) = line.rsplit_once(' ').expect("a sample has a value");
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}")),
    };
    let Some((name, labels)) = head.split_once('{') else {
        return Sample {
            name: head.to_string(),
            labels: BTreeMap::new(),
            value,
        };
    };
    let mut map = BTreeMap::new();
    let mut rest = labels.strip_suffix('}').expect("labels end with }");
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").expect("label=\"value\"");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().expect("a closing quote") {
                (_, '\\') => value.push(chars.next().expect("an escaped char").1),
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        map.insert(key.trim_start_matches(',').to_string(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    Sample {
        name: name.to_string(),
        labels: map,
        value,
    }
}

/// `GET /metrics` over HTTP/1.0, so that the body is never chunked.
fn scrape(addr: &str) -> BTreeMap<String, Family> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to scrape");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read the scrape");
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    parse(body)
}

/// The same client workload on either server; returns how many ranges it made.
fn workload(endpoint: &str, addr: &str) -> usize {
    let ok = |args: &str| {
        let out = run_etcdctl(endpoint, args);
        assert!(out.starts_with("exit Some(0)"), "{args}: {out}");
        out
    };
    let watch = spawn_etcdctl(endpoint, "watch /m/watched", "");
    for i in 0..5 {
        ok(&format!("put /m/k{i} v{i}"));
    }
    let mut ranges = 0;
    for i in 0..3 {
        ok(&format!("get /m/k{i}"));
        ranges += 1;
    }
    ok("get /m/ --prefix --consistency=s");
    ranges += 1;
    ok("del /m/k4");
    let txn = common::etcdctl(endpoint, "txn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut child = txn;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"value(\"/m/k0\") = \"v0\"\n\nput /m/t1 x\nput /m/t2 y\n\n\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "txn: {out:?}");
    }
    let lease = ok("lease grant 60");
    let id = lease
        .split_whitespace()
        .nth(3)
        .expect("lease <id> granted with TTL(60s)");
    ok(&format!("lease keep-alive --once {id}"));
    ok(&format!("put /m/leased x --lease={id}"));
    ok(&format!("lease revoke {id}"));
    ok("put /m/watched w");
    // A call that fails: a range at a future revision (OutOfRange).
    let out = run_etcdctl(endpoint, "get /m/k0 --rev=1000000");
    assert!(out.contains("future revision"), "{out}");
    // Through the JSON gateway, which etcd counts as gRPC calls too.
    let (status, body) = http_post(addr, "/v3/kv/range", r#"{"key":"L20vazA="}"#, None).unwrap();
    assert_eq!(status, 200, "{body}");
    ranges += 1;
    let seen = stop_etcdctl(watch, "TERM");
    assert!(seen.contains("/m/watched"), "{seen}");
    ranges
}

/// `etcd_network_peer_round_trip_time_seconds` has a sample for every other member.
fn round_trips_measured(families: &BTreeMap<String, Family>, others: &[String]) -> bool {
    let Some(rtt) = families.get("etcd_network_peer_round_trip_time_seconds") else {
        return false;
    };
    others.iter().all(|to| {
        rtt.value(
            "etcd_network_peer_round_trip_time_seconds_count",
            &[("To", to)],
        )
        .is_some_and(|n| n > 0.0)
    })
}

fn member_ids(endpoint: &str) -> Vec<String> {
    let out = run_etcdctl(endpoint, "member list");
    assert!(out.starts_with("exit Some(0)"), "{out}");
    out.lines()
        .skip(1)
        .filter_map(|l| l.split(',').next())
        .map(|id| id.trim().to_string())
        .filter(|id| !id.is_empty())
        .collect()
}

/// How many calls of `method` ended, whatever their code.
fn handled(families: &BTreeMap<String, Family>, method: &str) -> f64 {
    families["grpc_server_handled_total"]
        .samples
        .iter()
        .filter(|s| s.labels["grpc_method"] == method)
        .map(|s| s.value)
        .sum()
}

fn value(families: &BTreeMap<String, Family>, name: &str) -> f64 {
    families
        .get(name)
        .and_then(|f| f.samples.first())
        .unwrap_or_else(|| panic!("{name} is exported"))
        .value
}

/// A gRPC counter of `method` (`package.Service/Method`), with `code` for `handled`.
fn grpc(
    families: &BTreeMap<String, Family>,
    family: &str,
    method: &str,
    code: Option<&str>,
) -> f64 {
    let f = families
        .get(family)
        .unwrap_or_else(|| panic!("{family} is exported"));
    let (service, method) = method.split_once('/').expect("package.Service/Method");
    let mut labels = vec![("grpc_service", service), ("grpc_method", method)];
    labels.extend(code.map(|c| ("grpc_code", c)));
    f.value(family, &labels).unwrap_or(0.0)
}

#[test]
fn a_cluster_exports_what_etcd_exports_and_it_follows_the_workload() {
    let dir = tempfile::tempdir().unwrap();
    for kind in ["etcd", "cairn"] {
        std::fs::create_dir(dir.path().join(kind)).unwrap();
    }
    let mut etcd = Cluster::start(
        Kind::Etcd,
        3,
        &dir.path().join("etcd"),
        &["--metrics=extensive"],
    );
    let metrics_port = free_port();
    let mut cairn = Cluster::start(
        Kind::Cairn,
        3,
        &dir.path().join("cairn"),
        &["--metrics=extensive"],
    );
    // Member 1 also serves --listen-metrics-urls.
    let m1 = &mut cairn.members[0];
    m1.extra_args.push(format!(
        "--listen-metrics-urls=http://127.0.0.1:{metrics_port}"
    ));
    m1.restart();

    workload(&etcd.members[0].endpoint(), &etcd.members[0].addr());
    let ranges = workload(&cairn.members[0].endpoint(), &cairn.members[0].addr());

    // Every member measures its round trips to the two others (etcd observes them every 30 s,
    // the first after 5 s; Cairn probes every second), and exactly one member leads.
    let others = |addr: &str, ids: &[String]| -> Vec<String> {
        let own = &scrape(addr)["etcd_server_id"].samples[0].labels["server_id"];
        ids.iter().filter(|id| *id != own).cloned().collect()
    };
    let cairn_ids = member_ids(&cairn.members[0].endpoint());
    let mut leaders = 0;
    for (i, m) in cairn.members.iter().enumerate() {
        let to = others(&m.addr(), &cairn_ids);
        assert_eq!(to.len(), 2, "{cairn_ids:?}");
        let f = wait_for(
            &format!("member {i}'s round trips to {to:?}"),
            Duration::from_secs(10),
            || {
                let f = scrape(&m.addr());
                round_trips_measured(&f, &to).then_some(f)
            },
        );
        assert_eq!(value(&f, "etcd_server_has_leader"), 1.0);
        leaders += value(&f, "etcd_server_is_leader") as usize;
    }
    assert_eq!(leaders, 1);
    let etcd_addr = etcd.members[0].addr();
    let etcd_others = others(&etcd_addr, &member_ids(&etcd.members[0].endpoint()));
    wait_for("etcd's round trips", Duration::from_secs(40), || {
        round_trips_measured(&scrape(&etcd_addr), &etcd_others).then_some(())
    });

    // A member down: peer send failures and disconnections appear on both.
    let server_id =
        |addr: &str| scrape(addr)["etcd_server_id"].samples[0].labels["server_id"].clone();
    let etcd_down = server_id(&etcd.members[2].addr());
    let cairn_down = server_id(&cairn.members[2].addr());
    etcd.members[2].kill9();
    cairn.members[2].kill9();
    let failures = |addr: &str, down: &str| {
        let f = scrape(addr);
        let failed = f
            .get("etcd_network_peer_sent_failures_total")
            .and_then(|m| m.value("etcd_network_peer_sent_failures_total", &[("To", down)]));
        let disconnected = f
            .get("etcd_network_disconnected_peers_total")
            .and_then(|m| m.value("etcd_network_disconnected_peers_total", &[("Remote", down)]));
        (failed > Some(0.0) && disconnected > Some(0.0)).then_some(f)
    };
    // Only a member that sends to the dead one sees failures: the leader (heartbeats).
    let live = |c: &Cluster| -> Vec<String> { c.members[..2].iter().map(Member::addr).collect() };
    let (etcd_live, cairn_live) = (live(&etcd), live(&cairn));
    let etcd_metrics = wait_for("etcd's send failures", Duration::from_secs(20), || {
        etcd_live.iter().find_map(|a| failures(a, &etcd_down))
    });
    let cairn_failed = wait_for("Cairn's send failures", Duration::from_secs(20), || {
        cairn_live.iter().find_map(|a| failures(a, &cairn_down))
    });
    // The member that served the workload.
    let cairn_addr = cairn.members[0].addr();
    let cairn_metrics = scrape(&cairn_addr);

    // The differential: name, type, help, label names, buckets.
    for name in REQUIRED {
        let want = etcd_metrics
            .get(*name)
            .unwrap_or_else(|| panic!("etcd exports {name}"));
        let got = cairn_failed
            .get(*name)
            .unwrap_or_else(|| panic!("Cairn does not export {name}"));
        assert_eq!(got.kind, want.kind, "type of {name}");
        assert_eq!(got.help, want.help, "help of {name}");
        assert_eq!(got.label_names(), want.label_names(), "labels of {name}");
        if want.kind == "histogram" {
            assert_eq!(got.buckets(), want.buckets(), "buckets of {name}");
        }
    }
    // The pre-initialised gRPC series of etcd 3.4 are all there.
    let series = |f: &BTreeMap<String, Family>, name: &str| -> BTreeSet<Vec<(String, String)>> {
        f[name]
            .samples
            .iter()
            .filter(|s| {
                s.labels
                    .get("grpc_service")
                    .is_some_and(|s| s != "v3lockpb.Lock")
            })
            .map(|s| {
                s.labels
                    .clone()
                    .into_iter()
                    .filter(|(k, _)| k != "le")
                    .collect()
            })
            .collect()
    };
    for name in ["grpc_server_started_total", "grpc_server_handled_total"] {
        let missing: Vec<_> = series(&etcd_metrics, name)
            .difference(&series(&cairn_metrics, name))
            .cloned()
            .collect();
        assert!(missing.is_empty(), "{name}: Cairn lacks {missing:?}");
    }

    // Values that follow the workload.
    let c = &cairn_metrics;
    assert!(
        grpc(
            c,
            "grpc_server_handled_total",
            "etcdserverpb.KV/Range",
            Some("OK")
        ) >= ranges as f64,
        "every range is counted, the gateway's too"
    );
    assert_eq!(
        grpc(
            c,
            "grpc_server_handled_total",
            "etcdserverpb.KV/Range",
            Some("OutOfRange")
        ),
        1.0
    );
    assert!(
        grpc(
            c,
            "grpc_server_handled_total",
            "etcdserverpb.KV/Put",
            Some("OK")
        ) >= 7.0
    );
    assert_eq!(
        grpc(
            c,
            "grpc_server_started_total",
            "etcdserverpb.Watch/Watch",
            None
        ),
        1.0
    );
    assert_eq!(
        grpc(
            c,
            "grpc_server_handled_total",
            "etcdserverpb.Watch/Watch",
            Some("Canceled")
        ),
        1.0
    );
    assert!(
        grpc(
            c,
            "grpc_server_msg_sent_total",
            "etcdserverpb.Watch/Watch",
            None
        ) >= 2.0
    );
    assert_eq!(
        grpc(
            c,
            "grpc_server_started_total",
            "etcdserverpb.Lease/LeaseKeepAlive",
            None
        ),
        1.0
    );
    assert_eq!(handled(c, "LeaseKeepAlive"), 1.0);
    assert!(
        grpc(
            c,
            "grpc_server_msg_received_total",
            "etcdserverpb.Lease/LeaseKeepAlive",
            None
        ) >= 1.0
    );
    assert!(
        c["grpc_server_handling_seconds"]
            .value(
                "grpc_server_handling_seconds_count",
                &[("grpc_service", "etcdserverpb.KV"), ("grpc_method", "Put")]
            )
            .unwrap()
            >= 7.0
    );
    assert!(value(c, "etcd_network_client_grpc_received_bytes_total") > 0.0);
    assert!(value(c, "etcd_network_client_grpc_sent_bytes_total") > 0.0);
    assert_eq!(value(c, "etcd_server_has_leader"), 1.0);
    assert!(value(c, "etcd_server_leader_changes_seen_total") >= 1.0);
    assert!(
        c["etcd_disk_wal_fsync_duration_seconds"]
            .value("etcd_disk_wal_fsync_duration_seconds_count", &[])
            .unwrap()
            > 0.0
    );
    assert!(
        c["etcd_disk_backend_commit_duration_seconds"]
            .value("etcd_disk_backend_commit_duration_seconds_count", &[])
            .unwrap()
            > 0.0
    );
    assert!(value(c, "process_resident_memory_bytes") > 0.0);
    assert!(value(c, "etcd_mvcc_db_total_size_in_bytes") > 0.0);
    assert_eq!(value(c, "etcd_server_quota_backend_bytes"), 2147483648.0);
    // The same counts as etcd's for the same workload (etcd also counts a txn's compares as
    // ranges).
    for name in [
        "etcd_mvcc_put_total",
        "etcd_mvcc_delete_total",
        "etcd_mvcc_txn_total",
        "etcd_debugging_lease_granted_total",
        "etcd_debugging_lease_revoked_total",
    ] {
        assert_eq!(value(c, name), value(&etcd_metrics, name), "{name}");
    }
    assert_eq!(value(c, "etcd_mvcc_put_total"), 9.0);
    assert!(value(c, "etcd_mvcc_range_total") >= ranges as f64);
    assert!(value(c, "etcd_debugging_mvcc_current_revision") >= 10.0);
    assert!(
        value(c, "etcd_server_proposals_applied_total")
            <= value(c, "etcd_server_proposals_committed_total")
    );
    assert_eq!(
        cairn_failed["etcd_network_active_peers"]
            .value("etcd_network_active_peers", &[("Remote", &cairn_down)])
            .unwrap(),
        0.0
    );

    // An Auth call that fails is counted with its code.
    let out = run_etcdctl(&cairn.members[0].endpoint(), "role get nosuch");
    assert!(out.contains("role name not found"), "{out}");
    let f = scrape(&cairn_addr);
    let role_get = "etcdserverpb.Auth/RoleGet";
    assert_eq!(grpc(&f, "grpc_server_started_total", role_get, None), 1.0);
    assert_eq!(
        grpc(
            &f,
            "grpc_server_handled_total",
            role_get,
            Some("FailedPrecondition")
        ),
        1.0
    );

    // --listen-metrics-urls: the same metrics and health endpoints, no gRPC and no gateway.
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let on_metrics_url = scrape(&metrics_addr);
    let names = |f: &BTreeMap<String, Family>| f.keys().cloned().collect::<BTreeSet<_>>();
    assert_eq!(names(&on_metrics_url), names(&scrape(&cairn_addr)));
    for path in ["/health", "/livez", "/readyz", "/version"] {
        let (status, body) = http_get(&metrics_addr, path).unwrap();
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (status, _) = http_post(&metrics_addr, "/v3/kv/range", r#"{"key":"YQ=="}"#, None).unwrap();
    assert_eq!(status, 404);
    let out = run_etcdctl(
        &format!("http://{metrics_addr}"),
        "get a --command-timeout=2s",
    );
    assert!(!out.starts_with("exit Some(0)"), "{out}");
}

#[test]
fn basic_level_has_no_handling_time_and_datascale_passes() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Member::start(Kind::Etcd, &dir.path().join("etcd"), &[]);
    let cairn = Member::start(Kind::Cairn, &dir.path().join("cairn"), &[]);
    for m in [&etcd, &cairn] {
        let out = run_etcdctl(&m.endpoint(), "put a 1");
        assert!(out.starts_with("exit Some(0)"), "{out}");
        let f = scrape(&m.addr());
        assert!(f.contains_key("grpc_server_handled_total"), "{:?}", m.kind);
        assert!(
            !f.contains_key("grpc_server_handling_seconds"),
            "{:?}",
            m.kind
        );
    }
    // etcdctl's datascale check writes 10,000 keys and reads process_resident_memory_bytes from
    // /metrics before and after.
    let output = dir.path().join("datascale.out");
    let mut check = common::etcdctl(&cairn.endpoint(), "check datascale --load=s")
        .stdout(std::fs::File::create(&output).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = wait_for("etcdctl check datascale", Duration::from_secs(180), || {
        check.try_wait().unwrap()
    });
    let text = std::fs::read_to_string(&output).unwrap();
    assert!(status.success(), "{text}");
    assert!(text.contains("PASS"), "{text}");
}
