//! A latency histogram with bounded relative error, written here rather than pulled in as a
//! dependency (one fewer crate to build on 2 cores).
//!
//! The layout is HdrHistogram's log-linear one, simplified: values (nanoseconds) below
//! [`SUB_BUCKETS`] get one bucket each; above, every power of two is split into [`SUB_BUCKETS`]
//! equal buckets, so a bucket's width is at most 1/[`SUB_BUCKETS`] of its values. A percentile
//! is reported as the upper bound of the bucket holding its rank, clamped to the exact minimum
//! and maximum seen, so it overstates the true value by less than 1/[`SUB_BUCKETS`] (1.6%).
//!
//! Each client owns one histogram (no sharing on the hot path); the runner merges them at the end.

use std::time::Duration;

/// log2 of [`SUB_BUCKETS`].
const SUB_BUCKET_BITS: u32 = 6;
/// Buckets per power of two; also the bound on the relative error of a reported value.
const SUB_BUCKETS: u64 = 1 << SUB_BUCKET_BITS;
/// Values of 2^VALUE_BITS_MAX ns (about 18 minutes) or more are recorded as the largest value
/// below it.
const VALUE_BITS_MAX: u32 = 40;
const VALUE_NS_MAX: u64 = (1 << VALUE_BITS_MAX) - 1;
/// Bucket count: one group of [`SUB_BUCKETS`] linear buckets, then one group per power of two
/// from 2^SUB_BUCKET_BITS to 2^(VALUE_BITS_MAX - 1).
const BUCKETS: usize = ((VALUE_BITS_MAX - SUB_BUCKET_BITS + 1) as u64 * SUB_BUCKETS) as usize;

/// The bucket holding `ns` (at most [`VALUE_NS_MAX`]).
fn bucket_index(ns: u64) -> usize {
    debug_assert!(ns <= VALUE_NS_MAX);
    if ns < SUB_BUCKETS {
        return ns as usize;
    }
    let exponent = 63 - ns.leading_zeros();
    let shift = exponent - SUB_BUCKET_BITS;
    let mantissa = (ns >> shift) - SUB_BUCKETS;
    (u64::from(shift + 1) * SUB_BUCKETS + mantissa) as usize
}

/// The smallest and largest value of bucket `index`.
fn bucket_bounds(index: usize) -> (u64, u64) {
    let index = index as u64;
    if index < SUB_BUCKETS {
        return (index, index);
    }
    let shift = index / SUB_BUCKETS - 1;
    let mantissa = index % SUB_BUCKETS;
    let low = (SUB_BUCKETS + mantissa) << shift;
    (low, low + (1 << shift) - 1)
}

/// Request latencies.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Box<[u64]>,
    count: u64,
    sum_ns: u128,
    min_ns: u64,
    max_ns: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            count: 0,
            sum_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
        }
    }
}

