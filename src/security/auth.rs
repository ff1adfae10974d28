//! Who is calling, and may they?
//!
//! A client is identified by the verified certificate it presented over mutual TLS (its
//! Common Name is a configured `cert_subject`; see [`super::tls`]), or by
//! `authorization: Bearer <token>`, which is meant for development. The certificate wins:
//! a call that carries both must name the same client with each, or it is refused.
//!
//! The registry keeps only SHA-256 digests of tokens (from the configuration). The digest
//! of a presented token is compared with every configured digest in constant time, with
//! no early exit, so neither how much of a token matched nor which client it belongs to
//! shows in the timing. Tokens are accepted over TLS and over plain text from loopback;
//! from other addresses in plain text only when the configuration explicitly allows plain
//! text there (`allow_plaintext_non_loopback`, e.g. behind a TLS-terminating proxy).
//!
//! Every RPC needs one of the scopes in [`required`]; anything not listed is denied (deny
//! by default). Health checks and reflection are public: they reveal nothing about
//! citizens.
//!
//! The check runs as a tower layer in front of every service, inside the call layer
//! (`telemetry::calls`) that gives each call its request id and span. It reads the
//! client table in force at each call ([`super::live`]): a reload that removes a client,
//! or whose CRL lists its certificate, refuses that client's next call, even on a
//! connection opened before the reload.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::task::{Context, Poll};

use serde::Deserialize;

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use tower::{Layer, Service};
use uuid::Uuid;

use super::live::Live;
use super::scope::Scope;
use super::tls::Revoked;

/// A client allowed to call the registry, and what it may do. It is identified by its
/// TLS client certificate, by a bearer token, or by either (at least one is required).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Recorded as the actor of every change the client makes.
    pub id: String,
    /// Hex SHA-256 of the client's bearer token (`payout-registry hash-token` prints it).
    /// The token itself is never stored.
    #[serde(default)]
    pub token_sha256: Option<String>,
    /// The Common Name of the client's certificate (issued by `[tls] client_ca_file`)
    /// that identifies this client over mutual TLS.
    #[serde(default)]
    pub cert_subject: Option<String>,
    /// Scopes granted, e.g. `["resolve", "accounts.read"]`.
    pub scopes: Vec<String>,
    /// The providers this client speaks for: a bank's client is bound to its NAPAS BIN
    /// (`["970436"]`), a wallet's to its code (`["MOMO"]`). Only a bound client may
    /// confirm an account of that provider (ISSUER_CONFIRMED), report its holder name for
    /// NAME_MATCH, or reject it (see `domain::assertion`).
    #[serde(default)]
    pub providers: Vec<String>,
}

/// Refuses a `[[clients]]` table the server could not enforce: a client without any
/// credential, a token digest that is not SHA-256 hex, two clients with one credential,
/// or an unknown scope. The message names the client and the setting to fix.
pub fn validate_clients(clients: &[ClientConfig]) -> Result<(), String> {
    let mut digests = std::collections::HashSet::new();
    let mut subjects = std::collections::HashSet::new();
    for c in clients {
        if c.token_sha256.is_none() && c.cert_subject.is_none() {
            return Err(format!(
                "client {}: needs a token_sha256, a cert_subject, or both",
                c.id
            ));
        }
        if let Some(digest) = &c.token_sha256 {
            if digest.len() != 64 || hex::decode(digest).is_err() {
                return Err(format!(
                    "client {}: token_sha256 must be 64 hex characters (see `hash-token`)",
                    c.id
                ));
            }
            if !digests.insert(digest.to_ascii_lowercase()) {
                return Err(format!(
                    "client {}: another client has the same token_sha256",
                    c.id
                ));
            }
        }
        if let Some(subject) = &c.cert_subject {
            if subject.trim().is_empty() || subject.trim() != subject {
                return Err(format!(
                    "client {}: cert_subject must be a certificate Common Name, without \
                     surrounding spaces",
                    c.id
                ));
            }
            if !subjects.insert(subject.as_str()) {
                return Err(format!(
                    "client {}: another client has the cert_subject {subject:?}",
                    c.id
                ));
            }
        }
        for s in &c.scopes {
            if Scope::parse(s).is_none() {
                return Err(format!("client {}: unknown scope {s:?}", c.id));
            }
        }
        for p in &c.providers {
            let plain = !p.is_empty()
                && p.len() <= 32
                && p.chars()
                    .all(|ch| ch.is_ascii_uppercase() || ch.is_ascii_digit());
            if !plain {
                return Err(format!(
                    "client {}: providers must be provider codes from the reference data \
                     (a 6-digit NAPAS BIN, or an upper-case wallet code such as MOMO), not {p:?}",
                    c.id
                ));
            }
        }
    }
    Ok(())
}

