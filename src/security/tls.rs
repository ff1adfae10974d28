//! Mutual TLS: the server's certificate, the CA that issues client certificates, the CRLs
//! that revoke them, who a client certificate names, and throw-away certificates for
//! development and tests.
//!
//! rustls does the cryptography, with the configuration [`ServerTls::load`] builds from the
//! `[tls]` files (ring as the provider). The handshake refuses a client certificate that
//! the configured CA did not issue, that has expired, or that a configured CRL revokes, so
//! a certificate found in a request's extensions has been verified. This module reads
//! the subject Common Name of its leaf, which [`super::auth`] maps to a configured client
//! (`[[clients]] cert_subject`), and tells whether a CRL loaded since lists it.
//!
//! The server does the handshakes itself (`super::handshake`) rather than through tonic's
//! TLS settings, so that a reload (`super::live`) can give new handshakes new material
//! without touching established connections. Requests still carry tonic's
//! `TlsConnectInfo`: tonic implements `Connected` for the rustls stream.
//!
//! [`generate_dev_certs`] (the `dev-certs` subcommand) makes a CA, a server certificate
//! for loopback and one certificate per client id; [`dev_crl`] revokes some of them. They
//! are for a laptop and for the tests; production certificates come from the operator's
//! own CA.

use std::collections::HashSet;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use sha2::{Digest as _, Sha256};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use serde::Deserialize;

/// The `[tls]` section: serve gRPC over TLS, normally with client certificates.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain of the server, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key of the server (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM certificate(s) of the CA that issues client certificates.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// Refuse the TLS handshake of a client without a valid certificate. `false` also
    /// lets token-only clients in (over TLS); certificates are still checked when sent.
    #[serde(default = "default_true")]
    pub require_client_cert: bool,
    /// Longest a TLS handshake may take, so idle connections cannot pile up.
    #[serde(default = "default_handshake_timeout_secs")]
    pub handshake_timeout_secs: u64,
    /// CRLs (PEM or DER) issued by the CAs of `client_ca_file`: a client certificate
    /// they list is refused. Re-read, like every file here, on SIGHUP.
    #[serde(default)]
    pub crl_files: Vec<PathBuf>,
}

fn default_true() -> bool {
    true
}

fn default_handshake_timeout_secs() -> u64 {
    10
}

/// The names the development server certificate is valid for: what a local client dials.
pub const DEV_SERVER_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// How long development certificates stay valid.
const DEV_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why TLS material could not be loaded or made. Every variant names the file involved,
/// so a start-up failure says which setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A configured file is missing or unreadable.
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file does not hold what its setting says (no certificate, no private key, ...).
    #[error("{path}: {problem}")]
    Pem { path: PathBuf, problem: String },
    /// The files are readable but do not make a working TLS configuration (a key that
    /// does not match the certificate, an unsupported key type, ...).
    #[error("unusable TLS configuration: {0}")]
    Unusable(String),
    /// `dev-certs` never overwrites: an existing CA or key may already be in use.
    #[error("{0} already exists; remove the old development certificates to make new ones")]
    Exists(PathBuf),
    /// A client id that cannot serve as a Common Name and a file name.
    #[error("client id {0:?}: use letters, digits, '.', '-' or '_' (not \"ca\" or \"server\")")]
    ClientId(String),
    /// Certificate generation failed.
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
}

/// What the `[tls]` files make: the rustls configuration new handshakes use, and what
/// the configured CRLs revoke. Loaded and checked in one go, so that a reload replaces
/// all of it or none of it (see [`super::live`]).
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
    handshake_timeout: Duration,
    revoked: Revoked,
    summary: TlsSummary,
}

