//! Who is calling, and may they?
//!
//! Clients present `authorization: Bearer <token>`. The registry keeps only SHA-256
//! digests of tokens (from the configuration) and looks the digest up, so a token never
//! sits in memory longer than one request and comparison time does not depend on how much
//! of a token matched. Every RPC needs one of the scopes in [`required`]; anything not
//! listed is denied (deny by default). Health checks and reflection are public: they
//! reveal nothing about citizens.
//!
//! The check runs as a tower layer in front of every service, which also gives each call
//! a request id and a tracing span.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use tower::{Layer, Service};
use tracing::Instrument;
use uuid::Uuid;

use crate::config::ClientConfig;

/// What a client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Link accounts, set defaults, close accounts.
    AccountsWrite,
    /// Verify, reject, suspend, reinstate (providers and verifiers).
    AccountsVerify,
    /// Read accounts and their history.
    AccountsRead,
    /// Resolve, with the account number masked.
    Resolve,
    /// Resolve with the full account number (payers).
    ResolveFull,
    /// Resolve yes/no only.
    ResolveExists,
    /// Population sync streams.
    SyncPopulation,
    /// Subscribe to the change feed (watch-listed citizens only).
    EventsSubscribe,
    /// Subscribe to every citizen's events.
    EventsAll,
    /// Investigators: reverse lookups, duplicate claims, access logs.
    Oversight,
}

impl Scope {
    pub const ALL: &'static [Scope] = &[
        Scope::AccountsWrite,
        Scope::AccountsVerify,
        Scope::AccountsRead,
        Scope::Resolve,
        Scope::ResolveFull,
        Scope::ResolveExists,
        Scope::SyncPopulation,
        Scope::EventsSubscribe,
        Scope::EventsAll,
        Scope::Oversight,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::AccountsWrite => "accounts.write",
            Scope::AccountsVerify => "accounts.verify",
            Scope::AccountsRead => "accounts.read",
            Scope::Resolve => "resolve",
            Scope::ResolveFull => "resolve.full",
            Scope::ResolveExists => "resolve.exists",
            Scope::SyncPopulation => "sync.population",
            Scope::EventsSubscribe => "events.subscribe",
            Scope::EventsAll => "events.all",
            Scope::Oversight => "oversight",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.iter().copied().find(|scope| scope.as_str() == s)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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
        ("payoutregistry.v1.AccountRegistry", m) => match m {
            "LinkAccount" | "SetDefaultAccount" | "CloseAccount" => Access::AnyOf(&[AccountsWrite]),
            "VerifyAccount" | "RejectAccount" | "SuspendAccount" | "ReinstateAccount" => {
                Access::AnyOf(&[AccountsVerify])
            }
            "GetAccount" | "ListCitizenAccounts" | "GetAccountHistory" => {
                Access::AnyOf(&[AccountsRead])
            }
            _ => return None,
        },
        ("payoutregistry.v1.PayoutResolver", "Resolve") => {
            // The handler further requires `resolve` for details.
            Access::AnyOf(&[Resolve, ResolveExists])
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
}

impl Caller {
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// This call's id: in every log line of the call, in the `x-request-id` response header,
/// and in internal-error messages, so a client's report can be matched to the logs.
#[derive(Debug, Clone, Copy)]
pub struct RequestId(pub Uuid);

/// Hex SHA-256 of a token, as stored in the configuration.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The configured clients, by token digest.
#[derive(Debug, Default)]
pub struct Authenticator {
    by_digest: HashMap<[u8; 32], Caller>,
}

/// Why a call was refused before reaching its handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    Unauthenticated(&'static str),
    PermissionDenied(String),
}

impl Authenticator {
    pub fn new(clients: &[ClientConfig]) -> Authenticator {
        let mut by_digest = HashMap::new();
        for c in clients {
            let mut digest = [0u8; 32];
            // Settings::validate has checked the hex already.
            if hex::decode_to_slice(&c.token_sha256, &mut digest).is_err() {
                continue;
            }
            let scopes = c.scopes.iter().filter_map(|s| Scope::parse(s)).collect();
            by_digest.insert(
                digest,
                Caller {
                    client_id: c.id.clone(),
                    scopes,
                },
            );
        }
        Authenticator { by_digest }
    }