/// Who may call an RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, authenticated or not (health, reflection).
    Public,
    /// An authenticated client holding at least one of these scopes.
    AnyOf(&'static [Scope]),
}

/// The scope table. A method missing here is denied to everyone.
pub fn required(path: &str) -> Option<Access> {
    use Scope::*;
    let (service, method) = path.trim_start_matches('/').split_once('/')?;
    let access = match (service, method) {
        ("grpc.health.v1.Health", _)
        | ("grpc.reflection.v1.ServerReflection", _)
        | ("grpc.reflection.v1alpha.ServerReflection", _) => Access::Public,
        ("payoutregistry.v1.AccountRegistryService", m) => match m {
            "LinkAccount" | "SetDefaultAccount" | "CloseAccount" => Access::AnyOf(&[AccountsWrite]),
            // Who may assert which method is decided per account (domain::assertion).
            "VerifyAccount" => Access::AnyOf(&[AccountsVerify, VerifyInPerson]),
            // A payer may reject an account it found wrong; who else, per account.
            "RejectAccount" => Access::AnyOf(&[AccountsVerify, PayoutsReport]),
            "SuspendAccount" | "ReinstateAccount" => Access::AnyOf(&[AccountsVerify]),
            "GetAccount" | "GetAccountHistory" => Access::AnyOf(&[AccountsRead]),
            // With citizen.self only for the citizen the caller acts for (the handler).
            "ListCitizenAccounts" => Access::AnyOf(&[AccountsRead, CitizenSelf]),
            // Payers report any failure; a provider reports its account closed.
            "ReportPayoutFailure" => Access::AnyOf(&[PayoutsReport, AccountsVerify]),
            _ => return None,
        },
        (
            "payoutregistry.v1.OversightService",
            "FindAccountHolders" | "ListDuplicateClaims" | "ListDuplicateEntitlements",
        ) => Access::AnyOf(&[Oversight]),
        // A citizen may read who read their data (citizen.self, through VNeID).
        ("payoutregistry.v1.OversightService", "ListAccessLog") => {
            Access::AnyOf(&[Oversight, CitizenSelf])
        }
        (
            "payoutregistry.v1.ChangeFeedService",
            "Subscribe" | "CommitPosition" | "GetPosition" | "EditWatchList",
        ) => Access::AnyOf(&[EventsSubscribe, EventsAll]),
        // A digest covers every citizen of a province, not a watch list.
        ("payoutregistry.v1.ChangeFeedService", "GetSyncDigest") => Access::AnyOf(&[EventsAll]),
        ("payoutregistry.v1.PopulationSyncService", "SyncCitizens" | "SyncAccounts") => {
            Access::AnyOf(&[SyncPopulation])
        }
        ("payoutregistry.v1.PayoutResolverService", "Resolve" | "BatchResolve") => {
            // The handler further requires `resolve` for details.
            Access::AnyOf(&[Resolve, ResolveExists])
        }
        // A payer releases what it reserved.
        ("payoutregistry.v1.PayoutResolverService", "ReleaseReservations") => {
            Access::AnyOf(&[Resolve])
        }
        _ => return None,
    };
    Some(access)
}

/// The authenticated caller, available to handlers as a request extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub client_id: String,
    pub scopes: Vec<Scope>,
    /// The providers the client speaks for (`providers` in its configuration).
    pub providers: BTreeSet<String>,
    /// How the client proved who it is on this call.
    pub credential: Credential,
}

/// How a caller was identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// A client certificate verified by the TLS handshake (production).
    Certificate,
    /// A bearer token (development, or behind a TLS-terminating proxy).
    Token,
}

impl Caller {
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// This call's id: in every log line of the call, in the `x-request-id` response header,
/// and in internal-error messages, so a client's report can be matched to the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId {
    /// The id the access log records (the client's, when it sent a UUID).
    pub id: Uuid,
    /// The client's `x-request-id`, when it sent a sane one.
    client: Option<String>,
}

