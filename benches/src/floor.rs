//! The machine's floor for one acknowledged write: the cost no Raft store can avoid on this
//! disk and this loopback, measured the way a put pays it, so that `put, 1 client` latency can
//! be read as a multiple of it.
//!
//! - **Durability:** a small record appended to a file in the data directories' filesystem and
//!   made durable with `fdatasync` (`File::sync_data`), as a WAL append is. With `members`
//!   writers at once (one file each, as each member has its own log on the same disk), a
//!   round's time is the quorum's: the leader's sync and the fastest `quorum - 1` followers'
//!   ([`quorum_done`]), since a write commits once those are durable.
//! - **Network:** the median round trip of a 64-byte ping-pong over one persistent loopback
//!   TCP connection (`TCP_NODELAY`), the client's request and answer. A replicated write adds
//!   one more: the leader's append to its followers and their acknowledgment.
//!
//! So floor(1) = fdatasync + rtt and floor(n > 1) = quorum fdatasync + 2 rtt. This is a lower
//! bound in spirit, not a model: it ignores CPU (encoding, apply, the gRPC stack), and for a
//! cluster it charges the follower's sync after the leader's send while the leader's own sync
//! runs in parallel with it (etcd: server/etcdserver/raft.go, "the leader can write to its
//! disk in parallel with replicating to the followers"), which is what `quorum_done` over
//! concurrent syncs approximates.
//!
//! **Boundary:** touches only the files and the socket it creates; never talks to a server.

use std::io::Write;
use std::path::Path;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::histogram::Histogram;

/// Bytes appended before each `fdatasync` (a small put's WAL record).
pub const RECORD_BYTES: usize = 256;
/// Bytes of one loopback ping (and of its echo).
const PING_BYTES: usize = 64;
/// Untimed rounds first: the files' creation and the connection's first segments.
const WARMUP_ROUNDS: usize = 5;

/// Append + fdatasync rounds per cluster size, by default.
pub const SYNC_ROUNDS_DEFAULT: usize = 500;
/// Loopback round trips, by default.
pub const ROUND_TRIPS_DEFAULT: usize = 1000;

// The flags of `floor` (a `///` here would replace the subcommand's help text).
#[derive(clap::Args, Debug)]
pub struct FloorArgs {
    /// Directory on the filesystem to measure (the data directories'); files are created
    /// and removed in a temporary directory under it.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    pub dir: std::path::PathBuf,
    /// Cluster sizes: for each, that many writers sync at once and a quorum's time counts.
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    pub members: Vec<usize>,
    /// Append + fdatasync rounds per cluster size.
    #[arg(long, default_value_t = SYNC_ROUNDS_DEFAULT)]
    pub sync_rounds: usize,
    /// Loopback round trips.
    #[arg(long, default_value_t = ROUND_TRIPS_DEFAULT)]
    pub round_trips: usize,
    /// Print the result as one JSON line instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl FloorArgs {
    pub fn spec(&self) -> anyhow::Result<FloorSpec> {
        anyhow::ensure!(
            !self.members.is_empty() && self.members.iter().all(|&m| m >= 1),
            "--members must list cluster sizes of at least 1"
        );
        anyhow::ensure!(
            self.sync_rounds >= 1 && self.round_trips >= 1,
            "--sync-rounds and --round-trips must be at least 1"
        );
        Ok(FloorSpec {
            members: self.members.clone(),
            sync_rounds: self.sync_rounds,
            round_trips: self.round_trips,
        })
    }
}

/// Measures the floor in a temporary directory under `dir` and prints it.
pub async fn run(args: &FloorArgs) -> anyhow::Result<()> {
    let floor = measure_under(&args.spec()?, &args.dir).await?;
    if args.json {
        println!("{}", floor.to_json());
    } else {
        print!("{}", floor.table(&args.dir));
    }
    Ok(())
}

