//! `Oversight`: for investigators and auditors. Reverse lookups of accounts, refused
//! duplicate claims, and the access log. These calls read many citizens' data at once,
//! so they have their own (small) rate limit, and every citizen they reveal is itself
//! recorded in the access log.

use tonic::{Request, Response, Status};

use super::convert::{
    access_entry_out, account_key_in, duplicate_claim_out, entitlement_filter, holder_out,
};
use super::page::{page_size, Binding};
use super::{AppState, Call};
use crate::domain::Timestamp;
use crate::proto::oversight_service_server::OversightService;
use crate::proto::*;
use crate::security::limits::RpcClass;
use crate::security::Scope;

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

const FIND_ACCOUNT_HOLDERS: &str = "/payoutregistry.v1.OversightService/FindAccountHolders";
const LIST_DUPLICATE_CLAIMS: &str = "/payoutregistry.v1.OversightService/ListDuplicateClaims";
const LIST_ACCESS_LOG: &str = "/payoutregistry.v1.OversightService/ListAccessLog";
const LIST_DUPLICATE_ENTITLEMENTS: &str =
    "/payoutregistry.v1.OversightService/ListDuplicateEntitlements";

/// A claim cursor: `<detected_at micros>_<claim id>` of the last claim of a page.
fn claim_cursor(raw: &str) -> Option<(Timestamp, uuid::Uuid)> {
    let (t, id) = raw.split_once('_')?;
    Some((Timestamp(t.parse().ok()?), uuid::Uuid::parse_str(id).ok()?))
}

pub struct OversightHandler {
    state: AppState,
}

impl OversightHandler {
    pub fn new(state: AppState) -> Self {
        OversightHandler { state }
    }
}

#[tonic::async_trait]
impl OversightService for OversightHandler {
    async fn find_account_holders(
        &self,
        request: Request<FindAccountHoldersRequest>,
    ) -> Result<Response<FindAccountHoldersResponse>, Status> {
        let call = Call::of(&request)?;
        let _admitted = call.admit(&self.state, RpcClass::Oversight)?;
        let req = request.into_inner();
        let purpose = call.purpose(&req.purpose)?;
        let key = account_key_in("account", req.account.as_ref()).map_err(|r| call.reject(r))?;
        let size = page_size(req.page_size, DEFAULT_PAGE, MAX_PAGE).map_err(|r| call.reject(r))?;
        let binding = Binding::new(FIND_ACCOUNT_HOLDERS)
            .with(key.kind)
            .with(&key.provider_code)
            .with(key.account_ref.as_str());
        let holders = self
            .state
            .store
            .account_claims(&key)
            .await
            .map_err(|e| call.fail(e))?;
        // Holders are ordered by (linked, account id); the cursor is the last one's id.
        let (holders, next_page_token) = binding
            .page_of(&req.page_token, holders, size, |a| a.id.to_string())
            .map_err(|r| call.reject(r))?;
        let citizens = holders.iter().map(|a| a.citizen_id.clone());
        call.log_reads(&self.state, FIND_ACCOUNT_HOLDERS, &purpose, citizens)
            .await?;
        Ok(Response::new(FindAccountHoldersResponse {
            holders: holders.iter().map(holder_out).collect(),
            next_page_token,
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
        let key = req
            .account
            .as_ref()
            .map(|k| account_key_in("account", Some(k)))
            .transpose()
            .map_err(|r| call.reject(r))?;
        let size = page_size(req.page_size, DEFAULT_PAGE, MAX_PAGE).map_err(|r| call.reject(r))?;
        let binding = match &key {
            None => Binding::new(LIST_DUPLICATE_CLAIMS),
            Some(k) => Binding::new(LIST_DUPLICATE_CLAIMS)
                .with(k.kind)
                .with(&k.provider_code)
                .with(k.account_ref.as_str()),
        };
        let before = binding
            .cursor_as(&req.page_token, claim_cursor)
            .map_err(|r| call.reject(r))?;
        let claims = self
            .state
            .store
            .duplicate_claims(key.as_ref(), before, size + 1)
            .await
            .map_err(|e| call.fail(e))?;
        let (claims, next_page_token) = binding.page(claims, size, |c| {
            format!("{}_{}", c.detected_at.micros(), c.claim_id)
        });
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

    async fn list_duplicate_entitlements(
        &self,
        request: Request<ListDuplicateEntitlementsRequest>,
    ) -> Result<Response<ListDuplicateEntitlementsResponse>, Status> {
        let call = Call::of(&request)?;
        let _admitted = call.admit(&self.state, RpcClass::Oversight)?;
        let req = request.into_inner();
        let purpose = call.purpose(&req.purpose)?;
        let filter = entitlement_filter(&req).map_err(|r| call.reject(r))?;
        let size = page_size(req.page_size, DEFAULT_PAGE, MAX_PAGE).map_err(|r| call.reject(r))?;
        let binding = Binding::new(LIST_DUPLICATE_ENTITLEMENTS)
            .with(filter.program_code.as_deref().unwrap_or(""))
            .with(filter.period.as_deref().unwrap_or(""))
            .with(filter.province_code.as_deref().unwrap_or(""));
        let before = binding
            .cursor_as(&req.page_token, claim_cursor)
            .map_err(|r| call.reject(r))?;
        let found = self
            .state
            .store
            .duplicate_entitlements(&filter, before, size + 1)
            .await
            .map_err(|e| call.fail(e))?;
        let (found, next_page_token) = binding.page(found, size, |d| {
            format!("{}_{}", d.detected_at.micros(), d.entitlement_id)
        });
        call.log_reads(
            &self.state,
            LIST_DUPLICATE_ENTITLEMENTS,
            &purpose,
            found.iter().map(|d| d.citizen.clone()),
        )
        .await?;
        Ok(Response::new(ListDuplicateEntitlementsResponse {
            entitlements: found
                .iter()
                .map(|d| DuplicateEntitlement {
                    entitlement_id: d.entitlement_id.to_string(),
                    citizen_id: d.citizen.as_str().to_owned(),
                    program_code: d.program_code.clone(),
                    period: d.period.clone(),
                    holder_client_id: d.holder.clone(),
                    claimant_client_id: d.claimant.clone(),
                    detected_at: Some(super::convert::timestamp_out(d.detected_at)),
                    reservation_id: d.reservation_id.to_string(),
                })
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
        let size = page_size(req.page_size, DEFAULT_PAGE, MAX_PAGE).map_err(|r| call.reject(r))?;
        let binding = Binding::new(LIST_ACCESS_LOG).with(citizen.as_str());
        let before = binding
            .cursor_as(&req.page_token, |c| c.parse::<i64>().ok())
            .map_err(|r| call.reject(r))?;
        // This instance's spooled reads first, so that it lists every read it answered.
        self.state
            .access
            .flush()
            .await
            .map_err(|_| call.access_log_unavailable())?;
        let entries = self
            .state
            .store
            .access_log(&citizen, before, size + 1)
            .await
            .map_err(|e| call.fail(e))?;
        let (entries, next_page_token) = binding.page(entries, size, |(id, _)| id.to_string());
        // Reading who read a citizen's data is itself a read of that citizen's data.
        call.log_reads(&self.state, LIST_ACCESS_LOG, &purpose, [citizen])
            .await?;
        Ok(Response::new(ListAccessLogResponse {
            entries: entries.iter().map(|(_, e)| access_entry_out(e)).collect(),
            next_page_token,
        }))
    }
}
