//! Percentiles of latency samples (nearest-rank; no crate needed).

use std::time::Duration;

use anyhow::{Result, bail};

/// The fewest samples a reported percentile (median included) may rest on:
/// below that a p95 or p99 is one sample's noise, and a median over three
/// rounds says little more.
pub const MIN_SAMPLES: usize = 20;

/// Latency samples in milliseconds.
#[derive(Debug, Default, Clone)]
pub struct Samples(Vec<f64>);

impl Samples {
    pub fn new() -> Self {
        Samples(Vec::new())
    }

    pub fn push(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64() * 1000.0);
    }

    pub fn push_ms(&mut self, ms: f64) {
        self.0.push(ms);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Nearest-rank percentile, `p` in 0..=100; an error when there are
    /// fewer than [`MIN_SAMPLES`] samples, so no figure rests on a handful.
    pub fn percentile(&self, p: f64) -> Result<f64> {
        if self.0.len() < MIN_SAMPLES {
            bail!(
                "a percentile needs at least {MIN_SAMPLES} samples, this one has {} (raise the samples or rounds)",
                self.0.len()
            );
        }
        Ok(percentile(&self.0, p))
    }

    pub fn median(&self) -> Result<f64> {
        self.percentile(50.0)
    }

    pub fn max(&self) -> f64 {
        self.0.iter().copied().fold(f64::NAN, f64::max)
    }
}

/// Nearest-rank percentile of `values`, `p` in 0..=100; NaN when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 95.0), 95.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), 2.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn too_few_samples_give_no_percentile() {
        let mut s = Samples::new();
        for i in 0..MIN_SAMPLES - 1 {
            s.push_ms(i as f64);
        }
        assert!(s.median().is_err());
        assert!(s.percentile(99.0).is_err());
        s.push_ms(100.0);
        assert_eq!(s.percentile(99.0).unwrap(), 100.0);
        assert_eq!(s.median().unwrap(), 9.0);
    }
}
