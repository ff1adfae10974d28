//! What a running server can be given anew without a restart: its TLS material (server
//! certificate and key, client CAs, CRLs) and its table of clients.
//!
//! Both sit in one [`Snapshot`] behind one atomic pointer. Every handshake
//! (`super::handshake`) and every call (`super::auth`'s layer) reads the snapshot current
//! at that moment; [`Live::reload`] builds a whole new snapshot from the settings, checks
//! it, and swaps it in with a single store. So a reload is all or nothing: when any file
//! or any client fails its check, the old snapshot stays and nothing changes. Connections
//! are never touched: a connection keeps the TLS session it was made with, and its next
//! call is judged by the new client table (a client removed there is UNAUTHENTICATED, on
//! the same connection) and by the new CRLs (a certificate they list is refused too,
//! although its handshake happened before).
//!
//! Whether the server speaks TLS at all, and the settings that are not here, are fixed at
//! start-up: switching between plain text and TLS is refused as a reload.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::auth::{validate_clients, Authenticator, ClientConfig};
use super::tls::{Revoked, ServerTls, TlsError, TlsSettings, TlsSummary};

/// The security configuration in force, as one value.
pub struct Snapshot {
    tls: Option<Arc<ServerTls>>,
    auth: Authenticator,
    clients: Vec<ClientConfig>,
}

impl Snapshot {
    /// Who may call, and with which scopes.
    pub fn authenticator(&self) -> &Authenticator {
        &self.auth
    }

    /// What the configured CRLs revoke (nothing over plain text).
    pub fn revoked(&self) -> &Revoked {
        static NONE: std::sync::OnceLock<Revoked> = std::sync::OnceLock::new();
        match &self.tls {
            Some(tls) => tls.revoked(),
            None => NONE.get_or_init(Revoked::default),
        }
    }
}

/// The snapshot in force, and the one way to replace it.
pub struct Live {
    current: ArcSwap<Snapshot>,
    /// Fixed at start-up: whether bearer tokens may arrive in plain text from afar.
    plaintext_tokens_from_anywhere: bool,
    /// One reload at a time, so that each summary compares with what it replaced.
    reloading: Mutex<()>,
}

/// Why a reload was refused. The configuration in force is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The `[[clients]]` table would not be enforceable (see `validate_clients`).
    #[error("[[clients]]: {0}")]
    Clients(String),
    /// A `[tls]` file is missing, unreadable or unusable (the error names it).
    #[error("[tls]: {0}")]
    Tls(#[from] TlsError),
    /// `[tls]` appeared or disappeared: the listener cannot change protocol while it runs.
    #[error("[tls] was {was} at start-up and is {now} now: switching between TLS and plain text needs a restart")]
    Protocol {
        was: &'static str,
        now: &'static str,
    },
}

/// What a reload changed, for the log and the caller: counts, client ids and a public
/// certificate fingerprint. Never a token or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Clients configured now.
    pub clients: usize,
    /// Client ids new in the table.
    pub added: Vec<String>,
    /// Client ids no longer in the table: their next call is UNAUTHENTICATED.
    pub removed: Vec<String>,
    /// Client ids whose entry changed (scopes, credentials or providers).
    pub changed: Vec<String>,
    /// The TLS material now in force (`None` over plain text).
    pub tls: Option<TlsSummary>,
    /// The server certificate differs from the one before.
    pub server_certificate_replaced: bool,
}

impl fmt::Display for ReloadSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids = |ids: &[String]| {
            if ids.is_empty() {
                "none".to_owned()
            } else {
                ids.join(", ")
            }
        };
        write!(
            f,
            "{} clients (added: {}; removed: {}; changed: {})",
            self.clients,
            ids(&self.added),
            ids(&self.removed),
            ids(&self.changed)
        )?;
        if let Some(tls) = &self.tls {
            write!(
                f,
                "; server certificate sha256 {} ({}); {} client CA(s), {} CRL(s) revoking {} \
                 certificate(s); client certificates {}",
                tls.server_certificate,
                if self.server_certificate_replaced {
                    "replaced"
                } else {
                    "unchanged"
                },
                tls.client_cas,
                tls.crls,
                tls.revoked_certificates,
                if tls.require_client_cert {
                    "required"
                } else {
                    "optional"
                },
            )?;
        }
        Ok(())
    }
}

impl Live {
    /// The configuration the server starts with. `tls` is `None` for plain text, which
    /// then holds for as long as the server runs.
    pub fn new(
        tls: Option<ServerTls>,
        clients: Vec<ClientConfig>,
        plaintext_tokens_from_anywhere: bool,
    ) -> Live {
        let auth = Authenticator::new(&clients)
            .accept_plaintext_tokens_from_anywhere(plaintext_tokens_from_anywhere);
        Live {
            current: ArcSwap::from_pointee(Snapshot {
                tls: tls.map(Arc::new),
                auth,
                clients,
            }),
            plaintext_tokens_from_anywhere,
            reloading: Mutex::new(()),
        }
    }

    /// The snapshot in force now. Cheap: read it on every call.
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The TLS material for a new handshake (`None` over plain text).
    pub fn tls(&self) -> Option<Arc<ServerTls>> {
        self.current.load().tls.clone()
    }

