//! `PayoutResolver`: which account does the money go to?

use tonic::{Request, Response, Status};

use super::convert::{resolution_out, ResolveRequest};
use super::{AppState, Call};
use crate::auth::Scope;
use crate::domain::Resolution;
use crate::limits::RpcClass;
use crate::proto::payout_resolver_server::PayoutResolver;
use crate::proto::{ResolveOutcome, ResolveRequest as ProtoResolveRequest, ResolveResponse};

const RESOLVE: &str = "/payoutregistry.v1.PayoutResolver/Resolve";

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
        let _admitted = call.admit(&self.state, RpcClass::Resolve)?;
        let purpose = call.purpose(&request.get_ref().purpose)?;
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
        if resolution == Resolution::UnknownCitizen {
            // Misses cost more: enumerating citizen ids must be slow and visible.
            let limits = &self.state.limits;
            limits.charge(
                &call.caller.client_id,
                RpcClass::Resolve,
                limits.unknown_citizen_cost(),
                std::time::Instant::now(),
            );
        }
        call.log_reads(
            &self.state,
            RESOLVE,
            &purpose,
            [req.query.citizen_id.clone()],
        )
        .await?;
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
