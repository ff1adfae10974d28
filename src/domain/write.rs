//! Who writes, when, under which idempotency key, and what a write answers: what the
//! write planner (`planner.rs`, `commands.rs`) is given and gives back, beside the state
//! the store read.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::assertion::Authority;
use super::{Account, Timestamp};

/// Who is writing, when, and under which idempotency key.
#[derive(Debug, Clone)]
pub struct WriteContext {
    /// The authenticated client, recorded as the actor of the change.
    pub actor: String,
    pub idempotency: Option<Idempotency>,
    pub now: Timestamp,
    /// What the client is entitled to assert (its provider bindings, `verify.in_person`,
    /// payer): checked against each account a write vouches for (`domain::assertion`).
    pub authority: Authority,
}

/// A write's idempotency key and a digest of the request it came with.
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub key: Uuid,
    /// SHA-256 over the operation name and the request without its key.
    pub request_hash: Vec<u8>,
}

/// A write's answer: the account as it now is, for a payout-failure report the id of the
/// recorded failure, and the write position of the last event the write committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub account: Account,
    #[serde(default)]
    pub failure_id: Option<Uuid>,
    /// Set by the store once the write's events are in (the planner does not know
    /// positions); kept under the idempotency key, so a replay answers the same
    /// consistency token. `None` for a write that changed nothing, and in answers stored
    /// before it was kept.
    #[serde(default)]
    pub last_event: Option<i64>,
}

impl Answer {
    pub fn of(account: Account) -> Answer {
        Answer {
            account,
            failure_id: None,
            last_event: None,
        }
    }
}
