//! Mutual TLS: the server's certificate, the CA that issues client certificates, who a
//! client certificate names, and throw-away certificates for development and tests.
//!
//! rustls (inside tonic) does the cryptography. The handshake refuses a client certificate
//! that the configured CA did not issue, or that has expired, so a certificate found in a
//! request's extensions has already been verified. This module only reads the subject
//! Common Name of its leaf, which [`super::auth`] maps to a configured client
//! (`[[clients]] cert_subject`).
//!
//! [`generate_dev_certs`] (the `dev-certs` subcommand) makes a CA, a server certificate
//! for loopback and one certificate per client id. They are for a laptop and for the
//! tests; production certificates come from the operator's own CA.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

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

/// Builds tonic's server TLS configuration from the `[tls]` settings. The files are read
/// and checked now, so a wrong path or a key that does not match its certificate stops
/// the server at start-up rather than failing every handshake.
pub fn server_tls_config(settings: &TlsSettings) -> Result<ServerTlsConfig, TlsError> {
    let cert = read(&settings.cert_file)?;
    certificates_in(&settings.cert_file, &cert)?;
    let key = read(&settings.key_file)?;
    if !pem_labels(&key).iter().any(|l| l.ends_with("PRIVATE KEY")) {
        return Err(TlsError::Pem {
            path: settings.key_file.clone(),
            problem: "no PEM private key in this file".into(),
        });
    }
    let mut config = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .timeout(Duration::from_secs(settings.handshake_timeout_secs));
    if let Some(ca_file) = &settings.client_ca_file {
        let ca = read(ca_file)?;
        certificates_in(ca_file, &ca)?;
        config = config
            .client_ca_root(Certificate::from_pem(ca))
            .client_auth_optional(!settings.require_client_cert);
    }
    // Build the rustls configuration once now: this is where a mismatched key shows.
    tonic::transport::Server::builder()
        .tls_config(config.clone())
        .map_err(|e| TlsError::Unusable(error_chain(&e)))?;
    Ok(config)
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

fn pem_labels(bytes: &[u8]) -> Vec<String> {
    x509_parser::pem::Pem::iter_from_buffer(bytes)
        .map_while(Result::ok)
        .map(|pem| pem.label)
        .collect()
}

/// Checks that `bytes` hold at least one PEM certificate and that every certificate
/// parses.
fn certificates_in(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    let bad = |problem: String| TlsError::Pem {
        path: path.to_path_buf(),
        problem,
    };
    let mut count = 0;
    for pem in x509_parser::pem::Pem::iter_from_buffer(bytes) {
        let pem = pem.map_err(|e| bad(format!("invalid PEM: {e}")))?;
        if pem.label != "CERTIFICATE" {
            continue;
        }
        pem.parse_x509()
            .map_err(|e| bad(format!("invalid certificate: {e}")))?;
        count += 1;
    }
    if count == 0 {
        return Err(bad("no PEM certificate in this file".into()));
    }
    Ok(())
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
        server_tls_config(&settings(dir.path(), true)).unwrap();
        server_tls_config(&TlsSettings {
            client_ca_file: None,
            ..settings(dir.path(), false)
        })
        .unwrap();
    }

    #[test]
    fn a_missing_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = server_tls_config(&settings(dir.path(), true)).unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }));
        assert!(err.to_string().contains("server.pem"), "{err}");
    }

    #[test]
    fn a_key_in_place_of_a_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate_dev_certs(dir.path(), &["dev"]).unwrap();
        let err = server_tls_config(&TlsSettings {
            cert_file: files.server_key.clone(),
            ..settings(dir.path(), true)
        })
        .unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        let err = server_tls_config(&TlsSettings {
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
        let err = server_tls_config(&TlsSettings {
            key_file: files.clients[0].key.clone(),
            ..settings(dir.path(), true)
        })
        .unwrap_err();
        assert!(matches!(err, TlsError::Unusable(_)), "{err}");
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
