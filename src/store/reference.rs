//! Reference data: payout providers and programs.
//!
//! Banks merge and new wallets get licences, so providers and programs are data, not
//! enums: `reference/providers.csv` and `reference/programs.csv` are compiled into the
//! binary and upserted into the database by `migrate`. Editing a CSV and re-running
//! `migrate` updates a running registry's reference data.

use serde::Deserialize;

use super::Provider;
use crate::domain::AccountKind;

const PROVIDERS_CSV: &str = include_str!("../../reference/providers.csv");
const PROGRAMS_CSV: &str = include_str!("../../reference/programs.csv");

/// A payout program from the reference data.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Program {
    pub code: String,
    pub name: String,
    pub description: String,
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
