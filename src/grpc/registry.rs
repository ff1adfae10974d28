//! `AccountRegistryService`: link, verify and manage accounts; read them and their history.

use prost::Message;
use tonic::{Request, Response, Status};

use super::convert::{
    account_id, account_out, history_out, min_position, position_out, preference_out,
};
use super::page::{page_size, Binding};
use super::{AppState, Call};
use crate::domain::commands::Command;
use crate::domain::{
    account_not_found, Account, ChangeAccount, LinkAccount, Rejection, ReportPayoutFailure,
    SetPreference,
};
use crate::proto::account_registry_service_server::AccountRegistryService;
use crate::proto::*;
use crate::security::limits::RpcClass;
use crate::security::Scope;
use crate::store::{recorded_failure, Answer, WriteContext};

/// Default and largest history page.
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;
/// Default and largest page of a citizen's accounts.
const DEFAULT_ACCOUNTS_PAGE: u32 = 50;
const MAX_ACCOUNTS_PAGE: u32 = 100;

pub struct AccountRegistryHandler {
    state: AppState,
}

impl AccountRegistryHandler {
    pub fn new(state: AppState) -> Self {
        AccountRegistryHandler { state }
    }

    /// The five status changes share one path: parse, run, answer with the account.
    async fn change<M>(
        &self,
        request: Request<M>,
        operation: &str,
        key: fn(&mut M) -> &mut String,
    ) -> Result<(Account, bool, u64), Status>
    where
        M: Message + Clone,
        for<'a> ChangeAccount: TryFrom<&'a M, Error = Rejection>,
    {
        let call = Call::of(&request)?;
        let _admitted = call.admit(&self.state, RpcClass::Write)?;
        let mut req = request.into_inner();
        let raw_key = key(&mut req).clone();
        let ctx = call.write_context(&self.state, operation, &raw_key, &req, |r| key(r).clear())?;
        let cmd = ChangeAccount::try_from(&req).map_err(|r| call.reject(r))?;
        let answer = self.write(&call, &ctx, Command::Change(&cmd)).await?;
        let account = &answer.account;
        tracing::info!(account = %account.id, status = %account.status, version = account.version, "{operation}");
        let position = self.written(&answer).await;
        Ok((answer.account, Self::full(&call), position))
    }

    /// Runs a single write through the store's write path.
    async fn write(
        &self,
        call: &Call,
        ctx: &WriteContext,
        cmd: Command<'_>,
    ) -> Result<Answer, Status> {
        self.state
            .store
            .write(ctx, cmd)
            .await
            .map_err(|e| call.fail(e))
    }

    fn full(call: &Call) -> bool {
        call.caller.has(Scope::ResolveFull)
    }

    /// A write's consistency token: the feed position of its last event once numbered
    /// (see `Store::written_position`), 0 when not numbered in time (the write stands
    /// either way).
    async fn written(&self, answer: &Answer) -> u64 {
        let committed = std::time::Instant::now();
        let numbered = self.state.store.written_position(answer.last_event).await;
        metrics::histogram!(crate::telemetry::metrics::FEED_NUMBERING_WAIT_SECONDS)
            .record(committed.elapsed().as_secs_f64());
        match numbered {
            Ok(Some(position)) => position_out(position),
            Ok(None) => {
                tracing::warn!("the write's event was not numbered within a second; answered without a position");
                0
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the write's feed position failed; answered without one");
                0
            }
        }
    }
}

/// Wraps the account of a change in its RPC's response, masked for the caller.
macro_rules! answer {
    ($self:ident, $request:ident, $op:literal, $resp:ident) => {{
        let (account, full, position) = $self
            .change($request, $op, |r| &mut r.idempotency_key)
            .await?;
        Ok(Response::new($resp {
            account: Some(account_out(&account, full)),
            position,
        }))
    }};
}

#[tonic::async_trait]
impl AccountRegistryService for AccountRegistryHandler {
    async fn link_account(
        &self,
        request: Request<LinkAccountRequest>,
    ) -> Result<Response<LinkAccountResponse>, Status> {
        let call = Call::of(&request)?;
        let _admitted = call.admit(&self.state, RpcClass::Write)?;
        let req = request.into_inner();
        let ctx = call.write_context(
            &self.state,
            "LinkAccount",
            &req.idempotency_key,
            &req,
            |r| r.idempotency_key.clear(),
        )?;
        let cmd = LinkAccount::try_from(&req).map_err(|r| call.reject(r))?;
        let answer = self.write(&call, &ctx, Command::Link(&cmd)).await?;
        let account = &answer.account;
        tracing::info!(account = %account.id, citizen = %account.citizen_id, account_ref = %account.account_ref, "account linked");
        Ok(Response::new(LinkAccountResponse {
            account: Some(account_out(account, Self::full(&call))),
            position: self.written(&answer).await,
        }))
    }

