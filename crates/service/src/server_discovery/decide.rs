//! The decisions of server discovery, without I/O: what a server name
//! means, what to ask next, how long an answer holds. The shell
//! ([`super::ServerDiscovery`]) does the fetching and lookups around them.
//!
//! Spec: server-server API, "Resolving server names" (steps 1 to 6, and
//! 3.1 to 3.5 for a delegated name).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use chancery_proto::limits::MAX_SERVER_NAME_BYTES;
use chancery_proto::ruma::{OwnedServerName, ServerName};

use super::DiscoveryError;

/// The port federation listens on when nothing names another (spec, and
/// IANA's registration of `matrix-fed`).
pub const DEFAULT_FEDERATION_PORT: u16 = 8448;

/// How long a well-known answer holds when its response says nothing
/// (spec: "The recommended sensible default is 24 hours"; Synapse's).
pub const WELL_KNOWN_DEFAULT_CACHE_MS: u64 = 24 * 3600 * 1000;
/// The most a well-known answer is trusted for, whatever its
/// `Cache-Control` says (spec: "48 hours is recommended").
pub const WELL_KNOWN_MAX_CACHE_MS: u64 = 48 * 3600 * 1000;
/// The least: `no-store`, `no-cache` and `max-age=0` are read as this, or
/// every federation request would wait for a well-known fetch first
/// (Synapse's floor is the same five minutes).
pub const WELL_KNOWN_MIN_CACHE_MS: u64 = 5 * 60 * 1000;
/// How long a missing or invalid well-known is remembered (spec: "Errors
/// are recommended to be cached for up to an hour").
pub const WELL_KNOWN_FAILURE_CACHE_MS: u64 = 3600 * 1000;
/// While the host that served a delegation is unreachable or answers 5xx,
/// the delegation it served last is used for this long before asking
/// again (Synapse keeps its previous answer through such failures too).
pub const WELL_KNOWN_DOWN_CACHE_MS: u64 = 2 * 60 * 1000;

/// Bounds on how long an SRV answer is used, whatever its DNS TTL says.
pub const SRV_MIN_CACHE_MS: u64 = 60 * 1000;
pub const SRV_MAX_CACHE_MS: u64 = 24 * 3600 * 1000;
/// How long "no SRV record" is remembered before looking again.
pub const SRV_ABSENT_CACHE_MS: u64 = 3600 * 1000;
/// How long the fallback (`hostname:8448`) chosen after a failed DNS query
/// (timeout, SERVFAIL) holds before the SRV lookups are tried again.
pub const SRV_FAILURE_CACHE_MS: u64 = 5 * 60 * 1000;
/// SRV records of one answer that are considered; the rest are ignored
/// (a DNS answer is at most 64 KiB, but nobody needs hundreds of targets).
pub const MAX_SRV_RECORDS: usize = 32;

/// The host part of a server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// An IPv4 literal, or an IPv6 literal written in brackets.
    Ip(IpAddr),
    /// A DNS name, lowercased (DNS names are case-insensitive, and URLs
    /// carry them lowercased, which is how reqwest asks the resolver).
    Name(String),
}

/// A server name taken apart (appendices, "Server name").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedServerName {
    pub host: Host,
    pub port: Option<u16>,
}

/// Takes `name` apart with ruma's `host()` and `port()`; refuses names
/// too long to be a DNS name.
pub fn parse_server_name(name: &ServerName) -> Result<ParsedServerName, DiscoveryError> {
    if name.as_str().len() > MAX_SERVER_NAME_BYTES {
        return Err(DiscoveryError::InvalidServerName);
    }
    let host = name.host();
    let host = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Host::Ip(IpAddr::V6(inner.parse::<Ipv6Addr>().map_err(|_| DiscoveryError::InvalidServerName)?))
    } else if let Ok(v4) = host.parse::<Ipv4Addr>() {
        Host::Ip(IpAddr::V4(v4))
    } else {
        Host::Name(host.to_ascii_lowercase())
    };
    Ok(ParsedServerName { host, port: name.port() })
}