/// Samples to take.
#[derive(Clone, Debug, PartialEq)]
pub struct FloorSpec {
    /// Cluster sizes to measure the quorum's sync for.
    pub members: Vec<usize>,
    /// Append + fdatasync rounds per cluster size.
    pub sync_rounds: usize,
    /// Loopback round trips.
    pub round_trips: usize,
}

/// The quorum's sync time for one cluster size.
#[derive(Clone, Debug)]
pub struct QuorumSync {
    pub members: usize,
    /// Per round: the leader's and the fastest `quorum - 1` followers' appends + fdatasyncs
    /// done, all `members` started together.
    pub sync: Histogram,
}

/// What [`measure`] found.
#[derive(Clone, Debug)]
pub struct Floor {
    pub syncs: Vec<QuorumSync>,
    pub rtt: Histogram,
}

/// Members whose acknowledgment commits a write (the leader's included).
pub fn quorum(members: usize) -> usize {
    members / 2 + 1
}

/// When a write is durable on a quorum, given each member's sync time of one round (the
/// leader's first): the leader's, or the `quorum - 1`th fastest follower's, whichever is later.
pub fn quorum_done(times: &[Duration]) -> Duration {
    let (&leader, followers) = times.split_first().expect("at least the leader");
    let mut followers = followers.to_vec();
    followers.sort_unstable();
    let needed = quorum(times.len()) - 1;
    match needed.checked_sub(1) {
        Some(i) => leader.max(followers[i]),
        None => leader,
    }
}

/// Loopback round trips a write waits for on `members` members: the client's, and for a
/// cluster the leader's to its followers.
pub fn round_trips_per_write(members: usize) -> u32 {
    if members > 1 {
        2
    } else {
        1
    }
}

fn ms(d: Option<Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

impl Floor {
    /// The floor of one write on `members` members, ms: the median quorum sync plus the median
    /// round trip per hop; NaN if that size was not measured.
    pub fn write_ms(&self, members: usize) -> f64 {
        let Some(sync) = self.syncs.iter().find(|s| s.members == members) else {
            return f64::NAN;
        };
        floor_ms(
            ms(sync.sync.quantile(0.5)),
            ms(self.rtt.quantile(0.5)),
            members,
        )
    }

    /// Adds `other`'s samples (of the same cluster sizes) to this floor's.
    pub fn merge(&mut self, other: &Floor) {
        for sync in &mut self.syncs {
            if let Some(o) = other.syncs.iter().find(|o| o.members == sync.members) {
                sync.sync.merge(&o.sync);
            }
        }
        self.rtt.merge(&other.rtt);
    }

    /// Lines printed before the comparison table.
    pub fn table(&self, dir: &Path) -> String {
        let mut out = format!(
            "machine floor (append {RECORD_BYTES} B + fdatasync in {}; loopback round trip):\n",
            dir.display()
        );
        for s in &self.syncs {
            let who = if s.members == 1 {
                "1 writer".to_string()
            } else {
                format!(
                    "{} writers at once, leader + {} fastest follower(s)",
                    s.members,
                    quorum(s.members) - 1
                )
            };
            out += &format!(
                "  fdatasync, {who:<52} p50 {:>7.3} ms  p99 {:>7.3} ms\n",
                ms(s.sync.quantile(0.5)),
                ms(s.sync.quantile(0.99))
            );
        }
        out += &format!(
            "  {:<64}p50 {:>7.3} ms  p99 {:>7.3} ms\n",
            format!("loopback round trip, {PING_BYTES} B ping-pong on one connection"),
            ms(self.rtt.quantile(0.5)),
            ms(self.rtt.quantile(0.99))
        );
        for s in &self.syncs {
            let rtts = match round_trips_per_write(s.members) {
                1 => "rtt".to_string(),
                n => format!("{n} rtt"),
            };
            out += &format!(
                "  floor, {} member(s) = fdatasync + {rtts} = {:.3} ms (p50s)\n",
                s.members,
                self.write_ms(s.members)
            );
        }
        out
    }

    /// The measurements as JSON, ms.
    pub fn to_json(&self) -> serde_json::Value {
        let syncs: Vec<_> = self
            .syncs
            .iter()
            .map(|s| {
                serde_json::json!({
                    "members": s.members,
                    "fdatasync_ms": crate::report::latency_json(&s.sync),
                    "floor_ms": self.write_ms(s.members),
                })
            })
            .collect();
        serde_json::json!({
            "record_bytes": RECORD_BYTES,
            "rtt_ms": crate::report::latency_json(&self.rtt),
            "syncs": syncs,
        })
    }
}

/// `sync_ms + round_trips_per_write(members) × rtt_ms`.
pub fn floor_ms(sync_ms: f64, rtt_ms: f64, members: usize) -> f64 {
    sync_ms + f64::from(round_trips_per_write(members)) * rtt_ms
}

/// Appends one record to `file` and syncs it; how long that took.
fn append_and_sync(file: &mut std::fs::File) -> std::io::Result<Duration> {
    let start = Instant::now();
    file.write_all(&[0x5a_u8; RECORD_BYTES])?;
    file.sync_data()?;
    Ok(start.elapsed())
}

/// One round of `files.len()` writers: each appends and syncs its own file on a thread of its
/// own, all released together by a barrier; each writer's time.
fn sync_round(files: &mut [std::fs::File]) -> std::io::Result<Vec<Duration>> {
    if let [file] = files {
        return Ok(vec![append_and_sync(file)?]);
    }
    let barrier = Barrier::new(files.len());
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .iter_mut()
            .map(|file| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    append_and_sync(file)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a sync thread panicked"))
            .collect()
    })
}

