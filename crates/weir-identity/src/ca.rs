//! The mesh certificate authority: a self-signed ECDSA P-256 root that signs
//! SPIFFE leaf certificates for workloads.

use std::fmt;
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use weir_core::{SpiffeId, TrustDomain};

use crate::error::{Error, Result};

/// Default lifetime of a workload certificate (24 hours, as in Istio).
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// How far `not_before` of a leaf is backdated, so that peers whose clocks are
/// slightly behind still accept a freshly issued certificate.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60);

/// Lifetime of a root created by [`CertificateAuthority::load_or_create`].
pub const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// File name of the root certificate in the CA state directory.
pub const CA_CERT_FILE: &str = "ca-cert.pem";

/// File name of the root key in the CA state directory (mode 0600).
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// Created (exclusively) in the state directory by the process that
/// creates the root, so that processes sharing the directory (two node
/// proxies, a node and the control plane) make one root, not one each.
pub const CA_LOCK_FILE: &str = "ca.lock";

/// A lock this old was left by a process that died while creating the
/// root (which takes milliseconds): it is removed.
const STALE_CA_LOCK: Duration = Duration::from_secs(30);

/// Common name of roots created by weir.
pub const ROOT_COMMON_NAME: &str = "weir mesh root";

/// The mesh CA: signs SPIFFE leaf certificates in-process.
pub struct CertificateAuthority {
    trust_domain: TrustDomain,
    issuer: Issuer<'static, KeyPair>,
    root_der: CertificateDer<'static>,
    root_pem: String,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

/// A workload's certificate chain and private key.
pub struct WorkloadCertificate {
    /// The identity in the leaf's URI SAN.
    pub id: SpiffeId,
    /// The chain, leaf first (the root is not included).
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's PKCS#8 private key.
    pub key: PrivateKeyDer<'static>,
    /// Start of validity (backdated by up to [`CLOCK_SKEW_ALLOWANCE`]).
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl WorkloadCertificate {
    /// When this certificate should be replaced: at half its lifetime.
    pub fn refresh_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life / 2
    }

    /// The leaf certificate. Panics if `chain` is empty, which no certificate
    /// issued by this crate is.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }
}

impl Clone for WorkloadCertificate {
    fn clone(&self) -> Self {
        Self {
            id: self.id.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            not_before: self.not_before,
            not_after: self.not_after,
        }
    }
}

impl fmt::Debug for WorkloadCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCertificate")
            .field("id", &self.id)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A leaf certificate with arbitrary URI SANs, from
/// [`CertificateAuthority::dangerous_issue_raw`]. For tests only.
pub struct RawCertificate {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's PKCS#8 private key.
    pub key: PrivateKeyDer<'static>,
}

/// Whole seconds: X.509 times have no sub-second part, and the times we report
/// must be the ones in the certificate.
fn truncate(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    UNIX_EPOCH + Duration::from_secs(secs)
}

impl CertificateAuthority {
    /// The CA a process was told to use: the PEM files `files` (`--ca-cert`,
    /// `--ca-key`) when given, otherwise the one in `state_dir` (created on
    /// first use, see [`Self::load_or_create`]).
    pub fn load(
        files: Option<&(PathBuf, PathBuf)>,
        state_dir: &Path,
        trust_domain: TrustDomain,
    ) -> Result<Self> {
        match files {
            Some((cert, key)) => Self::from_pem_files(cert, key, trust_domain),
            None => Self::load_or_create(state_dir, trust_domain),
        }
    }