/// What a [`ServerTls`] holds, for the logs: counts and a public fingerprint, nothing
/// secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSummary {
    /// Hex SHA-256 of the server's leaf certificate (DER): what
    /// `openssl x509 -noout -fingerprint -sha256` prints, in lower case without colons.
    pub server_certificate: String,
    /// Certificates in `client_ca_file`.
    pub client_cas: usize,
    /// CRLs read from `crl_files`.
    pub crls: usize,
    /// Certificates those CRLs revoke.
    pub revoked_certificates: usize,
    pub require_client_cert: bool,
}

impl ServerTls {
    /// Reads and checks every `[tls]` file: a wrong path, a key that does not match its
    /// certificate, or a CRL that is unreadable or not issued by a client CA stops the
    /// server at start-up (or fails a reload) with an error naming the file, rather than
    /// failing handshakes later.
    ///
    /// Revocation: with `crl_files`, the client certificate (the end entity) must be
    /// covered by a CRL of its issuer; a certificate whose issuer has no CRL is refused
    /// (unknown status counts as revoked), and every CA in `client_ca_file` must have a
    /// CRL, so that this shows now and not as refused clients. A CRL past its nextUpdate
    /// still revokes what it lists (expiry is not enforced: a stalled CRL publisher must
    /// not lock every client out); it is reported with a warning.
    pub fn load(settings: &TlsSettings) -> Result<ServerTls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = certificates(&settings.cert_file)?;
        let key = private_key(&settings.key_file)?;
        let server_certificate = hex::encode(Sha256::digest(chain[0].as_ref()));

        let (verifier, client_cas, crls, revoked) = match &settings.client_ca_file {
            None => {
                if settings.require_client_cert {
                    return Err(TlsError::Unusable(
                        "require_client_cert needs client_ca_file".into(),
                    ));
                }
                if let Some(path) = settings.crl_files.first() {
                    return Err(TlsError::Pem {
                        path: path.clone(),
                        problem: "crl_files needs client_ca_file (the CA whose client \
                                  certificates the CRLs revoke)"
                            .into(),
                    });
                }
                (
                    WebPkiClientVerifier::no_client_auth(),
                    0,
                    0,
                    Revoked::default(),
                )
            }
            Some(ca_file) => {
                let cas = certificates(ca_file)?;
                let mut roots = RootCertStore::empty();
                for ca in &cas {
                    roots.add(ca.clone()).map_err(|e| TlsError::Pem {
                        path: ca_file.clone(),
                        problem: format!("a certificate that cannot serve as a CA: {e}"),
                    })?;
                }
                let roots = Arc::new(roots);
                let crls = Crls::load(&settings.crl_files, ca_file, &cas)?;
                // rustls parses CRLs more strictly than the check above: try each file
                // on its own, so that a refusal names it.
                for (path, ders) in &crls.by_file {
                    WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                        .with_crls(ders.iter().cloned())
                        .build()
                        .map_err(|e| TlsError::Pem {
                            path: path.clone(),
                            problem: format!("a CRL rustls cannot use: {e}"),
                        })?;
                }
                let count = crls.by_file.iter().map(|(_, ders)| ders.len()).sum();
                let mut builder =
                    WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                        .with_crls(crls.by_file.into_iter().flat_map(|(_, ders)| ders))
                        .only_check_end_entity_revocation();
                if !settings.require_client_cert {
                    builder = builder.allow_unauthenticated();
                }
                let verifier = builder
                    .build()
                    .map_err(|e| TlsError::Unusable(e.to_string()))?;
                (verifier, cas.len(), count, crls.revoked)
            }
        };
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Unusable(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Unusable(error_chain(&e)))?;
        // gRPC is HTTP/2 only; clients (tonic's among them) insist on ALPN h2.
        config.alpn_protocols = vec![b"h2".to_vec()];
        let summary = TlsSummary {
            server_certificate,
            client_cas,
            crls,
            revoked_certificates: revoked.len(),
            require_client_cert: settings.require_client_cert,
        };
        Ok(ServerTls {
            config: Arc::new(config),
            handshake_timeout: Duration::from_secs(settings.handshake_timeout_secs),
            revoked,
            summary,
        })
    }

    /// The rustls configuration for a new handshake. Each configuration has its own
    /// session cache, so a reload also ends resumption of sessions made before it: a
    /// revoked certificate cannot come back through a resumed session.
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }

    /// Longest a TLS handshake may take (`handshake_timeout_secs`).
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// What the configured CRLs revoke.
    pub fn revoked(&self) -> &Revoked {
        &self.revoked
    }

    pub fn summary(&self) -> &TlsSummary {
        &self.summary
    }
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