/// For each cluster size in `members`, `rounds` rounds of that many writers appending
/// [`RECORD_BYTES`] to files of their own in `dir` and syncing at once ([`sync_round`]); per
/// round, the quorum's time ([`quorum_done`]). The sizes take turns round by round, so a
/// slow spell of the shared disk (another process's writeback) hits each size alike.
fn quorum_syncs(dir: &Path, members: &[usize], rounds: usize) -> anyhow::Result<Vec<Histogram>> {
    let mut files = Vec::with_capacity(members.len());
    let mut paths = Vec::new();
    for (i, &writers) in members.iter().enumerate() {
        let mut group = Vec::with_capacity(writers);
        for w in 0..writers {
            let path = dir.join(format!("floor-{i}-{w}.log"));
            group.push(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("creating {}", path.display()))?,
            );
            paths.push(path);
        }
        files.push(group);
    }
    let mut histograms = vec![Histogram::default(); members.len()];
    for round in 0..WARMUP_ROUNDS + rounds {
        for (group, histogram) in files.iter_mut().zip(&mut histograms) {
            let times = sync_round(group)?;
            if round >= WARMUP_ROUNDS {
                histogram.record(quorum_done(&times));
            }
        }
    }
    for path in paths {
        std::fs::remove_file(path)?;
    }
    Ok(histograms)
}

/// `samples` round trips of a [`PING_BYTES`] ping over one loopback TCP connection to an echo
/// task.
async fn round_trips(samples: usize) -> anyhow::Result<Histogram> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let echo = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        let mut buf = [0u8; PING_BYTES];
        // The client closing the connection ends the loop.
        while socket.read_exact(&mut buf).await.is_ok() {
            socket.write_all(&buf).await?;
        }
        anyhow::Ok(())
    });
    let mut client = tokio::net::TcpStream::connect(addr).await?;
    client.set_nodelay(true)?;
    let ping = [0xa5_u8; PING_BYTES];
    let mut pong = [0u8; PING_BYTES];
    let mut histogram = Histogram::default();
    for round in 0..WARMUP_ROUNDS + samples {
        let start = Instant::now();
        client.write_all(&ping).await?;
        client.read_exact(&mut pong).await?;
        if round >= WARMUP_ROUNDS {
            histogram.record(start.elapsed());
        }
    }
    drop(client);
    echo.await.context("the echo task panicked")??;
    Ok(histogram)
}

