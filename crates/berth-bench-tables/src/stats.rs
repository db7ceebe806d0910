//! Latencies of one measured run and what is reported of them.

use std::time::Duration;

use serde_json::{json, Value};

/// Every latency of a run, in nanoseconds (a run holds at most a few
/// million: 8 bytes each).
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    ns: Vec<u64>,
}

impl Latencies {
    pub fn push(&mut self, d: Duration) {
        self.ns
            .push(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    pub fn push_ns(&mut self, ns: u64) {
        self.ns.push(ns);
    }

    pub fn merge(&mut self, other: Latencies) {
        self.ns.extend(other.ns);
    }

    pub fn len(&self) -> usize {
        self.ns.len()
    }

    /// The `q` quantile (0..=1) in microseconds, nearest rank; `None` when
    /// empty.
    pub fn quantile_us(&mut self, q: f64) -> Option<f64> {
        if self.ns.is_empty() {
            return None;
        }
        self.ns.sort_unstable();
        let rank = ((q * self.ns.len() as f64).ceil() as usize).clamp(1, self.ns.len());
        Some(self.ns[rank - 1] as f64 / 1e3)
    }

    pub fn mean_us(&self) -> Option<f64> {
        if self.ns.is_empty() {
            return None;
        }
        Some(self.ns.iter().map(|&n| n as f64).sum::<f64>() / self.ns.len() as f64 / 1e3)
    }

    /// `{count, p50_us, p99_us, mean_us, max_us}`.
    pub fn summary(&mut self) -> Value {
        json!({
            "count": self.len(),
            "p50_us": self.quantile_us(0.50),
            "p99_us": self.quantile_us(0.99),
            "mean_us": self.mean_us(),
            "max_us": self.quantile_us(1.0),
        })
    }
}

/// CPU seconds (user + system) this process has used so far, from
/// `/proc/self/stat` (clock ticks of 10 ms on Linux); 0 when unreadable.
pub fn process_cpu_s() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses and may hold
    // spaces: utime and stime are the 14th and 15th fields overall.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let mut l = Latencies::default();
        for us in 1..=100u64 {
            l.push_ns(us * 1000);
        }
        assert_eq!(l.quantile_us(0.5), Some(50.0));
        assert_eq!(l.quantile_us(0.99), Some(99.0));
        assert_eq!(l.quantile_us(1.0), Some(100.0));
        assert_eq!(l.mean_us(), Some(50.5));
        assert_eq!(Latencies::default().quantile_us(0.5), None);
    }

    #[test]
    fn cpu_time_is_read() {
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_add(1);
        }
        assert!(x > 0);
        assert!(process_cpu_s() > 0.0);
    }
}
