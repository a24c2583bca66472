//! The HTTP client of push delivery (`service::pushers::PushGateway`):
//! reqwest, with the bounds a client-chosen URL needs. No redirects (a
//! gateway is one URL; following a redirect would let it point anywhere),
//! no proxy from the environment, https only unless the operator allows
//! http, a deadline on the whole exchange, a bounded read of the answer,
//! and, unless the operator allows them, no connection to loopback,
//! private or link-local addresses, whether the URL names one or a name
//! resolves to one (checked on the resolved addresses, so a name cannot
//! point inside the network after the pusher was set).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chancery_proto::limits::{MAX_PUSH_GATEWAY_ANSWER_BYTES, PUSH_GATEWAY_TIMEOUT_MS};
use chancery_service::PushGateway;
use chancery_service::pushers::{GatewayPolicy, Reply, is_public_address};

/// Connecting must succeed within this part of the deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct HttpGateway {
    client: reqwest::Client,
    policy: GatewayPolicy,
}

impl HttpGateway {
    pub(crate) fn new(policy: GatewayPolicy) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_millis(PUSH_GATEWAY_TIMEOUT_MS))
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("chancery/", env!("CARGO_PKG_VERSION")))
            .https_only(!policy.allow_http);
        if !policy.allow_private_addresses {
            builder = builder.dns_resolver(Arc::new(PublicAddressesOnly));
        }
        Ok(Self { client: builder.build()?, policy })
    }

    /// Whether the URL names an address (not a name) the policy refuses:
    /// such a URL is never resolved, so the resolver cannot refuse it.
    fn names_refused_address(&self, url: &reqwest::Url) -> bool {
        if self.policy.allow_private_addresses {
            return false;
        }
        match url.host() {
            Some(url::Host::Ipv4(ip)) => !is_public_address(ip.into()),
            Some(url::Host::Ipv6(ip)) => !is_public_address(ip.into()),
            // A name is checked once resolved (`PublicAddressesOnly`).
            Some(url::Host::Domain(_)) => false,
            None => true,
        }
    }
}

#[async_trait]
impl PushGateway for HttpGateway {
    async fn notify(&self, url: &str, body: Vec<u8>) -> Reply {
        let Ok(parsed) = reqwest::Url::parse(url) else {
            return Reply::Unreachable;
        };
        if self.names_refused_address(&parsed) {
            tracing::debug!("push gateway address refused by push.allow_private_gateway_addresses");
            return Reply::Unreachable;
        }
        let sent = self.client.post(parsed).header(reqwest::header::CONTENT_TYPE, "application/json").body(body).send().await;
        let mut response = match sent {
            Ok(response) => response,
            Err(e) => {
                // Without the URL: it is the user's, and may hold a token.
                tracing::debug!(error = %e.without_url(), "push gateway unreachable");
                return Reply::Unreachable;
            }
        };
        let code = response.status().as_u16();
        let mut body = Vec::new();
        // The answer is `{"rejected": [...]}`: what passes the bound is
        // not read (the verdict then sees a body it cannot parse).
        while let Ok(Some(chunk)) = response.chunk().await {
            if body.len() + chunk.len() > MAX_PUSH_GATEWAY_ANSWER_BYTES {
                break;
            }
            body.extend_from_slice(&chunk);
        }
        Reply::Status { code, body }
    }
}

/// Resolves names as the system does, keeping only public addresses.
struct PublicAddressesOnly;

impl reqwest::dns::Resolve for PublicAddressesOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let found = tokio::net::lookup_host((name.as_str(), 0)).await?;
            let public: Vec<SocketAddr> = found.filter(|a| is_public_address(a.ip())).collect();
            if public.is_empty() {
                return Err("the push gateway's name resolves to no public address \
                            (push.allow_private_gateway_addresses is off)"
                    .into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_literals_are_refused_unless_allowed() {
        let strict = HttpGateway::new(GatewayPolicy::default()).unwrap();
        let open = HttpGateway::new(GatewayPolicy { allow_http: true, allow_private_addresses: true }).unwrap();
        for (url, refused) in [
            ("https://127.0.0.1/_matrix/push/v1/notify", true),
            ("https://[::1]:8443/_matrix/push/v1/notify", true),
            ("https://10.0.0.2/_matrix/push/v1/notify", true),
            ("https://localhost/_matrix/push/v1/notify", false),
            ("https://8.8.8.8/_matrix/push/v1/notify", false),
            ("https://push.example.org/_matrix/push/v1/notify", false),
        ] {
            let url = reqwest::Url::parse(url).unwrap();
            assert_eq!(strict.names_refused_address(&url), refused, "{url}");
            assert!(!open.names_refused_address(&url), "{url}");
        }
    }

    /// A gateway on loopback that answers 200 to anything: refused
    /// unless allowed, whether the URL names the address or a name that
    /// resolves to it (`localhost`, refused by the resolver).
    #[tokio::test]
    async fn a_loopback_gateway_is_reached_only_when_allowed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 15\r\nconnection: close\r\n\r\n{\"rejected\":[]}")
                    .await;
            }
        });
        let strict = HttpGateway::new(GatewayPolicy { allow_http: true, allow_private_addresses: false }).unwrap();
        let open = HttpGateway::new(GatewayPolicy { allow_http: true, allow_private_addresses: true }).unwrap();
        for host in ["127.0.0.1", "localhost"] {
            let url = format!("http://{host}:{port}/_matrix/push/v1/notify");
            assert_eq!(strict.notify(&url, b"{}".to_vec()).await, Reply::Unreachable, "{url}");
            let reply = open.notify(&url, b"{}".to_vec()).await;
            assert_eq!(reply, Reply::Status { code: 200, body: br#"{"rejected":[]}"#.to_vec() }, "{url}");
        }
        let https_only = HttpGateway::new(GatewayPolicy { allow_http: false, allow_private_addresses: true }).unwrap();
        let url = format!("http://127.0.0.1:{port}/_matrix/push/v1/notify");
        assert_eq!(https_only.notify(&url, b"{}".to_vec()).await, Reply::Unreachable, "plain http refused");
        server.abort();
    }
}
