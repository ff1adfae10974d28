//! `PayoutResolver`: which account does the money go to?

use tonic::{Request, Response, Status};

use super::convert::{resolution_out, ResolveRequest};
use super::{AppState, Call};
use crate::auth::Scope;
use crate::proto::payout_resolver_server::PayoutResolver;
use crate::proto::{ResolveOutcome, ResolveRequest as ProtoResolveRequest, ResolveResponse};

pub struct PayoutResolverService {
    state: AppState,
}

impl PayoutResolverService {
    pub fn new(state: AppState) -> Self {
        PayoutResolverService { state }
    }
}

#[tonic::async_trait]
impl PayoutResolver for PayoutResolverService {
    async fn resolve(
        &self,
        request: Request<ProtoResolveRequest>,
    ) -> Result<Response<ResolveResponse>, Status> {
        let call = Call::of(&request)?;
        let req = ResolveRequest::try_from(request.get_ref()).map_err(|r| call.reject(r))?;
        if !req.exists_only {
            // `resolve.exists` clients may only ask yes/no.
            call.require(Scope::Resolve)?;
        }
        let now = self.state.now();
        let resolution = self
            .state
            .store
            .resolve(&req.query, now)
            .await
            .map_err(|e| call.fail(e))?;
        let at = req.query.as_of.unwrap_or(now);
        let out = resolution_out(
            &resolution,
            req.query.program.as_ref(),
            at,
            req.exists_only,
            call.caller.has(Scope::ResolveFull),
        );
        tracing::info!(
            citizen = %req.query.citizen_id,
            outcome = ResolveOutcome::try_from(out.outcome).map(|o| o.as_str_name()).unwrap_or("?"),
            cooling_off = out.cooling_off,
            "resolved"
        );
        Ok(Response::new(out))
    }
}
