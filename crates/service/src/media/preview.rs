//! URL previews (`GET /_matrix/client/v1/media/preview_url`), off unless
//! the operator turns them on, because they make the server fetch what a
//! client names. Guarded against requests to internal addresses
//! (server-side request forgery):
//!
//! - the server resolves each name itself and refuses the whole fetch if
//!   any address it resolves to is internal ([`is_internal`]: loopback,
//!   private, link-local (so the cloud metadata address), multicast,
//!   unique-local, reserved, documentation, and IPv6 forms that embed an
//!   IPv4 address (IPv4-mapped among them), unless an operator's
//!   `allow_ranges` names them);
//! - it connects only to the addresses it checked (reqwest is handed this
//!   resolver and no proxy), so a name cannot resolve to something else
//!   between check and connect (DNS rebinding); an address in the URL
//!   itself is checked the same way;
//! - redirects are followed by hand, each hop checked again, at most
//!   `MAX_URL_PREVIEW_REDIRECTS`;
//! - a fetch takes at most `URL_PREVIEW_TIMEOUT_MS`, reads at most
//!   `MAX_URL_PREVIEW_PAGE_BYTES` of a page (and `MAX_URL_PREVIEW_IMAGE_BYTES`
//!   of its image), and at most `MAX_CONCURRENT_URL_PREVIEWS` run at once.
//!
//! Answers are cached per node (`URL_PREVIEW_CACHE_ENTRIES`, for
//! `URL_PREVIEW_CACHE_TTL_MS`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chancery_proto::limits::{
    MAX_CONCURRENT_URL_PREVIEWS, MAX_URL_PREVIEW_IMAGE_BYTES, MAX_URL_PREVIEW_PAGE_BYTES, MAX_URL_PREVIEW_REDIRECTS,
    MAX_URL_PREVIEW_URL_BYTES, URL_PREVIEW_CACHE_ENTRIES, URL_PREVIEW_CACHE_TTL_MS, URL_PREVIEW_TIMEOUT_MS,
};
use reqwest::Url;
use serde_json::{Map, Value as JsonValue};
use tokio::sync::Semaphore;

use super::opengraph;
use crate::Error;

/// An address range, `address/prefix` (CIDR).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for IpRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (address, prefix) = s.split_once('/').unwrap_or((s, ""));
        let network: IpAddr = address.parse().map_err(|_| format!("`{s}` is not an address range like 10.1.0.0/16"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() { max } else { prefix.parse().map_err(|_| format!("`{s}`: bad prefix length"))? };
        if prefix > max {
            return Err(format!("`{s}`: the prefix length is at most {max}"));
        }
        Ok(Self { network, prefix })
    }
}

