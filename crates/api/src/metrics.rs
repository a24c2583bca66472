//! Prometheus metrics, served on their own listener (off unless
//! configured): requests and latencies per endpoint, database pool, RSS,
//! syncs waiting for news, and the built-in SFU's figures when it runs.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    endpoint: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    method: String,
    endpoint: String,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<EndpointLabels, Histogram, fn() -> Histogram>,
    panics: Family<EndpointLabels, Counter>,
    db_connections: Gauge,
    db_idle: Gauge,
    rss_bytes: Gauge,
    long_polls_waiting: Gauge,
    sfu: OnceLock<SfuMetrics>,
}

/// The built-in SFU's figures as its host reads them (gauges are "now",
/// the others are counts since it started and only grow).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SfuFigures {
    pub rooms: u64,
    pub participants: u64,
    pub published_tracks: u64,
    pub forwarded_tracks: u64,
    pub forwarded_packets: u64,
    pub forwarded_bytes: u64,
    pub packets_lost: u64,
    pub over_bitrate_packets: u64,
    pub data_forwarded_packets: u64,
    pub data_forwarded_bytes: u64,
    pub data_dropped: u64,
}

type SfuSource = Box<dyn Fn() -> SfuFigures + Send + Sync>;

struct SfuMetrics {
    source: SfuSource,
    gauges: [Gauge; 4],
    counters: [Counter; 7],
}