    async fn verify_account(
        &self,
        request: Request<VerifyAccountRequest>,
    ) -> Result<Response<VerifyAccountResponse>, Status> {
        answer!(self, request, "VerifyAccount", VerifyAccountResponse)
    }

    async fn reject_account(
        &self,
        request: Request<RejectAccountRequest>,
    ) -> Result<Response<RejectAccountResponse>, Status> {
        answer!(self, request, "RejectAccount", RejectAccountResponse)
    }

    async fn set_default_account(
        &self,
        request: Request<SetDefaultAccountRequest>,
    ) -> Result<Response<SetDefaultAccountResponse>, Status> {
        let call = Call::of(&request)?;
        let _admitted = call.admit(&self.state, RpcClass::Write)?;
        let req = request.into_inner();
        let ctx = call.write_context(
            &self.state,
            "SetDefaultAccount",
            &req.idempotency_key,
            &req,
            |r| r.idempotency_key.clear(),
        )?;
        let cmd = SetPreference::try_from(&req).map_err(|r| call.reject(r))?;
        let answer = self.write(&call, &ctx, Command::Prefer(&cmd)).await?;
        let account = &answer.account;
        tracing::info!(account = %account.id, program = req.program_code.as_str(), "payout preference set");
        Ok(Response::new(SetDefaultAccountResponse {
            account: Some(account_out(account, Self::full(&call))),
            position: self.written(&answer).await,
            program_code: cmd
                .program
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default(),
        }))
    }

    async fn suspend_account(
        &self,
        request: Request<SuspendAccountRequest>,
    ) -> Result<Response<SuspendAccountResponse>, Status> {
        answer!(self, request, "SuspendAccount", SuspendAccountResponse)
    }

    async fn reinstate_account(
        &self,
        request: Request<ReinstateAccountRequest>,
    ) -> Result<Response<ReinstateAccountResponse>, Status> {
        answer!(self, request, "ReinstateAccount", ReinstateAccountResponse)
    }

    async fn close_account(
        &self,
        request: Request<CloseAccountRequest>,
    ) -> Result<Response<CloseAccountResponse>, Status> {
        answer!(self, request, "CloseAccount", CloseAccountResponse)
    }

    async fn get_account(
        &self,
        request: Request<GetAccountRequest>,
    ) -> Result<Response<GetAccountResponse>, Status> {
        let call = Call::of(&request)?;
        let _admitted = call.admit(&self.state, RpcClass::Read)?;
        let req = request.into_inner();
        let purpose = call.purpose(&req.purpose)?;
        let id = account_id("account_id", &req.account_id).map_err(|r| call.reject(r))?;
        let min = min_position(req.min_position).map_err(|r| call.reject(r))?;
        let (account, position) = self.account(&call, id, min).await?;
        call.log_reads(
            &self.state,
            GET_ACCOUNT,
            &purpose,
            [account.citizen_id.clone()],
        )
        .await?;
        Ok(Response::new(GetAccountResponse {
            account: Some(account_out(&account, Self::full(&call))),
            position: position_out(position),
        }))
    }

    async fn list_citizen_accounts(
        &self,
        request: Request<ListCitizenAccountsRequest>,
    ) -> Result<Response<ListCitizenAccountsResponse>, Status> {
        let call = Call::of(&request)?;
        let _admitted = call.admit(&self.state, RpcClass::Read)?;
        let req = request.into_inner();
        call.may_read_citizen(Scope::AccountsRead, &req.citizen_id)?;
        let purpose = call.purpose(&req.purpose)?;
        let Some(citizen) = call
            .find_citizen(&self.state, "citizen_id", &req.citizen_id)
            .await?
        else {
            // A legacy number no citizen has: nothing to show, nobody's data read.
            return Ok(Response::new(ListCitizenAccountsResponse::default()));
        };
        let size = page_size(req.page_size, DEFAULT_ACCOUNTS_PAGE, MAX_ACCOUNTS_PAGE)
            .map_err(|r| call.reject(r))?;
        let min = min_position(req.min_position).map_err(|r| call.reject(r))?;
        let binding = Binding::new(LIST_CITIZEN_ACCOUNTS)
            .with(citizen.as_str())
            .with(req.include_closed);
        let ((accounts, prefs), position) = self
            .state
            .store
            .list_citizen_accounts_at(&citizen, req.include_closed, min)
            .await
            .map_err(|e| call.fail(e))?;
        // Accounts come oldest first, (created_at, id); the cursor is the last one's id.
        let (accounts, next_page_token) = binding
            .page_of(&req.page_token, accounts, size, |a| a.id.to_string())
            .map_err(|r| call.reject(r))?;
        call.log_reads(&self.state, LIST_CITIZEN_ACCOUNTS, &purpose, [citizen])
            .await?;
        let full = Self::full(&call);
        Ok(Response::new(ListCitizenAccountsResponse {
            accounts: accounts.iter().map(|a| account_out(a, full)).collect(),
            preferences: prefs.iter().map(preference_out).collect(),
            next_page_token,
            position: position_out(position),
        }))
    }

