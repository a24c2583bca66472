//! Server discovery for outbound federation: how a server name becomes
//! where to connect, what `Host` header to send and which name the
//! certificate must be valid for (server-server API, "Resolving server
//! names").
//!
//! [`ServerDiscovery::resolve`] runs the spec's steps: IP literal or
//! explicit port at once; otherwise the `/.well-known/matrix/server` of
//! the hostname (cached per its `Cache-Control`, within 5 minutes and 48
//! hours, 24 hours by default, failures for an hour), then SRV records
//! (`_matrix-fed._tcp`, then the deprecated `_matrix._tcp`) of the
//! delegated or original hostname, then port 8448. The decisions are pure
//! functions in [`decide`], table-tested there; this shell does the
//! fetching, the DNS and the caching.
//!
//! The outbound federation client is built with [`ServerDiscovery::dns_resolver`]
//! so that a connection to a hostname that SRV records delegate goes to
//! the SRV targets while TLS still checks the hostname.

pub mod decide;
mod resolver;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chancery_proto::limits::{
    MAX_SERVER_DISCOVERY_CACHE_ENTRIES, MAX_WELL_KNOWN_BODY_BYTES, MAX_WELL_KNOWN_REDIRECTS, WELL_KNOWN_TIMEOUT_MS,
};
use chancery_proto::ruma::{OwnedServerName, ServerName};

use crate::clock::Clock;
use crate::tokens::Entropy;

use decide::{AfterWellKnown, FirstStep, SrvDecision, WellKnownEntry, WellKnownFetch};
pub use decide::{Destination, SrvTarget};
pub use resolver::DiscoveryResolver;
use resolver::{HickorySrv, SrvLookup};

/// Why a server name could not be resolved. Every other trouble (no
/// well-known, a bad one, DNS failures, no SRV record) moves on to the
/// spec's next step instead, so resolution ends in a destination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// The name (or the delegation) cannot be a federation host: too long,
    /// or not a host an `https` URL can carry.
    #[error("the server name cannot be resolved to a federation host")]
    InvalidServerName,
    /// The server's SRV record has the target `.`: it says it offers no
    /// federation service (RFC 2782).
    #[error("the server says it offers no federation service")]
    FederationUnavailable,
}

/// What [`ServerDiscovery`] is built from.
pub struct ServerDiscoveryDeps {
    /// The client that fetches well-knowns: build it from
    /// [`ServerDiscovery::well_known_client_builder`] (bounded redirects),
    /// with the same trust roots as the federation client, and *without*
    /// [`ServerDiscovery::dns_resolver`].
    pub http: reqwest::Client,
    pub clock: Arc<dyn Clock>,
    /// For RFC 2782's weighted choice among SRV targets.
    pub entropy: Arc<dyn Entropy>,
}

/// Resolves server names to [`Destination`]s, caching what it learned
/// (bounded, least recently used first out). Per node, and safe to lose.
pub struct ServerDiscovery {
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
    entropy: Arc<dyn Entropy>,
    srv: Arc<dyn SrvLookup>,
    resolver: Arc<DiscoveryResolver>,
    /// Per hostname: its well-known answer, kept past expiry so a
    /// temporary failure can fall back on it.
    well_known: Mutex<hashlink::LruCache<String, WellKnownEntry>>,
    /// Per server name: the destination and until when it holds (the
    /// earlier of the well-known's and the SRV answer's expiry).
    destinations: Mutex<hashlink::LruCache<OwnedServerName, (Destination, u64)>>,
    /// Tests fetch well-knowns from a plain-HTTP loopback server.
    #[cfg(test)]
    well_known_origin: Option<String>,
}

impl ServerDiscovery {
    /// Discovery with SRV lookups through the system's DNS configuration.
    pub fn new(deps: ServerDiscoveryDeps) -> Self {
        Self::with_srv_lookup(deps, Arc::new(HickorySrv::from_system_config()))
    }

    fn with_srv_lookup(deps: ServerDiscoveryDeps, srv: Arc<dyn SrvLookup>) -> Self {
        Self {
            http: deps.http,
            clock: deps.clock,
            entropy: deps.entropy,
            srv,
            resolver: Arc::new(DiscoveryResolver::default()),
            well_known: Mutex::new(hashlink::LruCache::new(MAX_SERVER_DISCOVERY_CACHE_ENTRIES)),
            destinations: Mutex::new(hashlink::LruCache::new(MAX_SERVER_DISCOVERY_CACHE_ENTRIES)),
            #[cfg(test)]
            well_known_origin: None,
        }
    }