impl RequestId {
    /// A new id, made by the server.
    pub fn new() -> RequestId {
        RequestId {
            id: Uuid::new_v4(),
            client: None,
        }
    }

    /// The client's `x-request-id` when it is a sane token (1 to 64 letters, digits,
    /// `.`, `_`, `:` or `-`: nothing that could forge a log line), else a new id.
    pub fn from_header(value: Option<&http::HeaderValue>) -> RequestId {
        let sane = value.and_then(|v| v.to_str().ok()).filter(|v| {
            (1..=64).contains(&v.len())
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
        });
        match sane {
            None => RequestId::new(),
            Some(v) => RequestId {
                id: Uuid::parse_str(v).unwrap_or_else(|_| Uuid::new_v4()),
                client: Some(v.to_owned()),
            },
        }
    }

    /// The id as the client and the logs see it.
    pub fn shown(&self) -> String {
        self.client.clone().unwrap_or_else(|| self.id.to_string())
    }
}

impl Default for RequestId {
    fn default() -> Self {
        RequestId::new()
    }
}

/// The trace a W3C `traceparent` header names (version 00): the caller's trace id and
/// its span, which becomes the parent of this call's span. Malformed or all-zero values
/// are ignored, as the W3C recommendation says.
pub fn trace_parent(value: Option<&http::HeaderValue>) -> Option<(String, String)> {
    let v = value?.to_str().ok()?;
    let mut parts = v.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    };
    let valid = version == "00"
        && parts.next().is_none()
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace.chars().any(|c| c != '0')
        && parent.chars().any(|c| c != '0');
    valid.then(|| (trace.to_owned(), parent.to_owned()))
}

/// Hex SHA-256 of a token, as stored in the configuration.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random bearer token: 32 bytes from the operating system's generator, in hex.
pub fn new_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// What the connection says about the caller, before any header is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The call arrived over TLS.
    pub tls: bool,
    /// The remote address is a loopback address.
    pub loopback: bool,
    /// The client certificate the TLS handshake verified, if one was presented.
    pub certificate: PeerCertificate,
}

/// A verified client certificate, as far as identification is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerCertificate {
    /// Plain text, or TLS without a client certificate.
    Absent,
    /// The certificate's subject Common Name.
    Named(String),
    /// A certificate without one readable Common Name: it names nobody, and is refused
    /// rather than ignored.
    Unnamed,
    /// A certificate that a CRL loaded since the handshake lists: refused.
    Revoked,
}

impl Peer {
    /// A plain-text connection from loopback (the development default).
    pub const LOOPBACK: Peer = Peer {
        tls: false,
        loopback: true,
        certificate: PeerCertificate::Absent,
    };

    /// Reads tonic's connect info from a request's extensions; a client certificate that
    /// `revoked` lists counts as [`PeerCertificate::Revoked`].
    pub fn from_extensions(ext: &http::Extensions, revoked: &Revoked) -> Peer {
        let loopback = ext
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(|info| info.remote_addr())
            .is_some_and(|addr| super::tls::is_loopback(addr.ip()));
        let certificate = match super::tls::peer_leaf_certificate(ext) {
            None => PeerCertificate::Absent,
            Some(der) if revoked.lists(&der) => PeerCertificate::Revoked,
            Some(der) => match super::tls::common_name(&der) {
                Some(name) => PeerCertificate::Named(name),
                None => PeerCertificate::Unnamed,
            },
        };
        Peer {
            tls: super::tls::is_tls(ext),
            loopback,
            certificate,
        }
    }
}

/// The configured clients, by certificate subject and by token digest.
#[derive(Debug, Default)]
pub struct Authenticator {
    by_subject: HashMap<String, Caller>,
    /// Scanned in full on every lookup; see [`Authenticator::token_caller`].
    tokens: Vec<([u8; 32], Caller)>,
    /// Accept tokens in plain text from any address, not only loopback.
    plaintext_tokens_from_anywhere: bool,
}

/// Why a call was refused before reaching its handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No valid identity: UNAUTHENTICATED.
    Unauthenticated(Unauthenticated),
    /// An identity without the right: PERMISSION_DENIED.
    PermissionDenied(Forbidden),
}