    /// True when the server speaks TLS.
    pub fn serves_tls(&self) -> bool {
        self.current.load().tls.is_some()
    }

    /// Replaces the TLS material and the client table with ones built from `tls` and
    /// `clients`, all at once, or changes nothing and says why. Reads files: call it off
    /// the async executor's threads.
    pub fn reload(
        &self,
        tls: Option<&TlsSettings>,
        clients: Vec<ClientConfig>,
    ) -> Result<ReloadSummary, ReloadError> {
        let _one_at_a_time = self
            .reloading
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let old = self.current.load_full();
        validate_clients(&clients).map_err(ReloadError::Clients)?;
        let protocol = |on: bool| if on { "configured" } else { "absent" };
        if old.tls.is_some() != tls.is_some() {
            return Err(ReloadError::Protocol {
                was: protocol(old.tls.is_some()),
                now: protocol(tls.is_some()),
            });
        }
        let tls = tls.map(ServerTls::load).transpose()?.map(Arc::new);
        let summary = summarize(&old, &clients, tls.as_deref());
        let auth = Authenticator::new(&clients)
            .accept_plaintext_tokens_from_anywhere(self.plaintext_tokens_from_anywhere);
        self.current
            .store(Arc::new(Snapshot { tls, auth, clients }));
        Ok(summary)
    }
}

fn summarize(old: &Snapshot, clients: &[ClientConfig], tls: Option<&ServerTls>) -> ReloadSummary {
    let by_id = |clients: &[ClientConfig]| {
        let mut map: BTreeMap<String, Vec<ClientConfig>> = BTreeMap::new();
        for c in clients {
            map.entry(c.id.clone()).or_default().push(c.clone());
        }
        map
    };
    let (before, after) = (by_id(&old.clients), by_id(clients));
    let added = after
        .keys()
        .filter(|id| !before.contains_key(*id))
        .cloned()
        .collect();
    let removed = before
        .keys()
        .filter(|id| !after.contains_key(*id))
        .cloned()
        .collect();
    let changed = after
        .iter()
        .filter(|(id, entries)| before.get(*id).is_some_and(|old| old != *entries))
        .map(|(id, _)| id.clone())
        .collect();
    let tls = tls.map(|t| t.summary().clone());
    let server_certificate_replaced = match (&old.tls, &tls) {
        (Some(old), Some(new)) => old.summary().server_certificate != new.server_certificate,
        _ => false,
    };
    ReloadSummary {
        clients: clients.len(),
        added,
        removed,
        changed,
        tls,
        server_certificate_replaced,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::auth::{hash_token, Peer};

    fn client(id: &str, scopes: &[&str]) -> ClientConfig {
        ClientConfig {
            id: id.into(),
            token_sha256: Some(hash_token(&format!("{id}-token"))),
            cert_subject: None,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            providers: vec![],
        }
    }

    const RESOLVE: &str = "/payoutregistry.v1.PayoutResolverService/Resolve";

    fn allowed(live: &Live, id: &str) -> bool {
        let token = http::HeaderValue::from_str(&format!("Bearer {id}-token")).unwrap();
        live.load()
            .authenticator()
            .authorize(RESOLVE, &Peer::LOOPBACK, Some(&token))
            .is_ok()
    }

    #[test]
    fn a_reload_replaces_the_client_table_and_says_what_changed() {
        let live = Live::new(
            None,
            vec![client("a", &["resolve"]), client("b", &["resolve"])],
            false,
        );
        let summary = live
            .reload(
                None,
                vec![client("b", &["resolve.exists"]), client("c", &["resolve"])],
            )
            .unwrap();
        assert_eq!(summary.clients, 2);
        assert_eq!(summary.added, ["c"]);
        assert_eq!(summary.removed, ["a"]);
        assert_eq!(summary.changed, ["b"]);
        assert!(!allowed(&live, "a"));
        assert!(allowed(&live, "c"));
        let shown = summary.to_string();
        assert!(!shown.contains(&hash_token("c-token")), "{shown}");
    }

    #[test]
    fn an_invalid_client_table_changes_nothing() {
        let live = Live::new(None, vec![client("a", &["resolve"])], false);
        let err = live
            .reload(None, vec![client("b", &["everything"])])
            .unwrap_err();
        assert!(err.to_string().contains("unknown scope"), "{err}");
        assert!(allowed(&live, "a"));
        assert!(!allowed(&live, "b"));
    }

    #[test]
    fn switching_between_plain_text_and_tls_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        crate::security::tls::generate_dev_certs(dir.path(), &[]).unwrap();
        let live = Live::new(None, vec![client("a", &["resolve"])], false);
        let settings = TlsSettings {
            cert_file: dir.path().join("server.pem"),
            key_file: dir.path().join("server.key"),
            client_ca_file: None,
            require_client_cert: false,
            handshake_timeout_secs: 10,
            crl_files: vec![],
        };
        let err = live.reload(Some(&settings), vec![]).unwrap_err();
        assert!(matches!(err, ReloadError::Protocol { .. }), "{err}");
        assert!(allowed(&live, "a"));
        assert!(!live.serves_tls());
    }
}
