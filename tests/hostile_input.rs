//! Hostile input: what a careless or malicious client can send, and what it must get back.
//!
//! Three layers, from the inside out:
//!
//! 1. **Parsers.** Property tests feed arbitrary strings (any Unicode: combining marks,
//!    right-to-left overrides, NUL, fullwidth digits, very long runs) to every domain
//!    parser. None may panic; what one accepts satisfies its type's invariant and parses
//!    again to itself; what one refuses is refused without echoing the input, since a
//!    refused citizen id or account number is still personal data.
//! 2. **Decoders.** Arbitrary bytes, and byte strings shaped like protobuf fields, go
//!    through `prost::Message::decode` for every request message of the API, and whatever
//!    decodes goes through its `TryFrom` in `grpc::convert`. No panic, only `Err`.
//! 3. **The wire.** Misbehaving clients against the real server: invalid protobuf,
//!    oversized messages, huge metadata, calls opened and abandoned, expired deadlines,
//!    bytes that are not HTTP/2 at all, and free text the databases may choke on. Each
//!    gets a clean gRPC status or a closed connection, promptly, and the server goes on
//!    answering normal calls.
//!
//! Transport-level tests run on SQLite only (the backend plays no part); the free-text
//! test runs on both backends, because what a database accepts in a text column is the
//! point.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use common::{Backend, TestApp, ADMIN, MASKED, PAYER, TEST_PURPOSE};
use payout_registry::domain::bank_account::BankAccountNumber;
use payout_registry::domain::citizen_id::PROVINCES;
use payout_registry::domain::msisdn::Msisdn;
use payout_registry::domain::name::normalize_name;
use payout_registry::domain::{
    AccountKind, AccountRef, ChangeAccount, CitizenId, HolderName, LinkAccount, ProgramCode,
    Rejection, ReportPayoutFailure, SetPreference, Timestamp,
};
use payout_registry::grpc::{convert, page};
use payout_registry::proto;
use payout_registry::proto::payout_resolver_service_client::PayoutResolverServiceClient;
use proptest::collection::vec;
use proptest::prelude::*;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::Channel;
use tonic::Code;
use uuid::Uuid;

/// A valid citizen id that no test links anything to.
const CITIZEN: &str = "001099012345";
const RESOLVE_PATH: &str = "/payoutregistry.v1.PayoutResolverService/Resolve";
/// Longest a misbehaving call may stay unanswered before the test calls it a hang.
const PATIENCE: Duration = Duration::from_secs(10);

// ======================================================================================
// 1. Parsers
// ======================================================================================

/// Characters that have broken text handling somewhere before.
const TRICKY_CHARS: &[char] = &[
    '\0',
    ' ',
    '\t',
    '\n',
    '\r',
    '+',
    '-',
    '.',
    '\'',
    '_',
    '/',
    '\\',
    '%',
    '\u{7f}',
    '\u{a0}',   // no-break space
    '\u{2003}', // em space
    '\u{200b}', // zero-width space
    '\u{200e}', // left-to-right mark
    '\u{200f}', // right-to-left mark
    '\u{202e}', // right-to-left override
    '\u{2066}', // left-to-right isolate
    '\u{feff}', // byte order mark
    '\u{fffd}', // replacement character
    '\u{10ffff}',
    '\u{301}', // combining acute
    '\u{303}', // combining tilde
    '\u{323}', // combining dot below
    '\u{345}', // combining ypogegrammeni
    'Đ',
    'đ',
    'Ð',
    'ð',
    'ệ',
    'Ư',
    'ơ',
    'ß',
    'ǰ',
    'ŉ',
    'ﬀ',
    'İ',
    'ı',
    'ſ',
    '\u{212a}', // Kelvin sign
    '٥',
    '۵',
    '०',
    '０',
    '９',
    '①',
    '²',
    'א',
    'ب',
    '阮',
    'Ж',
    '😀',
];

fn tricky_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => any::<char>(),
        3 => proptest::char::range('0', '9'),
        3 => proptest::sample::select(TRICKY_CHARS),
        1 => proptest::char::range('\u{300}', '\u{36f}'),
        2 => proptest::char::range('A', 'z'),
    ]
}

/// Strings a hostile client might send: anything, digit runs, phone- and account-shaped
/// text, Unicode soup, and very long runs.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<String>(),
        3 => vec(tricky_char(), 0..40).prop_map(String::from_iter),
        3 => "[0-9]{0,30}",
        2 => "(\\+84|84|0|\\+)?[ .-]?[0-9 .-]{0,14}",
        2 => "[0-9A-Za-z -]{0,25}",
        1 => vec(tricky_char(), 0..4000).prop_map(String::from_iter),
        1 => (proptest::sample::select(TRICKY_CHARS), 1..20_000usize)
            .prop_map(|(c, n)| std::iter::repeat_n(c, n).collect()),
    ]
}

/// When `input` is a run of 6 or more digits (a citizen id, an account or phone number),
/// no 6-digit window of it may appear in the refusal: refusals are logged and sent back.
fn assert_not_echoed(input: &str, err: &Rejection) -> Result<(), TestCaseError> {
    if input.len() < 6 || !input.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(());
    }
    let text = format!("{} | {} | {:?}", err.message, err, err);
    for window in input.as_bytes().windows(6) {
        let window = std::str::from_utf8(window).expect("ASCII digits");
        prop_assert!(
            !text.contains(window),
            "refusal echoes the input ({window}): {text}"
        );
    }
    Ok(())
}

fn is_msisdn(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && s.starts_with("+84")
        && b"35789".contains(&b[3])
        && b[4..].iter().all(u8::is_ascii_digit)
}

fn is_bank_number(s: &str) -> bool {
    (6..=19).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
}

fn is_bank_form_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || matches!(c, ' ' | '\'' | '-' | '.'))
        && s.chars().any(|c| c.is_ascii_uppercase())
        && !s.starts_with(' ')
        && !s.ends_with(' ')
        && !s.contains("  ")
}

/// A structurally valid citizen id: a listed province, a birth year safely in the past.
fn valid_citizen_id() -> impl Strategy<Value = String> {
    (
        proptest::sample::select(PROVINCES),
        prop_oneof![(0u8..=1, 0u8..=99), (2u8..=3, 0u8..=20)],
        0u32..1_000_000,
    )
        .prop_map(|((code, _), (century_sex, yy), serial)| {
            format!("{code}{century_sex}{yy:02}{serial:06}")
        })
}

