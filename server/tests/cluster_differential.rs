//! Differential test of the cluster commands: the same `etcdctl member ...` / `endpoint ... --cluster`
//! session runs against a real 3-member etcd and then a 3-member Cairn started with the same names,
//! ports and token (so member and cluster ids are the same too); outputs must be identical once the
//! parts that differ between any two runs are normalised: raft term and indexes, db size, health
//! latencies, which member leads, and the id etcd derives from the clock for an added member.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{free_port, Kind, Member};

struct Ports {
    names: Vec<String>,
    client: Vec<u16>,
    peer: Vec<u16>,
    /// Peer ports for members the session adds.
    added: Vec<u16>,
}

fn start(kind: Kind, ports: &Ports, dir: &Path) -> Vec<Member> {
    std::fs::create_dir_all(dir).unwrap();
    let initial = ports
        .names
        .iter()
        .zip(&ports.peer)
        .map(|(n, p)| format!("{n}=http://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut members: Vec<Member> = ports
        .names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut m = Member::new(
                kind,
                name,
                &dir.join(name),
                &["--initial-cluster-token", "diff"],
            );
            m.client_port = ports.client[i];
            m.peer_port = ports.peer[i];
            m.initial_cluster = initial.clone();
            m
        })
        .collect();
    for m in &mut members {
        m.spawn_process();
    }
    for m in &mut members {
        m.wait_healthy();
    }
    members
}

fn etcdctl(endpoints: &str, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("15")
        .arg("etcdctl")
        .arg(format!("--endpoints={endpoints}"))
        .args(args)
        .env("ETCDCTL_API", "3")
        .output()
        .expect("run etcdctl");
    format!(
        "exit {}\n{}{}",
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout),
        blank_log_fields(&String::from_utf8_lossy(&out.stderr))
    )
}