impl SfuMetrics {
    fn update(&self) {
        let f = (self.source)();
        for (gauge, value) in self.gauges.iter().zip([f.rooms, f.participants, f.published_tracks, f.forwarded_tracks]) {
            gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
        }
        let totals = [
            f.forwarded_packets,
            f.forwarded_bytes,
            f.packets_lost,
            f.over_bitrate_packets,
            f.data_forwarded_packets,
            f.data_forwarded_bytes,
            f.data_dropped,
        ];
        // The SFU keeps the totals; the counters follow them.
        for (counter, total) in self.counters.iter().zip(totals) {
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("chancery");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<EndpointLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let panics = Family::<EndpointLabels, Counter>::default();
        let db_connections = Gauge::default();
        let db_idle = Gauge::default();
        let rss_bytes = Gauge::default();
        let long_polls_waiting = Gauge::default();
        registry.register("http_requests", "HTTP requests by endpoint and status", requests.clone());
        registry.register("http_request_duration_seconds", "HTTP request latency by endpoint", latency.clone());
        registry.register("http_handler_panics", "Requests whose handler panicked (answered 500)", panics.clone());
        registry.register("db_pool_connections", "Database connections held by the pool", db_connections.clone());
        registry.register("db_pool_idle_connections", "Idle database connections", db_idle.clone());
        registry.register("process_resident_memory_bytes", "Resident memory of this process", rss_bytes.clone());
        registry.register(
            "sync_long_polls_waiting",
            "/sync requests of this node parked waiting for news",
            long_polls_waiting.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            requests,
            latency,
            panics,
            db_connections,
            db_idle,
            rss_bytes,
            long_polls_waiting,
            sfu: OnceLock::new(),
        }
    }

    /// Serves the built-in SFU's figures, read from `source` at each
    /// scrape (`chancery_sfu_*`; `rate()` of the byte and packet totals is
    /// the forwarded bitrate and packet rate). Only the first call counts.
    pub fn set_sfu_source(&self, source: impl Fn() -> SfuFigures + Send + Sync + 'static) {
        let gauges: [Gauge; 4] = Default::default();
        let counters: [Counter; 7] = Default::default();
        let metrics = SfuMetrics { source: Box::new(source), gauges: gauges.clone(), counters: counters.clone() };
        if self.sfu.set(metrics).is_err() {
            return;
        }
        let mut registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let gauge_help = [
            ("sfu_rooms", "Rooms on the built-in SFU"),
            ("sfu_participants", "Participants connected to the built-in SFU"),
            ("sfu_published_tracks", "Tracks published to the built-in SFU"),
            ("sfu_forwarded_tracks", "Tracks forwarded by the built-in SFU (one per subscriber and track)"),
        ];
        for ((name, help), gauge) in gauge_help.into_iter().zip(gauges) {
            registry.register(name, help, gauge);
        }
        let counter_help = [
            ("sfu_forwarded_packets", "RTP packets the SFU wrote to subscribers"),
            ("sfu_forwarded_bytes", "RTP payload bytes the SFU wrote to subscribers (rate() is the forwarded bitrate)"),
            ("sfu_packets_lost", "Incoming RTP packets the SFU saw lost (sequence gaps)"),
            ("sfu_over_bitrate_packets", "Incoming RTP packets not forwarded: their publisher was over its bitrate cap"),
            ("sfu_data_forwarded_packets", "Data channel packets the SFU wrote to receivers"),
            ("sfu_data_forwarded_bytes", "Data channel bytes the SFU wrote to receivers"),
            ("sfu_data_dropped", "Data channel packets dropped (too big, over the sender's rate, or a receiver not ready)"),
        ];
        for ((name, help), counter) in counter_help.into_iter().zip(counters) {
            registry.register(name, help, counter);
        }
    }

    pub(crate) fn record_request(&self, method: &str, endpoint: &str, status: u16, elapsed: Duration) {
        let method = method_label(method);
        self.requests.get_or_create(&RequestLabels { method: method.into(), endpoint: endpoint.into(), status }).inc();
        self.latency
            .get_or_create(&EndpointLabels { method: method.into(), endpoint: endpoint.into() })
            .observe(elapsed.as_secs_f64());
    }

    pub(crate) fn record_panic(&self, method: &str, endpoint: &str) {
        self.panics.get_or_create(&EndpointLabels { method: method_label(method).into(), endpoint: endpoint.into() }).inc();
    }

    /// The text exposition format, with gauges read now.
    pub fn render(&self, pool: chancery_service::PoolStats, long_polls_waiting: usize) -> String {
        self.db_connections.set(i64::try_from(pool.connections).unwrap_or(i64::MAX));
        self.long_polls_waiting.set(i64::try_from(long_polls_waiting).unwrap_or(i64::MAX));
        self.db_idle.set(i64::try_from(pool.idle).unwrap_or(i64::MAX));
        if let Some(rss) = resident_memory_bytes() {
            self.rss_bytes.set(i64::try_from(rss).unwrap_or(i64::MAX));
        }
        if let Some(sfu) = self.sfu.get() {
            sfu.update();
        }
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = encode(&mut out, &registry) {
            tracing::error!(error = %e, "could not encode metrics");
        }
        out
    }
}

/// Clients can send any method name: only the standard ones become label
/// values, so the set of series stays bounded.
fn method_label(method: &str) -> &str {
    match method {
        "GET" | "POST" | "PUT" | "DELETE" | "OPTIONS" | "HEAD" | "PATCH" => method,
        _ => "OTHER",
    }
}

/// Resident set size from `/proc/self/status` (Linux); `None` elsewhere.
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The router of the metrics listener.
pub fn router(metrics: std::sync::Arc<Metrics>, health: std::sync::Arc<chancery_service::Health>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            let health = health.clone();
            async move {
                let body = metrics.render(health.pool_stats(), health.long_polls_waiting());
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body)
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sfu_figures_are_served_once_a_source_is_set() {
        let metrics = Metrics::new();
        let pool = chancery_service::PoolStats::default();
        assert!(!metrics.render(pool, 0).contains("chancery_sfu_"));
        let figures = std::sync::Arc::new(Mutex::new(SfuFigures { rooms: 2, forwarded_bytes: 1000, ..SfuFigures::default() }));
        let source = figures.clone();
        metrics.set_sfu_source(move || *source.lock().unwrap());
        let text = metrics.render(pool, 0);
        assert!(text.contains("chancery_sfu_rooms 2"), "{text}");
        assert!(text.contains("chancery_sfu_forwarded_bytes_total 1000"), "{text}");
        // The counters follow the SFU's totals.
        figures.lock().unwrap().forwarded_bytes = 1500;
        assert!(metrics.render(pool, 0).contains("chancery_sfu_forwarded_bytes_total 1500"));
    }
}