impl Histogram {
    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos())
            .unwrap_or(u64::MAX)
            .min(VALUE_NS_MAX);
        self.counts[bucket_index(ns)] += 1;
        self.count += 1;
        self.sum_ns += u128::from(ns);
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    /// Adds every value recorded in `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum_ns += other.sum_ns;
        self.min_ns = self.min_ns.min(other.min_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The exact mean, or `None` if empty.
    pub fn mean(&self) -> Option<Duration> {
        let mean_ns = self.sum_ns.checked_div(u128::from(self.count))?;
        Some(Duration::from_nanos(
            u64::try_from(mean_ns).expect("a mean is at most the largest value"),
        ))
    }

    /// The exact smallest value, or `None` if empty.
    pub fn min(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_nanos(self.min_ns))
    }

    /// The exact largest value, or `None` if empty.
    pub fn max(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_nanos(self.max_ns))
    }

    /// The value at quantile `q` (0.99 for p99): the smallest recorded value such that a
    /// fraction `q` of all values are at or below it, overstated by less than 1/64 of itself.
    /// `None` if empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        assert!((0.0..=1.0).contains(&q), "quantile {q} outside [0, 1]");
        if self.count == 0 {
            return None;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (index, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (_, high) = bucket_bounds(index);
                let ns = high.clamp(self.min_ns, self.max_ns);
                return Some(Duration::from_nanos(ns));
            }
        }
        unreachable!("the counts add up to count");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn every_value_lands_in_a_bucket_whose_bounds_hold_it() {
        let samples = (0..200_000u64).chain((0..VALUE_BITS_MAX).flat_map(|b| {
            let p = 1u64 << b;
            [p - 1, p, p + 1, p + p / 3]
        }));
        for ns in samples.filter(|&ns| ns <= VALUE_NS_MAX) {
            let index = bucket_index(ns);
            assert!(index < BUCKETS, "{ns} -> {index}");
            let (low, high) = bucket_bounds(index);
            assert!(low <= ns && ns <= high, "{ns} not in [{low}, {high}]");
            if ns >= SUB_BUCKETS {
                assert!(
                    (high - low + 1) * SUB_BUCKETS <= ns,
                    "bucket [{low}, {high}] wider than 1/{SUB_BUCKETS} of {ns}"
                );
            } else {
                assert_eq!(low, high, "values below {SUB_BUCKETS} are exact");
            }
        }
        for ns in 1..200_000u64 {
            assert!(
                bucket_index(ns) >= bucket_index(ns - 1),
                "index decreased at {ns}"
            );
        }
        assert_eq!(bucket_index(VALUE_NS_MAX), BUCKETS - 1);
    }

    #[test]
    fn buckets_tile_the_value_range() {
        for index in 1..BUCKETS {
            let (_, previous_high) = bucket_bounds(index - 1);
            let (low, _) = bucket_bounds(index);
            assert_eq!(previous_high + 1, low, "gap before bucket {index}");
        }
    }

    #[test]
    fn quantiles_of_a_uniform_sequence_are_within_the_error_bound() {
        let mut h = Histogram::default();
        for n in 1..=10_000 {
            h.record(us(n));
        }
        for (q, expected_us) in [
            (0.5, 5_000.0),
            (0.9, 9_000.0),
            (0.99, 9_900.0),
            (0.999, 9_990.0),
        ] {
            let got = h.quantile(q).unwrap().as_nanos() as f64 / 1000.0;
            assert!(
                got >= expected_us && got <= expected_us * (1.0 + 1.0 / 64.0),
                "q={q}: {got}us, expected ~{expected_us}us"
            );
        }
        assert_eq!(h.quantile(1.0), Some(us(10_000)));
        let p0 = h.quantile(0.0).unwrap();
        assert!(
            us(1) <= p0 && p0 <= Duration::from_nanos(1_000 + 1_000 / 64),
            "{p0:?}"
        );
        assert_eq!(h.min(), Some(us(1)));
        assert_eq!(h.max(), Some(us(10_000)));
        assert_eq!(h.mean(), Some(Duration::from_nanos(5_000_500)));
        assert_eq!(h.count(), 10_000);
    }

    #[test]
    fn a_single_value_is_reported_exactly() {
        let mut h = Histogram::default();
        h.record(Duration::from_nanos(1_234_567));
        for q in [0.0, 0.5, 0.99, 0.999, 1.0] {
            assert_eq!(h.quantile(q), Some(Duration::from_nanos(1_234_567)));
        }
    }

    #[test]
    fn a_tail_outlier_shows_at_p999_but_not_p99() {
        let mut h = Histogram::default();
        for _ in 0..999 {
            h.record(us(100));
        }
        h.record(Duration::from_secs(2));
        assert!(h.quantile(0.99).unwrap() < us(102));
        assert!(h.quantile(0.999).unwrap() < us(102));
        assert_eq!(h.quantile(0.9995), Some(Duration::from_secs(2)));
    }

    #[test]
    fn an_empty_histogram_has_no_statistics() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        assert_eq!(h.mean(), None);
        assert_eq!(h.min(), None);
        assert_eq!(h.max(), None);
    }

    #[test]
    fn merging_equals_recording_everything_in_one() {
        let (mut a, mut b, mut all) = (
            Histogram::default(),
            Histogram::default(),
            Histogram::default(),
        );
        for n in 0..5_000u64 {
            let latency = us(n * 7 % 3_001 + 1);
            if n % 3 == 0 { &mut a } else { &mut b }.record(latency);
            all.record(latency);
        }
        a.merge(&b);
        assert_eq!(a.counts, all.counts);
        assert_eq!(a.count(), all.count());
        assert_eq!(a.mean(), all.mean());
        assert_eq!((a.min(), a.max()), (all.min(), all.max()));
        a.merge(&Histogram::default());
        assert_eq!((a.min(), a.max()), (all.min(), all.max()));
    }

    #[test]
    fn values_beyond_the_range_are_clamped_not_lost() {
        let mut h = Histogram::default();
        h.record(Duration::from_secs(100_000));
        assert_eq!(h.count(), 1);
        assert_eq!(h.max(), Some(Duration::from_nanos(VALUE_NS_MAX)));
    }
}