impl std::fmt::Display for IpRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl IpRange {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// What the operator set for previews.
#[derive(Debug, Clone, Default)]
pub struct UrlPreviewConfig {
    /// Ranges fetched although [`is_internal`] says they are internal (an
    /// intranet the operator wants previewed).
    pub allow_ranges: Vec<IpRange>,
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u8) -> bool {
    IpRange { network: IpAddr::V4(Ipv4Addr::from(net)), prefix }.contains(IpAddr::V4(ip))
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, prefix: u8) -> bool {
    IpRange { network: IpAddr::V6(net), prefix }.contains(IpAddr::V6(ip))
}

fn v4_is_internal(ip: Ipv4Addr) -> bool {
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254/16, the cloud metadata address 169.254.169.254 with it
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || in_v4(ip, [0, 0, 0, 0], 8) // "this network"
        || in_v4(ip, [100, 64, 0, 0], 10) // carrier-grade NAT
        || in_v4(ip, [192, 0, 0, 0], 24) // IETF protocol assignments
        || in_v4(ip, [192, 88, 99, 0], 24) // 6to4 relays
        || in_v4(ip, [198, 18, 0, 0], 15) // benchmarking
        || in_v4(ip, [240, 0, 0, 0], 4) // reserved
}

/// Whether an address is one a preview must never reach (unless allowed
/// by the operator): every address that is not plainly public. IPv6
/// addresses that carry an IPv4 address (mapped, compatible, NAT64, 6to4)
/// are refused outright, so no embedding reaches an internal IPv4 host.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_is_internal(v4),
        IpAddr::V6(v6) => {
            let unicast_internal = [
                ("::", 96),          // unspecified, loopback and IPv4-compatible
                ("::ffff:0:0", 96),  // IPv4-mapped
                ("64:ff9b::", 96),   // NAT64
                ("64:ff9b:1::", 48), // local-use NAT64
                ("100::", 64),       // discard
                ("2001::", 23),      // IETF protocol assignments (Teredo, ORCHID, ...)
                ("2001:db8::", 32),  // documentation
                ("2002::", 16),      // 6to4
                ("fc00::", 7),       // unique-local (fd00:ec2::254, a metadata address, too)
                ("fe80::", 10),      // link-local
                ("fec0::", 10),      // site-local
                ("ff00::", 8),       // multicast
            ];
            unicast_internal.iter().any(|(net, prefix)| in_v6(v6, net.parse().unwrap_or(Ipv6Addr::UNSPECIFIED), *prefix))
        }
    }
}

/// Whether a preview may connect to `ip`.
pub(crate) fn may_fetch(ip: IpAddr, allow: &[IpRange]) -> bool {
    !is_internal(ip) || allow.iter().any(|r| r.contains(ip))
}

/// Resolves names for reqwest, refusing a name with any address a
/// preview may not reach: reqwest then connects to the addresses
/// returned here and no others.
struct CheckingResolver {
    allow: Vec<IpRange>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0} resolves to an address previews may not reach")]
struct Refused(String);