/// Why a caller could not be identified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unauthenticated {
    /// No certificate and no token.
    Missing,
    /// A token or certificate that names no client, or is malformed (why, for a human).
    Invalid(&'static str),
    /// The certificate and the token name different clients.
    Conflict,
    /// A bearer token in plain text from a non-loopback address.
    TokenRequiresTls,
}

/// Why an identified caller may not make this call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forbidden {
    /// The client holds none of the scopes the method needs.
    ScopeMissing {
        client: String,
        required: &'static [Scope],
    },
    /// The method is open to no client (not in the scope table).
    MethodNotOpen,
}

impl Denied {
    /// A sentence for the client; never quotes what it sent.
    pub fn message(&self) -> String {
        match self {
            Denied::Unauthenticated(Unauthenticated::Missing) => {
                "missing credentials: present a client certificate or send \
                 `authorization: Bearer <token>`"
                    .into()
            }
            Denied::Unauthenticated(Unauthenticated::Invalid(why)) => (*why).into(),
            Denied::Unauthenticated(Unauthenticated::Conflict) => {
                "the client certificate and the bearer token name different clients".into()
            }
            Denied::Unauthenticated(Unauthenticated::TokenRequiresTls) => {
                "bearer tokens are accepted only over TLS or from loopback".into()
            }
            Denied::PermissionDenied(Forbidden::ScopeMissing { client, required }) => format!(
                "client {client} lacks the scope for this call (needs {})",
                required
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
            Denied::PermissionDenied(Forbidden::MethodNotOpen) => {
                "this method is not open to any client".into()
            }
        }
    }
}

impl Authenticator {
    pub fn new(clients: &[ClientConfig]) -> Authenticator {
        let mut by_subject = HashMap::new();
        let mut tokens = Vec::new();
        for c in clients {
            let caller = Caller {
                client_id: c.id.clone(),
                scopes: c.scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
                providers: c.providers.iter().cloned().collect(),
                credential: Credential::Token,
            };
            if let Some(subject) = &c.cert_subject {
                let by_certificate = Caller {
                    credential: Credential::Certificate,
                    ..caller.clone()
                };
                by_subject.insert(subject.clone(), by_certificate);
            }
            let mut digest = [0u8; 32];
            // Settings::validate has checked the hex already.
            if let Some(hex_digest) = &c.token_sha256 {
                if hex::decode_to_slice(hex_digest, &mut digest).is_ok() {
                    tokens.push((digest, caller));
                }
            }
        }
        Authenticator {
            by_subject,
            tokens,
            plaintext_tokens_from_anywhere: false,
        }
    }

    /// Accept bearer tokens in plain text from non-loopback addresses too. Only for a
    /// server explicitly allowed to listen in plain text there (behind a TLS-terminating
    /// proxy); by default a token must arrive over TLS or from loopback.
    pub fn accept_plaintext_tokens_from_anywhere(mut self, allow: bool) -> Authenticator {
        self.plaintext_tokens_from_anywhere = allow;
        self
    }

    /// Decides a call: `Ok(None)` for a public method, `Ok(Some(caller))` for an
    /// authorised client.
    pub fn authorize(
        &self,
        path: &str,
        peer: &Peer,
        authorization: Option<&http::HeaderValue>,
    ) -> Result<Option<Caller>, Denied> {
        let access = required(path);
        if access == Some(Access::Public) {
            return Ok(None);
        }
        let caller = self.identify(peer, authorization)?;
        match access {
            Some(Access::AnyOf(scopes)) if scopes.iter().any(|s| caller.has(*s)) => {
                Ok(Some(caller))
            }
            Some(Access::AnyOf(scopes)) => Err(Denied::PermissionDenied(Forbidden::ScopeMissing {
                client: caller.client_id,
                required: scopes,
            })),
            _ => Err(Denied::PermissionDenied(Forbidden::MethodNotOpen)),
        }
    }