/// Inserts `seps[i]` before digit `i` of `digits` (where the flag is set).
fn interleave(digits: &str, seps: &[(bool, char)]) -> String {
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if let Some((true, sep)) = seps.get(i) {
            out.push(*sep);
        }
        out.push(d);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn citizen_id_parse_accepts_only_twelve_digit_ids_and_never_echoes_a_refused_one(
        s in prop_oneof![hostile_string(), valid_citizen_id(), "[0-9]{12}"],
    ) {
        match CitizenId::parse(&s) {
            Ok(id) => {
                prop_assert_eq!(id.as_str(), s.as_str());
                prop_assert_eq!(id.as_str().len(), 12);
                prop_assert!(id.as_str().bytes().all(|b| b.is_ascii_digit()));
                prop_assert!(!id.province_name().is_empty());
                let shown = format!("{id} {id:?}");
                prop_assert!(!shown.contains(id.as_str()), "shown unmasked: {}", shown);
                prop_assert_eq!(CitizenId::parse(id.as_str()), Ok(id.clone()));
            }
            Err(err) => assert_not_echoed(&s, &err)?,
        }
    }

    #[test]
    fn a_valid_citizen_id_round_trips(s in valid_citizen_id()) {
        let id = CitizenId::parse(&s).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(id.as_str(), s.as_str());
        prop_assert_eq!(id.province_code(), &s[..3]);
        prop_assert_eq!(CitizenId::parse(&String::from(id.clone())), Ok(id));
    }

    #[test]
    fn msisdn_parse_yields_e164_vietnamese_mobile_numbers_only(s in hostile_string()) {
        match Msisdn::parse(&s) {
            Ok(m) => {
                prop_assert!(is_msisdn(m.as_str()), "{:?} -> {:?}", s, m.as_str());
                prop_assert_eq!(Msisdn::parse(m.as_str()), Ok(m.clone()));
            }
            Err(err) => assert_not_echoed(&s, &err)?,
        }
    }

    #[test]
    fn a_mobile_number_written_any_way_parses_to_its_e164_form(
        prefix in proptest::sample::select(&["0", "84", "+84", "+ 84", "0 "][..]),
        number in "[35789][0-9]{8}",
        seps in vec((any::<bool>(), proptest::sample::select(&[' ', '.', '-'][..])), 9),
    ) {
        let written = format!("{prefix}{}", interleave(&number, &seps));
        let parsed = Msisdn::parse(&written).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(parsed.as_str(), format!("+84{number}"));
    }

    #[test]
    fn bank_account_number_parse_yields_six_to_nineteen_digits_and_capitals(
        s in hostile_string(),
    ) {
        match BankAccountNumber::parse(&s) {
            Ok(n) => {
                prop_assert!(is_bank_number(n.as_str()), "{:?} -> {:?}", s, n.as_str());
                prop_assert_eq!(BankAccountNumber::parse(n.as_str()), Ok(n.clone()));
            }
            Err(err) => assert_not_echoed(&s, &err)?,
        }
    }

    #[test]
    fn a_bank_account_number_written_in_groups_parses_to_its_compact_upper_case_form(
        number in "[0-9A-Za-z]{6,19}",
        seps in vec((any::<bool>(), proptest::sample::select(&[' ', '-'][..])), 19),
    ) {
        let written = interleave(&number, &seps);
        let parsed =
            BankAccountNumber::parse(&written).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(parsed.as_str(), number.to_ascii_uppercase());
    }

    #[test]
    fn account_ref_parse_follows_the_rules_of_its_kind(s in hostile_string()) {
        for kind in [AccountKind::BankAccount, AccountKind::Ewallet, AccountKind::MobileMoney] {
            match AccountRef::parse(kind, &s) {
                Ok(r) if kind == AccountKind::BankAccount => {
                    prop_assert!(is_bank_number(r.as_str()), "{:?} -> {:?}", s, r.as_str());
                }
                Ok(r) => prop_assert!(is_msisdn(r.as_str()), "{:?} -> {:?}", s, r.as_str()),
                Err(err) => assert_not_echoed(&s, &err)?,
            }
        }
    }

    #[test]
    fn holder_name_parse_yields_a_non_empty_upper_case_ascii_name(s in hostile_string()) {
        match HolderName::parse(&s) {
            Ok(n) => {
                prop_assert!(is_bank_form_name(n.as_str()), "{:?} -> {:?}", s, n.as_str());
                prop_assert_eq!(n.as_str(), normalize_name(&s));
                prop_assert_eq!(HolderName::parse(n.as_str()), Ok(n.clone()));
            }
            Err(err) => assert_not_echoed(&s, &err)?,
        }
    }

    #[test]
    fn normalize_name_is_idempotent(s in hostile_string()) {
        let once = normalize_name(&s);
        prop_assert_eq!(normalize_name(&once), once.clone(), "input {:?}", s);
        prop_assert!(!once.starts_with(' ') && !once.ends_with(' ') && !once.contains("  "));
    }

    #[test]
    fn program_code_parse_accepts_only_short_upper_case_codes(s in hostile_string()) {
        match ProgramCode::parse_optional(&s) {
            Ok(None) => prop_assert!(s.trim().is_empty(), "{:?}", s),
            Ok(Some(p)) => {
                prop_assert_eq!(p.as_str(), s.trim());
                prop_assert!((1..=40).contains(&p.as_str().len()));
                prop_assert!(p
                    .as_str()
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'));
            }
            Err(err) => assert_not_echoed(&s, &err)?,
        }
    }

    #[test]
    fn timestamp_parse_rfc3339_never_panics_and_what_it_reads_prints_back(
        s in prop_oneof![
            hostile_string(),
            "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,12})?(Z|[+-][0-9]{2}:[0-9]{2})",
        ],
    ) {
        if let Some(t) = Timestamp::parse_rfc3339(&s) {
            let printed = t.to_rfc3339();
            // Outside years 0000-9999 (an offset can push 0000-01-01 there) the printer
            // falls back to `@<micros>us`, which is fine; otherwise it must read back.
            if !printed.starts_with('@') {
                prop_assert_eq!(Timestamp::parse_rfc3339(&printed), Some(t), "{:?}", s);
            }
        }
    }

    #[test]
    fn instants_between_year_1_and_9999_round_trip_through_rfc3339(
        micros in -62_135_596_800_000_000i64..253_402_300_799_999_999,
    ) {
        let t = Timestamp(micros);
        prop_assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()), Some(t));
    }
}

