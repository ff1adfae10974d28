//! Idempotency keys: a retried write gets the first answer instead of a second effect.
//!
//! The key is taken inside the write's own transaction, before the script runs, so the
//! key and the change commit together or not at all: a write whose answer was lost in
//! transit can be sent again safely. The answer is stored as JSON, refusals included when
//! they committed something (a recorded duplicate claim), so that a retry neither records
//! the claim twice nor turns a refusal into a different answer.

use serde::{Deserialize, Serialize};

use super::dialect::{Dialect, Tx};
use super::sql::Sql;
use super::{corrupt, Answer, StoreError, StoreResult, WriteContext};
use crate::domain::{Reason, Rejection};

/// What is stored under an idempotency key: the first answer, replayed on retry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) enum StoredOutcome {
    Answer(Answer),
    /// A refusal that committed something (a duplicate claim), replayed as-is so that a
    /// retry does not record the claim twice.
    Refused {
        reason: String,
        field: Option<String>,
        message: String,
    },
}

impl StoredOutcome {
    /// The answer (or refusal) a replay gives.
    pub(super) fn into_result(self) -> StoreResult<Answer> {
        match self {
            StoredOutcome::Answer(a) => Ok(a),
            StoredOutcome::Refused {
                reason,
                field,
                message,
            } => {
                let reason =
                    Reason::parse(&reason).ok_or_else(|| corrupt("stored refusal reason"))?;
                Err(StoreError::Rejected(Rejection {
                    reason,
                    field,
                    message,
                    metadata: Vec::new(),
                }))
            }
        }
    }
}

/// Takes this client's idempotency key for the transaction, or returns the first answer
/// given under it. The key's row is inserted first thing, so a concurrent request with
/// the same key waits on it and then replays this one's answer instead of running the
/// write a second time. The same key with a different request is refused.
pub(super) async fn replay<D: Dialect>(
    tx: &mut Tx<D>,
    ctx: &WriteContext,
) -> StoreResult<Option<StoredOutcome>> {
    let Some(idem) = &ctx.idempotency else {
        return Ok(None);
    };
    let claimed = tx
        .execute(
            Sql::new(
                "INSERT INTO idempotency_keys (client_id, key, request_hash, response, created_at) \
                 VALUES ($1, $2, $3, '', $4) ON CONFLICT (client_id, key) DO NOTHING",
            )
            .bind(&ctx.actor)
            .bind(idem.key)
            .bind(&idem.request_hash)
            .bind(ctx.now.micros()),
        )
        .await?;
    if claimed == 1 {
        return Ok(None);
    }
    let (hash, json): (Vec<u8>, String) = tx
        .fetch_one(
            Sql::new(
                "SELECT request_hash, response FROM idempotency_keys \
                 WHERE client_id = $1 AND key = $2",
            )
            .bind(&ctx.actor)
            .bind(idem.key),
        )
        .await?;
    if hash != idem.request_hash {
        return Err(Rejection::field(
            Reason::IdempotencyKeyReused,
            "idempotency_key",
            "this idempotency key was already used with a different request",
        )
        .into());
    }
    Ok(Some(serde_json::from_str(&json).map_err(corrupt)?))
}

/// Records the answer under the key taken by [`replay`].
pub(super) async fn remember<D: Dialect>(
    tx: &mut Tx<D>,
    ctx: &WriteContext,
    outcome: &StoredOutcome,
) -> StoreResult<()> {
    let Some(idem) = &ctx.idempotency else {
        return Ok(());
    };
    let json = serde_json::to_string(outcome).map_err(corrupt)?;
    tx.execute(
        Sql::new("UPDATE idempotency_keys SET response = $3 WHERE client_id = $1 AND key = $2")
            .bind(&ctx.actor)
            .bind(idem.key)
            .bind(json),
    )
    .await?;
    Ok(())
}