    /// Loads the root from `state_dir`, or creates it (and the directory) on
    /// first use: an ECDSA P-256 self-signed root valid for 10 years, written as
    /// [`CA_CERT_FILE`] and [`CA_KEY_FILE`] (mode 0600). Processes that
    /// share the directory and start together make one root: the one that
    /// creates [`CA_LOCK_FILE`] first writes it, the others wait for it
    /// (up to a minute) and load it.
    pub fn load_or_create(state_dir: &Path, trust_domain: TrustDomain) -> Result<Self> {
        let cert_path = state_dir.join(CA_CERT_FILE);
        let key_path = state_dir.join(CA_KEY_FILE);
        let lock_path = state_dir.join(CA_LOCK_FILE);
        let state_err = |source| Error::StateDir {
            path: state_dir.to_owned(),
            source,
        };
        let incomplete = |cert: bool| Error::IncompleteCaState {
            dir: state_dir.to_owned(),
            present: if cert { CA_CERT_FILE } else { CA_KEY_FILE },
            missing: if cert { CA_KEY_FILE } else { CA_CERT_FILE },
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (cert, key) = (cert_path.exists(), key_path.exists());
            if cert && key {
                return Self::from_pem_files(&cert_path, &key_path, trust_domain);
            }
            // Half there while another process holds the lock: it is
            // writing them (key first). Half there otherwise: a crash.
            if (cert || key) && !lock_path.exists() {
                return Err(incomplete(cert));
            }
            if state_dir.exists() && !state_dir.is_dir() {
                return Err(state_err(std::io::Error::other(
                    "it is a file, not a directory",
                )));
            }
            fs::create_dir_all(state_dir).map_err(state_err)?;
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&lock_path)
            {
                Ok(_) => {
                    let _lock = RemoveOnDrop(&lock_path);
                    // Another process may have finished between the check
                    // above and the lock.
                    match (cert_path.exists(), key_path.exists()) {
                        (true, true) => {
                            return Self::from_pem_files(&cert_path, &key_path, trust_domain)
                        }
                        (false, false) => {}
                        (cert, _) => return Err(incomplete(cert)),
                    }
                    let ca = Self::generate(trust_domain)?;
                    // Key first: a crash in between leaves "key without cert",
                    // which load_or_create reports instead of silently replacing.
                    write_file(&key_path, ca.issuer.key().serialize_pem().as_bytes(), 0o600)?;
                    write_file(&cert_path, ca.root_pem.as_bytes(), 0o644)?;
                    tracing::info!(dir = %state_dir.display(), trust_domain = %ca.trust_domain, "created mesh root CA");
                    return Ok(ca);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let stale = fs::metadata(&lock_path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > STALE_CA_LOCK);
                    if stale {
                        tracing::warn!(path = %lock_path.display(), "removing a stale CA lock (a process died while creating the root?)");
                        let _ = fs::remove_file(&lock_path);
                        continue;
                    }
                    if std::time::Instant::now() > deadline {
                        return Err(state_err(std::io::Error::other(format!(
                            "{CA_LOCK_FILE} has been held for a minute: remove it if no process is creating the CA"
                        ))));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(state_err(e)),
            }
        }
    }

    /// Creates a new root in memory only (nothing is written).
    pub fn generate(trust_domain: TrustDomain) -> Result<Self> {
        let gen_err = |source| Error::Generate {
            what: "the mesh root CA".into(),
            source,
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, ROOT_COMMON_NAME);
        dn.push(DnType::OrganizationName, trust_domain.as_str());
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = truncate(SystemTime::now());
        params.not_before = OffsetDateTime::from(now - CLOCK_SKEW_ALLOWANCE);
        params.not_after = OffsetDateTime::from(now + ROOT_VALIDITY);
        let cert = params.self_signed(&key).map_err(gen_err)?;
        let root_pem = cert.pem();
        Ok(Self {
            trust_domain,
            issuer: Issuer::new(params, key),
            root_der: cert.der().clone(),
            root_pem,
        })
    }

    /// Loads a root from PEM files (`--ca-cert`, `--ca-key`). The key must be
    /// the PKCS#8 key of the certificate, which must be a CA.
    pub fn from_pem_files(cert: &Path, key: &Path, trust_domain: TrustDomain) -> Result<Self> {
        let cert_pem = fs::read(cert).map_err(|source| Error::ReadCaCert {
            path: cert.to_owned(),
            source,
        })?;
        let key_pem = fs::read_to_string(key).map_err(|source| Error::ReadCaKey {
            path: key.to_owned(),
            source,
        })?;
        let invalid_cert = |reason: String| Error::InvalidCaCert {
            path: cert.to_owned(),
            reason,
        };
        let root_der = CertificateDer::from_pem_slice(&cert_pem).map_err(|e| {
            let text = String::from_utf8_lossy(&cert_pem);
            invalid_cert(if text.contains("PRIVATE KEY-----") {
                "it holds a private key, not a certificate: are --ca-cert and --ca-key swapped?"
                    .to_owned()
            } else {
                format!("no PEM certificate found ({e})")
            })
        })?;
        let key_pair = KeyPair::from_pem(&key_pem).map_err(|e| Error::InvalidCaKey {
            path: key.to_owned(),
            reason: if key_pem.contains("BEGIN EC PRIVATE KEY") {
                "a SEC1 EC key; weir reads PKCS#8: convert it with `openssl pkcs8 -topk8 -nocrypt -in <key> -out <key.pk8>`".to_owned()
            } else if key_pem.contains("BEGIN RSA PRIVATE KEY") {
                "a PKCS#1 RSA key; weir reads PKCS#8 (and a P-256 key is recommended): convert it with `openssl pkcs8 -topk8 -nocrypt -in <key> -out <key.pk8>`".to_owned()
            } else if key_pem.contains("BEGIN CERTIFICATE") && !key_pem.contains("PRIVATE KEY") {
                "it holds a certificate, not a private key: are --ca-cert and --ca-key swapped?"
                    .to_owned()
            } else if !key_pem.contains("-----BEGIN") {
                "not PEM (no -----BEGIN PRIVATE KEY----- block)".to_owned()
            } else {
                e.to_string()
            },
        })?;
        {
            let (_, x509) = x509_parser::parse_x509_certificate(&root_der)
                .map_err(|e| invalid_cert(format!("cannot parse X.509 ({e})")))?;
            if !x509.is_ca() {
                return Err(invalid_cert("it is not a CA certificate".into()));
            }
            if x509.public_key().subject_public_key.data.as_ref() != key_pair.public_key_raw() {
                return Err(Error::CaKeyMismatch {
                    cert: cert.to_owned(),
                    key: key.to_owned(),
                });
            }
            if !x509.validity().is_valid() {
                tracing::warn!(path = %cert.display(), "the mesh CA certificate is outside its validity period; peers will reject every certificate it signs");
            }
        }
        let issuer = Issuer::from_ca_cert_der(&root_der, key_pair)
            .map_err(|e| invalid_cert(e.to_string()))?;
        let root_pem = certificate_pem(&root_der);
        Ok(Self {
            trust_domain,
            issuer,
            root_der: root_der.into_owned(),
            root_pem,
        })
    }

    /// The trust domain this CA issues identities for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The root certificate (DER), the trust anchor of the mesh.
    pub fn root_cert_der(&self) -> &CertificateDer<'static> {
        &self.root_der
    }