/// Every assigned plane's code points, not a sample: a character whose upper-case form is itself
/// decomposable or a combining mark would make normalisation depend on how often it ran.
#[test]
fn normalize_name_is_idempotent_on_every_single_character() {
    let mut broken = Vec::new();
    // Planes 0-3 and the variation selectors of plane 14; planes 4-13 are unassigned and
    // 15-16 are private use, which case mapping and decomposition leave alone.
    let code_points = (0..=0x3ffff).chain(0xe0000..=0xe01ef);
    for c in code_points.filter_map(char::from_u32) {
        let s = format!("a{c}b");
        let once = normalize_name(&s);
        if normalize_name(&once) != once {
            broken.push(format!("U+{:04X}", c as u32));
        }
    }
    assert!(
        broken.is_empty(),
        "normalize_name(normalize_name(x)) != normalize_name(x) for {} characters: {:?}",
        broken.len(),
        &broken[..broken.len().min(40)]
    );
}

// ======================================================================================
// 2. Request decoders
// ======================================================================================

/// One protobuf field: a key for field 1-12 and a payload of (mostly) the right shape for
/// its wire type, sometimes a wrong or reserved wire type.
fn pb_field(depth: u32) -> BoxedStrategy<Vec<u8>> {
    let leaf = prop_oneof![
        // varint: ints, enums, bools, timestamps' seconds and nanos, at their extremes too
        (
            1u32..=12,
            prop_oneof![
                any::<u64>(),
                0u64..16,
                Just(u64::MAX),
                Just(i64::MIN as u64),
                Just(i32::MIN as i64 as u64)
            ]
        )
            .prop_map(|(f, v)| {
                let mut b = key(f, 0);
                prost::encoding::encode_varint(v, &mut b);
                b
            }),
        // length-delimited: text (valid UTF-8 or not)
        (1u32..=12, hostile_string()).prop_map(|(f, s)| len_delimited(f, s.as_bytes())),
        (1u32..=12, vec(any::<u8>(), 0..64)).prop_map(|(f, b)| len_delimited(f, &b)),
        // fixed64 / fixed32
        (1u32..=12, any::<[u8; 8]>()).prop_map(|(f, v)| [key(f, 1), v.to_vec()].concat()),
        (1u32..=12, any::<[u8; 4]>()).prop_map(|(f, v)| [key(f, 5), v.to_vec()].concat()),
        // groups and invalid wire types, with a bit of trailing junk
        (1u32..=12, 3u64..=7, vec(any::<u8>(), 0..8)).prop_map(|(f, w, junk)| {
            let mut b = Vec::new();
            prost::encoding::encode_varint(u64::from(f) << 3 | w, &mut b);
            b.extend(junk);
            b
        }),
    ];
    if depth == 0 {
        return leaf.boxed();
    }
    // Nested messages (verification, timestamps) are length-delimited fields of fields.
    let nested = (1u32..=12, vec(pb_field(depth - 1), 0..6))
        .prop_map(|(f, inner)| len_delimited(f, &inner.concat()));
    prop_oneof![3 => leaf, 1 => nested].boxed()
}

fn key(field: u32, wire_type: u64) -> Vec<u8> {
    let mut b = Vec::new();
    prost::encoding::encode_varint(u64::from(field) << 3 | wire_type, &mut b);
    b
}

fn len_delimited(field: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = key(field, 2);
    prost::encoding::encode_varint(payload.len() as u64, &mut b);
    b.extend_from_slice(payload);
    b
}

/// Arbitrary bytes, or a sequence of plausible protobuf fields (so that decoding often
/// succeeds and the conversions behind it get exercised too), sometimes cut short.
fn wire_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..2048),
        vec(pb_field(2), 0..12).prop_map(|fields| fields.concat()),
        (vec(pb_field(2), 1..8), any::<prop::sample::Index>()).prop_map(|(fields, cut)| {
            let mut b = fields.concat();
            b.truncate(cut.index(b.len() + 1));
            b
        }),
    ]
}

/// For each request type: decode arbitrary bytes; when that works, convert the message
/// the way its handler does, and check that it re-encodes to itself.
macro_rules! request_decoders_never_panic {
    ($($test:ident: $ty:ident => |$req:ident| $convert:expr;)*) => {
        /// The request messages fuzzed below, by protobuf name.
        const FUZZED_REQUESTS: &[&str] = &[$(stringify!($ty)),*];

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]
            $(
                #[test]
                fn $test(bytes in wire_bytes()) {
                    if let Ok($req) = proto::$ty::decode(bytes.as_slice()) {
                        let _ = $convert;
                        let again = proto::$ty::decode($req.encode_to_vec().as_slice());
                        prop_assert_eq!(again.as_ref(), Ok(&$req));
                    }
                }
            )*
        }
    };
}

