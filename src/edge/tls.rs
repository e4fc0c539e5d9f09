//! The TLS listener (`[tls]`): rustls through pingora, HTTP/2 or HTTP/1.1 by ALPN, and a
//! certificate that can be replaced without a restart (SIGHUP reads `cert_file` and `key_file`
//! again; new connections get the new certificate, and a pair that does not load leaves the
//! old one in place).

use std::fmt;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use pingora::listeners::tls::TlsSettings;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::TlsConfig;

/// The certificate every handshake gets, swapped whole on reload.
pub struct Certificate {
    current: ArcSwap<CertifiedKey>,
    cert_file: String,
    key_file: String,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("cert_file", &self.cert_file)
            .finish_non_exhaustive()
    }
}

impl Certificate {
    /// Loads `tls.cert_file` (a PEM chain, leaf first) and `tls.key_file` (a PEM private key).
    pub fn load(config: &TlsConfig) -> anyhow::Result<Arc<Certificate>> {
        let key = load(&config.cert_file, &config.key_file)?;
        Ok(Arc::new(Certificate {
            current: ArcSwap::from_pointee(key),
            cert_file: config.cert_file.clone(),
            key_file: config.key_file.clone(),
        }))
    }

    /// Reads the files again; on failure the current certificate stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let key = load(&self.cert_file, &self.key_file)?;
        self.current.store(Arc::new(key));
        Ok(())
    }
}

fn load(cert_file: &str, key_file: &str) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_file_iter(cert_file)
        .with_context(|| format!("cannot read tls.cert_file {cert_file}"))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("tls.cert_file {cert_file} is not a PEM certificate chain"))?;
    if chain.is_empty() {
        anyhow::bail!("tls.cert_file {cert_file} holds no certificate");
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .with_context(|| format!("cannot read a PEM private key from tls.key_file {key_file}"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .with_context(|| format!("tls.key_file {key_file}: unsupported private key"))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().with_context(|| {
        format!("tls.key_file {key_file} is not the key of tls.cert_file {cert_file}")
    })?;
    Ok(certified)
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The listener's settings: the reloadable certificate, h2 preferred over HTTP/1.1.
pub fn settings(certificate: Arc<Certificate>) -> anyhow::Result<TlsSettings> {
    let mut settings =
        TlsSettings::intermediate("", "").map_err(|e| anyhow::anyhow!("TLS settings: {e}"))?;
    settings.set_cert_resolver(certificate);
    settings.enable_h2();
    Ok(settings)
}

/// Reloads the certificate on SIGHUP.
pub struct CertificateReloader(pub Arc<Certificate>);

#[async_trait::async_trait]
impl BackgroundService for CertificateReloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangups = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::hangup(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch SIGHUP: the TLS certificate will not be reloaded");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hangups.recv() => match self.0.reload() {
                    Ok(()) => tracing::info!(cert_file = %self.0.cert_file, "TLS certificate reloaded"),
                    Err(e) => tracing::error!(error = format!("{e:#}"),
                        "TLS certificate not reloaded; the previous one stays"),
                },
                _ = shutdown.changed() => return,
            }
        }
    }
}
