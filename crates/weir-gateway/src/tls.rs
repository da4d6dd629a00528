//! rustls server configurations for terminating servers, built from a
//! server's `tls` settings: SIMPLE and MUTUAL from file-mounted PEM files
//! (TLS 1.2 and 1.3 for external clients, ring), ISTIO_MUTUAL from the
//! gateway's own mesh certificate and the mesh CA.
//!
//! Certificates are read when a listener's config is built and again
//! whenever the files change (the gateway checks on every reload tick), so
//! a rotated certificate (cert-manager, a re-mounted Secret) is served to new
//! connections without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use weir_core::config::{ServerTls, TlsMode, TlsVersion};
use weir_core::SpiffeId;
use weir_identity::IdentityManager;

/// Why a terminating server's TLS config could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("{what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path}: {message}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    #[error("caCertificates: {0}")]
    Verifier(String),
    #[error("mesh identity: {0}")]
    Identity(#[from] weir_identity::Error),
    #[error("tls.mode {0} does not terminate TLS")]
    NotTerminating(TlsMode),
    #[error("privateKey {key} does not match serverCertificate {cert} (its first certificate's public key is not this key's)")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
}

/// The files a config was built from, with their contents, so a change on
/// disk can be noticed cheaply.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsFiles(Vec<(PathBuf, Vec<u8>)>);

impl TlsFiles {
    /// Reads the files `tls` names (none for PASSTHROUGH and ISTIO_MUTUAL).
    pub fn read(tls: &ServerTls) -> Result<TlsFiles, TlsConfigError> {
        let mut out = Vec::new();
        for (what, p) in [
            ("serverCertificate", &tls.server_certificate),
            ("privateKey", &tls.private_key),
            ("caCertificates", &tls.ca_certificates),
        ] {
            if !matches!(tls.mode, TlsMode::Simple | TlsMode::Mutual) {
                break;
            }
            if what == "caCertificates" && tls.mode != TlsMode::Mutual {
                continue;
            }
            if let Some(p) = p {
                let bytes = read_pem_file(p).map_err(|source| TlsConfigError::Read {
                    what,
                    path: p.clone(),
                    source,
                })?;
                out.push((p.clone(), bytes));
            }
        }
        Ok(TlsFiles(out))
    }

    fn get(&self, p: &Option<PathBuf>) -> Option<(&Path, &[u8])> {
        let p = p.as_ref()?;
        self.0
            .iter()
            .find(|(q, _)| q == p)
            .map(|(q, b)| (q.as_path(), b.as_slice()))
    }
}

/// Largest certificate, key or CA bundle file read (a bundle of many CAs
/// is well under it).
pub const MAX_PEM_FILE: u64 = 1024 * 1024;

/// Reads a PEM file a Gateway names: a regular file (never a device, FIFO
/// or socket, which could block the reload loop or never end) of at most
/// [`MAX_PEM_FILE`] bytes. The file is opened without blocking, so a FIFO
/// does not wait for a writer.
fn read_pem_file(p: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(p)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if meta.len() > MAX_PEM_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} bytes, over the limit of {MAX_PEM_FILE}", meta.len()),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_PEM_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_PEM_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("over the limit of {MAX_PEM_FILE} bytes"),
        ));
    }
    Ok(bytes)
}

/// The provider for external clients: ring with its TLS 1.2 and 1.3 suites
/// (the mesh's own provider is TLS 1.3 only), AES-128-GCM first in each
/// version. With [`ServerConfig::ignore_client_order`] set the gateway picks
/// it, as Envoy's BoringSSL does, rather than the AES-256-GCM that OpenSSL
/// and rustls clients list first: every byte a client sends or fetches is
/// encrypted on one side and decrypted on the other, and AES-128 takes 10
/// rounds per block to AES-256's 14.
fn external_provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::CipherSuite as C;
    let mut p = rustls::crypto::ring::default_provider();
    // Stable: ChaCha20 keeps its place after the AES suites.
    p.cipher_suites.sort_by_key(|s| match s.suite() {
        C::TLS13_AES_128_GCM_SHA256
        | C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
        C::TLS13_AES_256_GCM_SHA384
        | C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        | C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 1,
        _ => 2,
    });
    Arc::new(p)
}

