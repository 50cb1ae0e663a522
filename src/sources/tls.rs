//! TLS for the live sources: one rustls (ring) configuration per endpoint, verified by
//! default against the system's CAs or a given bundle. `insecure` is an explicit choice
//! (the old agent turned verification off everywhere) and is logged on every run.

use crate::error::SourceError;
use crate::policy::TlsSettings;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::{Arc, OnceLock};

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
            .with_custom_certificate_verifier(Arc::new(Verifier {
                provider,
                trust: Trust::Nothing,
            }))
            .with_no_client_auth());
    }
    let Some(path) = &settings.ca_bundle else {
        // The system store is read on the first handshake: plain HTTP endpoints never
        // need it.
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier {
                provider,
                trust: Trust::SystemStore {
                    what,
                    verifier: OnceLock::new(),
                },
            }))
            .with_no_client_auth());
    };
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| tls(format!("cannot read ca_bundle {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(tls(format!(
            "ca_bundle {} holds no certificate",
            path.display()
        )));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| tls(format!("bad certificate in {}: {e}", path.display())))?;
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// The system's CA store, read once per process and only when a handshake needs it (IMS
/// and S3 share it; reading and parsing a few hundred certificates was a tenth of a no-op
/// run's CPU).
fn system_roots() -> &'static Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
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

/// What a server certificate is checked against.
#[derive(Debug)]
enum Trust {
    /// Nothing: `insecure: true`.
    Nothing,
    /// The system's CA store, built into a verifier on the first handshake.
    SystemStore {
        what: &'static str,
        verifier: OnceLock<Result<Arc<WebPkiServerVerifier>, String>>,
    },
}

#[derive(Debug)]
struct Verifier {
    provider: Arc<rustls::crypto::CryptoProvider>,
    trust: Trust,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Trust::SystemStore { what, verifier } = &self.trust else {
            return Ok(ServerCertVerified::assertion());
        };
        let verifier = verifier.get_or_init(|| {
            let roots = system_roots();
            if roots.is_empty() {
                log::warn!("{what}: no CA certificates found in the system store; set ca_bundle");
            }
            WebPkiServerVerifier::builder_with_provider(roots.clone(), self.provider.clone())
                .build()
                .map_err(|e| format!("cannot verify with the system CA store: {e}"))
        });
        match verifier {
            Ok(verifier) => verifier.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ),
            Err(problem) => Err(rustls::Error::General(problem.clone())),
        }
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
