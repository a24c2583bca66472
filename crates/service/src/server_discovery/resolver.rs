//! The DNS side of discovery: SRV lookups (hickory, with the system's
//! resolver configuration) and the resolver reqwest asks for addresses, so
//! that a connection to `https://<hostname>:<srv port>` goes to the SRV
//! targets while TLS is checked against `<hostname>`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use chancery_proto::limits::MAX_SERVER_DISCOVERY_CACHE_ENTRIES;
use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;

use super::decide::{MAX_SRV_RECORDS, SrvAnswer, SrvRecord, SrvTarget};

/// SRV lookups, behind a trait so tests answer them without DNS.
#[async_trait::async_trait]
pub(crate) trait SrvLookup: Send + Sync {
    /// The SRV records of the fully qualified `service_name`.
    async fn lookup_srv(&self, service_name: &str) -> SrvAnswer;
}

/// SRV lookups through hickory with `/etc/resolv.conf`; when that cannot be
/// read, every lookup is [`SrvAnswer::Failed`] and discovery falls back to
/// port 8448 (logged once, at construction).
pub(crate) struct HickorySrv {
    resolver: Option<TokioResolver>,
}

impl HickorySrv {
    pub(crate) fn from_system_config() -> Self {
        let resolver = match TokioResolver::builder_tokio().and_then(|b| b.build()) {
            Ok(resolver) => Some(resolver),
            Err(e) => {
                tracing::warn!(error = %e, "no system DNS configuration: federation discovery skips SRV records");
                None
            }
        };
        Self { resolver }
    }
}

#[async_trait::async_trait]
impl SrvLookup for HickorySrv {
    async fn lookup_srv(&self, service_name: &str) -> SrvAnswer {
        let Some(resolver) = &self.resolver else { return SrvAnswer::Failed };
        match resolver.srv_lookup(service_name).await {
            Ok(lookup) => {
                let mut ttl_s = u32::MAX;
                let mut records = Vec::new();
                for record in lookup.answers().iter().take(MAX_SRV_RECORDS) {
                    if let RData::SRV(srv) = &record.data {
                        ttl_s = ttl_s.min(record.ttl);
                        let target = if srv.target.is_root() {
                            ".".to_owned()
                        } else {
                            srv.target.to_ascii().trim_end_matches('.').to_ascii_lowercase()
                        };
                        records.push(SrvRecord { priority: srv.priority, weight: srv.weight, port: srv.port, target });
                    }
                }
                if records.is_empty() { SrvAnswer::NoRecords } else { SrvAnswer::Records { records, ttl_s } }
            }
            Err(e) if e.is_no_records_found() => SrvAnswer::NoRecords,
            Err(e) => {
                tracing::debug!(service_name, error = %e, "SRV lookup failed; taking the next discovery step");
                SrvAnswer::Failed
            }
        }
    }
}

/// The resolver to build the outbound federation client with
/// (`reqwest::ClientBuilder::dns_resolver`). For a hostname that discovery
/// resolved through SRV records it answers with the addresses of the SRV
/// targets (looked up now, A/AAAA, in the SRV order); for any other name it
/// does the system's lookup.
///
/// The map is keyed by hostname alone (reqwest gives the resolver no
/// port), so a server name `host:port` with an explicit port whose host
/// also has `_matrix-fed._tcp` records discovery used would connect to the
/// SRV targets too. Do not give this resolver to the client that fetches
/// well-knowns: those go to the hostname's own addresses.
pub struct DiscoveryResolver {
    srv_hosts: Mutex<hashlink::LruCache<String, Arc<[SrvTarget]>>>,
}

impl Default for DiscoveryResolver {
    fn default() -> Self {
        Self { srv_hosts: Mutex::new(hashlink::LruCache::new(MAX_SERVER_DISCOVERY_CACHE_ENTRIES)) }
    }
}

impl DiscoveryResolver {
    /// From now on, connections to `hostname` go to `targets` (non-empty);
    /// an empty list forgets the hostname's targets.
    pub(crate) fn set_targets(&self, hostname: &str, targets: &[SrvTarget]) {
        let mut map = self.srv_hosts.lock().unwrap_or_else(PoisonError::into_inner);
        if targets.is_empty() {
            map.remove(hostname);
        } else if map.get(hostname).is_none_or(|known| **known != *targets) {
            map.insert(hostname.to_owned(), targets.into());
        }
    }

    /// The SRV targets connections to `hostname` go to, if any.
    pub fn targets(&self, hostname: &str) -> Option<Arc<[SrvTarget]>> {
        self.srv_hosts.lock().unwrap_or_else(PoisonError::into_inner).get(hostname).cloned()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("no address for the SRV targets of {0}")]
struct NoTargetAddress(String);

impl reqwest::dns::Resolve for DiscoveryResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let targets = self.targets(&host);
        Box::pin(async move {
            let Some(targets) = targets else {
                let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
                return Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs);
            };
            let mut addrs: Vec<SocketAddr> = Vec::new();
            for target in targets.iter() {
                match tokio::net::lookup_host((target.host.as_str(), target.port)).await {
                    Ok(found) => addrs.extend(found),
                    Err(e) => tracing::debug!(host, target = target.host, error = %e, "SRV target does not resolve"),
                }
            }
            if addrs.is_empty() {
                return Err(Box::new(NoTargetAddress(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}