    /// The root certificate (PEM).
    pub fn root_cert_pem(&self) -> &str {
        &self.root_pem
    }

    /// Issues a leaf for `id`, valid until `ttl` from now and backdated by
    /// [`CLOCK_SKEW_ALLOWANCE`] (at most a quarter of `ttl`, so that the
    /// half-life [`refresh_at`](WorkloadCertificate::refresh_at) is always in
    /// the future).
    pub fn issue(&self, id: &SpiffeId, ttl: Duration) -> Result<WorkloadCertificate> {
        let now = SystemTime::now();
        let backdate = CLOCK_SKEW_ALLOWANCE.min(ttl / 4);
        self.issue_with_validity(id, now - backdate, now + ttl)
    }

    /// Issues a leaf for `id` with an explicit validity period (times are
    /// truncated to whole seconds). Tests use it for expired and not yet valid
    /// certificates.
    pub fn issue_with_validity(
        &self,
        id: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<WorkloadCertificate> {
        self.check_trust_domain(id)?;
        let (not_before, not_after) = (truncate(not_before), truncate(not_after));
        let raw = self.sign_leaf(
            &id.to_string(),
            to_uri_sans(vec![id.to_string()])?,
            not_before,
            not_after,
        )?;
        Ok(WorkloadCertificate {
            id: id.clone(),
            chain: raw.chain,
            key: raw.key,
            not_before,
            not_after,
        })
    }

    /// **For tests only**: issues a leaf with exactly the given URI SANs (none,
    /// several, not SPIFFE ids, foreign trust domains), bypassing every check
    /// [`issue`](Self::issue) makes. Never use it to serve a workload.
    pub fn dangerous_issue_raw(
        &self,
        uri_sans: Vec<String>,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<RawCertificate> {
        self.sign_leaf(
            "a test certificate",
            to_uri_sans(uri_sans)?,
            truncate(not_before),
            truncate(not_after),
        )
    }

    /// Issues a leaf for `id` that also names `dns_names` and `ips` in its
    /// SAN: for mesh services that non-mesh-aware clients reach by name, such
    /// as the control plane's own serving certificate. Same profile as
    /// [`issue`](Self::issue) otherwise.
    pub fn issue_with_names(
        &self,
        id: &SpiffeId,
        dns_names: &[String],
        ips: &[IpAddr],
        ttl: Duration,
    ) -> Result<WorkloadCertificate> {
        self.check_trust_domain(id)?;
        let now = SystemTime::now();
        let backdate = CLOCK_SKEW_ALLOWANCE.min(ttl / 4);
        let (not_before, not_after) = (truncate(now - backdate), truncate(now + ttl));
        let gen_err = |source| Error::Generate {
            what: format!("a certificate for {id}"),
            source,
        };
        let mut sans = vec![SanType::URI(id.to_string().try_into().map_err(gen_err)?)];
        for name in dns_names {
            sans.push(SanType::DnsName(name.clone().try_into().map_err(gen_err)?));
        }
        sans.extend(ips.iter().copied().map(SanType::IpAddress));
        let raw = self.sign_leaf(&id.to_string(), sans, not_before, not_after)?;
        Ok(WorkloadCertificate {
            id: id.clone(),
            chain: raw.chain,
            key: raw.key,
            not_before,
            not_after,
        })
    }

    /// Signs a certificate signing request (PEM PKCS#10) for `id`, valid for
    /// `ttl` from now (backdated as in [`issue`](Self::issue)), with exactly the
    /// leaf profile of [`issue`](Self::issue): only the request's public key
    /// is used. The request's signature must verify, its key must be ECDSA
    /// P-256, and its SAN, if any, must be exactly `id`. The caller decides
    /// whether the requester may have `id`; this only signs.
    pub fn sign_csr(&self, csr_pem: &str, id: &SpiffeId, ttl: Duration) -> Result<SignedLeaf> {
        self.check_trust_domain(id)?;
        let csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| Error::InvalidCsr {
                reason: match e {
                    rcgen::Error::InvalidCertificationRequestSignature => {
                        "its signature does not verify".to_owned()
                    }
                    rcgen::Error::CouldNotParseCertificationRequest => {
                        "not a PEM PKCS#10 certificate signing request".to_owned()
                    }
                    other => other.to_string(),
                },
            })?;
        // rcgen names the key's algorithm after the request's *signature*
        // algorithm, and ecdsa-with-SHA256 is also how a P-384 key signs:
        // the key itself must be checked, or a P-384 key would be certified
        // under P-256's curve OID (a certificate no peer can parse).
        if !is_p256_key(csr_pem) {
            return Err(Error::InvalidCsr {
                reason: "its key is not ECDSA P-256 (the only key type mesh certificates use)"
                    .to_owned(),
            });
        }
        if csr.public_key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(Error::InvalidCsr {
                reason: "it is not signed with ECDSA SHA-256 (ecdsa-with-SHA256)".to_owned(),
            });
        }
        let wanted = id.to_string();
        for san in &csr.params.subject_alt_names {
            let matches = matches!(san, SanType::URI(uri) if uri.as_str() == wanted);
            if !matches {
                return Err(Error::CsrIdentityMismatch {
                    id: id.clone(),
                    in_csr: format!("{san:?}"),
                });
            }
        }
        let now = SystemTime::now();
        let backdate = CLOCK_SKEW_ALLOWANCE.min(ttl / 4);
        let (not_before, not_after) = (truncate(now - backdate), truncate(now + ttl));
        let gen_err = |source| Error::Generate {
            what: format!("a certificate for {id}"),
            source,
        };
        let sans = vec![SanType::URI(wanted.try_into().map_err(gen_err)?)];
        let params = leaf_params(sans, not_before, not_after)?;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(gen_err)?;
        Ok(SignedLeaf {
            leaf: cert.der().clone(),
            not_before,
            not_after,
        })
    }