/// `ETCD_INITIAL_CLUSTER="a=..,b=.."` with its entries sorted.
fn sorted_cluster_list(text: &str) -> String {
    text.lines()
        .map(|line| match line.strip_prefix("ETCD_INITIAL_CLUSTER=\"") {
            Some(list) => {
                let mut entries: Vec<&str> = list.trim_end_matches('"').split(',').collect();
                entries.sort();
                format!("ETCD_INITIAL_CLUSTER=\"{}\"", entries.join(","))
            }
            None => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// etcdctl's JSON log lines carry a timestamp and a per-process client id.
fn blank_log_fields(text: &str) -> String {
    let mut text = text.to_string();
    for field in ["\"ts\":\"", "\"target\":\""] {
        let mut out = String::new();
        let mut rest = text.as_str();
        while let Some(i) = rest.find(field) {
            out.push_str(&rest[..i + field.len()]);
            rest = &rest[i + field.len()..];
            rest = &rest[rest.find('"').unwrap_or(rest.len())..];
            out.push('*');
        }
        out.push_str(rest);
        text = out;
    }
    text
}

/// Rewrites an etcdctl table as trimmed cells (padding follows the widest cell, which differs with
/// the blanked values), with `columns` (0-based) of the data rows blanked.
fn table(text: &str, columns: &[usize]) -> String {
    text.lines()
        .filter(|line| !line.starts_with('+'))
        .map(|line| {
            if !line.starts_with('|') {
                return line.to_string();
            }
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            let header = cells
                .first()
                .is_some_and(|c| c.chars().all(|ch| !ch.is_lowercase()));
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if !header && columns.contains(&i) {
                        "*"
                    } else {
                        c
                    }
                })
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Replaces `word` (the clock-derived id of an added member) with `with`.
/// etcdctl pads ids to 16 columns (`%16x`), so the padding follows the id too.
fn replace_word(text: &str, word: &str, with: &str) -> String {
    if word.is_empty() {
        return text.to_string();
    }
    let mut text = text.replace(word, with);
    let padded = format!(" {with}");
    while text.contains(&format!(" {padded}")) {
        text = text.replace(&format!(" {padded}"), &padded);
    }
    text
}

fn json_field_blank(text: &str, field: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    let pat = format!("\"{field}\":");
    while let Some(i) = rest.find(&pat) {
        out.push_str(&rest[..i + pat.len()]);
        rest = &rest[i + pat.len()..];
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        out.push('*');
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Runs the session against a running cluster; returns the normalised transcript.
fn session(endpoints: &str, ports: &Ports) -> Vec<String> {
    let mut t = vec![];
    let first = endpoints.split(',').next().unwrap();
    t.push(table(
        &etcdctl(first, &["member", "list", "-w", "table"]),
        &[],
    ));
    t.push(json_field_blank(
        &etcdctl(first, &["member", "list", "-w", "json"]),
        "raft_term",
    ));
    let status = etcdctl(first, &["endpoint", "status", "--cluster", "-w", "table"]);
    let leaders = table(&status, &[])
        .lines()
        .filter(|l| l.split('|').nth(4) == Some("true"))
        .count();
    assert_eq!(leaders, 1, "one leader in\n{status}");
    // DB SIZE, IS LEADER, RAFT TERM, RAFT INDEX, RAFT APPLIED INDEX.
    t.push(table(&status, &[3, 4, 6, 7, 8]));
    let mut health: Vec<String> = etcdctl(first, &["endpoint", "health", "--cluster"])
        .lines()
        .map(|l| match l.find("took = ") {
            Some(i) => format!("{}took = *", &l[..i]),
            None => l.to_string(),
        })
        .collect();
    health.sort();
    t.push(health.join("\n"));
    t.push(etcdctl(first, &["member", "remove", "1234"]));
    let m1_id = {
        let list = etcdctl(first, &["member", "list"]);
        list.lines()
            .find(|l| l.contains(", m1, "))
            .and_then(|l| l.split(',').next())
            .unwrap()
            .to_string()
    };
    t.push(etcdctl(first, &["member", "promote", &m1_id]));
    t.push(etcdctl(
        first,
        &["member", "update", "1234", "--peer-urls=http://127.0.0.1:1"],
    ));
    // Membership changes need every voter connected for etcd's health interval (5 s).
    std::thread::sleep(Duration::from_secs(6));
    let add = etcdctl(
        first,
        &[
            "member",
            "add",
            "m4",
            &format!("--peer-urls=http://127.0.0.1:{}", ports.added[0]),
            "--learner",
        ],
    );
    let new_id = add
        .split("Member ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or("")
        .to_string();
    // Where the added member sorts depends on its clock-derived id: compare as sets.
    // etcdctl pads ids to 16 columns (`%16x`): the padding follows the id too.
    t.push(sorted_cluster_list(&replace_word(&add, &new_id, "<NEW>")));
    t.push(etcdctl(
        first,
        &[
            "member",
            "add",
            "m5",
            &format!("--peer-urls=http://127.0.0.1:{}", ports.added[1]),
            "--learner",
        ],
    ));
    t.push(etcdctl(
        first,
        &[
            "member",
            "add",
            "m5",
            &format!("--peer-urls=http://127.0.0.1:{}", ports.peer[1]),
        ],
    ));
    let mut rows: Vec<String> = replace_word(
        &table(&etcdctl(first, &["member", "list", "-w", "table"]), &[]),
        &new_id,
        "<NEW>",
    )
    .lines()
    .map(str::to_string)
    .collect();
    rows.sort();
    t.push(rows.join("\n"));
    t.push(replace_word(
        &etcdctl(first, &["member", "promote", &new_id]),
        &new_id,
        "<NEW>",
    ));
    t.push(replace_word(
        &etcdctl(first, &["member", "remove", &new_id]),
        &new_id,
        "<NEW>",
    ));
    t.push(table(
        &etcdctl(first, &["member", "list", "-w", "table"]),
        &[],
    ));
    t
}

#[test]
fn cluster_commands_match_a_three_member_etcd() {
    if !Command::new("etcd")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        panic!("etcd is not installed: run ./scripts/test.sh, which installs etcd-server");
    }
    let ports = Ports {
        names: vec!["m1".into(), "m2".into(), "m3".into()],
        client: (0..3).map(|_| free_port()).collect(),
        peer: (0..3).map(|_| free_port()).collect(),
        added: (0..2).map(|_| free_port()).collect(),
    };
    let endpoints = ports
        .client
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let dir = tempfile::tempdir().unwrap();
    let reference = {
        let _etcd = start(Kind::Etcd, &ports, &dir.path().join("etcd"));
        session(&endpoints, &ports)
    };
    std::thread::sleep(Duration::from_millis(500));
    let candidate = {
        let _cairn = start(Kind::Cairn, &ports, &dir.path().join("cairn"));
        session(&endpoints, &ports)
    };
    let mut differences = vec![];
    for (i, (r, c)) in reference.iter().zip(&candidate).enumerate() {
        if r != c {
            differences.push(format!("step {i}:\n--- etcd\n{r}\n--- cairn\n{c}"));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n\n"));
}
