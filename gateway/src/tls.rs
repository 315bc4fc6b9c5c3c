//! TLS on both sides of the gateway, with rustls and its `ring` provider.
//!
//! Towards browsers: [`browser_acceptor`] loads the configured PEM certificate chain and key
//! once, at startup, and refuses a missing, unreadable, empty or mismatched pair with an error
//! naming the file. HTTP/1.1 is the only protocol offered (ALPN), as the gateway speaks no other.
//!
//! Towards apps (the `s` suffix): [`AppTls`] speaks TLS to an app that only serves
//! HTTPS, sending the name [`APP_SERVER_NAME`] and accepting whatever certificate the app
//! shows, self-signed included. That is sound here because the TLS connection runs inside the
//! WireGuard tunnel, which already authenticates the agent by its key and encrypts every byte,
//! and the agent only dials the workspace's own loopback: no one else is on the path whose
//! certificate could be checked against, and an app on loopback has no certificate a public CA
//! would sign for the app URL anyway. TLS on this hop exists only because the app insists on
//! it. The handshake's signatures are still checked, so the session keys belong to the key in
//! the certificate the app sent.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::TlsFiles;

/// The acceptor for browsers' TLS connections, from the configured PEM files.
pub fn browser_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    // Read both files, then check that the key belongs to the leaf certificate.
    let certs = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let provider = provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| TlsError::BadKey {
            path: files.key.clone(),
            reason: e.to_string(),
        })?;
    let mismatch = || TlsError::Mismatch {
        cert: files.cert.clone(),
        key: files.key.clone(),
    };
    match CertifiedKey::new(certs.clone(), signing_key).keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(mismatch());
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => {
            return Err(TlsError::BadCert {
                path: files.cert.clone(),
                reason: e.to_string(),
            });
        }
    }

    // The server configuration, HTTP/1.1 only.
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Setup)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// TLS towards apps that speak HTTPS on the workspace's loopback. It accepts any certificate
/// (see the module documentation for why that is sound on this hop) and sends
/// [`APP_SERVER_NAME`] as the server name. Cloning is cheap.
#[derive(Clone)]
pub struct AppTls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl AppTls {
    /// The client configuration, built once.
    pub fn new() -> Result<AppTls, TlsError> {
        let provider = provider();
        let verifier = Arc::new(AnyAppCertificate {
            provider: provider.clone(),
        });
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Setup)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let server_name = ServerName::try_from(APP_SERVER_NAME)
            .map_err(|e| TlsError::Setup(rustls::Error::General(e.to_string())))?;
        Ok(AppTls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// Runs the TLS handshake with the app over `stream`.
    pub async fn connect<S>(&self, stream: S) -> std::io::Result<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.connector
            .connect(self.server_name.clone(), stream)
            .await
    }

    /// The server name sent to apps.
    pub fn server_name(&self) -> &ServerName<'static> {
        &self.server_name
    }
}

/// Why the gateway's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A configured file could not be read (missing, or no permission).
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate, or a malformed one.
    #[error("tls_cert {path}: {reason}")]
    BadCert { path: PathBuf, reason: String },
    /// The key file holds no PEM private key, or one rustls cannot use.
    #[error("tls_key {path}: {reason}")]
    BadKey { path: PathBuf, reason: String },
    /// The private key is not the key of the first certificate in the chain.
    #[error(
        "tls_key {key} is not the private key of the certificate in tls_cert {cert}: \
         check that the two files belong together"
    )]
    Mismatch { cert: PathBuf, key: PathBuf },
    /// rustls refused the configuration for another reason.
    #[error("TLS setup: {0}")]
    Setup(rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let bad = |reason: String| TlsError::BadCert {
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(bad(
            "no certificate (-----BEGIN CERTIFICATE-----) found".into()
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::BadKey {
        path: path.to_owned(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no private key (-----BEGIN PRIVATE KEY-----) found".into()
            }
            other => format!("not a PEM private key: {other}"),
        },
    })
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

// Accepts any app certificate, but still checks the handshake signatures made with its key.
#[derive(Debug)]
struct AnyAppCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyAppCertificate {
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
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The name sent as SNI to HTTPS apps: they run on the workspace's loopback, and a development
/// certificate, if it names anything, names this.
pub const APP_SERVER_NAME: &str = "localhost";

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("ferry-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn write_pair(d: &Path, cert: &str, key: &str) -> TlsFiles {
        let pair = rcgen::generate_simple_self_signed(vec!["apps.test".into()]).unwrap();
        std::fs::write(d.join(cert), pair.cert.pem()).unwrap();
        std::fs::write(d.join(key), pair.signing_key.serialize_pem()).unwrap();
        TlsFiles {
            cert: d.join(cert),
            key: d.join(key),
        }
    }

    #[test]
    fn a_matching_pair_loads() {
        let d = dir("ok");
        assert!(browser_acceptor(&write_pair(&d.0, "c.pem", "k.pem")).is_ok());
    }

    #[test]
    fn missing_empty_and_swapped_files_say_which_file_and_why() {
        let d = dir("bad");
        let good = write_pair(&d.0, "c.pem", "k.pem");
        let other = write_pair(&d.0, "c2.pem", "k2.pem");
        let err = |files: TlsFiles| browser_acceptor(&files).err().unwrap().to_string();

        let missing = TlsFiles {
            cert: d.0.join("nope.pem"),
            ..good.clone()
        };
        let e = err(missing);
        assert!(e.contains("cannot read") && e.contains("nope.pem"), "{e}");

        std::fs::write(d.0.join("empty.pem"), "hello\n").unwrap();
        let e = err(TlsFiles {
            cert: d.0.join("empty.pem"),
            ..good.clone()
        });
        assert!(
            e.contains("tls_cert") && e.contains("no certificate"),
            "{e}"
        );
        let e = err(TlsFiles {
            key: d.0.join("empty.pem"),
            ..good.clone()
        });
        assert!(e.contains("tls_key") && e.contains("no private key"), "{e}");

        // The key of another certificate, and a certificate given as the key.
        let e = err(TlsFiles {
            key: other.key.clone(),
            ..good.clone()
        });
        assert!(e.contains("is not the private key"), "{e}");
        let e = err(TlsFiles {
            key: good.cert.clone(),
            ..good.clone()
        });
        assert!(e.contains("tls_key"), "{e}");
    }

    #[test]
    fn the_app_connector_builds_and_names_localhost() {
        let tls = AppTls::new().unwrap();
        assert_eq!(tls.server_name().to_str(), "localhost");
    }
}