fn versions(tls: &ServerTls) -> Vec<&'static rustls::SupportedProtocolVersion> {
    let mut v = Vec::new();
    if tls.min_protocol_version <= TlsVersion::V1_3 && tls.max_protocol_version >= TlsVersion::V1_3
    {
        v.push(&rustls::version::TLS13);
    }
    if tls.min_protocol_version <= TlsVersion::V1_2 && tls.max_protocol_version >= TlsVersion::V1_2
    {
        v.push(&rustls::version::TLS12);
    }
    v
}

fn certs(
    what: &'static str,
    (path, pem): (&Path, &[u8]),
) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsConfigError::Pem {
            what,
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsConfigError::Pem {
            what,
            path: path.to_owned(),
            message: "no PEM CERTIFICATE block".to_owned(),
        });
    }
    Ok(certs)
}

/// Builds the server config of a terminating server. `files` must come from
/// [`TlsFiles::read`] of the same settings.
pub fn server_config(
    tls: &ServerTls,
    files: &TlsFiles,
    identity: &IdentityManager,
    gateway_id: &SpiffeId,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    match tls.mode {
        TlsMode::Passthrough => Err(TlsConfigError::NotTerminating(tls.mode)),
        TlsMode::IstioMutual => {
            // The mesh server config (gateway certificate, rotated in place;
            // mesh client certificates required), without HBONE's ALPN.
            let mut c = (*identity.server_config(gateway_id)?).clone();
            c.alpn_protocols.clear();
            Ok(Arc::new(c))
        }
        TlsMode::Simple | TlsMode::Mutual => {
            let missing = |what| TlsConfigError::Pem {
                what,
                path: PathBuf::new(),
                message: "not set".to_owned(),
            };
            let chain = certs(
                "serverCertificate",
                files
                    .get(&tls.server_certificate)
                    .ok_or_else(|| missing("serverCertificate"))?,
            )?;
            let (key_path, key_pem) = files
                .get(&tls.private_key)
                .ok_or_else(|| missing("privateKey"))?;
            let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsConfigError::Pem {
                what: "privateKey",
                path: key_path.to_owned(),
                message: e.to_string(),
            })?;
            let provider = external_provider();
            let builder = ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&versions(tls))?;
            let builder = if tls.mode == TlsMode::Mutual {
                let ca = files
                    .get(&tls.ca_certificates)
                    .ok_or_else(|| missing("caCertificates"))?;
                let mut roots = RootCertStore::empty();
                for c in certs("caCertificates", ca)? {
                    roots.add(c)?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| TlsConfigError::Verifier(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            } else {
                builder.with_no_client_auth()
            };
            let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => TlsConfigError::KeyMismatch {
                    cert: files
                        .get(&tls.server_certificate)
                        .map(|(p, _)| p.to_owned())
                        .unwrap_or_default(),
                    key: key_path.to_owned(),
                },
                e => e.into(),
            })?;
            config.ignore_client_order = true;
            Ok(Arc::new(config))
        }
    }
}

/// Whether a MUTUAL client's certificate carries one of `allowed` SANs
/// (an empty list allows any certificate the CA signed).
pub fn san_allowed(principal: &weir_core::kafka::Principal, allowed: &[String]) -> bool {
    use weir_core::kafka::Principal;
    if allowed.is_empty() {
        return true;
    }
    match principal {
        Principal::Spiffe(id) => allowed.iter().any(|a| *a == id.to_string()),
        Principal::Certificate { sans, .. } => sans.iter().any(|s| allowed.contains(s)),
        Principal::Anonymous => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_of_bounded_size_are_read() {
        let dir = std::env::temp_dir().join(format!("weir-gw-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = dir.join("ok.pem");
        std::fs::write(&ok, b"-----BEGIN CERTIFICATE-----\n").unwrap();
        assert_eq!(read_pem_file(&ok).unwrap().len(), 28);
        // A device that never ends, and a FIFO nobody writes to: refused at
        // once, not read forever or waited on.
        let zero = read_pem_file(Path::new("/dev/zero")).unwrap_err();
        assert!(zero.to_string().contains("not a regular file"), "{zero}");
        let fifo = dir.join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let e = read_pem_file(&fifo).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let big = dir.join("big.pem");
        std::fs::write(&big, vec![b'x'; MAX_PEM_FILE as usize + 1]).unwrap();
        let e = read_pem_file(&big).unwrap_err();
        assert!(e.to_string().contains("over the limit"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