/// The certificates the configured CRLs revoke, by issuer and serial number.
///
/// The handshake consults the CRLs itself; this set serves the calls on connections that
/// were opened before a reload brought a new CRL: such a call is refused when its
/// client certificate is listed (see `auth::PeerCertificate::Revoked`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revoked(HashSet<(Vec<u8>, Vec<u8>)>);

impl Revoked {
    /// True when a CRL lists this DER certificate (same issuer name, same serial).
    pub fn lists(&self, der: &[u8]) -> bool {
        if self.0.is_empty() {
            return false;
        }
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return false;
        };
        self.0
            .contains(&(cert.issuer().as_raw().to_vec(), cert.raw_serial().to_vec()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The CRLs of `crl_files`, checked against the client CAs.
struct Crls {
    by_file: Vec<(PathBuf, Vec<CertificateRevocationListDer<'static>>)>,
    revoked: Revoked,
}

impl Crls {
    fn load(
        paths: &[PathBuf],
        ca_file: &Path,
        cas: &[CertificateDer<'static>],
    ) -> Result<Crls, TlsError> {
        let parsed_cas: Vec<_> = cas
            .iter()
            .filter_map(|der| x509_parser::parse_x509_certificate(der.as_ref()).ok())
            .map(|(_, cert)| cert)
            .collect();
        let mut covered = vec![false; parsed_cas.len()];
        let mut crls = Crls {
            by_file: Vec::new(),
            revoked: Revoked::default(),
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        for path in paths {
            let bad = |problem: String| TlsError::Pem {
                path: path.clone(),
                problem,
            };
            let bytes = read(path)?;
            let ders = crl_ders(&bytes).map_err(bad)?;
            for der in &ders {
                let (_, crl) = x509_parser::parse_x509_crl(der.as_ref())
                    .map_err(|e| bad(format!("invalid CRL: {e}")))?;
                let issuer = crl.issuer();
                let named: Vec<usize> = (0..parsed_cas.len())
                    .filter(|&i| parsed_cas[i].subject().as_raw() == issuer.as_raw())
                    .collect();
                if named.is_empty() {
                    return Err(bad(format!(
                        "a CRL issued by \"{issuer}\", which is not a CA in {}",
                        ca_file.display()
                    )));
                }
                // Two CAs may share a name (a re-keyed CA): the signature decides.
                let Some(i) = named
                    .into_iter()
                    .find(|&i| crl.verify_signature(parsed_cas[i].public_key()).is_ok())
                else {
                    return Err(bad(format!(
                        "the CRL's signature does not verify with the key of \"{issuer}\" in {}",
                        ca_file.display()
                    )));
                };
                covered[i] = true;
                if crl.next_update().is_some_and(|next| next.timestamp() < now) {
                    tracing::warn!(
                        crl = %path.display(),
                        issuer = %issuer,
                        "a CRL is past its nextUpdate: it still revokes what it lists, but \
                         publish a fresh one and reload"
                    );
                }
                for entry in crl.iter_revoked_certificates() {
                    crls.revoked
                        .0
                        .insert((issuer.as_raw().to_vec(), entry.raw_serial().to_vec()));
                }
            }
            crls.by_file.push((path.clone(), ders));
        }
        if !paths.is_empty() {
            if let Some(i) = covered.iter().position(|c| !c) {
                return Err(TlsError::Pem {
                    path: ca_file.to_path_buf(),
                    problem: format!(
                        "the client CA \"{}\" has no CRL in crl_files; with crl_files set \
                         every client CA needs one (an empty CRL will do), or each of its \
                         clients would be refused",
                        parsed_cas[i].subject()
                    ),
                });
            }
        }
        Ok(crls)
    }
}

/// The CRLs in a file: PEM (`-----BEGIN X509 CRL-----`, one or more) or a single DER CRL.
fn crl_ders(bytes: &[u8]) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    // DER starts with a SEQUENCE tag; PEM with text.
    if bytes.first() == Some(&0x30) {
        return Ok(vec![CertificateRevocationListDer::from(bytes.to_vec())]);
    }
    let ders = CertificateRevocationListDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid PEM: {e}"))?;
    if ders.is_empty() {
        return Err("no CRL in this file (PEM `X509 CRL` or DER expected)".into());
    }
    Ok(ders)
}

/// The certificates of a PEM file, each checked to parse; at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let bad = |problem: String| TlsError::Pem {
        path: path.to_path_buf(),
        problem,
    };
    let mut out = Vec::new();
    for pem in x509_parser::pem::Pem::iter_from_buffer(&bytes) {
        let pem = pem.map_err(|e| bad(format!("invalid PEM: {e}")))?;
        if pem.label != "CERTIFICATE" {
            continue;
        }
        pem.parse_x509()
            .map_err(|e| bad(format!("invalid certificate: {e}")))?;
        out.push(CertificateDer::from(pem.contents));
    }
    if out.is_empty() {
        return Err(bad("no PEM certificate in this file".into()));
    }
    Ok(out)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        problem: match e {
            rustls::pki_types::pem::Error::NoItemsFound => "no PEM private key in this file".into(),
            other => format!("invalid PEM private key: {other}"),
        },
    })
}

/// True when the request arrived over TLS.
pub fn is_tls(ext: &http::Extensions) -> bool {
    ext.get::<TlsConnectInfo<TcpConnectInfo>>().is_some()
}

/// The DER of the client's leaf certificate, when the request came over TLS with a client
/// certificate. The handshake has verified it against the client CA.
pub fn peer_leaf_certificate(ext: &http::Extensions) -> Option<Vec<u8>> {
    let certs = ext.get::<TlsConnectInfo<TcpConnectInfo>>()?.peer_certs()?;
    certs.first().map(|leaf| leaf.to_vec())
}

/// The client id named by the verified client certificate: its subject Common Name.
/// `None` over plain text, without a client certificate, or when the certificate has no
/// single readable Common Name.
pub fn peer_client_id(ext: &http::Extensions) -> Option<String> {
    peer_leaf_certificate(ext).and_then(|der| common_name(&der))
}

/// The subject Common Name of a DER certificate. A certificate with several Common Names
/// is ambiguous and names nobody.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut names = cert.subject().iter_common_name();
    let name = names.next()?.as_str().ok()?.to_owned();
    if names.next().is_some() || name.is_empty() {
        return None;
    }
    Some(name)
}

