//! The client library: how a program talks to a running registry.
//!
//! [`connect`] opens a channel (plain text, TLS, or mutual TLS with a client certificate)
//! and gives the [`Credentials`] to send with every call: a bearer token (development)
//! and the purpose of the reads (recorded in the access log). [`describe`] turns a
//! refusal into a line an operator can act on (code, message, stable reason, fields).
//! The command line and the bulk tools (import, load generator) use this library; the
//! server never does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A service client that sends [`Credentials`] with every call.
pub type Authed = tonic::service::interceptor::InterceptedService<Channel, Credentials>;

/// Where the registry is and how to prove who we are.
#[derive(Debug, Clone, Default)]
pub struct Endpoint {
    /// `http://host:port`, or `https://...` (TLS is used whenever `ca` is given).
    pub addr: String,
    /// PEM CA certificate that issued the server's certificate: connect over TLS.
    pub ca: Option<PathBuf>,
    /// PEM client certificate and key for mutual TLS (its Common Name names the client).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Bearer token; without one (and without a certificate) `token_file` is read.
    pub token: Option<String>,
    pub token_file: PathBuf,
    /// Why we read citizens' data (sent as `x-purpose`).
    pub purpose: String,
    /// The deadline of each unary call (sent as `grpc-timeout`, enforced here too);
    /// streams run without one (see [`Credentials::for_streams`]).
    pub deadline: Option<Duration>,
}

/// Longest the client waits for a connection to the registry.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Adds the bearer token (if any) and the purpose to every request.
#[derive(Clone)]
pub struct Credentials {
    authorization: Option<MetadataValue<Ascii>>,
    purpose: Option<MetadataValue<Ascii>>,
    deadline: Option<Duration>,
}

impl Credentials {
    /// Sends `Bearer <token>` (if any) and the purpose with every request.
    pub fn new(token: Option<&str>, purpose: &str) -> anyhow::Result<Credentials> {
        Ok(Credentials {
            authorization: token.map(|t| format!("Bearer {t}").parse()).transpose()?,
            purpose: Some(purpose.parse()?),
            deadline: None,
        })
    }

    /// The same credentials without a per-call deadline, for streams that run as long
    /// as they have work (an import, a payroll file, a subscription).
    pub fn for_streams(mut self) -> Credentials {
        self.deadline = None;
        self
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(a) = &self.authorization {
            req.metadata_mut().insert("authorization", a.clone());
        }
        if let Some(p) = &self.purpose {
            req.metadata_mut().insert("x-purpose", p.clone());
        }
        if let Some(d) = self.deadline {
            req.set_timeout(d);
        }
        Ok(req)
    }
}

/// Connects to the registry at `endpoint`, and answers what to send with every call.
pub async fn connect(endpoint: &Endpoint) -> anyhow::Result<(Channel, Credentials)> {
    // A client certificate identifies the caller by itself; the token file is read only
    // without one (it may belong to another client than the certificate).
    let token = match (&endpoint.token, &endpoint.cert) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(_)) => None,
        (None, None) => Some(read_token_file(&endpoint.token_file)?),
    };
    let channel = match client_tls(endpoint)? {
        Some(tls) => {
            let addr = match endpoint.addr.split_once("://") {
                Some((_, rest)) => format!("https://{rest}"),
                None => format!("https://{}", endpoint.addr),
            };
            Channel::from_shared(addr)?.tls_config(tls)?
        }
        None if endpoint.addr.starts_with("https://") => {
            anyhow::bail!("an https:// address needs --ca (the CA of the server's certificate)")
        }
        None => Channel::from_shared(endpoint.addr.clone())?,
    }
    .connect_timeout(CONNECT_TIMEOUT)
    .connect()
    .await
    .with_context(|| format!("connecting to {}", endpoint.addr))?;
    let credentials = Credentials {
        authorization: token.map(|t| format!("Bearer {t}").parse()).transpose()?,
        purpose: endpoint.purpose.parse().ok(),
        deadline: endpoint.deadline,
    };
    Ok((channel, credentials))
}

/// The token in `path` (the development client's `data/dev-token`, say).
pub fn read_token_file(path: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| {
            format!(
                "no --token or --cert given and {} is unreadable (is the server running on \
                 the embedded default?)",
                path.display()
            )
        })?
        .trim()
        .to_owned())
}

/// The client's TLS settings, when a CA is given: the server is verified against that
/// CA, and the certificate and key (if given) are presented as the client's identity.
fn client_tls(endpoint: &Endpoint) -> anyhow::Result<Option<ClientTlsConfig>> {
    let Some(ca) = &endpoint.ca else {
        return Ok(None);
    };
    let read =
        |path: &Path| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
    if let (Some(cert), Some(key)) = (&endpoint.cert, &endpoint.key) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(Some(tls))
}

/// A refusal as an operator reads it: the code, the message, the stable reason from the
/// ErrorInfo and the fields at fault.
pub fn describe(e: tonic::Status) -> anyhow::Error {
    use tonic_types::StatusExt;
    let details = e.get_error_details();
    let reason = details
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default();
    let fields: Vec<String> = details
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default();
    anyhow::anyhow!(
        "{:?}: {} [reason {reason}{}]",
        e.code(),
        e.message(),
        if fields.is_empty() {
            String::new()
        } else {
            format!(", field {}", fields.join(","))
        }
    )
}

/// An enum value's name without its enum's prefix, as the README, the command line and
/// the CSV formats write it: `short_name("ACCOUNT_STATUS_VERIFIED", "ACCOUNT_STATUS_")` is
/// `VERIFIED`.
pub fn short_name<'a>(name: &'a str, prefix: &str) -> &'a str {
    name.strip_prefix(prefix).unwrap_or(name)
}