/// Where to connect and how to present the request.
///
/// The request URL starts with `url_base`; the request carries
/// `Host: host_header` (set it explicitly: reqwest would otherwise send the
/// URL's `host:port`, and the spec wants the port left out after an SRV
/// lookup or the 8448 fallback); the peer's certificate must be valid for
/// `tls_name`, which is always the host of `url_base`, so the TLS checks
/// reqwest makes of the URL are the spec's.
///
/// When an SRV record named the servers, `url_base` carries the delegated
/// (or original) hostname with the SRV port, and `srv_targets` the hosts
/// the connection really goes to: [`super::DiscoveryResolver`] answers
/// for that hostname with their addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// `https://<host>:<port>`, no trailing slash, IPv6 in brackets.
    pub url_base: String,
    pub host_header: String,
    /// A hostname, or an IP address (without brackets).
    pub tls_name: String,
    /// The SRV targets to connect to, in the order to try them, all on the
    /// port of `url_base`; empty when no SRV record was used.
    pub srv_targets: Vec<SrvTarget>,
}

/// One server an SRV record named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvTarget {
    /// The target hostname, lowercased, without the trailing dot.
    pub host: String,
    pub port: u16,
}

fn url_base(host: &Host, port: u16) -> String {
    match host {
        Host::Ip(IpAddr::V6(ip)) => format!("https://[{ip}]:{port}"),
        Host::Ip(IpAddr::V4(ip)) => format!("https://{ip}:{port}"),
        Host::Name(name) => format!("https://{name}:{port}"),
    }
}

/// A destination that needs no lookup beyond A/AAAA: an IP literal, or a
/// hostname with an explicit port (steps 1, 2, 3.1 and 3.2).
/// `host_header` is the name as written, with its port if it has one.
fn direct(parsed: &ParsedServerName, name: &ServerName) -> Option<Destination> {
    let port = match (&parsed.host, parsed.port) {
        (Host::Ip(_), port) => port.unwrap_or(DEFAULT_FEDERATION_PORT),
        (Host::Name(_), Some(port)) => port,
        (Host::Name(_), None) => return None,
    };
    let tls_name = match &parsed.host {
        Host::Ip(ip) => ip.to_string(),
        Host::Name(name) => name.clone(),
    };
    Some(Destination {
        url_base: url_base(&parsed.host, port),
        host_header: name.as_str().to_owned(),
        tls_name,
        srv_targets: Vec::new(),
    })
}

/// What resolving a server name starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstStep {
    /// Steps 1 and 2: an IP literal or an explicit port, nothing to fetch.
    Ready(Destination),
    /// Step 3: `https://<hostname>/.well-known/matrix/server` decides.
    FetchWellKnown { hostname: String },
}

pub fn first_step(name: &ServerName) -> Result<FirstStep, DiscoveryError> {
    let parsed = parse_server_name(name)?;
    if let Some(destination) = direct(&parsed, name) {
        return Ok(FirstStep::Ready(destination));
    }
    match parsed.host {
        Host::Name(hostname) => Ok(FirstStep::FetchWellKnown { hostname }),
        Host::Ip(_) => Err(DiscoveryError::InvalidServerName),
    }
}

/// The URL the delegation of `hostname` is fetched from.
pub fn well_known_url(hostname: &str) -> String {
    format!("https://{hostname}/.well-known/matrix/server")
}

/// What fetching the well-known gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WellKnownFetch {
    /// A response came, its body read whole (within
    /// `MAX_WELL_KNOWN_BODY_BYTES`).
    Answered { status: u16, body: Vec<u8>, cache_control: Option<String> },
    /// No usable response: no connection, TLS failure, timeout, too many
    /// redirects, a body over the limit. Maybe temporary.
    Failed,
}

/// A well-known answer as remembered: the delegated name if the answer
/// was valid, and until when it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WellKnownEntry {
    pub delegated: Option<OwnedServerName>,
    pub expires_at_ms: u64,
}

/// The delegated server name in a well-known body, if the body is a JSON
/// object whose `m.server` is a valid server name (spec: "bad JSON, missing
/// properties" make the response invalid).
pub fn parse_well_known(body: &[u8]) -> Option<OwnedServerName> {
    // A map, not a struct: serde would take `["name"]` for a struct too.
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    let server = object.get("m.server")?.as_str()?;
    if server.len() > MAX_SERVER_NAME_BYTES {
        return None;
    }
    ServerName::parse(server).ok()
}

