//! The result of one load run and its two renderings: a human table and a JSON line.

use std::fmt::Write;
use std::time::Duration;

use crate::histogram::Histogram;

/// The percentiles every report shows, as (label, quantile).
pub const PERCENTILES: [(&str, f64); 4] =
    [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)];

/// What one run of a workload measured.
#[derive(Clone, Debug)]
pub struct Report {
    /// The workload's name (`put`, `range`, `txn-put`).
    pub workload: String,
    /// Latencies of the successful requests.
    pub latencies: Histogram,
    /// Requests that failed (not in `latencies`).
    pub errors: u64,
    /// The first failure's gRPC status, if any.
    pub first_error: Option<String>,
    /// From the first request sent to the last answer received.
    pub elapsed: Duration,
    /// A mixed workload's reads and writes, each on its own (empty for a single-op workload).
    pub ops: Vec<OpReport>,
}

/// The requests of one kind within a run (a mixed workload's reads, say).
#[derive(Clone, Debug)]
pub struct OpReport {
    /// `read` or `write`.
    pub name: &'static str,
    /// Latencies of the successful requests of this kind.
    pub latencies: Histogram,
    /// Requests of this kind that failed.
    pub errors: u64,
}

fn ms(d: Option<Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

impl Report {
    /// Successful requests per second.
    pub fn throughput(&self) -> f64 {
        self.rate(&self.latencies)
    }

    /// The 99th percentile latency, or `None` if no request succeeded.
    pub fn p99(&self) -> Option<Duration> {
        self.latencies.quantile(0.99)
    }

    /// etcd `benchmark`-like summary, several lines.
    pub fn table(&self) -> String {
        let h = &self.latencies;
        let mut out = String::new();
        writeln!(
            out,
            "{}: {} requests in {:.2}s, {} errors",
            self.workload,
            h.count(),
            self.elapsed.as_secs_f64(),
            self.errors
        )
        .expect("writing to a String");
        if let Some(error) = &self.first_error {
            writeln!(out, "  first error: {error}").expect("writing to a String");
        }
        writeln!(out, "  throughput  {:.1} req/s", self.throughput()).expect("writing to a String");
        out += &latency_table("latency ms", h);
        for op in &self.ops {
            writeln!(
                out,
                "  {}s       {} requests, {} errors, {:.1} req/s",
                op.name,
                op.latencies.count(),
                op.errors,
                self.rate(&op.latencies)
            )
            .expect("writing to a String");
            out += &latency_table(&format!("{} ms", op.name), &op.latencies);
        }
        out
    }

    /// Successful requests of `h` per second of this run.
    pub fn rate(&self, h: &Histogram) -> f64 {
        h.count() as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// The requests of kind `name` (`read`, `write`), if the run had kinds.
    pub fn op(&self, name: &str) -> Option<&OpReport> {
        self.ops.iter().find(|op| op.name == name)
    }

    /// One JSON object; latencies in milliseconds (`null` when no request succeeded).
    pub fn to_json(&self) -> serde_json::Value {
        let mut json = serde_json::json!({
            "workload": self.workload,
            "requests": self.latencies.count(),
            "errors": self.errors,
            "first_error": self.first_error,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "throughput": self.throughput(),
            "latency_ms": latency_json(&self.latencies),
        });
        for op in &self.ops {
            json[op.name] = serde_json::json!({
                "requests": op.latencies.count(),
                "errors": op.errors,
                "throughput": self.rate(&op.latencies),
                "latency_ms": latency_json(&op.latencies),
            });
        }
        json
    }
}

/// Two lines, indented by two spaces: `title` and the column names (mean, min, the
/// [`PERCENTILES`], max), then the values in milliseconds.
pub fn latency_table(title: &str, h: &Histogram) -> String {
    let mut labels = format!("  {title:<12}{:>9}{:>9}", "mean", "min");
    let mut values = format!("  {:12}{:>9.3}{:>9.3}", "", ms(h.mean()), ms(h.min()));
    for (label, q) in PERCENTILES {
        write!(labels, "{label:>9}").expect("writing to a String");
        write!(values, "{:>9.3}", ms(h.quantile(q))).expect("writing to a String");
    }
    format!("{labels}{:>9}\n{values}{:>9.3}\n", "max", ms(h.max()))
}

/// mean, min, the [`PERCENTILES`] and max in milliseconds (`null` when `h` is empty).
pub fn latency_json(h: &Histogram) -> serde_json::Value {
    let number = |d: Option<Duration>| d.map(|_| ms(d));
    let mut latency = serde_json::Map::new();
    latency.insert("mean".into(), number(h.mean()).into());
    latency.insert("min".into(), number(h.min()).into());
    for (label, q) in PERCENTILES {
        latency.insert(label.into(), number(h.quantile(q)).into());
    }
    latency.insert("max".into(), number(h.max()).into());
    latency.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let mut latencies = Histogram::default();
        for n in 1..=1000 {
            latencies.record(Duration::from_micros(n));
        }
        Report {
            workload: "put".into(),
            latencies,
            errors: 2,
            first_error: Some("Unavailable: down".into()),
            elapsed: Duration::from_millis(500),
            ops: Vec::new(),
        }
    }

    /// `report()` split as a mixed run: the first 900 requests reads, the rest writes.
    fn mixed_report() -> Report {
        let (mut reads, mut writes) = (Histogram::default(), Histogram::default());
        for n in 1..=1000 {
            let h = if n <= 900 { &mut reads } else { &mut writes };
            h.record(Duration::from_micros(n));
        }
        Report {
            workload: "mixed".into(),
            ops: vec![
                OpReport {
                    name: "read",
                    latencies: reads,
                    errors: 0,
                },
                OpReport {
                    name: "write",
                    latencies: writes,
                    errors: 2,
                },
            ],
            ..report()
        }
    }

    #[test]
    fn a_mixed_run_reports_reads_and_writes_apart() {
        let r = mixed_report();
        let json = r.to_json();
        assert_eq!(json["throughput"], 2000.0);
        assert_eq!(json["read"]["throughput"], 1800.0);
        assert_eq!(json["write"]["throughput"], 200.0);
        assert_eq!(json["write"]["errors"], 2);
        let ms = |op: &str, stat: &str| json[op]["latency_ms"][stat].as_f64().unwrap();
        assert!((ms("read", "max") - 0.9).abs() < 1e-9);
        assert!((ms("write", "min") - 0.901).abs() < 1e-9);
        let table = r.table();
        for label in ["reads", "1800.0 req/s", "write ms", "200.0 req/s"] {
            assert!(table.contains(label), "{label} missing from\n{table}");
        }
        assert_eq!(r.op("write").unwrap().errors, 2);
        assert!(r.op("delete").is_none());
        assert!(report().to_json().get("read").is_none());
    }

    #[test]
    fn json_line_carries_throughput_and_percentiles() {
        let json = report().to_json();
        assert_eq!(json["requests"], 1000);
        assert_eq!(json["errors"], 2);
        assert_eq!(json["throughput"], 2000.0);
        assert_eq!(json["latency_ms"]["max"], 1.0);
        let p99 = json["latency_ms"]["p99"].as_f64().unwrap();
        assert!((0.99..0.99 * (1.0 + 1.0 / 64.0)).contains(&p99), "{p99}");
        assert!(json["latency_ms"]["p99.9"].is_number());
        assert!(!json.to_string().contains('\n'));
    }

    #[test]
    fn an_all_failed_run_reports_null_latencies() {
        let r = Report {
            latencies: Histogram::default(),
            ..report()
        };
        assert!(r.to_json()["latency_ms"]["p50"].is_null());
        assert_eq!(r.throughput(), 0.0);
        assert!(r.table().contains("NaN"));
    }

    #[test]
    fn table_names_every_percentile_and_the_first_error() {
        let table = report().table();
        for label in [
            "p50",
            "p90",
            "p99",
            "p99.9",
            "2000.0 req/s",
            "Unavailable: down",
        ] {
            assert!(table.contains(label), "{label} missing from\n{table}");
        }
    }
}
