//! The shell against a plain-HTTP loopback well-known server and scripted
//! SRV answers, with the clock moved by hand.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::decide::{SrvAnswer, SrvRecord};
use super::*;
use crate::clock::ManualClock;

struct ZeroEntropy;

impl Entropy for ZeroEntropy {
    fn fill(&self, bytes: &mut [u8]) {
        bytes.fill(0);
    }
}

/// SRV answers by service name; anything else has no record.
#[derive(Default)]
struct ScriptedSrv {
    answers: Mutex<HashMap<String, SrvAnswer>>,
    lookups: AtomicUsize,
}

impl ScriptedSrv {
    fn set(&self, service_name: &str, answer: SrvAnswer) {
        self.answers.lock().unwrap().insert(service_name.to_owned(), answer);
    }
}

#[async_trait::async_trait]
impl SrvLookup for ScriptedSrv {
    async fn lookup_srv(&self, service_name: &str) -> SrvAnswer {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.answers.lock().unwrap().get(service_name).cloned().unwrap_or(SrvAnswer::NoRecords)
    }
}

/// A loopback HTTP/1.1 server answering every request with `response`
/// (a whole response, head and body), counting requests.
struct WellKnownServer {
    port: u16,
    response: Arc<Mutex<Vec<u8>>>,
    requests: Arc<AtomicUsize>,
}

