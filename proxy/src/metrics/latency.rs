//! The request latency histogram (`tandem_query_duration_seconds`), counted per worker.
//!
//! Every request ends with one observation. prometheus_client's `Histogram` takes a write
//! lock for each, which with one event loop per worker thread would be a lock every core
//! takes on every request. Here each worker counts into buckets of its own (on their own
//! cache lines) with relaxed atomic adds, and a scrape sums the workers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// Upper bounds of the finite buckets: 100 µs doubling up to about 13 s.
const BOUNDS: usize = 18;

fn bound(i: usize) -> f64 {
    0.0001 * f64::from(1u32 << i)
}

/// One worker's counts.
#[derive(Debug, Default)]
#[repr(align(128))] // two cache lines: adjacent-line prefetch pairs lines on x86
struct Shard {
    /// Observations per bucket, the last one for values above every bound (`+Inf`).
    buckets: [AtomicU64; BOUNDS + 1],
    /// Sum of the observations in nanoseconds.
    sum_nanos: AtomicU64,
}

/// Request latency, one set of counts per worker; clones share the counts.
#[derive(Debug, Clone)]
pub struct Latency {
    shards: Arc<[Shard]>,
}

impl Latency {
    /// A histogram for `workers` worker threads.
    pub fn new(workers: usize) -> Latency {
        Latency { shards: (0..workers.max(1)).map(|_| Shard::default()).collect() }
    }

    /// Counts one request of worker `worker` that took `elapsed`.
    pub fn observe(&self, worker: usize, elapsed: Duration) {
        let shard = &self.shards[worker % self.shards.len()];
        let secs = elapsed.as_secs_f64();
        let i = (0..BOUNDS).find(|&i| secs <= bound(i)).unwrap_or(BOUNDS);
        shard.buckets[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        shard.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// (sum in seconds, count, per-bucket counts with their upper bounds), summed over
    /// the workers; the last bound is `f64::MAX`, which the encoder writes as `+Inf`.
    fn totals(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut buckets: Vec<(f64, u64)> =
            (0..=BOUNDS).map(|i| (if i < BOUNDS { bound(i) } else { f64::MAX }, 0)).collect();
        let mut sum_nanos = 0u64;
        for shard in self.shards.iter() {
            for (total, count) in buckets.iter_mut().zip(&shard.buckets) {
                total.1 += count.load(Ordering::Relaxed);
            }
            sum_nanos = sum_nanos.wrapping_add(shard.sum_nanos.load(Ordering::Relaxed));
        }
        let count = buckets.iter().map(|b| b.1).sum();
        (sum_nanos as f64 / 1e9, count, buckets)
    }
}

impl EncodeMetric for Latency {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.totals();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_counts_are_summed_into_cumulative_buckets() {
        let latency = Latency::new(2);
        latency.observe(0, Duration::from_micros(50));
        latency.observe(1, Duration::from_micros(150));
        latency.observe(1, Duration::from_secs(60));
        let (sum, count, buckets) = latency.totals();
        assert_eq!(count, 3);
        assert!((sum - 60.0002).abs() < 1e-9, "{sum}");
        assert_eq!(buckets[0], (0.0001, 1));
        assert_eq!(buckets[1], (0.0002, 1));
        assert_eq!(buckets[BOUNDS], (f64::MAX, 1));

        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("d", "test", latency);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("d_count 3"), "{text}");
        assert!(text.contains("d_bucket{le=\"0.0002\"} 2"), "{text}");
        assert!(text.contains("d_bucket{le=\"+Inf\"} 3"), "{text}");
    }
}
