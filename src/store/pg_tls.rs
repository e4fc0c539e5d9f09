//! PostgreSQL over TLS through rustls (no OpenSSL), with libpq's `sslmode` meanings, which
//! tokio-postgres only partly knows (it has no `verify-ca`, `verify-full` or `sslrootcert`):
//!
//! - `disable`: no TLS;
//! - `prefer` (the default, as in libpq): TLS if the server offers it, certificate unchecked;
//! - `require`: TLS or nothing, certificate unchecked — unless `sslrootcert` is given, which
//!   makes it `verify-ca`, as in libpq;
//! - `verify-ca`: TLS, the certificate chain checked against the root certificates;
//! - `verify-full`: that, and the certificate must name the host connected to.
//!
//! Root certificates: `sslrootcert=<PEM file>`, or `sslrootcert=system` (the operating
//! system's store, also the default for `verify-ca`/`verify-full` without `sslrootcert`).

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode as WireMode;
use tokio_postgres_rustls::MakeRustlsConnect;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    System,
    File(PathBuf),
}

/// The TLS part of a database URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTls {
    pub mode: SslMode,
    pub root_certs: Option<RootCerts>,
}

impl PgTls {
    /// Takes `sslmode` and `sslrootcert` out of a connection string (URL or `key=value`
    /// form): the rest, for tokio-postgres, and what they say.
    pub fn split(url: &str) -> Result<(String, PgTls), String> {
        let mut mode = None;
        let mut root = None;
        let mut take = |key: &str, value: String| -> Result<bool, String> {
            match key {
                "sslmode" => {
                    mode = Some(match value.as_str() {
                        "disable" => SslMode::Disable,
                        "prefer" => SslMode::Prefer,
                        "require" => SslMode::Require,
                        "verify-ca" => SslMode::VerifyCa,
                        "verify-full" => SslMode::VerifyFull,
                        other => {
                            return Err(format!(
                                "sslmode {other:?} is not disable, prefer, require, verify-ca or verify-full"
                            ))
                        }
                    })
                }
                "sslrootcert" => {
                    root = Some(match value.as_str() {
                        "system" => RootCerts::System,
                        path => RootCerts::File(PathBuf::from(path)),
                    })
                }
                _ => return Ok(false),
            }
            Ok(true)
        };
        let rest = if url.contains("://") {
            let (base, query) = url.split_once('?').unwrap_or((url, ""));
            let mut kept = Vec::new();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                let decoded: String = form_urlencoded::parse(format!("v={value}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                if !take(key, decoded)? {
                    kept.push(pair);
                }
            }
            if kept.is_empty() {
                base.to_string()
            } else {
                format!("{base}?{}", kept.join("&"))
            }
        } else {
            let mut kept = Vec::new();
            for word in url.split_whitespace() {
                let (key, value) = word.split_once('=').unwrap_or((word, ""));
                if !take(key, value.trim_matches('\'').to_string())? {
                    kept.push(word);
                }
            }
            kept.join(" ")
        };
        let mut mode = mode.unwrap_or(SslMode::Prefer);
        // libpq: `require` with a root certificate verifies the chain.
        if mode == SslMode::Require && root.is_some() {
            mode = SslMode::VerifyCa;
        }
        Ok((
            rest,
            PgTls {
                mode,
                root_certs: root,
            },
        ))
    }

    /// The mode tokio-postgres negotiates with (whether TLS is tried, and insisted on).
    pub fn wire_mode(&self) -> WireMode {
        match self.mode {
            SslMode::Disable => WireMode::Disable,
            SslMode::Prefer => WireMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => WireMode::Require,
        }
    }

    /// The connector for tokio-postgres; loads the root certificates.
    pub fn connector(&self) -> Result<MakeRustlsConnect, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match self.mode {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => {
                Arc::new(Unchecked(Arc::clone(&provider)))
            }
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let roots = self.root_store()?;
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| format!("sslrootcert: {e}"))?;
                if self.mode == SslMode::VerifyCa {
                    Arc::new(ChainOnly(webpki))
                } else {
                    webpki
                }
            }
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(MakeRustlsConnect::new(config))
    }

    fn root_store(&self) -> Result<RootCertStore, String> {
        let mut store = RootCertStore::empty();
        match self.root_certs.as_ref().unwrap_or(&RootCerts::System) {
            RootCerts::File(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                for cert in certs {
                    let cert = cert.map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                    store
                        .add(cert)
                        .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                }
                if store.is_empty() {
                    return Err(format!(
                        "sslrootcert {}: no certificate in it",
                        path.display()
                    ));
                }
            }
            RootCerts::System => {
                let found = rustls_native_certs::load_native_certs();
                store.add_parsable_certificates(found.certs);
                if store.is_empty() {
                    return Err("sslrootcert=system: the system has no root certificates".into());
                }
            }
        }
        Ok(store)
    }
}

/// `prefer` and `require` without root certificates: encryption without authentication, as
/// libpq does it. The handshake's signatures are still checked.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a root certificate; the name in it is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, PgTls) {
        PgTls::split(url).unwrap()
    }

    #[test]
    fn ssl_parameters_are_taken_out_of_urls_and_key_value_strings() {
        let (rest, tls) = split("postgres://u:p@db:5432/app?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x");
        assert_eq!(rest, "postgres://u:p@db:5432/app?application_name=x");
        assert_eq!(
            tls,
            PgTls {
                mode: SslMode::VerifyFull,
                root_certs: Some(RootCerts::File("/etc/ca.pem".into()))
            }
        );
        let (rest, tls) = split("postgres://db/app");
        assert_eq!(
            (rest.as_str(), tls.mode),
            ("postgres://db/app", SslMode::Prefer)
        );
        let (rest, tls) = split("host=db user=u sslmode=disable dbname=app");
        assert_eq!(
            (rest.as_str(), tls.mode),
            ("host=db user=u dbname=app", SslMode::Disable)
        );
        // libpq: require with a root certificate verifies the chain.
        let (_, tls) = split("postgres://db/app?sslmode=require&sslrootcert=system");
        assert_eq!(tls.mode, SslMode::VerifyCa);
        assert_eq!(tls.root_certs, Some(RootCerts::System));
        assert!(PgTls::split("postgres://db/app?sslmode=allow-any").is_err());
    }

    #[test]
    fn modes_negotiate_as_libpq() {
        for (mode, wire) in [
            ("disable", WireMode::Disable),
            ("prefer", WireMode::Prefer),
            ("require", WireMode::Require),
            ("verify-ca", WireMode::Require),
            ("verify-full", WireMode::Require),
        ] {
            let (_, tls) = split(&format!("postgres://db/app?sslmode={mode}"));
            assert_eq!(tls.wire_mode(), wire, "{mode}");
        }
        let missing = PgTls {
            mode: SslMode::VerifyFull,
            root_certs: Some(RootCerts::File("/nonexistent/ca.pem".into())),
        };
        assert!(missing.connector().is_err());
    }
}