/// Where [`generate_dev_certs`] wrote each file.
#[derive(Debug, Clone)]
pub struct DevCertFiles {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub clients: Vec<ClientCertFiles>,
}

/// One client's certificate and key.
#[derive(Debug, Clone)]
pub struct ClientCertFiles {
    /// The certificate's Common Name: the `cert_subject` to configure for the client.
    pub client_id: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes a development CA, a server certificate for [`DEV_SERVER_NAMES`] and a client
/// certificate per id (Common Name = the id) in `dir`: `ca.pem`, `ca.key`, `server.pem`,
/// `server.key`, `<client>.pem`, `<client>.key`. Keys are written with mode 0600.
/// Nothing is written if any of the files already exists.
pub fn generate_dev_certs(dir: &Path, clients: &[&str]) -> Result<DevCertFiles, TlsError> {
    let mut seen = std::collections::HashSet::new();
    for id in clients {
        if !valid_client_id(id) || !seen.insert(*id) {
            return Err(TlsError::ClientId((*id).to_owned()));
        }
    }
    let now = time::OffsetDateTime::now_utc();
    // An hour of slack for clocks that run a little behind.
    let not_before = now - time::Duration::hours(1);
    let not_after = now + DEV_VALIDITY;

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "payout-registry development CA");
    ca.distinguished_name.push(
        DnType::OrganizationName,
        "payout-registry (development only)",
    );
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    (ca.not_before, ca.not_after) = (not_before, not_after);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let leaf = |common_name: &str,
                names: Vec<String>,
                usage: ExtendedKeyUsagePurpose|
     -> Result<(String, String), TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        (params.not_before, params.not_after) = (not_before, not_after);
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    };

    let files = DevCertFiles {
        ca_cert: dir.join("ca.pem"),
        ca_key: dir.join("ca.key"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        clients: clients
            .iter()
            .map(|id| ClientCertFiles {
                client_id: (*id).to_owned(),
                cert: dir.join(format!("{id}.pem")),
                key: dir.join(format!("{id}.key")),
            })
            .collect(),
    };
    // (path, contents, private)
    let mut out = vec![
        (files.ca_cert.clone(), ca_cert.pem(), false),
        (files.ca_key.clone(), issuer.key().serialize_pem(), true),
    ];
    let server_names = DEV_SERVER_NAMES.iter().map(|s| s.to_string()).collect();
    let (cert, key) = leaf(
        "localhost",
        server_names,
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    out.push((files.server_cert.clone(), cert, false));
    out.push((files.server_key.clone(), key, true));
    for client in &files.clients {
        let (cert, key) = leaf(
            &client.client_id,
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        out.push((client.cert.clone(), cert, false));
        out.push((client.key.clone(), key, true));
    }

    if let Some((path, _, _)) = out.iter().find(|(path, _, _)| path.exists()) {
        return Err(TlsError::Exists(path.clone()));
    }
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    for (path, contents, private) in &out {
        write_new_file(path, contents, *private).map_err(|source| TlsError::Write {
            path: path.clone(),
            source,
        })?;
    }
    Ok(files)
}

/// A CRL signed by the CA of `ca_cert` and `ca_key` (PEM files, as [`generate_dev_certs`]
/// writes them) that revokes the certificates in the PEM files `revoked`, valid from an
/// hour ago for a week; PEM text, for `crl_files`. For development and the tests: a
/// production CRL comes from the operator's CA.
pub fn dev_crl(ca_cert: &Path, ca_key: &Path, revoked: &[&Path]) -> Result<String, TlsError> {
    let now = time::OffsetDateTime::now_utc();
    crl_signed(
        ca_cert,
        ca_key,
        revoked,
        now - time::Duration::hours(1),
        now + time::Duration::days(7),
    )
}

/// [`dev_crl`] with its validity given (a stale CRL, for the tests).
pub fn crl_signed(
    ca_cert: &Path,
    ca_key: &Path,
    revoked: &[&Path],
    this_update: time::OffsetDateTime,
    next_update: time::OffsetDateTime,
) -> Result<String, TlsError> {
    let text = |path: &Path| {
        String::from_utf8(read(path)?).map_err(|_| TlsError::Pem {
            path: path.to_path_buf(),
            problem: "not a PEM file".into(),
        })
    };
    let key = KeyPair::from_pem(&text(ca_key)?)?;
    let issuer = Issuer::from_ca_cert_pem(&text(ca_cert)?, key)?;
    let mut revoked_certs = Vec::new();
    for path in revoked {
        for der in certificates(path)? {
            let (_, cert) =
                x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| TlsError::Pem {
                    path: path.to_path_buf(),
                    problem: format!("invalid certificate: {e}"),
                })?;
            revoked_certs.push(rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(&cert.serial.to_bytes_be()),
                revocation_time: this_update,
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            });
        }
    }
    let params = rcgen::CertificateRevocationListParams {
        this_update,
        next_update,
        // Later CRLs carry larger numbers.
        crl_number: rcgen::SerialNumber::from(now_millis()),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    Ok(params.signed_by(&issuer)?.pem()?)
}

fn now_millis() -> u64 {
    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// Creates `path` (never overwriting) and writes `contents`; `private` files get mode
/// 0600 from the moment they exist, so a key is never readable by others, even briefly.
pub(crate) fn write_new_file(path: &Path, contents: &str, private: bool) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = options.open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

/// A client id doubles as a file name here, so it is kept to a safe alphabet.
fn valid_client_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !matches!(id, "ca" | "server")
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Whether `ip` is a loopback address, counting IPv4 loopback written as IPv6
/// (`::ffff:127.0.0.1`).
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path, require_client_cert: bool) -> TlsSettings {
        TlsSettings {
            cert_file: dir.join("server.pem"),
            key_file: dir.join("server.key"),
            client_ca_file: Some(dir.join("ca.pem")),
            require_client_cert,
            handshake_timeout_secs: 10,
            crl_files: Vec::new(),
        }
    }

    fn der_of(path: &Path) -> Vec<u8> {
        let bytes = std::fs::read(path).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&bytes).unwrap();
        pem.contents
    }

    #[test]
    fn dev_certs_are_written_with_private_keys_readable_only_by_the_owner() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate_dev_certs(dir.path(), &["dev", "vss-payroll"]).unwrap();
        for name in [
            "ca.pem",
            "ca.key",
            "server.pem",
            "server.key",
            "dev.pem",
            "dev.key",
            "vss-payroll.pem",
            "vss-payroll.key",
        ] {
            assert!(dir.path().join(name).is_file(), "{name} written");
        }
        assert_eq!(files.clients.len(), 2);
        #[cfg(unix)]
        for key in [&files.ca_key, &files.server_key, &files.clients[1].key] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", key.display());
        }
    }

    #[test]
    fn a_client_certificate_names_its_client_id_as_common_name() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate_dev_certs(dir.path(), &["vss-payroll"]).unwrap();
        let der = der_of(&files.clients[0].cert);
        assert_eq!(common_name(&der).as_deref(), Some("vss-payroll"));
    }

    #[test]
    fn the_server_certificate_is_valid_for_every_loopback_name() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate_dev_certs(dir.path(), &[]).unwrap();
        let der = der_of(&files.server_cert);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap().value;
        let names: Vec<String> = san
            .general_names
            .iter()
            .map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => d.to_string(),
                x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(*ip).unwrap()).to_string(),
                    _ => IpAddr::from(<[u8; 16]>::try_from(*ip).unwrap()).to_string(),
                },
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(names, DEV_SERVER_NAMES);
    }

    #[test]
    fn dev_certs_never_overwrite_existing_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("dev.key"), "keep me").unwrap();
        let err = generate_dev_certs(dir.path(), &["dev"]).unwrap_err();
        assert!(matches!(err, TlsError::Exists(_)), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("dev.key")).unwrap(),
            "keep me"
        );
        assert!(
            !dir.path().join("ca.pem").exists(),
            "nothing written on refusal"
        );
    }

    #[test]
    fn client_ids_that_are_not_safe_file_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for id in [
            "",
            "../etc/passwd",
            "a/b",
            "server",
            "ca",
            ".hidden",
            "có dấu",
        ] {
            assert!(
                matches!(
                    generate_dev_certs(dir.path(), &[id]),
                    Err(TlsError::ClientId(_))
                ),
                "{id:?}"
            );
        }
        assert!(matches!(
            generate_dev_certs(dir.path(), &["dev", "dev"]),
            Err(TlsError::ClientId(_))
        ));
    }

    #[test]
    fn generated_files_load_as_a_server_tls_configuration() {
        let dir = tempfile::tempdir().unwrap();
        generate_dev_certs(dir.path(), &["dev"]).unwrap();
        ServerTls::load(&settings(dir.path(), true)).unwrap();
        ServerTls::load(&TlsSettings {
            client_ca_file: None,
            ..settings(dir.path(), false)
        })
        .unwrap();
    }

    #[test]
    fn a_missing_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = ServerTls::load(&settings(dir.path(), true)).unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }));
        assert!(err.to_string().contains("server.pem"), "{err}");
    }

    #[test]
    fn a_key_in_place_of_a_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate_dev_certs(dir.path(), &["dev"]).unwrap();
        let err = ServerTls::load(&TlsSettings {
            cert_file: files.server_key.clone(),
            ..settings(dir.path(), true)
        })
        .unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        let err = ServerTls::load(&TlsSettings {
            key_file: files.server_cert.clone(),
            ..settings(dir.path(), true)
        })
        .unwrap_err();
        assert!(err.to_string().contains("no PEM private key"), "{err}");
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate_dev_certs(dir.path(), &["dev"]).unwrap();
        let err = ServerTls::load(&TlsSettings {
            key_file: files.clients[0].key.clone(),
            ..settings(dir.path(), true)
        })
        .unwrap_err();
        assert!(matches!(err, TlsError::Unusable(_)), "{err}");
    }

    /// Development certificates for `dev` and `other`, and the settings serving them.
    fn with_crls(dir: &Path, crls: &[(&str, String)]) -> TlsSettings {
        let mut s = settings(dir, true);
        for (name, contents) in crls {
            std::fs::write(dir.join(name), contents).unwrap();
            s.crl_files.push(dir.join(name));
        }
        s
    }

    #[test]
    fn a_crl_lists_the_certificates_it_revokes_and_no_others() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate_dev_certs(dir.path(), &["dev", "other"]).unwrap();
        let crl = dev_crl(&files.ca_cert, &files.ca_key, &[&files.clients[0].cert]).unwrap();
        let tls = ServerTls::load(&with_crls(dir.path(), &[("ca.crl.pem", crl)])).unwrap();
        assert!(tls.revoked().lists(&der_of(&files.clients[0].cert)));
        assert!(!tls.revoked().lists(&der_of(&files.clients[1].cert)));
        assert_eq!(tls.summary().crls, 1);
        assert_eq!(tls.summary().revoked_certificates, 1);
    }

    #[test]
    fn a_crl_loads_from_der_as_well_as_pem() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate_dev_certs(dir.path(), &["dev"]).unwrap();
        let pem = dev_crl(&files.ca_cert, &files.ca_key, &[&files.clients[0].cert]).unwrap();
        let der = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .unwrap()
            .1
            .contents;
        std::fs::write(dir.path().join("ca.crl"), der).unwrap();
        let mut s = settings(dir.path(), true);
        s.crl_files.push(dir.path().join("ca.crl"));
        let tls = ServerTls::load(&s).unwrap();
        assert!(tls.revoked().lists(&der_of(&files.clients[0].cert)));
    }

    #[test]
    fn a_missing_or_unreadable_crl_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        generate_dev_certs(dir.path(), &["dev"]).unwrap();
        let mut s = settings(dir.path(), true);
        s.crl_files.push(dir.path().join("absent.crl.pem"));
        let err = ServerTls::load(&s).unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err}");
        assert!(err.to_string().contains("absent.crl.pem"), "{err}");
        for (name, garbage) in [
            ("text.crl.pem", "not a CRL at all\n".to_owned()),
            (
                "cert.crl.pem",
                std::fs::read_to_string(dir.path().join("dev.pem")).unwrap(),
            ),
            (
                "broken.crl.pem",
                "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n".to_owned(),
            ),
        ] {
            let err = ServerTls::load(&with_crls(dir.path(), &[(name, garbage)])).unwrap_err();
            assert!(matches!(err, TlsError::Pem { .. }), "{name}: {err}");
            assert!(err.to_string().contains(name), "{name}: {err}");
        }
    }

    #[test]
    fn a_crl_of_another_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        generate_dev_certs(dir.path(), &["dev"]).unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let other = generate_dev_certs(elsewhere.path(), &["dev"]).unwrap();
        let crl = dev_crl(&other.ca_cert, &other.ca_key, &[&other.clients[0].cert]).unwrap();
        let err = ServerTls::load(&with_crls(dir.path(), &[("other.crl.pem", crl)])).unwrap_err();
        // Both development CAs have the same name: the signature tells them apart.
        assert!(err.to_string().contains("other.crl.pem"), "{err}");
        assert!(err.to_string().contains("signature"), "{err}");
    }

    #[test]
    fn with_crl_files_every_client_ca_needs_a_crl() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate_dev_certs(dir.path(), &["dev"]).unwrap();
        let crl = dev_crl(&files.ca_cert, &files.ca_key, &[]).unwrap();
        // A second CA in the bundle, without a CRL.
        let elsewhere = tempfile::tempdir().unwrap();
        let other = generate_dev_certs(elsewhere.path(), &[]).unwrap();
        let bundle = std::fs::read_to_string(&files.ca_cert).unwrap()
            + &std::fs::read_to_string(&other.ca_cert).unwrap();
        std::fs::write(dir.path().join("bundle.pem"), bundle).unwrap();
        let mut s = with_crls(dir.path(), &[("ca.crl.pem", crl)]);
        s.client_ca_file = Some(dir.path().join("bundle.pem"));
        let err = ServerTls::load(&s).unwrap_err();
        assert!(err.to_string().contains("has no CRL"), "{err}");
        assert!(err.to_string().contains("bundle.pem"), "{err}");
    }

    #[test]
    fn crl_files_without_a_client_ca_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate_dev_certs(dir.path(), &["dev"]).unwrap();
        let crl = dev_crl(&files.ca_cert, &files.ca_key, &[]).unwrap();
        let mut s = with_crls(dir.path(), &[("ca.crl.pem", crl)]);
        s.client_ca_file = None;
        s.require_client_cert = false;
        let err = ServerTls::load(&s).unwrap_err();
        assert!(err.to_string().contains("client_ca_file"), "{err}");
    }

    #[test]
    fn a_crl_past_its_next_update_still_loads_and_still_revokes() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate_dev_certs(dir.path(), &["dev"]).unwrap();
        let now = time::OffsetDateTime::now_utc();
        let crl = crl_signed(
            &files.ca_cert,
            &files.ca_key,
            &[&files.clients[0].cert],
            now - time::Duration::days(10),
            now - time::Duration::days(3),
        )
        .unwrap();
        let tls = ServerTls::load(&with_crls(dir.path(), &[("stale.crl.pem", crl)])).unwrap();
        assert!(tls.revoked().lists(&der_of(&files.clients[0].cert)));
    }

    #[test]
    fn a_plain_text_request_names_no_client() {
        let mut ext = http::Extensions::new();
        assert_eq!(peer_client_id(&ext), None);
        ext.insert(TcpConnectInfo {
            local_addr: None,
            remote_addr: Some(([127, 0, 0, 1], 4000).into()),
        });
        assert_eq!(peer_client_id(&ext), None);
        assert!(!is_tls(&ext));
    }

    #[test]
    fn loopback_includes_ipv4_mapped_ipv6() {
        assert!(is_loopback("127.0.0.1".parse().unwrap()));
        assert!(is_loopback("::1".parse().unwrap()));
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_loopback("10.0.0.1".parse().unwrap()));
        assert!(!is_loopback("::ffff:10.0.0.1".parse().unwrap()));
    }
}