impl reqwest::dns::Resolve for CheckingResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if addrs.is_empty() || addrs.iter().any(|a| !may_fetch(a.ip(), &allow)) {
                return Err(Box::new(Refused(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A preview's image, fetched whole within its bound.
pub(crate) struct FetchedImage {
    pub bytes: Vec<u8>,
    pub content_type: String,
}

/// What a page gave.
pub(crate) struct Page {
    pub properties: Map<String, JsonValue>,
    pub image: Option<FetchedImage>,
}

/// An answer and when it expires.
type CachedPreview = (u64, Arc<Map<String, JsonValue>>);

/// Fetches and reads pages for previews.
pub(crate) struct Previewer {
    config: UrlPreviewConfig,
    client: reqwest::Client,
    permits: Semaphore,
    cache: Mutex<hashlink::LruCache<String, CachedPreview>>,
}

/// A fetch that failed; what the client is told.
fn upstream(what: impl std::fmt::Display) -> Error {
    Error::UpstreamFailed(format!("could not preview the URL: {what}"))
}

fn refused() -> Error {
    Error::Forbidden("this URL points to an address the server does not fetch".into())
}

/// Whether an error of reqwest came from the resolver's refusal.
fn is_refusal(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<Refused>() {
            return true;
        }
        source = err.source();
    }
    false
}

impl Previewer {
    pub(crate) fn new(config: UrlPreviewConfig) -> std::io::Result<Self> {
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(CheckingResolver { allow: config.allow_ranges.clone() }))
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_millis(URL_PREVIEW_TIMEOUT_MS))
            .connect_timeout(Duration::from_millis(URL_PREVIEW_TIMEOUT_MS / 2))
            .user_agent(concat!("Chancery/", env!("CARGO_PKG_VERSION"), " (URL preview)"))
            .build()
            .map_err(std::io::Error::other)?;
        let cache = hashlink::LruCache::new(URL_PREVIEW_CACHE_ENTRIES);
        Ok(Self { config, client, permits: Semaphore::new(MAX_CONCURRENT_URL_PREVIEWS), cache: Mutex::new(cache) })
    }

    fn check_url(&self, url: &str) -> Result<Url, Error> {
        if url.len() > MAX_URL_PREVIEW_URL_BYTES {
            return Err(Error::InvalidParam(format!("URLs are at most {MAX_URL_PREVIEW_URL_BYTES} bytes")));
        }
        let url = Url::parse(url).map_err(|_| Error::InvalidParam("not a URL".into()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::InvalidParam("only http and https URLs are previewed".into()));
        }
        // An address in the URL is never resolved: checked here instead.
        match url.host() {
            Some(url::Host::Ipv4(ip)) if !may_fetch(IpAddr::V4(ip), &self.config.allow_ranges) => Err(refused()),
            Some(url::Host::Ipv6(ip)) if !may_fetch(IpAddr::V6(ip), &self.config.allow_ranges) => Err(refused()),
            None => Err(Error::InvalidParam("the URL has no host".into())),
            _ => Ok(url),
        }
    }

    /// GETs `url`, following redirects (each checked), and reads at most
    /// `max_bytes` of the body. Returns the final URL, content type and
    /// the bytes read.
    async fn fetch(&self, url: Url, max_bytes: usize) -> Result<(Url, String, Vec<u8>), Error> {
        let mut url = url;
        for _ in 0..=MAX_URL_PREVIEW_REDIRECTS {
            let response = self
                .client
                .get(url.clone())
                .send()
                .await
                .map_err(|e| if is_refusal(&e) { refused() } else { upstream("the site could not be reached") })?;
            if response.status().is_redirection() {
                let location = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| upstream("a redirect without a location"))?;
                let next = url.join(location).map_err(|_| upstream("a redirect to no URL"))?;
                url = self.check_url(next.as_str())?;
                continue;
            }
            if !response.status().is_success() {
                return Err(upstream(format!("the site answered {}", response.status().as_u16())));
            }
            let content_type = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_ascii_lowercase();
            let mut response = response;
            let mut body = Vec::new();
            while body.len() < max_bytes {
                match response.chunk().await {
                    Ok(Some(chunk)) => body.extend_from_slice(&chunk[..chunk.len().min(max_bytes - body.len())]),
                    Ok(None) => break,
                    Err(_) => return Err(upstream("the page did not arrive")),
                }
            }
            return Ok((url, content_type, body));
        }
        Err(upstream("too many redirects"))
    }

    /// A page's image, if it is one of the image formats served inline
    /// and within its bound.
    async fn fetch_image(&self, url: Url) -> Option<FetchedImage> {
        let max = usize::try_from(MAX_URL_PREVIEW_IMAGE_BYTES).unwrap_or(usize::MAX);
        // One byte more than allowed tells a cut image from a whole one.
        let (_, _, bytes) = self.fetch(url, max.saturating_add(1)).await.ok()?;
        if bytes.len() > max {
            return None;
        }
        let content_type = match image::guess_format(&bytes).ok()? {
            image::ImageFormat::Jpeg => "image/jpeg",
            image::ImageFormat::Png => "image/png",
            image::ImageFormat::Gif => "image/gif",
            image::ImageFormat::WebP => "image/webp",
            _ => return None,
        };
        Some(FetchedImage { bytes, content_type: content_type.into() })
    }

