//! TLS for the live sources: one rustls (ring) configuration per endpoint, verified by
//! default against the system's CAs or a given bundle. `insecure` is an explicit choice
//! (the old agent turned verification off everywhere) and is logged on every run.

use crate::error::SourceError;
use crate::policy::TlsSettings;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;

/// The client configuration for one endpoint (`what` names it in messages).
pub fn client_config(
    settings: &TlsSettings,
    what: &'static str,
) -> Result<ClientConfig, SourceError> {
    let tls = |problem: String| SourceError::Tls { what, problem };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(format!("TLS setup failed: {e}")))?;
    if settings.insecure {
        log::warn!(
            "{what}: TLS verification is off (insecure: true); the server is not authenticated"
        );
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification { provider }))
            .with_no_client_auth());
    }
    let mut roots = RootCertStore::empty();
    match &settings.ca_bundle {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| tls(format!("cannot read ca_bundle {}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(tls(format!(
                    "ca_bundle {} holds no certificate",
                    path.display()
                )));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| tls(format!("bad certificate in {}: {e}", path.display())))?;
            }
        }
        None => {
            let system = system_roots();
            if system.is_empty() {
                log::warn!("{what}: no CA certificates found in the system store; set ca_bundle");
            }
            return Ok(builder
                .with_root_certificates(system.clone())
                .with_no_client_auth());
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// Accepts any server certificate (still checks handshake signatures are well formed).
/// The system's CA store, read once per process: IMS and S3 share it (reading and parsing
/// a few hundred certificates twice was a tenth of a no-op run's CPU).
fn system_roots() -> &'static Arc<RootCertStore> {
    static ROOTS: std::sync::OnceLock<Arc<RootCertStore>> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            log::debug!("system CA store: {error}");
        }
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(found.certs);
        Arc::new(roots)
    })
}

#[derive(Debug)]
struct NoVerification {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A reqwest client over this TLS configuration.
pub fn http_client(
    settings: &TlsSettings,
    what: &'static str,
    timeout: std::time::Duration,
) -> Result<reqwest::Client, SourceError> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(client_config(settings, what)?)
        .connect_timeout(timeout)
        .timeout(timeout)
        .no_proxy()
        .build()
        .map_err(|e| SourceError::Tls {
            what,
            problem: format!("cannot build the HTTP client: {}", crate::error::chain(&e)),
        })
}
