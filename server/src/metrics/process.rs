//! The `process_*` metrics of Prometheus's Go client (its process collector, which etcd exports
//! and dashboards read) and etcd's `os_fd_*`, from `/proc/self` at each scrape.
//!
//! Values follow the Go collector: CPU and start time in clock ticks of [`USER_HZ`], resident
//! memory from `VmRSS`, virtual memory and limits as the kernel reports them, an unlimited limit as
//! `u64::MAX`. Where `/proc` cannot be read the metrics keep their last values.

use prometheus::{Counter, Gauge, Registry};

use super::register;

/// Clock ticks per second in `/proc/*/stat` (fixed by the kernel ABI; Go's procfs assumes it too).
const USER_HZ: f64 = 100.0;

/// What one read of `/proc/self` gives.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub virtual_max_bytes: Option<u64>,
    pub start_time_seconds: f64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
}

/// Reads this process's figures; `None` where `/proc` is missing or unexpected.
pub fn read() -> Option<Stats> {
    let text = |path: &str| std::fs::read_to_string(path).ok();
    let stat = parse_stat(&text("/proc/self/stat")?)?;
    let limits = text("/proc/self/limits")?;
    let boot_time = parse_boot_time(&text("/proc/stat")?)?;
    Some(Stats {
        cpu_seconds: (stat.utime + stat.stime) as f64 / USER_HZ,
        resident_bytes: parse_vm_rss(&text("/proc/self/status")?)?,
        virtual_bytes: stat.vsize,
        virtual_max_bytes: parse_soft_limit(&limits, "Max address space")?,
        start_time_seconds: boot_time as f64 + stat.start_time as f64 / USER_HZ,
        open_fds: std::fs::read_dir("/proc/self/fd").ok()?.count() as u64,
        max_fds: parse_soft_limit(&limits, "Max open files")?,
    })
}

/// The fields of `/proc/self/stat` that the metrics need.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    utime: u64,
    stime: u64,
    start_time: u64,
    vsize: u64,
}

/// `/proc/<pid>/stat` (proc(5)): the command name is in parentheses and may hold spaces or
/// parentheses itself, so fields are counted from the last `)`; field 3 (state) comes first.
fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        start_time: field(22)?,
        vsize: field(23)?,
    })
}

/// `btime` of `/proc/stat`: boot time in seconds since the epoch.
fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// `VmRSS` of `/proc/self/status`, in bytes.
fn parse_vm_rss(text: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

/// The soft limit named `name` in `/proc/self/limits`: `Some(None)` when it is unlimited (or not
/// listed), `None` when the line is malformed.
fn parse_soft_limit(text: &str, name: &str) -> Option<Option<u64>> {
    let Some(line) = text.lines().find_map(|l| l.strip_prefix(name)) else {
        return Some(None);
    };
    match line.split_whitespace().next()? {
        "unlimited" => Some(None),
        soft => Some(Some(soft.parse().ok()?)),
    }
}

/// The process metrics, refreshed at each scrape.
pub(super) struct Gauges {
    cpu_seconds: Counter,
    open_fds: Gauge,
    max_fds: Gauge,
    virtual_bytes: Gauge,
    virtual_max_bytes: Gauge,
    resident_bytes: Gauge,
    start_time_seconds: Gauge,
    os_fd_used: Gauge,
    os_fd_limit: Gauge,
}

impl Gauges {
    pub(super) fn new(r: &Registry) -> Gauges {
        let gauge = |name: &str, help: &str| register(r, Gauge::new(name, help).expect("valid"));
        Gauges {
            cpu_seconds: register(
                r,
                Counter::new(
                    "process_cpu_seconds_total",
                    "Total user and system CPU time spent in seconds.",
                )
                .expect("valid"),
            ),
            open_fds: gauge("process_open_fds", "Number of open file descriptors."),
            max_fds: gauge(
                "process_max_fds",
                "Maximum number of open file descriptors.",
            ),
            virtual_bytes: gauge(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
            ),
            virtual_max_bytes: gauge(
                "process_virtual_memory_max_bytes",
                "Maximum amount of virtual memory available in bytes.",
            ),
            resident_bytes: gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
            ),
            start_time_seconds: gauge(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
            ),
            os_fd_used: gauge("os_fd_used", "The number of used file descriptors."),
            os_fd_limit: gauge("os_fd_limit", "The file descriptor limit."),
        }
    }

    /// Reads `/proc/self`; the caller serialises scrapes (the CPU counter advances by difference).
    pub(super) fn refresh(&self) {
        let Some(s) = read() else {
            return;
        };
        let delta = s.cpu_seconds - self.cpu_seconds.get();
        if delta > 0.0 {
            self.cpu_seconds.inc_by(delta);
        }
        let unlimited = |limit: Option<u64>| limit.unwrap_or(u64::MAX) as f64;
        self.open_fds.set(s.open_fds as f64);
        self.max_fds.set(unlimited(s.max_fds));
        self.virtual_bytes.set(s.virtual_bytes as f64);
        self.virtual_max_bytes.set(unlimited(s.virtual_max_bytes));
        self.resident_bytes.set(s.resident_bytes as f64);
        self.start_time_seconds.set(s.start_time_seconds);
        self.os_fd_used.set(s.open_fds as f64);
        self.os_fd_limit.set(unlimited(s.max_fds));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let text = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 \
                    12 0 123456 987654321 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1\n";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                utime: 250,
                stime: 75,
                start_time: 123456,
                vsize: 987654321,
            })
        );
        assert_eq!(parse_stat("4242 (truncated) S 1 2"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn status_limits_and_boot_time_parse() {
        let status = "Name:\tcairn\nVmPeak:\t  100 kB\nVmRSS:\t   25092 kB\nThreads:\t9\n";
        assert_eq!(parse_vm_rss(status), Some(25092 * 1024));
        assert_eq!(parse_vm_rss("Name:\tcairn\n"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            20000                524288               files     \n\
                      Max address space         unlimited            unlimited            bytes     \n";
        assert_eq!(
            parse_soft_limit(limits, "Max open files"),
            Some(Some(20000))
        );
        assert_eq!(parse_soft_limit(limits, "Max address space"), Some(None));
        assert_eq!(parse_soft_limit(limits, "Max locked memory"), Some(None));
        assert_eq!(
            parse_soft_limit("Max open files            many", "Max open files"),
            None
        );
        let stat = "cpu  1 2 3 4\nintr 5\nctxt 6\nbtime 1795968000\nprocesses 7\n";
        assert_eq!(parse_boot_time(stat), Some(1_795_968_000));
    }

    #[test]
    fn this_process_is_read() {
        let s = read().expect("/proc is mounted where the tests run");
        assert!(
            s.resident_bytes > 0 && s.virtual_bytes >= s.resident_bytes,
            "{s:?}"
        );
        assert!(s.open_fds > 0, "{s:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            s.start_time_seconds <= now + 1.0 && s.start_time_seconds > now - 86_400.0 * 365.0,
            "{s:?}"
        );
    }
}