/// How long a valid well-known holds, from its `Cache-Control` header:
/// `max-age` within [`WELL_KNOWN_MIN_CACHE_MS`, `WELL_KNOWN_MAX_CACHE_MS`],
/// `no-store`/`no-cache` as the minimum, otherwise 24 hours. `Expires` is
/// not read (Synapse reads it; servers that delegate send `max-age` if
/// anything).
pub fn well_known_cache_ms(cache_control: Option<&str>) -> u64 {
    let Some(value) = cache_control else { return WELL_KNOWN_DEFAULT_CACHE_MS };
    let mut max_age_ms = None;
    for directive in value.split(',') {
        let (key, arg) = match directive.split_once('=') {
            Some((key, arg)) => (key.trim(), Some(arg.trim().trim_matches('"'))),
            None => (directive.trim(), None),
        };
        if key.eq_ignore_ascii_case("no-store") || key.eq_ignore_ascii_case("no-cache") {
            return WELL_KNOWN_MIN_CACHE_MS;
        }
        if key.eq_ignore_ascii_case("max-age")
            && let Some(seconds) = arg.and_then(|a| a.parse::<u64>().ok())
        {
            max_age_ms = Some(seconds.saturating_mul(1000));
        }
    }
    max_age_ms.map_or(WELL_KNOWN_DEFAULT_CACHE_MS, |ms| ms.clamp(WELL_KNOWN_MIN_CACHE_MS, WELL_KNOWN_MAX_CACHE_MS))
}

/// What to remember of a well-known fetch. A 200 with a valid body is a
/// delegation for its cache time; a 4xx or invalid body is "no
/// delegation" for an hour; a failure that may be temporary (no answer,
/// 5xx) keeps the previous delegation, if any, for a short while, else is
/// "no delegation" for an hour.
pub fn well_known_entry(fetch: &WellKnownFetch, previous: Option<&WellKnownEntry>, now_ms: u64) -> WellKnownEntry {
    let none = WellKnownEntry { delegated: None, expires_at_ms: now_ms.saturating_add(WELL_KNOWN_FAILURE_CACHE_MS) };
    let temporary = match fetch {
        WellKnownFetch::Answered { status: 200, body, cache_control } => {
            return match parse_well_known(body) {
                Some(delegated) => WellKnownEntry {
                    delegated: Some(delegated),
                    expires_at_ms: now_ms.saturating_add(well_known_cache_ms(cache_control.as_deref())),
                },
                None => none,
            };
        }
        WellKnownFetch::Answered { status, .. } => (500..600).contains(status),
        WellKnownFetch::Failed => true,
    };
    match previous.and_then(|p| p.delegated.clone()) {
        Some(delegated) if temporary => {
            WellKnownEntry { delegated: Some(delegated), expires_at_ms: now_ms.saturating_add(WELL_KNOWN_DOWN_CACHE_MS) }
        }
        _ => none,
    }
}

/// What follows the well-known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterWellKnown {
    /// Steps 3.1 and 3.2: the delegation is an IP literal or has a port.
    Ready(Destination),
    /// Steps 3.3 to 3.5 (for the delegated hostname) or 4 to 6 (for the
    /// original one, without a valid delegation): SRV records of
    /// `hostname`, then `hostname:8448`.
    LookupSrv { hostname: String },
}

/// The step after the well-known of `hostname` said `delegated` (`None`:
/// missing or invalid).
pub fn after_well_known(hostname: &str, delegated: Option<&ServerName>) -> Result<AfterWellKnown, DiscoveryError> {
    let Some(delegated) = delegated else {
        return Ok(AfterWellKnown::LookupSrv { hostname: hostname.to_owned() });
    };
    let parsed = parse_server_name(delegated)?;
    if let Some(destination) = direct(&parsed, delegated) {
        return Ok(AfterWellKnown::Ready(destination));
    }
    match parsed.host {
        Host::Name(hostname) => Ok(AfterWellKnown::LookupSrv { hostname }),
        Host::Ip(_) => Err(DiscoveryError::InvalidServerName),
    }
}

/// The SRV names looked up for `hostname`, in order: `_matrix-fed._tcp`
/// (spec v1.8), then the deprecated `_matrix._tcp`. Fully qualified (a
/// trailing dot), so no search domain of the system is tried.
pub fn srv_service_names(hostname: &str) -> [String; 2] {
    [format!("_matrix-fed._tcp.{hostname}."), format!("_matrix._tcp.{hostname}.")]
}

/// One SRV record as DNS gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// Lowercased, without the trailing dot; `"."` for the root.
    pub target: String,
}

/// What one SRV lookup gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SrvAnswer {
    /// Records, with the smallest TTL among them.
    Records { records: Vec<SrvRecord>, ttl_s: u32 },
    /// The name exists with no SRV record, or does not exist.
    NoRecords,
    /// The query failed (timeout, SERVFAIL, no resolver): the next step is
    /// taken, as if there were no record, but remembered for less time.
    Failed,
}