impl WellKnownServer {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let response = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(AtomicUsize::new(0));
        let (resp, reqs) = (response.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (resp, reqs) = (resp.clone(), reqs.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    reqs.fetch_add(1, Ordering::SeqCst);
                    let answer = resp.lock().unwrap().clone();
                    let _ = stream.write_all(&answer).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self { port, response, requests }
    }

    fn answer(&self, status: &str, headers: &[&str], body: &[u8]) {
        let mut response = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
        for header in headers {
            response.push_str(header);
            response.push_str("\r\n");
        }
        response.push_str("\r\n");
        let mut bytes = response.into_bytes();
        bytes.extend_from_slice(body);
        *self.response.lock().unwrap() = bytes;
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

struct Harness {
    discovery: ServerDiscovery,
    clock: Arc<ManualClock>,
    srv: Arc<ScriptedSrv>,
    server: WellKnownServer,
}

const START_MS: u64 = 1_700_000_000_000;

async fn harness() -> Harness {
    let server = WellKnownServer::start().await;
    let clock = Arc::new(ManualClock::new(START_MS));
    let srv = Arc::new(ScriptedSrv::default());
    let http = ServerDiscovery::well_known_client_builder().no_proxy().build().unwrap();
    let mut discovery = ServerDiscovery::with_srv_lookup(
        ServerDiscoveryDeps { http, clock: clock.clone(), entropy: Arc::new(ZeroEntropy) },
        srv.clone(),
    );
    discovery.well_known_origin = Some(format!("http://127.0.0.1:{}", server.port));
    Harness { discovery, clock, srv, server }
}

fn name(s: &str) -> OwnedServerName {
    ServerName::parse(s).unwrap()
}

fn srv_records(targets: &[(&str, u16)], ttl_s: u32) -> SrvAnswer {
    SrvAnswer::Records {
        records: targets
            .iter()
            .map(|(target, port)| SrvRecord { priority: 0, weight: 0, port: *port, target: (*target).to_owned() })
            .collect(),
        ttl_s,
    }
}

#[tokio::test]
async fn ip_literals_and_explicit_ports_fetch_nothing() {
    let h = harness().await;
    let d = h.discovery.resolve(&name("[::1]:8448")).await.unwrap();
    assert_eq!((d.url_base.as_str(), d.host_header.as_str(), d.tls_name.as_str()), ("https://[::1]:8448", "[::1]:8448", "::1"));
    let d = h.discovery.resolve(&name("example.org:8000")).await.unwrap();
    assert_eq!(d.url_base, "https://example.org:8000");
    assert_eq!((h.server.requests(), h.srv.lookups.load(Ordering::SeqCst)), (0, 0));
    // A hostname that URL parsers read as an address is refused, not connected to.
    assert_eq!(h.discovery.resolve(&name("127.1:8448")).await, Err(DiscoveryError::InvalidServerName));
}

#[tokio::test]
async fn a_delegation_is_followed_to_srv_targets_and_cached() {
    let h = harness().await;
    h.server.answer("200 OK", &["Content-Type: application/json"], br#"{"m.server": "Matrix.Example.net"}"#);
    h.srv.set("_matrix-fed._tcp.matrix.example.net.", srv_records(&[("host1.example.net", 8450)], 300));

    let d = h.discovery.resolve(&name("example.org")).await.unwrap();
    assert_eq!(
        d,
        Destination {
            url_base: "https://matrix.example.net:8450".into(),
            host_header: "matrix.example.net".into(),
            tls_name: "matrix.example.net".into(),
            srv_targets: vec![SrvTarget { host: "host1.example.net".into(), port: 8450 }],
        }
    );
    assert_eq!(h.discovery.dns_resolver().targets("matrix.example.net").as_deref(), Some(&d.srv_targets[..]));
    assert_eq!((h.server.requests(), h.srv.lookups.load(Ordering::SeqCst)), (1, 1));

    // Cached: no fetch, no lookup.
    assert_eq!(h.discovery.resolve(&name("example.org")).await.unwrap(), d);
    assert_eq!((h.server.requests(), h.srv.lookups.load(Ordering::SeqCst)), (1, 1));

    // Past the SRV TTL, SRV is asked again but the well-known holds.
    h.clock.set(START_MS + 300_000);
    h.discovery.resolve(&name("example.org")).await.unwrap();
    assert_eq!((h.server.requests(), h.srv.lookups.load(Ordering::SeqCst)), (1, 2));

    // Past 24 hours, the well-known is fetched again; now it delegates to
    // an address, and the SRV targets of the old host are no longer needed
    // by this name (the resolver keeps them for that host's sake).
    h.server.answer("200 OK", &[], br#"{"m.server": "10.0.0.7:8448"}"#);
    h.clock.set(START_MS + decide::WELL_KNOWN_DEFAULT_CACHE_MS);
    let d = h.discovery.resolve(&name("example.org")).await.unwrap();
    assert_eq!((d.url_base.as_str(), d.host_header.as_str()), ("https://10.0.0.7:8448", "10.0.0.7:8448"));
    assert_eq!(h.server.requests(), 2);
}

#[tokio::test]
async fn cache_control_sets_the_well_known_lifetime() {
    let h = harness().await;
    h.server.answer("200 OK", &["Cache-Control: public, max-age=600"], br#"{"m.server": "d.example.net:443"}"#);
    h.discovery.resolve(&name("example.org")).await.unwrap();
    h.clock.set(START_MS + 599_999);
    h.discovery.resolve(&name("example.org")).await.unwrap();
    assert_eq!(h.server.requests(), 1);
    h.clock.set(START_MS + 600_000);
    h.discovery.resolve(&name("example.org")).await.unwrap();
    assert_eq!(h.server.requests(), 2);
}

#[tokio::test]
async fn without_a_well_known_srv_of_the_hostname_then_8448() {
    let h = harness().await;
    h.server.answer("404 Not Found", &[], b"");
    // Only the deprecated service name has a record.
    h.srv.set("_matrix._tcp.example.org.", srv_records(&[("fed.example.org", 443)], 60));
    let d = h.discovery.resolve(&name("example.org")).await.unwrap();
    assert_eq!((d.url_base.as_str(), d.host_header.as_str()), ("https://example.org:443", "example.org"));
    assert_eq!(h.srv.lookups.load(Ordering::SeqCst), 2);

    // The record goes: after its TTL, the fallback, and the resolver forgets.
    h.srv.set("_matrix._tcp.example.org.", SrvAnswer::NoRecords);
    h.clock.set(START_MS + 60_000);
    let d = h.discovery.resolve(&name("example.org")).await.unwrap();
    assert_eq!(d.url_base, "https://example.org:8448");
    assert!(d.srv_targets.is_empty());
    assert_eq!(h.discovery.dns_resolver().targets("example.org"), None);
    // The 404 is remembered for an hour.
    assert_eq!(h.server.requests(), 1);
    h.clock.set(START_MS + decide::WELL_KNOWN_FAILURE_CACHE_MS);
    h.discovery.resolve(&name("example.org")).await.unwrap();
    assert_eq!(h.server.requests(), 2);
}

#[tokio::test]
async fn hostile_well_knowns_fall_through() {
    let h = harness().await;
    let huge = vec![b' '; MAX_WELL_KNOWN_BODY_BYTES + 1];
    for (status, body) in [
        ("200 OK", &huge[..]),
        ("200 OK", &b"{\"m.server\": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["[..]),
        ("200 OK", &br#"{"m.server": "evil host"}"#[..]),
        ("500 Internal Server Error", &b"{}"[..]),
    ] {
        h.server.answer(status, &[], body);
        let host = format!("h{}.example.org", h.server.requests());
        let d = h.discovery.resolve(&name(&host)).await.unwrap();
        assert_eq!(d.url_base, format!("https://{host}:8448"), "{status}");
    }
}

#[tokio::test]
async fn a_dot_target_says_no_federation() {
    let h = harness().await;
    h.server.answer("404 Not Found", &[], b"");
    h.srv.set("_matrix-fed._tcp.example.org.", srv_records(&[(".", 0)], 60));
    assert_eq!(h.discovery.resolve(&name("example.org")).await, Err(DiscoveryError::FederationUnavailable));
}

#[tokio::test]
async fn the_resolver_sends_connections_to_srv_targets() {
    let h = harness().await;
    h.server.answer("200 OK", &[], b"reached");
    // The name has no address; its SRV target is the loopback server.
    h.discovery.resolver.set_targets("nowhere.invalid", &[SrvTarget { host: "127.0.0.1".into(), port: h.server.port }]);
    let client = reqwest::Client::builder().dns_resolver(h.discovery.dns_resolver()).no_proxy().build().unwrap();
    let body = client.get(format!("http://nowhere.invalid:{}/", h.server.port)).send().await.unwrap().text().await.unwrap();
    assert_eq!(body, "reached");
    h.discovery.resolver.set_targets("nowhere.invalid", &[]);
    assert_eq!(h.discovery.dns_resolver().targets("nowhere.invalid"), None);
}