    /// Who is calling: the certificate's client, else the token's. Any credential that
    /// is presented must be valid, and a certificate and a token must agree.
    fn identify(
        &self,
        peer: &Peer,
        authorization: Option<&http::HeaderValue>,
    ) -> Result<Caller, Denied> {
        let by_certificate = match &peer.certificate {
            PeerCertificate::Absent => None,
            PeerCertificate::Named(subject) => Some(self.by_subject.get(subject).cloned().ok_or(
                Denied::Unauthenticated(Unauthenticated::Invalid(
                    "the client certificate names no configured client",
                )),
            )?),
            PeerCertificate::Unnamed => {
                return Err(Denied::Unauthenticated(Unauthenticated::Invalid(
                    "the client certificate has no single subject Common Name",
                )))
            }
            PeerCertificate::Revoked => {
                return Err(Denied::Unauthenticated(Unauthenticated::Invalid(
                    "the client certificate has been revoked",
                )))
            }
        };
        let by_token = match authorization {
            None => None,
            Some(value) => {
                let token = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .ok_or(Denied::Unauthenticated(Unauthenticated::Invalid(
                        "malformed credentials: send `authorization: Bearer <token>`",
                    )))?;
                if !(peer.tls || peer.loopback || self.plaintext_tokens_from_anywhere) {
                    return Err(Denied::Unauthenticated(Unauthenticated::TokenRequiresTls));
                }
                Some(self.token_caller(token).ok_or(Denied::Unauthenticated(
                    Unauthenticated::Invalid("invalid credentials"),
                ))?)
            }
        };
        match (by_certificate, by_token) {
            (Some(cert), Some(token)) if cert.client_id != token.client_id => {
                Err(Denied::Unauthenticated(Unauthenticated::Conflict))
            }
            (Some(caller), _) | (None, Some(caller)) => Ok(caller),
            (None, None) => Err(Denied::Unauthenticated(Unauthenticated::Missing)),
        }
    }

    /// The client whose token digest matches. Every configured digest is compared with
    /// `ct_eq` and the match is selected without branching, so the time taken does not
    /// depend on which digest (if any) matched, nor on how many bytes of it did.
    fn token_caller(&self, token: &str) -> Option<Caller> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = u32::MAX;
        for (i, (configured, _)) in self.tokens.iter().enumerate() {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            found.conditional_assign(&index, configured.ct_eq(&digest));
        }
        self.tokens
            .get(usize::try_from(found).ok()?)
            .map(|(_, caller)| caller.clone())
    }
}

/// How a refusal becomes the status a client receives: supplied by the gRPC layer, which
/// owns the one mapping from refusals to statuses.
pub type DenialStatus = Arc<dyn Fn(&Denied, &RequestId) -> tonic::Status + Send + Sync>;

/// The tower layer that authenticates and authorises every call, with the clients and
/// CRLs in force when the call arrives.
#[derive(Clone)]
pub struct AuthLayer {
    live: Arc<Live>,
    deny: DenialStatus,
}

