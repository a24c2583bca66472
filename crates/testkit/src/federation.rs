//! Federating test servers: a certificate authority of the test process,
//! and servers named `127.0.0.1:<port>` serving the server-server API over
//! TLS with a certificate from it, trusting it for their outbound requests
//! (as Synapse would be told with `federation_custom_ca_list`).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};

use crate::{Backend, TestServer, test_config};

/// The test process's CA: its certificate (PEM, in a file servers are
/// pointed at) and the issuer of every server certificate.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub cert_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestCa {
    /// The one CA of this test process.
    pub fn shared() -> &'static TestCa {
        static CA: OnceLock<TestCa> = OnceLock::new();
        CA.get_or_init(|| TestCa::new().expect("creating the test CA"))
    }

    fn new() -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "Chancery test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let dir = tempfile::tempdir()?;
        let cert_path = dir.path().join("ca.pem");
        std::fs::write(&cert_path, issuer.pem())?;
        Ok(Self { issuer, cert_path, _dir: dir })
    }

    /// Writes a certificate for 127.0.0.1 and localhost, and its key, into
    /// `dir`; returns their paths.
    pub fn issue(&self, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
        params.subject_alt_names.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params.distinguished_name.push(DnType::CommonName, "127.0.0.1");
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let (cert_path, key_path) = (dir.join("federation.crt"), dir.join("federation.key"));
        std::fs::write(&cert_path, cert.pem())?;
        std::fs::write(&key_path, key.serialize_pem())?;
        Ok((cert_path, key_path))
    }
}

impl TestServer {
    /// A server named `127.0.0.1:<its federation port>`, federating over
    /// TLS with a certificate of the test CA, which it also trusts.
    pub async fn start_federating(backend: Backend, adjust: impl FnOnce(&mut chancery_server::Config)) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut config = test_config(backend, dir.path()).await?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding a federation port")?;
        let address = listener.local_addr()?;
        let ca = TestCa::shared();
        let (cert, key) = ca.issue(dir.path())?;
        config.server_name = address.to_string();
        config.federation.enabled = true;
        config.federation.listen = address;
        config.federation.tls_certificate = Some(cert);
        config.federation.tls_private_key = Some(key);
        config.federation.ca_file = Some(ca.cert_path.clone());
        adjust(&mut config);
        let running = chancery_server::start_with_federation_listener(config.clone(), Some(listener)).await?;
        Ok(Self { base_url: running.base_url(), running: Some(running), config, dir })
    }

    /// Another node of this federating server (same database, PostgreSQL,
    /// and signing key), with a federation listener of its own: other
    /// servers reach the first node's, as the server name says.
    pub async fn another_federating_node(&self) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut config = self.config.clone();
        config.listen = "127.0.0.1:0".parse()?;
        config.signing_key_path = Some(self.config.signing_key_path());
        config.data_dir = dir.path().to_owned();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding a federation port")?;
        config.federation.listen = listener.local_addr()?;
        let running = chancery_server::start_with_federation_listener(config.clone(), Some(listener)).await?;
        Ok(Self { base_url: running.base_url(), running: Some(running), config, dir })
    }

    /// The server's name (`127.0.0.1:<port>` for federating test servers).
    pub fn server_name(&self) -> &str {
        &self.config.server_name
    }

    /// `https://127.0.0.1:<port>`: the server-server API.
    pub fn federation_url(&self) -> Option<String> {
        self.running.as_ref()?.federation_addr.map(|a| format!("https://{a}"))
    }
}