    /// A cached answer for `url`, if one is fresh at `now_ms`.
    pub(crate) fn cached(&self, url: &str, now_ms: u64) -> Option<Arc<Map<String, JsonValue>>> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        match cache.get(url) {
            Some((expires, answer)) if *expires > now_ms => Some(Arc::clone(answer)),
            Some(_) => {
                cache.remove(url);
                None
            }
            None => None,
        }
    }

    pub(crate) fn remember(&self, url: &str, answer: Map<String, JsonValue>, now_ms: u64) {
        let expires = now_ms.saturating_add(URL_PREVIEW_CACHE_TTL_MS);
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(url.to_owned(), (expires, Arc::new(answer)));
    }

    /// Fetches `url` and reads its OpenGraph properties, and fetches the
    /// image they name (or the URL itself, if it is an image).
    pub(crate) async fn preview(&self, url: &str) -> Result<Page, Error> {
        let url = self.check_url(url)?;
        let _permit = self.permits.try_acquire().map_err(|_| Error::LimitExceeded { retry_after_ms: 1_000 })?;
        let (final_url, content_type, body) = self.fetch(url, MAX_URL_PREVIEW_PAGE_BYTES).await?;
        if content_type.starts_with("image/") {
            let image = self.fetch_image(final_url).await;
            return Ok(Page { properties: Map::new(), image });
        }
        if !(content_type.starts_with("text/html") || content_type.starts_with("application/xhtml")) {
            return Ok(Page { properties: Map::new(), image: None });
        }
        let mut properties = opengraph::parse(&String::from_utf8_lossy(&body));
        let image_url = properties.remove("og:image").and_then(|v| v.as_str().and_then(|s| final_url.join(s).ok()));
        let image = match image_url {
            Some(image_url) if self.check_url(image_url.as_str()).is_ok() => self.fetch_image(image_url).await,
            _ => None,
        };
        Ok(Page { properties, image })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_addresses_are_refused() {
        for internal in [
            "127.0.0.1",
            "127.8.9.10",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.0.1",
            "100.64.0.1",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:8.8.8.8",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "2001:db8::1",
            "2001::1",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "fec0::1",
            "ff02::1",
        ] {
            assert!(is_internal(ip(internal)), "{internal}");
        }
        for public in ["8.8.8.8", "1.1.1.1", "172.32.0.1", "192.169.0.1", "100.128.0.1", "2a00:1450:4001::1", "2606:4700::1111"] {
            assert!(!is_internal(ip(public)), "{public}");
        }
    }

    #[test]
    fn the_operator_may_allow_ranges() {
        let allow: Vec<IpRange> = ["10.20.0.0/16", "fd12::/16", "127.0.0.1"].iter().map(|r| r.parse().unwrap()).collect();
        assert!(may_fetch(ip("10.20.3.4"), &allow));
        assert!(!may_fetch(ip("10.21.3.4"), &allow));
        assert!(may_fetch(ip("fd12:1::5"), &allow));
        assert!(may_fetch(ip("127.0.0.1"), &allow));
        assert!(!may_fetch(ip("127.0.0.2"), &allow));
        assert!(may_fetch(ip("8.8.8.8"), &[]));
        for bad in ["10.0.0.0/33", "nonsense", "::/129", "10.0.0.0/x"] {
            assert!(bad.parse::<IpRange>().is_err(), "{bad}");
        }
        assert_eq!("0.0.0.0/0".parse::<IpRange>().unwrap().to_string(), "0.0.0.0/0");
        assert!("0.0.0.0/0".parse::<IpRange>().unwrap().contains(ip("1.2.3.4")));
    }

    #[tokio::test]
    async fn urls_naming_internal_addresses_are_refused_before_any_fetch() {
        let previewer = Previewer::new(UrlPreviewConfig::default()).unwrap();
        for url in
            ["http://127.0.0.1/", "http://[::1]:8080/", "https://169.254.169.254/latest/meta-data", "http://[::ffff:7f00:1]/"]
        {
            assert!(matches!(previewer.check_url(url), Err(Error::Forbidden(_))), "{url}");
        }
        for url in ["ftp://example.org/", "file:///etc/passwd", "not a url", "mailto:someone@example.org"] {
            assert!(matches!(previewer.check_url(url), Err(Error::InvalidParam(_))), "{url}");
        }
        assert!(previewer.check_url("https://example.org/page").is_ok());
        // A name that resolves to loopback is refused by the resolver.
        assert!(matches!(previewer.preview("http://localhost:1/").await, Err(Error::Forbidden(_))));
    }
}
