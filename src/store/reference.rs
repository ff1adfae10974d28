//! Reference data: payout providers and programs.
//!
//! Banks merge and new wallets get licences, so providers and programs are data, not
//! enums: `reference/providers.csv` and `reference/programs.csv` are compiled into the
//! binary and upserted into the database by `migrate`. Editing a CSV and re-running
//! `migrate` updates a running registry's reference data.
//!
//! The program codes are read from the database once and cached in the store
//! ([`KnownPrograms`]), since every resolution and preference checks one and they change
//! only when `migrate` loads new reference data.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use serde::Deserialize;

use super::dialect::{Dialect, Tx};
use super::sql::Sql;
use super::sql_store::SqlStore;
use super::{corrupt, Provider, StoreResult};
use crate::domain::{AccountKind, ProgramCode, Reason, Rejection};

const PROVIDERS_CSV: &str = include_str!("../../reference/providers.csv");
const PROGRAMS_CSV: &str = include_str!("../../reference/programs.csv");

/// A payout program from the reference data.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Program {
    pub code: String,
    pub name: String,
    pub description: String,
    /// Payrolls may reserve its payments (`ResolveRequest.reservation_period`).
    pub reservable: bool,
    /// One holder per citizen and period, or one per payer.
    pub reservation_scope: crate::domain::reservation::ReservationScope,
}

#[derive(Deserialize)]
struct ProviderLine {
    code: String,
    kind: String,
    name: String,
    short_name: String,
    active: bool,
}

/// The providers in `reference/providers.csv`.
pub fn providers() -> Result<Vec<Provider>, String> {
    csv::Reader::from_reader(PROVIDERS_CSV.as_bytes())
        .deserialize::<ProviderLine>()
        .enumerate()
        .map(|(i, line)| {
            let line = line.map_err(|e| format!("providers.csv record {}: {e}", i + 1))?;
            let kind = AccountKind::parse(&line.kind)
                .map_err(|_| format!("providers.csv record {}: unknown kind", i + 1))?;
            Ok(Provider {
                code: line.code,
                kind,
                name: line.name,
                short_name: line.short_name,
                active: line.active,
            })
        })
        .collect()
}

/// The programs in `reference/programs.csv`.
pub fn programs() -> Result<Vec<Program>, String> {
    csv::Reader::from_reader(PROGRAMS_CSV.as_bytes())
        .deserialize::<Program>()
        .enumerate()
        .map(|(i, line)| line.map_err(|e| format!("programs.csv record {}: {e}", i + 1)))
        .collect()
}

/// The program codes of the reference data, read once per process.
pub(super) type KnownPrograms = RwLock<Option<Arc<HashSet<String>>>>;

impl<D: Dialect> SqlStore<D> {
    /// Applies pending migrations, upserts the reference data in one transaction, and builds
    /// the resolution read model if this database has never had it.
    pub(super) async fn migrate_and_seed(&self) -> StoreResult<()> {
        D::migrate(&self.write).await?;
        let mut tx = Tx::<D>::begin_write(&self.write).await?;
        for p in providers().map_err(corrupt)? {
            tx.execute(
                Sql::new(
                    "INSERT INTO providers (code, kind, name, short_name, active) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (code) DO UPDATE SET \
                     kind = excluded.kind, name = excluded.name, short_name = excluded.short_name, \
                     active = excluded.active",
                )
                .bind(&p.code)
                .bind(p.kind.as_str())
                .bind(&p.name)
                .bind(&p.short_name)
                .bind(p.active),
            )
            .await?;
        }
        for p in programs().map_err(corrupt)? {
            tx.execute(
                Sql::new(
                    "INSERT INTO programs (code, name, description) VALUES ($1, $2, $3) \
                     ON CONFLICT (code) DO UPDATE SET name = excluded.name, \
                     description = excluded.description",
                )
                .bind(&p.code)
                .bind(&p.name)
                .bind(&p.description),
            )
            .await?;
        }
        tx.commit().await?;
        *self.programs.write().unwrap_or_else(|p| p.into_inner()) = None;
        self.build_resolution_model().await
    }

    /// The providers as stored.
    pub(super) async fn stored_providers(&self) -> StoreResult<Vec<Provider>> {
        let rows: Vec<(String, String, String, String, bool)> = self
            .reader()
            .await?
            .fetch_all(Sql::new(
                "SELECT code, kind, name, short_name, active FROM providers ORDER BY code",
            ))
            .await?;
        rows.into_iter()
            .map(|(code, kind, name, short_name, active)| {
                Ok(Provider {
                    kind: AccountKind::parse(&kind).map_err(corrupt)?,
                    code,
                    name,
                    short_name,
                    active,
                })
            })
            .collect()
    }

    /// Refuses a program code that is not in the reference data. The codes are read once
    /// and kept: they change only when `migrate` loads new reference data.
    pub(super) async fn check_program(&self, program: Option<&ProgramCode>) -> StoreResult<()> {
        let Some(program) = program else {
            return Ok(());
        };
        let cached = self
            .programs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let known = match cached {
            Some(known) => known,
            None => {
                let codes: Vec<(String,)> = self
                    .reader()
                    .await?
                    .fetch_all(Sql::new("SELECT code FROM programs"))
                    .await?;
                let known = Arc::new(codes.into_iter().map(|(c,)| c).collect());
                *self.programs.write().unwrap_or_else(|p| p.into_inner()) =
                    Some(Arc::clone(&known));
                known
            }
        };
        if known.contains(program.as_str()) {
            return Ok(());
        }
        Err(Rejection::field(
            Reason::ProgramUnknown,
            "program_code",
            "no such program in the reference data",
        )
        .into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bank_is_keyed_by_a_six_digit_napas_bin() {
        let providers = providers().unwrap();
        for p in providers
            .iter()
            .filter(|p| p.kind == AccountKind::BankAccount)
        {
            assert!(
                p.code.len() == 6 && p.code.bytes().all(|b| b.is_ascii_digit()),
                "{}",
                p.code
            );
        }
    }

    #[test]
    fn the_reference_data_has_the_big_four_the_social_policy_bank_wallets_and_mobile_money() {
        let providers = providers().unwrap();
        let has = |code: &str| providers.iter().any(|p| p.code == code);
        for code in [
            "970436",
            "970415",
            "970418",
            "970405",
            "999888",
            "MOMO",
            "VIETTELMONEY",
        ] {
            assert!(has(code), "missing {code}");
        }
        assert!(providers.iter().any(|p| p.kind == AccountKind::Ewallet));
        assert!(providers.iter().any(|p| p.kind == AccountKind::MobileMoney));
        assert!(providers.iter().any(|p| !p.active));
    }

    #[test]
    fn provider_codes_are_unique() {
        let providers = providers().unwrap();
        let mut codes: Vec<_> = providers.iter().map(|p| &p.code).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), providers.len());
    }

    #[test]
    fn programs_include_pensions_and_social_allowance() {
        let programs = programs().unwrap();
        for code in ["PENSION", "UNEMPLOYMENT_INSURANCE", "SOCIAL_ALLOWANCE"] {
            assert!(programs.iter().any(|p| p.code == code), "missing {code}");
        }
    }
}