    async fn get_account_history(
        &self,
        request: Request<GetAccountHistoryRequest>,
    ) -> Result<Response<GetAccountHistoryResponse>, Status> {
        let call = Call::of(&request)?;
        let _admitted = call.admit(&self.state, RpcClass::Read)?;
        let req = request.into_inner();
        let purpose = call.purpose(&req.purpose)?;
        let id = account_id("account_id", &req.account_id).map_err(|r| call.reject(r))?;
        let size = page_size(req.page_size, DEFAULT_PAGE, MAX_PAGE).map_err(|r| call.reject(r))?;
        let min = min_position(req.min_position).map_err(|r| call.reject(r))?;
        let binding = Binding::new(GET_ACCOUNT_HISTORY).with(id);
        let after = binding
            .cursor_as(&req.page_token, |c| c.parse::<u64>().ok())
            .map_err(|r| call.reject(r))?
            .unwrap_or(0);
        // Checked on every page: a page token must not turn an unknown account into an
        // empty history.
        let (account, checked_at) = self.account(&call, id, min).await?;
        // One more than the page, to know whether another page follows.
        let (entries, read_at) = self
            .state
            .store
            .account_history_at(id, after, size + 1, min)
            .await
            .map_err(|e| call.fail(e))?;
        let (entries, next_page_token) =
            binding.page(entries, size, |h| h.account.version.to_string());
        call.log_reads(
            &self.state,
            GET_ACCOUNT_HISTORY,
            &purpose,
            [account.citizen_id],
        )
        .await?;
        let full = Self::full(&call);
        Ok(Response::new(GetAccountHistoryResponse {
            entries: entries.iter().map(|h| history_out(h, full)).collect(),
            next_page_token,
            position: position_out(checked_at.min(read_at)),
        }))
    }

    async fn report_payout_failure(
        &self,
        request: Request<ReportPayoutFailureRequest>,
    ) -> Result<Response<ReportPayoutFailureResponse>, Status> {
        let call = Call::of(&request)?;
        let _admitted = call.admit(&self.state, RpcClass::Write)?;
        let req = request.into_inner();
        let ctx = call.write_context(
            &self.state,
            "ReportPayoutFailure",
            &req.idempotency_key,
            &req,
            |r| r.idempotency_key.clear(),
        )?;
        let cmd = ReportPayoutFailure::try_from(&req).map_err(|r| call.reject(r))?;
        let answer = self.write(&call, &ctx, Command::Failure(&cmd)).await?;
        let failure_id = recorded_failure(&answer).map_err(|e| call.fail(e))?;
        let account = &answer.account;
        tracing::warn!(
            account = %account.id,
            failure_code = %cmd.failure_code,
            status = %account.status,
            "payout failure reported"
        );
        Ok(Response::new(ReportPayoutFailureResponse {
            account: Some(account_out(account, Self::full(&call))),
            failure_id: failure_id.to_string(),
            position: self.written(&answer).await,
        }))
    }
}

impl AccountRegistryHandler {
    /// An account from state at least `min` fresh, and the position read at.
    async fn account(
        &self,
        call: &Call,
        id: uuid::Uuid,
        min: i64,
    ) -> Result<(Account, i64), Status> {
        let (account, position) = self
            .state
            .store
            .get_account_at(id, min)
            .await
            .map_err(|e| call.fail(e))?;
        let account = account.ok_or_else(|| call.reject(account_not_found(id)))?;
        Ok((account, position))
    }
}

const GET_ACCOUNT: &str = "/payoutregistry.v1.AccountRegistryService/GetAccount";
const LIST_CITIZEN_ACCOUNTS: &str = "/payoutregistry.v1.AccountRegistryService/ListCitizenAccounts";
const GET_ACCOUNT_HISTORY: &str = "/payoutregistry.v1.AccountRegistryService/GetAccountHistory";