request_decoders_never_panic! {
    link_account_request_decoding_never_panics: LinkAccountRequest =>
        |r| LinkAccount::try_from(&r).map(drop);
    verify_account_request_decoding_never_panics: VerifyAccountRequest =>
        |r| ChangeAccount::try_from(&r).map(drop);
    reject_account_request_decoding_never_panics: RejectAccountRequest =>
        |r| ChangeAccount::try_from(&r).map(drop);
    set_default_account_request_decoding_never_panics: SetDefaultAccountRequest =>
        |r| SetPreference::try_from(&r).map(drop);
    suspend_account_request_decoding_never_panics: SuspendAccountRequest =>
        |r| ChangeAccount::try_from(&r).map(drop);
    reinstate_account_request_decoding_never_panics: ReinstateAccountRequest =>
        |r| ChangeAccount::try_from(&r).map(drop);
    close_account_request_decoding_never_panics: CloseAccountRequest =>
        |r| ChangeAccount::try_from(&r).map(drop);
    get_account_request_decoding_never_panics: GetAccountRequest =>
        |r| convert::account_id("account_id", &r.account_id).map(drop);
    list_citizen_accounts_request_decoding_never_panics: ListCitizenAccountsRequest =>
        |r| convert::citizen_id("citizen_id", &r.citizen_id).map(drop);
    get_account_history_request_decoding_never_panics: GetAccountHistoryRequest =>
        |r| (
            convert::account_id("account_id", &r.account_id).map(drop),
            page::Binding::new("history").cursor(&r.page_token).map(drop),
            page::page_size(r.page_size, 100, 1000).map(drop),
        );
    report_payout_failure_request_decoding_never_panics: ReportPayoutFailureRequest =>
        |r| ReportPayoutFailure::try_from(&r).map(drop);
    resolve_request_decoding_never_panics: ResolveRequest =>
        |r| (
            convert::ResolveRequest::parse(&r.citizen_id, &r.program_code, r.as_of.as_ref(), r.scope, &r.reservation_period, Timestamp::now()).map(drop),
            r.as_of.as_ref().map(|t| convert::timestamp_in("as_of", t).map(drop)),
        );
    find_account_holders_request_decoding_never_panics: FindAccountHoldersRequest =>
        |r| convert::account_key_in("account", r.account.as_ref()).map(drop);
    list_duplicate_claims_request_decoding_never_panics: ListDuplicateClaimsRequest =>
        |r| (
            page::Binding::new("claims").cursor(&r.page_token).map(drop),
            page::page_size(r.page_size, 100, 1000).map(drop),
        );
    list_access_log_request_decoding_never_panics: ListAccessLogRequest =>
        |r| (
            convert::citizen_lookup("citizen_id", &r.citizen_id, 2026).map(drop),
            page::Binding::new("log").cursor(&r.page_token).map(drop),
        );
    batch_resolve_request_decoding_never_panics: BatchResolveRequest =>
        |r| convert::ResolveRequest::parse(&r.citizen_id, &r.program_code, r.as_of.as_ref(), r.scope, &r.reservation_period, Timestamp::now()).map(drop);
    sync_citizens_request_decoding_never_panics: SyncCitizensRequest =>
        |r| r.record.as_ref().map(|c| convert::sync_citizen(c, time::macros::date!(2026 - 11 - 28)).map(drop));
    subscribe_request_decoding_never_panics: SubscribeRequest =>
        |r| (
            convert::consumer_name(&r.consumer).map(drop),
            convert::feed_position_in("after_position", r.after_position).map(drop),
        );
    commit_position_request_decoding_never_panics: CommitPositionRequest =>
        |r| (
            convert::consumer_name(&r.consumer).map(drop),
            convert::feed_position_in("position", r.position).map(drop),
        );
    get_position_request_decoding_never_panics: GetPositionRequest =>
        |r| convert::consumer_name(&r.consumer).map(drop);
    sync_accounts_request_decoding_never_panics: SyncAccountsRequest =>
        |r| r.record.as_ref().map(|a| convert::sync_account(a).map(drop));
    get_sync_digest_request_decoding_never_panics: GetSyncDigestRequest =>
        |r| convert::province_code("province_code", &r.province_code).map(drop);
    release_reservations_request_decoding_never_panics: ReleaseReservationsRequest =>
        |r| convert::release_in(&r).map(drop);
    list_duplicate_entitlements_request_decoding_never_panics: ListDuplicateEntitlementsRequest =>
        |r| (
            convert::entitlement_filter(&r).map(drop),
            page::Binding::new("entitlements").cursor(&r.page_token).map(drop),
            page::page_size(r.page_size, 100, 1000).map(drop),
        );
    edit_watch_list_request_decoding_never_panics: EditWatchListRequest =>
        |r| (
            convert::consumer_name(&r.consumer).map(drop),
            r.add.iter().filter(|c| convert::citizen_id("add", c).is_ok()).count(),
        );
}

/// Keeps the list above complete: a request message added to the proto without a
/// decoder property fails here.
#[test]
fn every_request_message_of_the_api_is_fuzzed() {
    let set =
        prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET).expect("descriptor set");
    let requests: Vec<String> = set
        .file
        .iter()
        .filter(|f| f.package() == "payoutregistry.v1")
        .flat_map(|f| f.message_type.iter())
        .map(|m| m.name().to_owned())
        .filter(|n| n.ends_with("Request"))
        .collect();
    let missing: Vec<&String> = requests
        .iter()
        .filter(|n| !FUZZED_REQUESTS.contains(&n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "request messages without a decoder property: {missing:?}"
    );
    assert!(requests.len() >= FUZZED_REQUESTS.len());
}

// ======================================================================================
// 3. Misbehaving clients against the real server
// ======================================================================================

fn resolve_request() -> proto::ResolveRequest {
    proto::ResolveRequest {
        citizen_id: CITIZEN.into(),
        purpose: TEST_PURPOSE.into(),
        ..Default::default()
    }
}

fn bearer(token: &str) -> MetadataValue<tonic::metadata::Ascii> {
    format!("Bearer {token}").parse().expect("ascii token")
}

/// A fresh connection of its own, so that a previous client's misbehaviour on another
/// connection cannot help or hurt it.
async fn fresh_resolver(addr: SocketAddr) -> PayoutResolverServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("a new connection is accepted");
    PayoutResolverServiceClient::new(channel)
}

/// A normal Resolve on a new connection succeeds, promptly.
async fn assert_still_serving(addr: SocketAddr, after: &str) {
    let mut client = fresh_resolver(addr).await;
    let mut request = tonic::Request::new(resolve_request());
    request
        .metadata_mut()
        .insert("authorization", bearer(PAYER));
    let answer = tokio::time::timeout(PATIENCE, client.resolve(request))
        .await
        .unwrap_or_else(|_| panic!("a normal call hung after {after}"))
        .unwrap_or_else(|s| panic!("a normal call failed after {after}: {s:?}"));
    assert_eq!(
        answer.into_inner().outcome(),
        proto::ResolveOutcome::UnknownCitizen,
        "after {after}"
    );
}

/// A gRPC message frame: compressed flag, big-endian length, payload. `declared` lets a
/// test lie about the length.
fn grpc_frame(compressed: bool, declared: u32, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.put_u8(u8::from(compressed));
    b.put_u32(declared);
    b.put_slice(payload);
    b.freeze()
}

fn frame(payload: &[u8]) -> Bytes {
    grpc_frame(false, payload.len() as u32, payload)
}

/// A raw HTTP/2 connection, for what tonic's client refuses to send.
async fn raw_connection(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client.ready().await.expect("connection ready")
}