/// Measures the floor in a temporary directory under `parent` (removed after).
pub async fn measure_under(spec: &FloorSpec, parent: &Path) -> anyhow::Result<Floor> {
    let dir = tempfile::Builder::new()
        .prefix("cairn-bench-floor-")
        .tempdir_in(parent)?;
    measure(spec, dir.path()).await
}

/// Measures the floor with files in `dir` (which must be on the data directories' filesystem).
pub async fn measure(spec: &FloorSpec, dir: &Path) -> anyhow::Result<Floor> {
    let (dir, members, rounds) = (dir.to_path_buf(), spec.members.clone(), spec.sync_rounds);
    let histograms = tokio::task::spawn_blocking(move || quorum_syncs(&dir, &members, rounds))
        .await
        .context("the sync measurement panicked")??;
    let syncs = spec
        .members
        .iter()
        .zip(histograms)
        .map(|(&members, sync)| QuorumSync { members, sync })
        .collect();
    let rtt = round_trips(spec.round_trips).await?;
    Ok(Floor { syncs, rtt })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_write_is_durable_when_the_leader_and_a_quorum_of_followers_are() {
        assert_eq!(quorum_done(&[ms(3)]), ms(3));
        // 3 members: the leader and the faster follower.
        assert_eq!(quorum_done(&[ms(1), ms(5), ms(2)]), ms(2));
        assert_eq!(quorum_done(&[ms(4), ms(5), ms(2)]), ms(4));
        // 5 members: the leader and the 2 fastest followers.
        assert_eq!(quorum_done(&[ms(1), ms(9), ms(3), ms(7), ms(2)]), ms(3));
        assert_eq!((quorum(1), quorum(2), quorum(3), quorum(5)), (1, 2, 2, 3));
        // 2 members: both.
        assert_eq!(quorum_done(&[ms(1), ms(6)]), ms(6));
    }

    #[test]
    fn the_floor_adds_a_round_trip_per_hop() {
        assert_eq!(floor_ms(1.0, 0.25, 1), 1.25);
        assert_eq!(floor_ms(1.5, 0.25, 3), 2.0);
        let mut sync = Histogram::default();
        sync.record(ms(2));
        let mut rtt = Histogram::default();
        rtt.record(Duration::from_micros(100));
        let floor = Floor {
            syncs: vec![QuorumSync { members: 3, sync }],
            rtt,
        };
        assert!(
            (floor.write_ms(3) - 2.2).abs() < 1e-9,
            "{}",
            floor.write_ms(3)
        );
        assert!(floor.write_ms(1).is_nan());
        let table = floor.table(Path::new("/d"));
        assert!(
            table.contains("floor, 3 member(s) = fdatasync + 2 rtt = 2.200 ms"),
            "{table}"
        );
        assert_eq!(floor.to_json()["syncs"][0]["floor_ms"], floor.write_ms(3));
        let mut merged = floor.clone();
        merged.merge(&floor);
        assert_eq!((merged.syncs[0].sync.count(), merged.rtt.count()), (2, 2));
        assert!((merged.write_ms(3) - 2.2).abs() < 1e-9);
    }

    #[tokio::test]
    async fn measuring_takes_every_sample_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let spec = FloorSpec {
            members: vec![1, 3],
            sync_rounds: 4,
            round_trips: 10,
        };
        let floor = measure(&spec, dir.path()).await.unwrap();
        assert_eq!(floor.rtt.count(), 10);
        let counts: Vec<_> = floor
            .syncs
            .iter()
            .map(|s| (s.members, s.sync.count()))
            .collect();
        assert_eq!(counts, [(1, 4), (3, 4)]);
        assert!(floor.write_ms(3).is_finite());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