    fn check_trust_domain(&self, id: &SpiffeId) -> Result<()> {
        if id.trust_domain() != &self.trust_domain {
            return Err(Error::ForeignTrustDomain {
                id: id.clone(),
                ca_trust_domain: self.trust_domain.clone(),
            });
        }
        Ok(())
    }

    fn sign_leaf(
        &self,
        what: &str,
        sans: Vec<SanType>,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<RawCertificate> {
        let gen_err = |source| Error::Generate {
            what: format!("a certificate for {what}"),
            source,
        };
        let params = leaf_params(sans, not_before, not_after)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_err)?;
        Ok(RawCertificate {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }
}

/// Whether the PEM CSR's subject public key is an uncompressed ECDSA P-256
/// point (id-ecPublicKey with prime256v1), judged from the key itself.
fn is_p256_key(csr_pem: &str) -> bool {
    use rustls_pki_types::CertificateSigningRequestDer;
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
    use x509_parser::prelude::FromDer;

    let Ok(der) = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes()) else {
        return false;
    };
    let Ok((_, csr)) = X509CertificationRequest::from_der(der.as_ref()) else {
        return false;
    };
    let spki = &csr.certification_request_info.subject_pki;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    let point = spki.subject_public_key.data.as_ref();
    spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY
        && curve == Some(OID_EC_P256)
        && point.len() == 65
        && point[0] == 0x04
}

/// A leaf signed from a certificate signing request (the requester holds the key).
#[derive(Debug, Clone)]
pub struct SignedLeaf {
    /// The leaf certificate.
    pub leaf: CertificateDer<'static>,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

/// The mesh leaf profile: empty subject, the identity in the (then critical)
/// SAN as Istio does, not a CA, digitalSignature, server and client auth.
fn leaf_params(
    sans: Vec<SanType>,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams> {
    if not_after <= not_before {
        return Err(Error::EmptyValidity);
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = OffsetDateTime::from(not_before);
    params.not_after = OffsetDateTime::from(not_after);
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

/// A random positive 128-bit serial, as Istio's CA makes them (rcgen's
/// default is a hash of the public key: two certificates signed for one
/// CSR would share a serial, which RFC 5280 forbids for one issuer).
fn random_serial() -> Result<rcgen::SerialNumber> {
    let mut bytes = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| Error::Generate {
            what: "a certificate serial number".into(),
            source: rcgen::Error::RingUnspecified,
        })?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x40; // 126 random bits, and no leading zero byte to drop
    Ok(rcgen::SerialNumber::from_slice(&bytes))
}

fn to_uri_sans(uris: Vec<String>) -> Result<Vec<SanType>> {
    uris.into_iter()
        .map(|u| u.try_into().map(SanType::URI))
        .collect::<Result<_, _>>()
        .map_err(|source| Error::Generate {
            what: "a certificate's URI SAN".to_owned(),
            source,
        })
}

/// PEM encoding of a certificate (64-column base64), e.g. for a CSR response.
pub fn certificate_pem(der: &CertificateDer<'_>) -> String {
    String::from_utf8_lossy(&pem_encode("CERTIFICATE", der)).into_owned()
}

fn pem_encode(label: &str, der: &[u8]) -> Vec<u8> {
    // Small local encoder so the loaded root can be served as PEM exactly as
    // generated ones are (64-column base64).
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = Vec::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = match chunk.len() {
            3 => (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8) | u32::from(chunk[2]),
            2 => (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8),
            _ => u32::from(chunk[0]) << 16,
        };
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]);
            } else {
                b64.push(b'=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n").into_bytes();
    for line in b64.chunks(64) {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.extend_from_slice(format!("-----END {label}-----\n").as_bytes());
    out
}

/// Removes a file when dropped (the CA lock, also on an error path).
struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.0);
    }
}

/// Writes `contents` to `path` atomically (temporary file + rename) with `mode`.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let err = |source| Error::WriteState {
        path: path.to_owned(),
        source,
    };
    let mut tmp: PathBuf = path.to_owned();
    tmp.as_mut_os_string().push(".tmp");
    // A temporary file a crash left behind keeps its mode (a key's 0600 is
    // set only on creation): start afresh.
    let _ = fs::remove_file(&tmp);
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&tmp).map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Processes sharing a state directory that start together make one
    /// root between them (threads here, each opening the directory as a
    /// process would), and the lock is gone afterwards.
    #[test]
    fn concurrent_first_starts_make_one_root() {
        for round in 0..5 {
            let dir = temp_dir(&format!("ca-race-{round}"));
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
            let roots: Vec<Vec<u8>> = (0..4)
                .map(|_| {
                    let (dir, barrier) = (dir.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        CertificateAuthority::load_or_create(&dir, TrustDomain::default())
                            .expect("every start succeeds")
                            .root_cert_der()
                            .to_vec()
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect();
            assert!(
                roots.windows(2).all(|w| w[0] == w[1]),
                "round {round}: several roots"
            );
            assert!(!dir.join(CA_LOCK_FILE).exists());
            let _ = fs::remove_dir_all(&dir);
        }
    }

    /// A lock left by a process that died is removed once stale; until
    /// then, half-written state under it is waited for, not reported.
    #[test]
    fn a_stale_lock_is_removed() {
        let dir = temp_dir("ca-stale-lock");
        fs::create_dir_all(&dir).unwrap();
        let lock = fs::File::create(dir.join(CA_LOCK_FILE)).unwrap();
        lock.set_modified(SystemTime::now() - Duration::from_secs(120))
            .unwrap();
        drop(lock);
        CertificateAuthority::load_or_create(&dir, TrustDomain::default()).unwrap();
        assert!(!dir.join(CA_LOCK_FILE).exists());
        assert!(dir.join(CA_CERT_FILE).exists());
        let _ = fs::remove_dir_all(&dir);
    }

    fn temp_dir(name: &str) -> PathBuf {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        std::env::temp_dir().join(format!(
            "weir-identity-{name}-{}-{nanos}",
            std::process::id()
        ))
    }

    fn id(s: &str) -> SpiffeId {
        s.parse().unwrap()
    }

    #[test]
    fn load_or_create_is_stable_and_key_is_private() {
        let dir = temp_dir("ca").join("nested");
        let a = CertificateAuthority::load_or_create(&dir, TrustDomain::default()).unwrap();
        let b = CertificateAuthority::load_or_create(&dir, TrustDomain::default()).unwrap();
        assert_eq!(a.root_cert_der(), b.root_cert_der());
        assert_eq!(a.root_cert_pem(), b.root_cert_pem());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join(CA_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A leaf from the reloaded CA names the same issuer.
        let leaf = b
            .issue(&id("spiffe://cluster.local/ns/a/sa/b"), DEFAULT_CERT_TTL)
            .unwrap();
        let (_, root) = x509_parser::parse_x509_certificate(a.root_cert_der()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.leaf()).unwrap();
        assert_eq!(cert.issuer(), root.subject());
        assert!(root.is_ca());
        fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn incomplete_state_is_reported() {
        let dir = temp_dir("incomplete");
        CertificateAuthority::load_or_create(&dir, TrustDomain::default()).unwrap();
        fs::remove_file(dir.join(CA_CERT_FILE)).unwrap();
        let err = CertificateAuthority::load_or_create(&dir, TrustDomain::default()).unwrap_err();
        assert!(matches!(err, Error::IncompleteCaState { .. }), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn from_pem_files_names_missing_path() {
        let dir = temp_dir("missing");
        let cert = dir.join("nope-cert.pem");
        let key = dir.join("nope-key.pem");
        let err =
            CertificateAuthority::from_pem_files(&cert, &key, TrustDomain::default()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&cert.display().to_string()), "{msg}");
        assert!(msg.contains("--ca-cert"), "{msg}");
    }

    #[test]
    fn ca_file_mistakes_are_named() {
        let dir = temp_dir("mistakes");
        CertificateAuthority::load_or_create(&dir.join("a"), TrustDomain::default()).unwrap();
        let (cert, key) = (
            dir.join("a").join(CA_CERT_FILE),
            dir.join("a").join(CA_KEY_FILE),
        );
        let td = TrustDomain::default;
        // Swapped files.
        let e = CertificateAuthority::from_pem_files(&key, &cert, td()).unwrap_err();
        assert!(
            e.to_string()
                .contains("are --ca-cert and --ca-key swapped?"),
            "{e}"
        );
        // A key that is not PEM, and a SEC1 EC key.
        let bad = dir.join("bad.pem");
        fs::write(&bad, "not a key").unwrap();
        let e = CertificateAuthority::from_pem_files(&cert, &bad, td()).unwrap_err();
        assert!(e.to_string().contains("not PEM"), "{e}");
        fs::write(
            &bad,
            "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIA==\n-----END EC PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = CertificateAuthority::from_pem_files(&cert, &bad, td()).unwrap_err();
        assert!(e.to_string().contains("openssl pkcs8 -topk8"), "{e}");
        // A state directory that is a file.
        let file = dir.join("afile");
        fs::write(&file, "x").unwrap();
        let e = CertificateAuthority::load_or_create(&file, td()).unwrap_err();
        assert!(
            e.to_string().contains("it is a file, not a directory"),
            "{e}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn from_pem_files_rejects_mismatched_key() {
        let dir = temp_dir("mismatch");
        let a =
            CertificateAuthority::load_or_create(&dir.join("a"), TrustDomain::default()).unwrap();
        CertificateAuthority::load_or_create(&dir.join("b"), TrustDomain::default()).unwrap();
        let err = CertificateAuthority::from_pem_files(
            &dir.join("a").join(CA_CERT_FILE),
            &dir.join("b").join(CA_KEY_FILE),
            TrustDomain::default(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::CaKeyMismatch { .. }), "{err}");
        // The locally encoded PEM of a loaded root matches rcgen's.
        let loaded = CertificateAuthority::from_pem_files(
            &dir.join("a").join(CA_CERT_FILE),
            &dir.join("a").join(CA_KEY_FILE),
            TrustDomain::default(),
        )
        .unwrap();
        assert_eq!(loaded.root_cert_pem(), a.root_cert_pem());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn issue_checks_trust_domain_and_sets_fields() {
        let ca = CertificateAuthority::generate(TrustDomain::default()).unwrap();
        let err = ca
            .issue(&id("spiffe://other.td/ns/a/sa/b"), DEFAULT_CERT_TTL)
            .unwrap_err();
        assert!(matches!(err, Error::ForeignTrustDomain { .. }), "{err}");

        let wanted = id("spiffe://cluster.local/ns/kafka/sa/broker");
        let cert = ca.issue(&wanted, DEFAULT_CERT_TTL).unwrap();
        assert_eq!(cert.id, wanted);
        assert_eq!(cert.chain.len(), 1);
        let life = cert.not_after.duration_since(cert.not_before).unwrap();
        assert!(life >= DEFAULT_CERT_TTL && life <= DEFAULT_CERT_TTL + CLOCK_SKEW_ALLOWANCE * 2);
        assert_eq!(cert.refresh_at(), cert.not_before + life / 2);

        let (_, x509) = x509_parser::parse_x509_certificate(cert.leaf()).unwrap();
        let san = x509.subject_alternative_name().unwrap().unwrap();
        assert!(san.critical);
        assert_eq!(
            san.value.general_names,
            vec![x509_parser::extensions::GeneralName::URI(
                "spiffe://cluster.local/ns/kafka/sa/broker"
            )]
        );
        assert!(!x509.is_ca());
        let eku = x509.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(x509.key_usage().unwrap().unwrap().value.digital_signature());
        assert_eq!(
            x509.validity().not_before.timestamp(),
            cert.not_before
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64
        );

        let now = SystemTime::now();
        assert!(matches!(
            ca.issue_with_validity(&wanted, now, now),
            Err(Error::EmptyValidity)
        ));
    }

    #[test]
    fn sign_csr_checks_the_request_and_uses_the_leaf_profile() {
        let ca = CertificateAuthority::generate(TrustDomain::default()).unwrap();
        let wanted = id("spiffe://cluster.local/ns/kafka/sa/broker");
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = |sans: Vec<SanType>| {
            let mut p = CertificateParams::default();
            p.subject_alt_names = sans;
            p.serialize_request(&key).unwrap().pem().unwrap()
        };
        // No SAN in the request: the identity asked for is used.
        let signed = ca
            .sign_csr(&csr(vec![]), &wanted, DEFAULT_CERT_TTL)
            .unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(&signed.leaf).unwrap();
        assert_eq!(
            x509.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
        assert!(!x509.is_ca());
        let san = x509.subject_alternative_name().unwrap().unwrap();
        assert!(san.critical);
        assert_eq!(
            san.value.general_names,
            vec![x509_parser::extensions::GeneralName::URI(
                "spiffe://cluster.local/ns/kafka/sa/broker"
            )]
        );
        // The same SAN: fine. Another one: refused.
        let same = vec![SanType::URI(wanted.to_string().try_into().unwrap())];
        ca.sign_csr(&csr(same), &wanted, DEFAULT_CERT_TTL).unwrap();
        // One CSR signed twice: two serials (random, 16 bytes, positive),
        // not one derived from the key.
        let again = ca
            .sign_csr(&csr(vec![]), &wanted, DEFAULT_CERT_TTL)
            .unwrap();
        let (_, x509_again) = x509_parser::parse_x509_certificate(&again.leaf).unwrap();
        assert_ne!(x509.raw_serial(), x509_again.raw_serial());
        assert_eq!(x509.raw_serial().len(), 16);
        assert!(x509.raw_serial()[0] & 0x80 == 0);
        let other = vec![SanType::URI(
            "spiffe://cluster.local/ns/kafka/sa/admin"
                .try_into()
                .unwrap(),
        )];
        let err = ca
            .sign_csr(&csr(other), &wanted, DEFAULT_CERT_TTL)
            .unwrap_err();
        assert!(matches!(err, Error::CsrIdentityMismatch { .. }), "{err}");
        let dns = vec![SanType::DnsName("kafka.example".try_into().unwrap())];
        let err = ca
            .sign_csr(&csr(dns), &wanted, DEFAULT_CERT_TTL)
            .unwrap_err();
        assert!(matches!(err, Error::CsrIdentityMismatch { .. }), "{err}");
        // Not a CSR, or a foreign trust domain.
        let err = ca.sign_csr("hello", &wanted, DEFAULT_CERT_TTL).unwrap_err();
        assert!(matches!(err, Error::InvalidCsr { .. }), "{err}");
        let err = ca
            .sign_csr(
                &csr(vec![]),
                &id("spiffe://other.td/ns/a/sa/b"),
                DEFAULT_CERT_TTL,
            )
            .unwrap_err();
        assert!(matches!(err, Error::ForeignTrustDomain { .. }), "{err}");
    }

    /// A P-384 key signing with ecdsa-with-SHA256 (openssl req -sha256).
    const CSR_P384_KEY_SHA256: &str = "-----BEGIN CERTIFICATE REQUEST-----
MIH3MH8CAQAwADB2MBAGByqGSM49AgEGBSuBBAAiA2IABCio4sHxKOhAcNeWugUB
ukIn8YbJRMOT99+nWSe6+thyKiVHCGr+i74r1oueO7KnvZFHpVRoQiJIHY3q1iH5
0axDxn5Qc9yfP/5fcsPXMKQKMRdY1D6FnZIKgmLP5oTjc6AAMAoGCCqGSM49BAMC
A2gAMGUCMEoEjdaAg2ii6Uy3XrbD0/jJZQ92/t7ePscdkLfXJtpryL9VSPcVd+Ue
qUcKWJc9CQIxANAUxRt8nZ27KNC+zqwikM6z/gEEb328bejo2vQpFku1SqNaeChn
/4+9t5gi+4yNfQ==
-----END CERTIFICATE REQUEST-----
";

    /// A P-256 key signing with ecdsa-with-SHA384 (openssl req -sha384).
    const CSR_P256_KEY_SHA384: &str = "-----BEGIN CERTIFICATE REQUEST-----
MIG6MGICAQAwADBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABPJ5yqDDVtpqc0aq
lGRFEGZRS5aRF0d6F1aMipoOcsXF7/tu0umcFv8UEq66IUpiMUbUiEgJFxi5/NkB
jgYLoDWgADAKBggqhkjOPQQDAwNIADBFAiEAt3kWKp2EAgPEiac832kCta8mOOEk
92aAVFOVrM01bCsCIFM0cIuADXI4GwWRcgJBiB3y0qRfZ4GJGnh5ZG95GMOB
-----END CERTIFICATE REQUEST-----
";

    #[test]
    fn sign_csr_judges_the_key_not_the_signature_algorithm() {
        let ca = CertificateAuthority::generate(TrustDomain::default()).unwrap();
        let wanted = id("spiffe://cluster.local/ns/kafka/sa/broker");
        // ecdsa-with-SHA256 does not make a P-384 key a P-256 one: before,
        // this was signed into a certificate claiming prime256v1 around a
        // P-384 point.
        let err = ca
            .sign_csr(CSR_P384_KEY_SHA256, &wanted, DEFAULT_CERT_TTL)
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidCsr { reason } if reason.contains("not ECDSA P-256")),
            "{err}"
        );
        // A P-256 key is refused with the signature algorithm named when it
        // is not SHA-256 (the certificate's key algorithm follows it).
        let err = ca
            .sign_csr(CSR_P256_KEY_SHA384, &wanted, DEFAULT_CERT_TTL)
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidCsr { reason } if reason.contains("SHA-256")),
            "{err}"
        );
        // Other key types.
        for alg in [&rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
            let key = KeyPair::generate_for(alg).unwrap();
            let csr = CertificateParams::default()
                .serialize_request(&key)
                .unwrap()
                .pem()
                .unwrap();
            let err = ca.sign_csr(&csr, &wanted, DEFAULT_CERT_TTL).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidCsr { reason } if reason.contains("not ECDSA P-256")),
                "{err}"
            );
        }
    }

    #[test]
    fn issue_with_names_adds_dns_and_ip_sans() {
        let ca = CertificateAuthority::generate(TrustDomain::default()).unwrap();
        let control = id("spiffe://cluster.local/ns/istio-system/sa/weir-control");
        let cert = ca
            .issue_with_names(
                &control,
                &["weir-control.istio-system.svc".to_owned()],
                &["127.0.0.1".parse().unwrap()],
                DEFAULT_CERT_TTL,
            )
            .unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(cert.leaf()).unwrap();
        let names = x509
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .clone();
        use x509_parser::extensions::GeneralName;
        assert!(names.contains(&GeneralName::URI(
            "spiffe://cluster.local/ns/istio-system/sa/weir-control"
        )));
        assert!(names.contains(&GeneralName::DNSName("weir-control.istio-system.svc")));
        assert!(names.contains(&GeneralName::IPAddress(&[127, 0, 0, 1])));
        // Still a mesh certificate: exactly one SPIFFE id.
        assert_eq!(crate::spiffe_id_of(cert.leaf()).unwrap(), control);
    }
}