    /// A client builder for the well-known fetches: at most
    /// `MAX_WELL_KNOWN_REDIRECTS` redirects (so no loop), a user agent.
    /// Add the trust roots of the federation client before `build()`.
    pub fn well_known_client_builder() -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::limited(MAX_WELL_KNOWN_REDIRECTS))
            .connect_timeout(Duration::from_millis(WELL_KNOWN_TIMEOUT_MS))
            .user_agent(concat!("Chancery/", env!("CARGO_PKG_VERSION")))
    }

    /// The resolver to build the outbound federation client with
    /// (`reqwest::ClientBuilder::dns_resolver`): it sends connections to
    /// SRV-delegated hostnames to their SRV targets.
    pub fn dns_resolver(&self) -> Arc<DiscoveryResolver> {
        self.resolver.clone()
    }

    /// Where requests to `server_name` go. Cheap when cached: only names
    /// without an explicit port and not an IP literal cost a well-known
    /// fetch and SRV lookups, and only when their answers expired.
    pub async fn resolve(&self, server_name: &ServerName) -> Result<Destination, DiscoveryError> {
        let hostname = match decide::first_step(server_name)? {
            FirstStep::Ready(destination) => return checked(destination),
            FirstStep::FetchWellKnown { hostname } => hostname,
        };
        let now_ms = self.clock.now_ms();
        let cached = self.destinations.lock().unwrap_or_else(PoisonError::into_inner).get(server_name).cloned();
        if let Some((destination, expires_at_ms)) = cached
            && now_ms < expires_at_ms
        {
            // The resolver's map is bounded on its own; put the targets
            // back in case they were pushed out.
            if !destination.srv_targets.is_empty() {
                self.resolver.set_targets(&destination.tls_name, &destination.srv_targets);
            }
            return Ok(destination);
        }

        let well_known = self.well_known(&hostname, now_ms).await;
        let (destination, expires_at_ms) = match decide::after_well_known(&hostname, well_known.delegated.as_deref())? {
            AfterWellKnown::Ready(destination) => (checked(destination)?, well_known.expires_at_ms),
            AfterWellKnown::LookupSrv { hostname } => {
                let (destination, srv_expires_at_ms) = self.srv_step(&hostname, now_ms).await?;
                let destination = checked(destination)?;
                // Targets found, or none any more: the resolver follows.
                self.resolver.set_targets(&destination.tls_name, &destination.srv_targets);
                (destination, srv_expires_at_ms.min(well_known.expires_at_ms))
            }
        };
        self.destinations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(server_name.to_owned(), (destination.clone(), expires_at_ms));
        Ok(destination)
    }

    /// The well-known answer for `hostname`: the cached one while it
    /// holds, else a fresh fetch (remembered).
    async fn well_known(&self, hostname: &str, now_ms: u64) -> WellKnownEntry {
        let previous = self.well_known.lock().unwrap_or_else(PoisonError::into_inner).get(hostname).cloned();
        if let Some(entry) = &previous
            && now_ms < entry.expires_at_ms
        {
            return entry.clone();
        }
        let fetched = self.fetch_well_known(hostname).await;
        let entry = decide::well_known_entry(&fetched, previous.as_ref(), now_ms);
        self.well_known.lock().unwrap_or_else(PoisonError::into_inner).insert(hostname.to_owned(), entry.clone());
        entry
    }

    fn well_known_url(&self, hostname: &str) -> String {
        #[cfg(test)]
        if let Some(origin) = &self.well_known_origin {
            return format!("{origin}/.well-known/matrix/server");
        }
        decide::well_known_url(hostname)
    }

    /// GETs the well-known, reading at most `MAX_WELL_KNOWN_BODY_BYTES`
    /// of a 200's body; nothing of it is logged.
    async fn fetch_well_known(&self, hostname: &str) -> WellKnownFetch {
        let url = self.well_known_url(hostname);
        let mut response = match self.http.get(&url).timeout(Duration::from_millis(WELL_KNOWN_TIMEOUT_MS)).send().await {
            Ok(response) => response,
            Err(e) => {
                tracing::debug!(hostname, error = %e, "no well-known answer");
                return WellKnownFetch::Failed;
            }
        };
        let status = response.status().as_u16();
        let cache_control = {
            let values: Vec<&str> =
                response.headers().get_all(reqwest::header::CACHE_CONTROL).iter().filter_map(|v| v.to_str().ok()).collect();
            (!values.is_empty()).then(|| values.join(","))
        };
        if status != 200 {
            return WellKnownFetch::Answered { status, body: Vec::new(), cache_control };
        }
        if response.content_length().is_some_and(|length| length > MAX_WELL_KNOWN_BODY_BYTES as u64) {
            tracing::debug!(hostname, "well-known body over the limit");
            return WellKnownFetch::Failed;
        }
        let mut body = Vec::new();
        // Ends: the body is bounded here and the request by its timeout.
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_WELL_KNOWN_BODY_BYTES {
                        tracing::debug!(hostname, "well-known body over the limit");
                        return WellKnownFetch::Failed;
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(hostname, error = %e, "well-known body cut short");
                    return WellKnownFetch::Failed;
                }
            }
        }
        WellKnownFetch::Answered { status, body, cache_control }
    }

    /// Steps 3.3 to 3.5 or 4 to 6 for `hostname`: its SRV records, then
    /// port 8448.
    async fn srv_step(&self, hostname: &str, now_ms: u64) -> Result<(Destination, u64), DiscoveryError> {
        let mut answers = Vec::with_capacity(2);
        for service_name in decide::srv_service_names(hostname) {
            let answer = self.srv.lookup_srv(&service_name).await;
            let mut draw = |total: u32| {
                let mut bytes = [0u8; 4];
                self.entropy.fill(&mut bytes);
                u32::from_le_bytes(bytes) % total + 1
            };
            match decide::decide_srv(hostname, &answer, &mut draw, now_ms)? {
                SrvDecision::Use { destination, expires_at_ms } => return Ok((destination, expires_at_ms)),
                SrvDecision::Next => answers.push(answer),
            }
        }
        Ok(decide::fallback(hostname, &answers, now_ms))
    }
}

/// `destination` if its `url_base` is a URL whose host is `tls_name` as
/// written: a hostname such as `127.1`, which URL parsers read as an IPv4
/// address, would otherwise be connected to as one.
fn checked(destination: Destination) -> Result<Destination, DiscoveryError> {
    let url = url::Url::parse(&destination.url_base).map_err(|_| DiscoveryError::InvalidServerName)?;
    let host_matches = match url.host() {
        Some(url::Host::Domain(domain)) => domain == destination.tls_name,
        Some(url::Host::Ipv4(ip)) => ip.to_string() == destination.tls_name,
        Some(url::Host::Ipv6(ip)) => ip.to_string() == destination.tls_name,
        None => false,
    };
    if host_matches { Ok(destination) } else { Err(DiscoveryError::InvalidServerName) }
}

#[cfg(test)]
mod tests;
