//! `Oversight`: for investigators and auditors. Reverse lookups of accounts, refused
//! duplicate claims, and the access log. These calls read many citizens' data at once,
//! so they have their own (small) rate limit, and every citizen they reveal is itself
//! recorded in the access log.

use tonic::{Request, Response, Status};

use super::convert::{
    access_entry_out, access_token_in, access_token_out, claims_token_in, claims_token_out,
    duplicate_claim_out, holder_out, page_size,
};
use super::{AppState, Call};
use crate::proto::oversight_server::Oversight;
use crate::proto::*;
use crate::security::limits::RpcClass;
use crate::security::Scope;
use crate::store::AccountKey;

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;
/// Refused claims listed with one account's holders.
const CLAIMS_PER_ACCOUNT: u32 = 1000;

const FIND_ACCOUNT_HOLDERS: &str = "/payoutregistry.v1.Oversight/FindAccountHolders";
const LIST_DUPLICATE_CLAIMS: &str = "/payoutregistry.v1.Oversight/ListDuplicateClaims";
const LIST_ACCESS_LOG: &str = "/payoutregistry.v1.Oversight/ListAccessLog";

pub struct OversightService {
    state: AppState,
}

impl OversightService {
    pub fn new(state: AppState) -> Self {
        OversightService { state }
    }
}

#[tonic::async_trait]
impl Oversight for OversightService {
    async fn find_account_holders(
        &self,
        request: Request<FindAccountHoldersRequest>,
    ) -> Result<Response<FindAccountHoldersResponse>, Status> {
        let call = Call::of(&request)?;
        let _admitted = call.admit(&self.state, RpcClass::Oversight)?;
        let req = request.into_inner();
        let purpose = call.purpose(&req.purpose)?;
        let key = AccountKey::try_from(&req).map_err(|r| call.reject(r))?;
        let store = &self.state.store;
        let holders = store.account_claims(&key).await.map_err(|e| call.fail(e))?;
        let claims = store
            .duplicate_claims(Some(&key), None, CLAIMS_PER_ACCOUNT)
            .await
            .map_err(|e| call.fail(e))?;
        let citizens = holders.iter().map(|a| a.citizen_id.clone()).chain(
            claims
                .iter()
                .flat_map(|c| [c.claimant.clone(), c.holder.clone()]),
        );
        call.log_reads(&self.state, FIND_ACCOUNT_HOLDERS, &purpose, citizens)
            .await?;
        let full = call.caller.has(Scope::ResolveFull);
        Ok(Response::new(FindAccountHoldersResponse {
            holders: holders.iter().map(holder_out).collect(),
            refused_claims: claims
                .iter()
                .map(|c| duplicate_claim_out(c, full))
                .collect(),
        }))
    }

    async fn list_duplicate_claims(
        &self,
        request: Request<ListDuplicateClaimsRequest>,
    ) -> Result<Response<ListDuplicateClaimsResponse>, Status> {
        let call = Call::of(&request)?;
        let _admitted = call.admit(&self.state, RpcClass::Oversight)?;
        let req = request.into_inner();
        let purpose = call.purpose(&req.purpose)?;
        let before = claims_token_in(&req.page_token).map_err(|r| call.reject(r))?;
        let size = page_size(req.page_size, DEFAULT_PAGE, MAX_PAGE);
        let mut claims = self
            .state
            .store
            .duplicate_claims(None, before, size + 1)
            .await
            .map_err(|e| call.fail(e))?;
        let more = claims.len() > size as usize;
        claims.truncate(size as usize);
        let next_page_token = match (more, claims.last()) {
            (true, Some(last)) => claims_token_out(last),
            _ => String::new(),
        };
        let citizens = claims
            .iter()
            .flat_map(|c| [c.claimant.clone(), c.holder.clone()]);
        call.log_reads(&self.state, LIST_DUPLICATE_CLAIMS, &purpose, citizens)
            .await?;
        let full = call.caller.has(Scope::ResolveFull);
        Ok(Response::new(ListDuplicateClaimsResponse {
            claims: claims
                .iter()
                .map(|c| duplicate_claim_out(c, full))
                .collect(),
            next_page_token,
        }))
    }

    async fn list_access_log(
        &self,
        request: Request<ListAccessLogRequest>,
    ) -> Result<Response<ListAccessLogResponse>, Status> {
        let call = Call::of(&request)?;
        let _admitted = call.admit(&self.state, RpcClass::Oversight)?;
        let req = request.into_inner();
        call.may_read_citizen(Scope::Oversight, &req.citizen_id)?;
        let purpose = call.purpose(&req.purpose)?;
        let Some(citizen) = call
            .find_citizen(&self.state, "citizen_id", &req.citizen_id)
            .await?
        else {
            return Ok(Response::new(ListAccessLogResponse::default()));
        };
        let before = access_token_in(&req.page_token).map_err(|r| call.reject(r))?;
        let size = page_size(req.page_size, DEFAULT_PAGE, MAX_PAGE);
        let mut entries = self
            .state
            .store
            .access_log(&citizen, before, size + 1)
            .await
            .map_err(|e| call.fail(e))?;
        let more = entries.len() > size as usize;
        entries.truncate(size as usize);
        let next_page_token = match (more, entries.last()) {
            (true, Some((id, _))) => access_token_out(*id),
            _ => String::new(),
        };
        // Reading who read a citizen's data is itself a read of that citizen's data.
        call.log_reads(&self.state, LIST_ACCESS_LOG, &purpose, [citizen])
            .await?;
        Ok(Response::new(ListAccessLogResponse {
            entries: entries.iter().map(|(_, e)| access_entry_out(e)).collect(),
            next_page_token,
        }))
    }
}