/// What an SRV answer means for the resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SrvDecision {
    /// Connect through these targets; the destination holds until then.
    Use { destination: Destination, expires_at_ms: u64 },
    /// Nothing usable here: look up the next service name, or fall back.
    Next,
}

/// RFC 2782's order of `records`: by priority, and within one priority a
/// weighted random draw, one after another. `draw(total)` returns a number
/// in `1..=total` (`total` ≥ 1) uniformly at random; zero-weight records
/// come after the weighted ones of their priority (Synapse's reading of the
/// RFC's "very small chance").
pub fn order_srv(records: &[SrvRecord], draw: &mut dyn FnMut(u32) -> u32) -> Vec<SrvTarget> {
    let mut by_priority: Vec<&SrvRecord> = records.iter().take(MAX_SRV_RECORDS).collect();
    by_priority.sort_by_key(|r| r.priority);
    let mut ordered = Vec::with_capacity(by_priority.len());
    for group in by_priority.chunk_by(|a, b| a.priority == b.priority) {
        let mut left: Vec<&SrvRecord> = group.to_vec();
        let mut total: u32 = left.iter().map(|r| u32::from(r.weight)).sum();
        while total > 0 {
            let mut target = draw(total).clamp(1, total);
            let mut chosen = left.len() - 1;
            for (i, record) in left.iter().enumerate() {
                let weight = u32::from(record.weight);
                if target <= weight {
                    chosen = i;
                    break;
                }
                target -= weight;
            }
            let record = left.remove(chosen);
            total -= u32::from(record.weight);
            ordered.push(SrvTarget { host: record.target.clone(), port: record.port });
        }
        ordered.extend(left.into_iter().map(|r| SrvTarget { host: r.target.clone(), port: r.port }));
    }
    ordered
}

/// What the SRV answer for `hostname` decides. A single record whose target
/// is `"."` says the service is decidedly not offered (RFC 2782), which
/// ends the resolution with [`DiscoveryError::FederationUnavailable`] as in
/// Synapse; `"."` records beside real ones are ignored.
pub fn decide_srv(
    hostname: &str,
    answer: &SrvAnswer,
    draw: &mut dyn FnMut(u32) -> u32,
    now_ms: u64,
) -> Result<SrvDecision, DiscoveryError> {
    let SrvAnswer::Records { records, ttl_s } = answer else { return Ok(SrvDecision::Next) };
    if let [only] = records.as_slice()
        && only.target == "."
    {
        return Err(DiscoveryError::FederationUnavailable);
    }
    let usable: Vec<SrvRecord> = records.iter().filter(|r| r.target != "." && !r.target.is_empty()).cloned().collect();
    let ordered = order_srv(&usable, draw);
    let Some(first) = ordered.first() else { return Ok(SrvDecision::Next) };
    // reqwest takes the port from the URL, so every target tried on one
    // connection shares the first one's port.
    let port = first.port;
    let srv_targets: Vec<SrvTarget> = ordered.iter().filter(|t| t.port == port).cloned().collect();
    let ttl_ms = u64::from(*ttl_s).saturating_mul(1000).clamp(SRV_MIN_CACHE_MS, SRV_MAX_CACHE_MS);
    Ok(SrvDecision::Use {
        destination: Destination {
            url_base: format!("https://{hostname}:{port}"),
            host_header: hostname.to_owned(),
            tls_name: hostname.to_owned(),
            srv_targets,
        },
        expires_at_ms: now_ms.saturating_add(ttl_ms),
    })
}

/// Steps 3.5 and 6: no SRV record, so `hostname:8448`, with `Host:
/// <hostname>`; held for an hour if DNS said there was no record, five
/// minutes if a query failed.
pub fn fallback(hostname: &str, answers: &[SrvAnswer], now_ms: u64) -> (Destination, u64) {
    let hold_ms = if answers.iter().any(|a| matches!(a, SrvAnswer::Failed)) { SRV_FAILURE_CACHE_MS } else { SRV_ABSENT_CACHE_MS };
    let destination = Destination {
        url_base: format!("https://{hostname}:{DEFAULT_FEDERATION_PORT}"),
        host_header: hostname.to_owned(),
        tls_name: hostname.to_owned(),
        srv_targets: Vec::new(),
    };
    (destination, now_ms.saturating_add(hold_ms))
}

#[cfg(test)]
mod tests;
