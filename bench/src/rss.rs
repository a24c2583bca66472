//! Resident memory of the server process, read from `/proc/<pid>/status`
//! (so only for a server on this machine, given by `--pid`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

/// `VmRSS` of `pid`, in KiB.
pub fn rss_kb(pid: u32) -> Result<u64> {
    status_field(pid, "VmRSS:")
}

/// `VmHWM` (the process's peak resident set so far), in KiB.
pub fn hwm_kb(pid: u32) -> Result<u64> {
    status_field(pid, "VmHWM:")
}

fn status_field(pid: u32, key: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path} (is --pid right?)"))?;
    let line = text.lines().find(|l| l.starts_with(key)).ok_or_else(|| anyhow!("{path} has no {key}"))?;
    line[key.len()..].trim().trim_end_matches("kB").trim().parse().with_context(|| format!("parsing {key} in {path}"))
}

/// Samples `VmRSS` every `interval` until stopped or `deadline`, keeping
/// the maximum.
pub struct PeakSampler {
    stop: Arc<AtomicBool>,
    peak_kb: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl PeakSampler {
    pub fn start(pid: u32, interval: Duration, deadline: Instant) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak_kb = Arc::new(AtomicU64::new(rss_kb(pid).unwrap_or(0)));
        let task = {
            let (stop, peak_kb) = (stop.clone(), peak_kb.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    if let Ok(kb) = rss_kb(pid) {
                        peak_kb.fetch_max(kb, Ordering::Relaxed);
                    }
                    tokio::time::sleep(interval).await;
                }
            })
        };
        PeakSampler { stop, peak_kb, task }
    }

    pub async fn finish(self, pid: u32) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        if let Ok(kb) = rss_kb(pid) {
            self.peak_kb.fetch_max(kb, Ordering::Relaxed);
        }
        self.peak_kb.load(Ordering::Relaxed)
    }
}
