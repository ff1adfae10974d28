//! `client ...`: calls to a running registry, each answer printed on a line or a few for
//! an operator (and to paste into the next command).

use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};
use uuid::Uuid;

use super::Connection;
use crate::client::{connect, describe, short_name, Authed};
use crate::grpc::convert::timestamp_in;
use crate::proto;
use crate::proto::account_registry_service_client::AccountRegistryServiceClient;
use crate::proto::payout_resolver_service_client::PayoutResolverServiceClient;

#[derive(Clone, Copy, ValueEnum)]
pub enum KindArg {
    Bank,
    Ewallet,
    MobileMoney,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum MethodArg {
    IssuerConfirmed,
    NameMatch,
    VneidDeclared,
    InPerson,
}

#[derive(Subcommand)]
pub enum ClientCommand {
    /// Link an account to a citizen.
    Link {
        #[command(flatten)]
        conn: Connection,
        #[arg(long)]
        citizen: String,
        #[arg(long, value_enum)]
        kind: KindArg,
        /// NAPAS BIN for banks, or a wallet code such as MOMO.
        #[arg(long)]
        provider: String,
        /// Account number or mobile number.
        #[arg(long = "ref")]
        account_ref: String,
        #[arg(long)]
        holder: Option<String>,
        /// Verify at link time with this method (needs --evidence).
        #[arg(long, value_enum, requires = "evidence")]
        verify: Option<MethodArg>,
        #[arg(long)]
        evidence: Option<String>,
        #[arg(long)]
        idempotency_key: Option<Uuid>,
    },
    /// Verify a pending account.
    Verify {
        #[command(flatten)]
        conn: Connection,
        #[arg(long)]
        account: String,
        #[arg(long, value_enum)]
        method: MethodArg,
        #[arg(long)]
        evidence: String,
        #[arg(long)]
        holder: Option<String>,
        #[arg(long)]
        idempotency_key: Option<Uuid>,
    },
    /// Choose the account a citizen is paid into (by default, or for --program).
    SetDefault {
        #[command(flatten)]
        conn: Connection,
        #[arg(long)]
        citizen: String,
        #[arg(long)]
        account: String,
        #[arg(long, default_value = "")]
        program: String,
        #[arg(long)]
        idempotency_key: Option<Uuid>,
    },
    /// Reject, suspend, reinstate or close an account.
    Change {
        #[command(flatten)]
        conn: Connection,
        #[arg(value_enum)]
        action: ChangeArg,
        #[arg(long)]
        account: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        idempotency_key: Option<Uuid>,
    },
    /// Which account pays this citizen, now or --as-of an RFC 3339 instant; or, with
    /// --file, every citizen id in a file (one per line) through BatchResolve, written as
    /// a payroll CSV to --out.
    Resolve {
        #[command(flatten)]
        conn: Connection,
        /// A 12-digit citizen id or a legacy 9-digit CMND number.
        #[arg(long, required_unless_present = "file", conflicts_with = "file")]
        citizen: Option<String>,
        /// A file of citizen ids, one per line.
        #[arg(long, requires = "out")]
        file: Option<PathBuf>,
        /// Where to write the payroll CSV.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value = "")]
        program: String,
        #[arg(long)]
        as_of: Option<String>,
        /// Only ask whether the citizen can be paid.
        #[arg(long)]
        exists_only: bool,
        /// Reserve the payment of --program for this period (e.g. 2026-12): another
        /// payer's reserved payment is answered ALREADY_RESERVED (pay nothing).
        #[arg(long, default_value = "")]
        reserve_period: String,
    },
    /// Release this client's reservations of --program for --period (a cancelled or
    /// corrected payroll): all of them, or those of --citizen (repeat).
    Release {
        #[command(flatten)]
        conn: Connection,
        #[arg(long)]
        program: String,
        #[arg(long)]
        period: String,
        #[arg(long = "citizen")]
        citizens: Vec<String>,
        #[arg(long)]
        reason: String,
    },
    /// For investigators (`oversight`): payments a second payer asked for while another
    /// held their reservation, newest first, as CSV on stdout.
    Duplicates {
        #[command(flatten)]
        conn: Connection,
        #[arg(long, default_value = "")]
        program: String,
        #[arg(long, default_value = "")]
        period: String,
        /// A 3-digit province code.
        #[arg(long, default_value = "")]
        province: String,
    },
    /// A citizen's accounts and preferences.
    List {
        #[command(flatten)]
        conn: Connection,
        #[arg(long)]
        citizen: String,
        #[arg(long)]
        include_closed: bool,
    },
    /// Print the change feed live (catch-up from --after, then every new event), one line
    /// per event, until interrupted. Needs `events.all`, or --consumer with a watch list.
    Tail {
        #[command(flatten)]
        conn: Connection,
        /// Start after this feed position (default: the current head, i.e. only new events).
        #[arg(long)]
        after: Option<u64>,
        /// A named consumer (its watch list filters the events).
        #[arg(long, default_value = "")]
        consumer: String,
        /// Only these event types (repeat).
        #[arg(long = "type")]
        types: Vec<String>,
        /// Also print each event's payload.
        #[arg(long)]
        payload: bool,
    },
    /// The sync digest of every citizen's live routes, or of one --province: compare it
    /// with one computed from a copy built from the change feed (see GetSyncDigest).
    Digest {
        #[command(flatten)]
        conn: Connection,
        /// A 3-digit province code.
        #[arg(long, default_value = "")]
        province: String,
    },
    /// Every state an account has been in.
    History {
        #[command(flatten)]
        conn: Connection,
        #[arg(long)]
        account: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ChangeArg {
    Reject,
    Suspend,
    Reinstate,
    Close,
}

fn kind(k: KindArg) -> i32 {
    match k {
        KindArg::Bank => proto::AccountKind::BankAccount,
        KindArg::Ewallet => proto::AccountKind::Ewallet,
        KindArg::MobileMoney => proto::AccountKind::MobileMoney,
    }
    .into()
}

fn method(m: MethodArg) -> i32 {
    match m {
        MethodArg::IssuerConfirmed => proto::VerificationMethod::IssuerConfirmed,
        MethodArg::NameMatch => proto::VerificationMethod::NameMatch,
        MethodArg::VneidDeclared => proto::VerificationMethod::VneidDeclared,
        MethodArg::InPerson => proto::VerificationMethod::InPerson,
    }
    .into()
}

fn key(k: Option<Uuid>) -> String {
    k.unwrap_or_else(Uuid::new_v4).to_string()
}

/// One line per account: what an operator needs to read and to paste into the next
/// command.
fn print_account(a: &proto::Account) {
    let status = proto::AccountStatus::try_from(a.status)
        .map(|s| short_name(s.as_str_name(), "ACCOUNT_STATUS_"))
        .unwrap_or("?");
    let kind = proto::AccountKind::try_from(a.kind)
        .map(|k| short_name(k.as_str_name(), "ACCOUNT_KIND_"))
        .unwrap_or("?");
    println!(
        "account {}  citizen {}  {} {} {}  {}  version {}",
        a.account_id, a.citizen_id, kind, a.provider_code, a.account_ref, status, a.version
    );
}

async fn registry(conn: &Connection) -> anyhow::Result<AccountRegistryServiceClient<Authed>> {
    let (channel, credentials) = connect(&conn.endpoint()).await?;
    Ok(AccountRegistryServiceClient::with_interceptor(
        channel,
        credentials,
    ))
}

async fn resolver(conn: &Connection) -> anyhow::Result<PayoutResolverServiceClient<Authed>> {
    let (channel, credentials) = connect(&conn.endpoint()).await?;
    Ok(PayoutResolverServiceClient::with_interceptor(
        channel,
        credentials,
    ))
}

/// Runs a `client` subcommand.
pub async fn run(cmd: ClientCommand) -> anyhow::Result<()> {
    match cmd {
        ClientCommand::Link {
            conn,
            citizen,
            kind: k,
            provider,
            account_ref,
            holder,
            verify,
            evidence,
            idempotency_key,
        } => {
            let mut registry = registry(&conn).await?;
            let verification = verify.map(|m| proto::Verification {
                method: method(m),
                evidence_ref: evidence.unwrap_or_default(),
                ..Default::default()
            });
            let r = registry
                .link_account(proto::LinkAccountRequest {
                    idempotency_key: key(idempotency_key),
                    citizen_id: citizen,
                    kind: kind(k),
                    provider_code: provider,
                    account_ref,
                    holder_name: holder.unwrap_or_default(),
                    verification,
                    reason: "linked from the command line".into(),
                })
                .await
                .map_err(describe)?;
            r.into_inner().account.iter().for_each(print_account);
        }
        ClientCommand::Verify {
            conn,
            account,
            method: m,
            evidence,
            holder,
            idempotency_key,
        } => {
            let mut registry = registry(&conn).await?;
            let r = registry
                .verify_account(proto::VerifyAccountRequest {
                    idempotency_key: key(idempotency_key),
                    account_id: account,
                    expected_version: None,
                    verification: Some(proto::Verification {
                        method: method(m),
                        evidence_ref: evidence,
                        ..Default::default()
                    }),
                    holder_name: holder.unwrap_or_default(),
                    reason: "verified from the command line".into(),
                })
                .await
                .map_err(describe)?;
            r.into_inner().account.iter().for_each(print_account);
        }
        ClientCommand::SetDefault {
            conn,
            citizen,
            account,
            program,
            idempotency_key,
        } => {
            let mut registry = registry(&conn).await?;
            let r = registry
                .set_default_account(proto::SetDefaultAccountRequest {
                    idempotency_key: key(idempotency_key),
                    citizen_id: citizen,
                    account_id: account,
                    program_code: program,
                    expected_version: None,
                    reason: "set from the command line".into(),
                })
                .await
                .map_err(describe)?
                .into_inner();
            let program = if r.program_code.is_empty() {
                "default".to_owned()
            } else {
                r.program_code
            };
            print!("{program} account now: ");
            r.account.iter().for_each(print_account);
        }
        ClientCommand::Change {
            conn,
            action,
            account,
            reason,
            idempotency_key,
        } => {
            let mut registry = registry(&conn).await?;
            let (idempotency_key, account_id) = (key(idempotency_key), account);
            let r = match action {
                ChangeArg::Reject => registry
                    .reject_account(proto::RejectAccountRequest {
                        idempotency_key,
                        account_id,
                        expected_version: None,
                        reason,
                    })
                    .await
                    .map(|r| r.into_inner().account),
                ChangeArg::Suspend => registry
                    .suspend_account(proto::SuspendAccountRequest {
                        idempotency_key,
                        account_id,
                        expected_version: None,
                        reason,
                    })
                    .await
                    .map(|r| r.into_inner().account),
                ChangeArg::Reinstate => registry
                    .reinstate_account(proto::ReinstateAccountRequest {
                        idempotency_key,
                        account_id,
                        expected_version: None,
                        reason,
                    })
                    .await
                    .map(|r| r.into_inner().account),
                ChangeArg::Close => registry
                    .close_account(proto::CloseAccountRequest {
                        idempotency_key,
                        account_id,
                        expected_version: None,
                        reason,
                    })
                    .await
                    .map(|r| r.into_inner().account),
            };
            r.map_err(describe)?.iter().for_each(print_account);
        }
        ClientCommand::Release {
            conn,
            program,
            period,
            citizens,
            reason,
        } => {
            let released = resolver(&conn)
                .await?
                .release_reservations(proto::ReleaseReservationsRequest {
                    program_code: program.clone(),
                    period: period.clone(),
                    citizen_ids: citizens,
                    reason,
                })
                .await
                .map_err(describe)?
                .into_inner()
                .released;
            println!("{released} reservations of {program} for {period} released");
        }
        ClientCommand::Duplicates {
            conn,
            program,
            period,
            province,
        } => {
            let (channel, bearer) = connect(&conn.endpoint()).await?;
            let mut oversight =
                crate::proto::oversight_service_client::OversightServiceClient::with_interceptor(
                    channel, bearer,
                );
            let mut out = csv::Writer::from_writer(std::io::stdout().lock());
            out.write_record([
                "detected_at",
                "citizen_id",
                "program_code",
                "period",
                "holder",
                "claimant",
                "reservation_id",
            ])?;
            let mut page_token = String::new();
            loop {
                let page = oversight
                    .list_duplicate_entitlements(proto::ListDuplicateEntitlementsRequest {
                        page_size: 1000,
                        page_token,
                        purpose: conn.purpose.clone(),
                        program_code: program.clone(),
                        period: period.clone(),
                        province_code: province.clone(),
                    })
                    .await
                    .map_err(describe)?
                    .into_inner();
                for d in page.entitlements {
                    let at = d
                        .detected_at
                        .and_then(|t| crate::grpc::convert::timestamp_in("detected_at", &t).ok())
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_default();
                    out.write_record([
                        at,
                        d.citizen_id,
                        d.program_code,
                        d.period,
                        d.holder_client_id,
                        d.claimant_client_id,
                        d.reservation_id,
                    ])?;
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            out.flush()?;
        }
        ClientCommand::Digest { conn, province } => {
            let (channel, bearer) = connect(&conn.endpoint()).await?;
            let d = crate::proto::change_feed_service_client::ChangeFeedServiceClient::with_interceptor(
                channel, bearer,
            )
            .get_sync_digest(proto::GetSyncDigestRequest {
                province_code: province,
            })
            .await
            .map_err(describe)?
            .into_inner();
            let scope = if d.province_code.is_empty() {
                "all citizens".to_owned()
            } else {
                format!("province {}", d.province_code)
            };
            println!(
                "{scope}: {} live routes, digest {} ({}) at feed position {}",
                d.routes,
                hex::encode(&d.digest),
                d.algorithm,
                d.position
            );
        }
        ClientCommand::Tail {
            conn,
            after,
            consumer,
            types,
            payload,
        } => {
            let (channel, bearer) = connect(&conn.endpoint()).await?;
            // A subscription lasts until interrupted: no per-call deadline.
            let mut feed =
                crate::proto::change_feed_service_client::ChangeFeedServiceClient::with_interceptor(
                    channel,
                    bearer.for_streams(),
                );
            let after = match after {
                Some(a) => a,
                None => {
                    feed.get_position(proto::GetPositionRequest {
                        consumer: consumer.clone(),
                    })
                    .await
                    .map_err(describe)?
                    .into_inner()
                    .head
                }
            };
            let event_types = types
                .iter()
                .map(|t| {
                    let name = format!("EVENT_TYPE_{}", t.trim_start_matches("EVENT_TYPE_"));
                    proto::EventType::from_str_name(&name.to_ascii_uppercase())
                        .map(i32::from)
                        .ok_or_else(|| anyhow::anyhow!("--type {t}: no such event type"))
                })
                .collect::<anyhow::Result<Vec<i32>>>()?;
            let mut events = feed
                .subscribe(proto::SubscribeRequest {
                    after_position: after,
                    consumer,
                    event_types,
                    ..Default::default()
                })
                .await
                .map_err(describe)?
                .into_inner();
            eprintln!("following the change feed after position {after} (Ctrl-C to stop)");
            while let Some(e) = events.message().await.map_err(describe)? {
                let Some(e) = e.event else { continue };
                let at = e
                    .occurred_at
                    .as_ref()
                    .and_then(|t| timestamp_in("occurred_at", t).ok())
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default();
                println!(
                    "{:>10} {at} {:<26} citizen {} account {} by {}: {}",
                    e.position,
                    short_name(e.event_type().as_str_name(), "EVENT_TYPE_"),
                    crate::domain::mask::mask_citizen_id(&e.citizen_id),
                    if e.account_id.is_empty() {
                        "-"
                    } else {
                        &e.account_id
                    },
                    e.actor,
                    e.reason
                );
                if payload {
                    if let Some(p) = &e.payload {
                        println!("           {p:?}");
                    }
                }
            }
        }
        ClientCommand::Resolve {
            conn,
            citizen,
            file,
            out,
            program,
            as_of,
            exists_only,
            reserve_period,
        } => {
            if let (Some(file), Some(out)) = (file, out) {
                // A payroll file is one stream, as long as the file: no per-call deadline.
                let (channel, credentials) = connect(&conn.endpoint()).await?;
                let resolver = PayoutResolverServiceClient::with_interceptor(
                    channel,
                    credentials.for_streams(),
                );
                let started = std::time::Instant::now();
                let n = crate::tools::import::resolve_file(
                    resolver,
                    &file,
                    &out,
                    &program,
                    exists_only,
                    &reserve_period,
                )
                .await
                .map_err(|e| match e.downcast::<tonic::Status>() {
                    Ok(s) => describe(s),
                    Err(e) => e,
                })?;
                let secs = started.elapsed().as_secs_f64();
                println!(
                    "{n} ids resolved in {secs:.1} s ({:.0}/s); payroll written to {}",
                    n as f64 / secs.max(1e-9),
                    out.display()
                );
                return Ok(());
            }
            let citizen = citizen.unwrap_or_default();
            let as_of = match as_of {
                Some(s) => {
                    let t = crate::domain::Timestamp::parse_rfc3339(&s).ok_or_else(|| {
                        anyhow::anyhow!("--as-of must be RFC 3339, e.g. 2026-05-01T00:00:00Z")
                    })?;
                    Some(crate::grpc::convert::timestamp_out(t))
                }
                None => None,
            };
            let scope = if exists_only {
                proto::ResolveScope::ExistsOnly
            } else {
                proto::ResolveScope::Details
            };
            let r = resolver(&conn)
                .await?
                .resolve(proto::ResolveRequest {
                    citizen_id: citizen,
                    program_code: program,
                    as_of,
                    scope: scope.into(),
                    purpose: conn.purpose.clone(),
                    reservation_period: reserve_period,
                    min_position: 0,
                })
                .await
                .map_err(describe)?
                .into_inner();
            let outcome = proto::ResolveOutcome::try_from(r.outcome)
                .map(|o| short_name(o.as_str_name(), "RESOLVE_OUTCOME_"))
                .unwrap_or("?");
            println!("outcome: {outcome}");
            if let Some(a) = &r.account {
                print!("pay into: ");
                print_account(a);
            }
            if r.cooling_off {
                let until = r
                    .cooling_off_until
                    .as_ref()
                    .and_then(|t| timestamp_in("cooling_off_until", t).ok())
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default();
                println!("cooling off: a recent change takes effect at {until}");
            }
            if let Some(h) = &r.reservation {
                println!(
                    "reserved: {} for {}, held by you (reservation {})",
                    h.program_code, h.period, h.reservation_id
                );
            }
            if outcome == "ALREADY_RESERVED" {
                println!("another payer holds this payment's reservation: pay nothing");
            }
        }
        ClientCommand::List {
            conn,
            citizen,
            include_closed,
        } => {
            let mut registry = registry(&conn).await?;
            let mut page_token = String::new();
            loop {
                let r = registry
                    .list_citizen_accounts(proto::ListCitizenAccountsRequest {
                        citizen_id: citizen.clone(),
                        include_closed,
                        purpose: conn.purpose.clone(),
                        page_token,
                        ..Default::default()
                    })
                    .await
                    .map_err(describe)?
                    .into_inner();
                r.accounts.iter().for_each(print_account);
                if r.next_page_token.is_empty() {
                    for p in &r.preferences {
                        let program = if p.program_code.is_empty() {
                            "default"
                        } else {
                            &p.program_code
                        };
                        println!("preference {program} -> account {}", p.account_id);
                    }
                    break;
                }
                page_token = r.next_page_token;
            }
        }
        ClientCommand::History { conn, account } => {
            let mut registry = registry(&conn).await?;
            let mut page_token = String::new();
            loop {
                let r = registry
                    .get_account_history(proto::GetAccountHistoryRequest {
                        account_id: account.clone(),
                        page_size: 100,
                        page_token,
                        purpose: conn.purpose.clone(),
                        min_position: 0,
                    })
                    .await
                    .map_err(describe)?
                    .into_inner();
                for e in &r.entries {
                    let at = e
                        .valid_from
                        .as_ref()
                        .and_then(|t| timestamp_in("valid_from", t).ok())
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_default();
                    let change = short_name(e.change().as_str_name(), "ACCOUNT_CHANGE_");
                    print!("{at}  {change:<10} by {:<12} ", e.actor);
                    e.account.iter().for_each(print_account);
                }
                if r.next_page_token.is_empty() {
                    break;
                }
                page_token = r.next_page_token;
            }
        }
    }
    Ok(())
}