impl AuthLayer {
    pub fn new(live: Arc<Live>, deny: DenialStatus) -> AuthLayer {
        AuthLayer { live, deny }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            live: self.live.clone(),
            deny: self.deny.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    live: Arc<Live>,
    deny: DenialStatus,
}

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // The outer call layer (telemetry) made the request id and the call's span; the
        // client is added to that span here once known.
        let request_id = match req.extensions().get::<RequestId>() {
            Some(id) => id.clone(),
            None => {
                let id = RequestId::from_header(req.headers().get("x-request-id"));
                req.extensions_mut().insert(id.clone());
                id
            }
        };
        let path = req.uri().path().to_owned();
        let deny = self.deny.clone();
        let current = self.live.load();
        let peer = Peer::from_extensions(req.extensions(), current.revoked());
        let decision = current.authenticator().authorize(
            &path,
            &peer,
            req.headers().get(http::header::AUTHORIZATION),
        );
        drop(current);
        // Take the service that was made ready; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            match decision {
                Ok(caller) => {
                    if let Some(caller) = &caller {
                        tracing::Span::current().record("client", caller.client_id.as_str());
                        req.extensions_mut().insert(caller.clone());
                    }
                    inner.call(req).await
                }
                Err(denied) => {
                    let status = deny(&denied, &request_id);
                    tracing::warn!(code = ?status.code(), "call refused: {}", status.message());
                    Ok(status.into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        Authenticator::new(&[
            ClientConfig {
                id: "payroll".into(),
                token_sha256: Some(hash_token("s3cret")),
                cert_subject: Some("payroll".into()),
                scopes: vec!["resolve".into()],
                providers: vec![],
            },
            ClientConfig {
                id: "vneid".into(),
                token_sha256: Some(hash_token("vneid-token")),
                cert_subject: None,
                scopes: vec!["accounts.write".into()],
                providers: vec![],
            },
            ClientConfig {
                id: "province-office".into(),
                token_sha256: None,
                cert_subject: Some("province-office".into()),
                scopes: vec!["accounts.read".into()],
                providers: vec![],
            },
        ])
    }

    fn bearer(t: &str) -> http::HeaderValue {
        http::HeaderValue::from_str(&format!("Bearer {t}")).unwrap()
    }

    /// A mutual-TLS connection whose verified certificate has this Common Name.
    fn with_cert(subject: &str) -> Peer {
        Peer {
            tls: true,
            loopback: false,
            certificate: PeerCertificate::Named(subject.into()),
        }
    }

    /// A TLS connection from a remote address, without a client certificate.
    const REMOTE_TLS: Peer = Peer {
        tls: true,
        loopback: false,
        certificate: PeerCertificate::Absent,
    };

    /// Plain text from a remote address.
    const REMOTE_PLAIN: Peer = Peer {
        tls: false,
        loopback: false,
        certificate: PeerCertificate::Absent,
    };

    const LOCAL: &Peer = &Peer::LOOPBACK;
    const RESOLVE: &str = "/payoutregistry.v1.PayoutResolverService/Resolve";
    const LINK: &str = "/payoutregistry.v1.AccountRegistryService/LinkAccount";
    const GET: &str = "/payoutregistry.v1.AccountRegistryService/GetAccount";

    fn client_of(result: Result<Option<Caller>, Denied>) -> String {
        result.unwrap().unwrap().client_id
    }

    #[test]
    fn a_known_token_with_the_scope_is_allowed() {
        let caller = auth()
            .authorize(RESOLVE, LOCAL, Some(&bearer("s3cret")))
            .unwrap()
            .unwrap();
        assert_eq!(caller.client_id, "payroll");
    }

    #[test]
    fn missing_or_wrong_tokens_are_unauthenticated() {
        let a = auth();
        assert!(matches!(
            a.authorize(RESOLVE, LOCAL, None),
            Err(Denied::Unauthenticated(_))
        ));
        assert!(matches!(
            a.authorize(RESOLVE, LOCAL, Some(&bearer("wrong"))),
            Err(Denied::Unauthenticated(_))
        ));
        let basic = http::HeaderValue::from_static("Basic czNjcmV0");
        assert!(matches!(
            a.authorize(RESOLVE, LOCAL, Some(&basic)),
            Err(Denied::Unauthenticated(_))
        ));
    }

    #[test]
    fn a_client_without_the_scope_is_denied() {
        assert!(matches!(
            auth().authorize(LINK, LOCAL, Some(&bearer("s3cret"))),
            Err(Denied::PermissionDenied(_))
        ));
    }

    #[test]
    fn unlisted_methods_are_denied_to_everyone() {
        assert!(matches!(
            auth().authorize(
                "/payoutregistry.v1.Secret/Dump",
                LOCAL,
                Some(&bearer("s3cret"))
            ),
            Err(Denied::PermissionDenied(_))
        ));
        assert!(matches!(
            auth().authorize(
                "/payoutregistry.v1.Secret/Dump",
                &with_cert("payroll"),
                None
            ),
            Err(Denied::PermissionDenied(_))
        ));
    }

    #[test]
    fn health_checks_need_no_credentials() {
        assert_eq!(
            auth().authorize("/grpc.health.v1.Health/Check", LOCAL, None),
            Ok(None)
        );
        assert_eq!(
            auth().authorize("/grpc.health.v1.Health/Check", &with_cert("nobody"), None),
            Ok(None)
        );
    }

    #[test]
    fn every_scope_name_round_trips() {
        for s in Scope::ALL {
            assert_eq!(Scope::parse(s.as_str()), Some(*s));
        }
    }

    #[test]
    fn a_configured_certificate_subject_identifies_its_client_without_a_token() {
        let a = auth();
        assert_eq!(
            client_of(a.authorize(GET, &with_cert("province-office"), None)),
            "province-office"
        );
        assert_eq!(
            client_of(a.authorize(RESOLVE, &with_cert("payroll"), None)),
            "payroll"
        );
    }

    #[test]
    fn an_unconfigured_or_unnamed_certificate_is_unauthenticated() {
        let a = auth();
        assert!(matches!(
            a.authorize(RESOLVE, &with_cert("stranger"), None),
            Err(Denied::Unauthenticated(_))
        ));
        let unnamed = Peer {
            certificate: PeerCertificate::Unnamed,
            ..REMOTE_TLS
        };
        assert!(matches!(
            a.authorize(RESOLVE, &unnamed, Some(&bearer("s3cret"))),
            Err(Denied::Unauthenticated(_))
        ));
    }

    #[test]
    fn a_revoked_certificate_is_unauthenticated_even_with_its_clients_token() {
        let revoked = Peer {
            certificate: PeerCertificate::Revoked,
            ..REMOTE_TLS
        };
        for token in [None, Some(bearer("s3cret"))] {
            let denied = auth()
                .authorize(RESOLVE, &revoked, token.as_ref())
                .unwrap_err();
            assert_eq!(
                denied,
                Denied::Unauthenticated(Unauthenticated::Invalid(
                    "the client certificate has been revoked"
                ))
            );
        }
    }

    #[test]
    fn a_valid_token_does_not_rescue_an_unconfigured_certificate() {
        assert!(matches!(
            auth().authorize(RESOLVE, &with_cert("stranger"), Some(&bearer("s3cret"))),
            Err(Denied::Unauthenticated(_))
        ));
    }

    #[test]
    fn a_certificate_and_a_token_of_the_same_client_are_accepted() {
        assert_eq!(
            client_of(auth().authorize(RESOLVE, &with_cert("payroll"), Some(&bearer("s3cret")))),
            "payroll"
        );
    }

    #[test]
    fn a_certificate_and_a_token_naming_different_clients_are_refused() {
        assert!(matches!(
            auth().authorize(
                LINK,
                &with_cert("province-office"),
                Some(&bearer("vneid-token"))
            ),
            Err(Denied::Unauthenticated(_))
        ));
    }

    #[test]
    fn a_certificate_with_an_invalid_token_is_refused() {
        assert!(matches!(
            auth().authorize(RESOLVE, &with_cert("payroll"), Some(&bearer("wrong"))),
            Err(Denied::Unauthenticated(_))
        ));
    }

    #[test]
    fn the_certificate_client_needs_the_scope_too() {
        assert!(matches!(
            auth().authorize(LINK, &with_cert("province-office"), None),
            Err(Denied::PermissionDenied(_))
        ));
    }

    #[test]
    fn tokens_are_accepted_over_tls_and_from_loopback_but_not_in_plain_text_from_afar() {
        let a = auth();
        let token = bearer("vneid-token");
        assert_eq!(client_of(a.authorize(LINK, LOCAL, Some(&token))), "vneid");
        assert_eq!(
            client_of(a.authorize(LINK, &REMOTE_TLS, Some(&token))),
            "vneid"
        );
        assert!(matches!(
            a.authorize(LINK, &REMOTE_PLAIN, Some(&token)),
            Err(Denied::Unauthenticated(_))
        ));
        let proxied = auth().accept_plaintext_tokens_from_anywhere(true);
        assert_eq!(
            client_of(proxied.authorize(LINK, &REMOTE_PLAIN, Some(&token))),
            "vneid"
        );
    }

    #[test]
    fn a_client_with_only_a_certificate_has_no_token() {
        // The certificate-only client's digest slot must not match an empty or any
        // other token.
        let a = auth();
        for t in ["", "province-office", "0"] {
            assert!(a.token_caller(t).is_none(), "{t:?}");
        }
    }

    #[test]
    fn every_configured_token_finds_its_own_client() {
        let clients: Vec<ClientConfig> = (0..20)
            .map(|i| ClientConfig {
                id: format!("client-{i}"),
                token_sha256: Some(hash_token(&format!("token-{i}"))),
                cert_subject: None,
                scopes: vec![],
                providers: vec![],
            })
            .collect();
        let a = Authenticator::new(&clients);
        for i in 0..20 {
            assert_eq!(
                a.token_caller(&format!("token-{i}")).unwrap().client_id,
                format!("client-{i}")
            );
        }
        assert!(a.token_caller("token-20").is_none());
        assert!(Authenticator::default().token_caller("token-0").is_none());
    }
}