/// The headers of a unary gRPC call by the payer, plus `extra`.
fn grpc_post(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> http::Request<()> {
    let mut builder = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {PAYER}"))
        .header("x-purpose", TEST_PURPOSE);
    for (name, value) in extra {
        builder = builder.header(*name, *value);
    }
    builder.body(()).expect("request")
}

/// What came back on a raw call.
#[derive(Debug)]
struct RawReply {
    http_status: u16,
    /// From the headers (trailers-only answer) or the trailers.
    grpc_status: Option<i32>,
    grpc_message: String,
    /// The ErrorInfo reason and whether RequestInfo came with it.
    reason: Option<String>,
    request_info: bool,
}

impl RawReply {
    fn code(&self) -> Option<Code> {
        self.grpc_status.map(Code::from_i32)
    }
}

fn grpc_status_of(headers: &http::HeaderMap) -> Option<(i32, String, Option<String>, bool)> {
    let status = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let details = tonic::Status::from_header_map(headers).map(|s| {
        use tonic_types::StatusExt;
        let d = s.get_error_details();
        (
            d.error_info().map(|i| i.reason.clone()),
            d.request_info().is_some(),
        )
    });
    let (reason, request_info) = details.unwrap_or((None, false));
    Some((status, message, reason, request_info))
}

async fn read_reply(response: h2::client::ResponseFuture) -> Result<RawReply, h2::Error> {
    let (parts, mut body) = response.await?.into_parts();
    let mut status = grpc_status_of(&parts.headers);
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    if status.is_none() {
        if let Some(trailers) = body.trailers().await? {
            status = grpc_status_of(&trailers);
        }
    }
    Ok(RawReply {
        http_status: parts.status.as_u16(),
        grpc_status: status.as_ref().map(|s| s.0),
        grpc_message: status.as_ref().map(|s| s.1.clone()).unwrap_or_default(),
        reason: status.as_ref().and_then(|s| s.2.clone()),
        request_info: status.as_ref().is_some_and(|s| s.3),
    })
}

/// One complete unary call on its own raw connection, bounded by [`PATIENCE`].
async fn raw_unary(
    addr: SocketAddr,
    extra: &[(&str, &str)],
    body: Bytes,
) -> Result<RawReply, h2::Error> {
    let mut client = raw_connection(addr).await;
    let (response, mut stream) =
        client.send_request(grpc_post(addr, RESOLVE_PATH, extra), false)?;
    stream.send_data(body, true)?;
    tokio::time::timeout(PATIENCE, read_reply(response))
        .await
        .expect("the server answered within the patience limit")
}

fn sqlite_app_with_timeout(timeout: Duration) -> impl std::future::Future<Output = TestApp> {
    TestApp::builder(Backend::Sqlite)
        .plain_text()
        .configure(move |s| s.request_timeout_secs = timeout.as_secs())
        .spawn()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_protobuf_in_a_unary_call_gets_a_clean_error_and_the_server_goes_on() {
    let app = TestApp::builder(Backend::Sqlite).plain_text().spawn().await;

    // The raw client itself works: a well-formed frame is answered OK.
    let valid = raw_unary(app.addr, &[], frame(&resolve_request().encode_to_vec()))
        .await
        .expect("valid raw call");
    assert_eq!(valid.code(), Some(Code::Ok), "{valid:?}");

    let garbage: &[(&str, &[u8])] = &[
        ("0xff bytes", &[0xff; 16]),
        ("a reserved wire type", &[0x0f, 0x01, 0x02]),
        ("invalid UTF-8 in citizen_id", &[0x0a, 0x02, 0xc3, 0x28]),
        ("a length past the end", &[0x0a, 0x7f, b'0', b'0', b'1']),
        (
            "a varint of eleven bytes",
            &[
                0x20, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
        ),
        (
            "a nested as_of that is not a message",
            &[0x1a, 0x03, 0xff, 0xff, 0xff],
        ),
        ("an end-group tag with no group", &[0x0c]),
    ];
    for (what, payload) in garbage {
        let reply = raw_unary(app.addr, &[], frame(payload))
            .await
            .unwrap_or_else(|e| panic!("{what}: the stream was reset instead of answered: {e}"));
        // The client's fault, said as every other refusal says it.
        assert_eq!(
            reply.code(),
            Some(Code::InvalidArgument),
            "{what}: {reply:?}"
        );
        assert_eq!(
            reply.reason.as_deref(),
            Some("REQUEST_MALFORMED"),
            "{what}: {reply:?}"
        );
        assert!(reply.request_info, "{what}: {reply:?}");
        assert_eq!(reply.http_status, 200, "{what}: {reply:?}");
        assert!(!reply.grpc_message.contains("panick"), "{what}: {reply:?}");
    }

    // Broken framing rather than broken protobuf: an error status or a reset, never OK,
    // never a hang.
    let valid = resolve_request().encode_to_vec();
    let broken_frames: Vec<(&str, Bytes)> = vec![
        (
            "a compressed frame without grpc-encoding",
            grpc_frame(true, valid.len() as u32, &valid),
        ),
        (
            "a frame shorter than its length",
            grpc_frame(false, 1000, &valid),
        ),
        ("half a frame header", Bytes::from_static(&[0, 0, 0])),
    ];
    for (what, body) in broken_frames {
        match raw_unary(app.addr, &[], body).await {
            Ok(reply) => assert!(
                reply.code().is_some_and(|c| c != Code::Ok),
                "{what}: {reply:?}"
            ),
            Err(e) => assert!(e.is_reset(), "{what}: {e}"),
        }
    }
    // Bytes after the one message of a unary call: tonic answers the first message and
    // ignores the rest. Any answer will do, as long as there is one.
    let trailing: Vec<(&str, Bytes)> = vec![
        (
            "two messages for a unary call",
            [frame(&valid), frame(&valid)].concat().into(),
        ),
        (
            "a frame followed by junk",
            [frame(&valid).to_vec(), vec![0xde, 0xad]].concat().into(),
        ),
    ];
    for (what, body) in trailing {
        match raw_unary(app.addr, &[], body).await {
            Ok(reply) => assert!(reply.grpc_status.is_some(), "{what}: {reply:?}"),
            Err(e) => assert!(e.is_reset(), "{what}: {e}"),
        }
    }

    assert_still_serving(app.addr, "invalid protobuf").await;
}

/// RESOURCE_EXHAUSTED, reason REQUEST_TOO_LARGE, the limit stated in the metadata.
#[track_caller]
fn assert_too_large(status: &tonic::Status, limit: usize) {
    use tonic_types::StatusExt;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let details = status.get_error_details();
    let info = details.error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "REQUEST_TOO_LARGE");
    assert_eq!(
        info.metadata.get("limit_bytes").map(String::as_str),
        Some(limit.to_string().as_str())
    );
    assert!(details.request_info().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_size_limit_is_refused_and_the_server_goes_on() {
    let app = TestApp::builder(Backend::Sqlite).plain_text().spawn().await;
    let limit = app.settings.max_message_bytes;

    let mut request = tonic::Request::new(proto::ResolveRequest {
        purpose: "x".repeat(limit + 1024),
        ..resolve_request()
    });
    request
        .metadata_mut()
        .insert("authorization", bearer(PAYER));
    let mut client = fresh_resolver(app.addr).await;
    let status = tokio::time::timeout(PATIENCE, client.resolve(request))
        .await
        .expect("an oversized message is answered, not left hanging")
        .expect_err("a message over the limit is refused");
    assert_too_large(&status, limit);

    // A frame announcing 4 GiB is refused from its header, without waiting for the bytes.
    let mut raw = raw_connection(app.addr).await;
    let (response, mut stream) = raw
        .send_request(grpc_post(app.addr, RESOLVE_PATH, &[]), false)
        .expect("send headers");
    stream
        .send_data(grpc_frame(false, u32::MAX, b"\x0a\x0c001099012345"), false)
        .expect("send a frame header");
    let started = Instant::now();
    let reply = tokio::time::timeout(PATIENCE, read_reply(response))
        .await
        .expect("a 4 GiB frame header is answered at once");
    match reply {
        Ok(reply) => {
            assert_eq!(reply.code(), Some(Code::ResourceExhausted), "{reply:?}");
            assert_eq!(
                reply.reason.as_deref(),
                Some("REQUEST_TOO_LARGE"),
                "{reply:?}"
            );
        }
        Err(e) => assert!(e.is_reset(), "{e}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(stream);

    assert_still_serving(app.addr, "an oversized message").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_message_limit_is_the_one_enforced() {
    let app = TestApp::builder(Backend::Sqlite)
        .plain_text()
        .configure(|s| s.max_message_bytes = 1024)
        .spawn()
        .await;
    let mut client = fresh_resolver(app.addr).await;
    let mut request = tonic::Request::new(proto::ResolveRequest {
        purpose: "x".repeat(2048),
        ..resolve_request()
    });
    request
        .metadata_mut()
        .insert("authorization", bearer(PAYER));
    let status = client
        .resolve(request)
        .await
        .expect_err("2 KiB is over a 1 KiB limit");
    assert_too_large(&status, 1024);
    assert_still_serving(app.addr, "a message over a 1 KiB limit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_metadata_fails_the_call_and_new_connections_are_still_served() {
    let app = TestApp::builder(Backend::Sqlite).plain_text().spawn().await;

    // One 1 MiB header value.
    let mut request = tonic::Request::new(resolve_request());
    request
        .metadata_mut()
        .insert("authorization", bearer(PAYER));
    let padding: MetadataValue<_> = "a".repeat(1 << 20).parse().expect("ascii");
    request.metadata_mut().insert("x-padding", padding);
    let mut client = fresh_resolver(app.addr).await;
    let result = tokio::time::timeout(PATIENCE, client.resolve(request))
        .await
        .expect("a 1 MiB header is answered or refused, not left hanging");
    assert!(result.is_err(), "a 1 MiB header was accepted");
    assert_still_serving(app.addr, "a 1 MiB header value").await;

    // Ten thousand small headers.
    let mut request = tonic::Request::new(resolve_request());
    request
        .metadata_mut()
        .insert("authorization", bearer(PAYER));
    for i in 0..10_000 {
        let name = MetadataKey::from_bytes(format!("x-h-{i}").as_bytes()).expect("key");
        request
            .metadata_mut()
            .insert(name, "v".parse().expect("value"));
    }
    let mut client = fresh_resolver(app.addr).await;
    let result = tokio::time::timeout(PATIENCE, client.resolve(request))
        .await
        .expect("10,000 headers are answered or refused, not left hanging");
    assert!(result.is_err(), "10,000 headers were accepted");
    assert_still_serving(app.addr, "10,000 headers").await;

    // A 1 MiB `authorization` value must not be hashed and looked up either: it fails
    // like any other oversized header.
    let mut request = tonic::Request::new(resolve_request());
    let huge_token = format!("Bearer {}", "t".repeat(1 << 20));
    request
        .metadata_mut()
        .insert("authorization", huge_token.parse().expect("ascii"));
    let mut client = fresh_resolver(app.addr).await;
    let result = tokio::time::timeout(PATIENCE, client.resolve(request))
        .await
        .expect("a 1 MiB token is refused, not left hanging");
    assert!(result.is_err(), "a 1 MiB token was accepted");
    assert_still_serving(app.addr, "a 1 MiB authorization header").await;
}

/// Either a gRPC error status or a reset stream; anything but OK, and well within
/// [`PATIENCE`].
fn assert_cut(what: &str, reply: Result<Result<RawReply, h2::Error>, tokio::time::error::Elapsed>) {
    match reply {
        Err(_) => panic!("{what}: still open after {PATIENCE:?}: the server holds abandoned calls"),
        Ok(Ok(reply)) => assert!(
            matches!(
                reply.code(),
                Some(Code::Cancelled | Code::DeadlineExceeded | Code::Unavailable)
            ),
            "{what}: {reply:?}"
        ),
        Ok(Err(e)) => assert!(e.is_reset() || e.is_go_away() || e.is_io(), "{what}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_opened_and_abandoned_is_cut_after_the_request_timeout_and_others_are_served() {
    let timeout = Duration::from_secs(1);
    let app = sqlite_app_with_timeout(timeout).await;
    let mut raw = raw_connection(app.addr).await;
    let started = Instant::now();

    // Headers without END_STREAM, and never a body.
    let (headers_only, _stalled) = raw
        .send_request(grpc_post(app.addr, RESOLVE_PATH, &[]), false)
        .expect("send headers");
    // Half a message: a frame announcing 64 bytes, and one of them.
    let mut raw = raw.ready().await.expect("ready");
    let (half_message, mut stalled_body) = raw
        .send_request(grpc_post(app.addr, RESOLVE_PATH, &[]), false)
        .expect("send headers");
    stalled_body
        .send_data(grpc_frame(false, 64, b"\x0a"), false)
        .expect("send part of a frame");

    // Meanwhile a second client is served as usual, without waiting for the timeout.
    for _ in 0..3 {
        let call = Instant::now();
        assert_still_serving(app.addr, "a call was abandoned on another connection").await;
        assert!(
            call.elapsed() < timeout,
            "a normal call waited {:?}",
            call.elapsed()
        );
    }

    let reply = tokio::time::timeout(PATIENCE, read_reply(headers_only)).await;
    assert_cut("a call with headers and no body", reply);
    let reply = tokio::time::timeout(PATIENCE, read_reply(half_message)).await;
    assert_cut("a call with half a message", reply);
    let waited = started.elapsed();
    assert!(
        waited >= timeout - Duration::from_millis(100),
        "cut after {waited:?}, before the {timeout:?} request timeout: by what?"
    );
    assert!(waited < timeout * 5, "cut only after {waited:?}");
    assert_still_serving(app.addr, "abandoned calls were cut").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_abandoned_calls_are_all_cut_and_do_not_starve_the_server() {
    let timeout = Duration::from_secs(1);
    let app = sqlite_app_with_timeout(timeout).await;
    let mut raw = raw_connection(app.addr).await;
    let mut pending = Vec::new();
    let mut stalled = Vec::new();
    for _ in 0..100 {
        raw = raw.ready().await.expect("ready");
        let (response, stream) = raw
            .send_request(grpc_post(app.addr, RESOLVE_PATH, &[]), false)
            .expect("send headers");
        pending.push(response);
        stalled.push(stream);
    }
    assert_still_serving(app.addr, "100 calls were abandoned").await;
    let replies = tokio::time::timeout(
        PATIENCE,
        futures::future::join_all(pending.into_iter().map(read_reply)),
    )
    .await
    .expect("every abandoned call is cut within the patience limit");
    for (i, reply) in replies.into_iter().enumerate() {
        assert_cut(&format!("abandoned call {i}"), Ok(reply));
    }
    drop(stalled);
    assert_still_serving(app.addr, "100 abandoned calls were cut").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_already_expired_deadline_is_answered_promptly_with_deadline_exceeded_or_cancelled() {
    let app = TestApp::builder(Backend::Sqlite).plain_text().spawn().await;
    // The server's deadline timer has a granularity of one millisecond, so a handler that
    // finishes inside that millisecond may still answer; every other outcome must be the
    // deadline's error, and no call may hang.
    let mut cut = 0;
    for attempt in 0..20 {
        let mut client = fresh_resolver(app.addr).await;
        let mut request = tonic::Request::new(resolve_request());
        request
            .metadata_mut()
            .insert("authorization", bearer(PAYER));
        request.set_timeout(Duration::from_nanos(1));
        let started = Instant::now();
        let answer = tokio::time::timeout(PATIENCE, client.resolve(request))
            .await
            .expect("an expired deadline is answered, not left hanging");
        if let Err(status) = answer {
            assert!(
                matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
                "attempt {attempt}: {status:?}"
            );
            cut += 1;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "attempt {attempt}"
        );
    }
    assert!(
        cut >= 5,
        "only {cut} of 20 calls past their deadline were cut"
    );
    assert_still_serving(app.addr, "calls with expired deadlines").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_deadline_cuts_a_stalled_call_long_before_the_server_timeout() {
    // The server's own limit is a minute; the client allows 200 ms.
    let app = TestApp::builder(Backend::Sqlite).plain_text().spawn().await;
    let mut raw = raw_connection(app.addr).await;
    let started = Instant::now();
    let (response, _stalled) = raw
        .send_request(
            grpc_post(app.addr, RESOLVE_PATH, &[("grpc-timeout", "200m")]),
            false,
        )
        .expect("send headers");
    let reply = tokio::time::timeout(PATIENCE, read_reply(response)).await;
    assert_cut("a stalled call with a 200 ms deadline", reply);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_grpc_timeouts_neither_crash_nor_hang_the_call() {
    let app = TestApp::builder(Backend::Sqlite).plain_text().spawn().await;
    let body = frame(&resolve_request().encode_to_vec());
    for value in [
        "",
        "abc",
        "-1S",
        "1",
        "999999999H",
        "99999999H",
        "0n",
        "1x",
        "1.5S",
    ] {
        let reply = raw_unary(app.addr, &[("grpc-timeout", value)], body.clone())
            .await
            .unwrap_or_else(|e| panic!("grpc-timeout {value:?}: stream reset: {e}"));
        assert!(
            reply.grpc_status.is_some(),
            "grpc-timeout {value:?}: {reply:?}"
        );
    }
    assert_still_serving(app.addr, "malformed grpc-timeout headers").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_not_http2_close_the_connection_and_the_server_goes_on() {
    let app = TestApp::builder(Backend::Sqlite).plain_text().spawn().await;
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let random: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
    let garbage: Vec<(&str, Vec<u8>)> = vec![
        ("4 KiB of random bytes", random),
        (
            "an HTTP/1.1 request",
            b"GET / HTTP/1.1\r\nHost: registry\r\n\r\n".to_vec(),
        ),
        (
            "a TLS ClientHello",
            [
                &[
                    0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
                ][..],
                &[0x42; 64],
            ]
            .concat(),
        ),
        (
            "the preface then a SETTINGS frame of a bad length",
            [PREFACE, &[0, 0, 5, 0x4, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5]].concat(),
        ),
        (
            "the preface then HEADERS of garbage HPACK",
            [
                PREFACE,
                &[0, 0, 0, 0x4, 0, 0, 0, 0, 0],
                &[0, 0, 8, 0x1, 0x5, 0, 0, 0, 1],
                &[0xff; 8],
            ]
            .concat(),
        ),
        (
            "the preface then a 16 MiB frame",
            [
                PREFACE,
                &[0, 0, 0, 0x4, 0, 0, 0, 0, 0],
                &[0xff, 0xff, 0xff, 0x0, 0, 0, 0, 0, 1],
            ]
            .concat(),
        ),
        ("a NUL", vec![0]),
    ];
    for (what, bytes) in garbage {
        let mut tcp = tokio::net::TcpStream::connect(app.addr)
            .await
            .expect("connect");
        // The server may close before reading it all; a failed write is fine.
        let _ = tcp.write_all(&bytes).await;
        let mut sink = Vec::new();
        let closed = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut sink)).await;
        assert!(
            closed.is_ok(),
            "{what}: the connection was still open after {PATIENCE:?}"
        );
    }
    assert_still_serving(app.addr, "garbage on the socket").await;
}

/// The slow-loris of HTTP/2: connect and say nothing. The connection is no call yet, so
/// the request timeout does not reach it, and keep-alive pings start only after the
/// handshake; something must still bound how long the server keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_sends_the_http2_preface_is_not_kept_forever() {
    let app = sqlite_app_with_timeout(Duration::from_secs(1)).await;
    let mut silent = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    let mut received = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, silent.read_to_end(&mut received)).await;
    assert!(
        closed.is_ok(),
        "a connection that sent nothing was still open after {PATIENCE:?} (the server had \
         sent {} bytes): idle sockets pile up until the server runs out of descriptors",
        received.len()
    );
    assert_still_serving(app.addr, "a silent connection").await;
}

// --------------------------------------------------------------------------------------
// Free text the databases may choke on
// --------------------------------------------------------------------------------------

on_both_backends!(
    hostile_free_text_is_stored_faithfully_or_refused_never_an_internal_error,
    one_clients_hostile_purpose_does_not_fail_other_clients_reads,
);

/// Text that is valid UTF-8 (so protobuf carries it) but that SQL drivers, terminals and
/// log pipelines treat specially.
fn hostile_texts() -> Vec<String> {
    vec![
        "\0".into(),
        "before\0after".into(),
        "\u{202e}gpj.exe".into(),
        "'; DROP TABLE accounts; --".into(),
        "\u{feff}\u{200b}".into(),
        "😀 \u{10ffff}".into(),
        "%s%n%x{}".into(),
        "\r\n\r\n".into(),
        "\\x00\\".into(),
        "\u{1b}[31mred".into(),
        format!("a{}", "\u{301}".repeat(499)),
        "ệ".repeat(501),
    ]
}

/// A refusal the client can act on; anything else (INTERNAL, UNKNOWN, UNAVAILABLE) means
/// the input got further than it should have.
fn clean_refusal(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::NotFound
            | Code::AlreadyExists
            | Code::Aborted
    )
}

/// Records `result` in `failures` unless it is OK or a clean refusal.
fn note(failures: &mut Vec<String>, what: String, result: Result<(), tonic::Status>) {
    if let Err(s) = result {
        if !clean_refusal(s.code()) {
            failures.push(format!("{what}: {:?} {}", s.code(), s.message()));
        }
    }
}

async fn hostile_free_text_is_stored_faithfully_or_refused_never_an_internal_error(
    backend: Backend,
) {
    let app = TestApp::builder(backend).plain_text().spawn().await;
    let mut registry = app.registry(Some(ADMIN));
    let mut resolver = app.resolver_without_purpose(Some(PAYER));
    let mut failures = Vec::new();
    for (i, text) in hostile_texts().into_iter().enumerate() {
        let citizen = format!("0010990{:05}", i + 1);
        let link = |account_ref: &str| proto::LinkAccountRequest {
            idempotency_key: Uuid::new_v4().to_string(),
            citizen_id: citizen.clone(),
            kind: proto::AccountKind::BankAccount.into(),
            provider_code: "970436".into(),
            account_ref: account_ref.into(),
            ..Default::default()
        };

        // As the reason of a link: accepted and kept as sent (trimmed), or refused.
        let linked = registry
            .link_account(proto::LinkAccountRequest {
                reason: text.clone(),
                ..link("100000001")
            })
            .await;
        match linked {
            Ok(r) => {
                let account = r.into_inner().account.expect("account");
                let history = registry
                    .get_account_history(proto::GetAccountHistoryRequest {
                        account_id: account.account_id,
                        purpose: TEST_PURPOSE.into(),
                        ..Default::default()
                    })
                    .await
                    .map(|h| h.into_inner().entries);
                match history {
                    Ok(entries) => {
                        let stored = entries.first().map(|e| e.reason.as_str());
                        if stored != Some(text.trim()) {
                            failures.push(format!("reason {text:?} read back as {stored:?}"));
                        }
                    }
                    Err(s) => note(
                        &mut failures,
                        format!("history after reason {text:?}"),
                        Err(s),
                    ),
                }
            }
            Err(s) => note(&mut failures, format!("link with reason {text:?}"), Err(s)),
        }

        // As verification evidence.
        let linked = registry
            .link_account(proto::LinkAccountRequest {
                verification: Some(proto::Verification {
                    method: proto::VerificationMethod::InPerson.into(),
                    evidence_ref: text.clone(),
                    ..Default::default()
                }),
                ..link("100000002")
            })
            .await;
        match linked {
            Ok(r) => {
                let account = r.into_inner().account.expect("account");
                let evidence = account.verification.map(|v| v.evidence_ref);
                if evidence.as_deref() != Some(text.trim()) {
                    failures.push(format!("evidence_ref {text:?} stored as {evidence:?}"));
                }
            }
            Err(s) => note(
                &mut failures,
                format!("link with evidence_ref {text:?}"),
                Err(s),
            ),
        }

        // Where only a refusal makes sense, or a name that normalises.
        let attempts = [
            (
                "provider_code",
                proto::LinkAccountRequest {
                    provider_code: text.clone(),
                    ..link("100000003")
                },
            ),
            (
                "holder_name",
                proto::LinkAccountRequest {
                    holder_name: text.clone(),
                    ..link("100000004")
                },
            ),
            (
                "idempotency_key",
                proto::LinkAccountRequest {
                    idempotency_key: text.clone(),
                    ..link("100000005")
                },
            ),
            (
                "account_ref",
                proto::LinkAccountRequest {
                    account_ref: text.clone(),
                    ..link("")
                },
            ),
        ];
        for (field, request) in attempts {
            let r = registry.link_account(request).await.map(drop);
            note(&mut failures, format!("link with {field} {text:?}"), r);
        }

        let r = resolver
            .resolve(proto::ResolveRequest {
                citizen_id: citizen.clone(),
                purpose: text.clone(),
                ..Default::default()
            })
            .await
            .map(drop);
        note(&mut failures, format!("resolve with purpose {text:?}"), r);
        let r = resolver
            .resolve(proto::ResolveRequest {
                citizen_id: citizen.clone(),
                program_code: text.clone(),
                purpose: TEST_PURPOSE.into(),
                ..Default::default()
            })
            .await
            .map(drop);
        note(
            &mut failures,
            format!("resolve with program_code {text:?}"),
            r,
        );
        let r = resolver
            .resolve(proto::ResolveRequest {
                citizen_id: text.clone(),
                purpose: TEST_PURPOSE.into(),
                ..Default::default()
            })
            .await
            .map(drop);
        note(
            &mut failures,
            format!("resolve with citizen_id {text:?}"),
            r,
        );
        let r = registry
            .get_account_history(proto::GetAccountHistoryRequest {
                account_id: Uuid::new_v4().to_string(),
                page_token: text.clone(),
                purpose: TEST_PURPOSE.into(),
                ..Default::default()
            })
            .await
            .map(drop);
        note(
            &mut failures,
            format!("history with page_token {text:?}"),
            r,
        );
    }
    assert!(
        failures.is_empty(),
        "{backend:?}: {} hostile texts got further than a clean refusal:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_still_serving(app.addr, "hostile free text").await;
}

/// Reads are logged in shared batches: a purpose the database refuses must sink only the
/// read that sent it, not the honest reads that happened to share its batch.
async fn one_clients_hostile_purpose_does_not_fail_other_clients_reads(backend: Backend) {
    let app = TestApp::builder(backend).plain_text().spawn().await;
    let hostile = app.resolver_without_purpose(Some(PAYER));
    let honest = app.resolver(Some(MASKED));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut hostile = hostile.clone();
        let mut honest = honest.clone();
        tasks.push(tokio::spawn(async move {
            let mut honest_failures = Vec::new();
            for _ in 0..10 {
                let bad = hostile.resolve(proto::ResolveRequest {
                    citizen_id: CITIZEN.into(),
                    purpose: format!("payroll\0{i}"),
                    ..Default::default()
                });
                let good = honest.resolve(resolve_request());
                let (_, good) = tokio::join!(bad, good);
                if let Err(s) = good {
                    honest_failures.push(format!("{:?} {}", s.code(), s.message()));
                }
            }
            honest_failures
        }));
    }
    let mut failures = Vec::new();
    for task in tasks {
        failures.extend(task.await.expect("task"));
    }
    assert!(
        failures.is_empty(),
        "{backend:?}: {} of 200 honest reads failed because another client sent a NUL in \
         its purpose, e.g. {:?}",
        failures.len(),
        failures.first()
    );
}