    /// Decides a call: `Ok(None)` for a public method, `Ok(Some(caller))` for an
    /// authorised client.
    pub fn authorize(
        &self,
        path: &str,
        authorization: Option<&http::HeaderValue>,
    ) -> Result<Option<Caller>, Denied> {
        let access = required(path);
        if access == Some(Access::Public) {
            return Ok(None);
        }
        let token = authorization
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Denied::Unauthenticated(
                "missing credentials: send `authorization: Bearer <token>`",
            ))?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let caller = self
            .by_digest
            .get(&digest)
            .cloned()
            .ok_or(Denied::Unauthenticated("invalid credentials"))?;
        match access {
            Some(Access::AnyOf(scopes)) if scopes.iter().any(|s| caller.has(*s)) => {
                Ok(Some(caller))
            }
            Some(Access::AnyOf(scopes)) => Err(Denied::PermissionDenied(format!(
                "client {} lacks the scope for this call (needs {})",
                caller.client_id,
                scopes
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ))),
            _ => Err(Denied::PermissionDenied(
                "this method is not open to any client".into(),
            )),
        }
    }
}

/// The tower layer that authenticates, authorises and traces every call.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(auth: Arc<Authenticator>) -> AuthLayer {
        AuthLayer { auth }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
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
        let request_id = Uuid::new_v4();
        let path = req.uri().path().to_owned();
        let span = tracing::info_span!(
            "rpc",
            request_id = %request_id,
            method = %path,
            client = tracing::field::Empty,
        );
        let decision = self
            .auth
            .authorize(&path, req.headers().get(http::header::AUTHORIZATION));
        // Take the service that was made ready; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let started = Instant::now();
        Box::pin(
            async move {
                let mut response = match decision {
                    Ok(caller) => {
                        if let Some(caller) = &caller {
                            tracing::Span::current().record("client", caller.client_id.as_str());
                            req.extensions_mut().insert(caller.clone());
                        }
                        req.extensions_mut().insert(RequestId(request_id));
                        inner.call(req).await?
                    }
                    Err(denied) => {
                        let status = match denied {
                            Denied::Unauthenticated(m) => tonic::Status::unauthenticated(m),
                            Denied::PermissionDenied(m) => tonic::Status::permission_denied(m),
                        };
                        tracing::warn!(code = ?status.code(), "call refused: {}", status.message());
                        status.into_http()
                    }
                };
                if let Ok(v) = http::HeaderValue::from_str(&request_id.to_string()) {
                    response.headers_mut().insert("x-request-id", v);
                }
                let grpc_status = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("0")
                    .to_owned();
                tracing::info!(
                    grpc_status = %grpc_status,
                    elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "call finished"
                );
                Ok(response)
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        Authenticator::new(&[ClientConfig {
            id: "payroll".into(),
            token_sha256: hash_token("s3cret"),
            scopes: vec!["resolve".into()],
        }])
    }

    fn bearer(t: &str) -> http::HeaderValue {
        http::HeaderValue::from_str(&format!("Bearer {t}")).unwrap()
    }

    const RESOLVE: &str = "/payoutregistry.v1.PayoutResolver/Resolve";
    const LINK: &str = "/payoutregistry.v1.AccountRegistry/LinkAccount";

    #[test]
    fn a_known_token_with_the_scope_is_allowed() {
        let caller = auth()
            .authorize(RESOLVE, Some(&bearer("s3cret")))
            .unwrap()
            .unwrap();
        assert_eq!(caller.client_id, "payroll");
    }

    #[test]
    fn missing_or_wrong_tokens_are_unauthenticated() {
        let a = auth();
        assert!(matches!(
            a.authorize(RESOLVE, None),
            Err(Denied::Unauthenticated(_))
        ));
        assert!(matches!(
            a.authorize(RESOLVE, Some(&bearer("wrong"))),
            Err(Denied::Unauthenticated(_))
        ));
        let basic = http::HeaderValue::from_static("Basic czNjcmV0");
        assert!(matches!(
            a.authorize(RESOLVE, Some(&basic)),
            Err(Denied::Unauthenticated(_))
        ));
    }

    #[test]
    fn a_client_without_the_scope_is_denied() {
        assert!(matches!(
            auth().authorize(LINK, Some(&bearer("s3cret"))),
            Err(Denied::PermissionDenied(_))
        ));
    }

    #[test]
    fn unlisted_methods_are_denied_to_everyone() {
        assert!(matches!(
            auth().authorize("/payoutregistry.v1.Secret/Dump", Some(&bearer("s3cret"))),
            Err(Denied::PermissionDenied(_))
        ));
    }

    #[test]
    fn health_checks_need_no_credentials() {
        assert_eq!(
            auth().authorize("/grpc.health.v1.Health/Check", None),
            Ok(None)
        );
    }

    #[test]
    fn every_scope_name_round_trips() {
        for s in Scope::ALL {
            assert_eq!(Scope::parse(s.as_str()), Some(*s));
        }
    }
}
