//! A synthetic but realistic population of citizens and declared payout accounts, at any
//! size, generated lazily and deterministically.
//!
//! For demos, load tests and benchmarks: [`citizens`] and [`accounts`] stream the records
//! the population platform would send through `PopulationSync`, ten or ten million of them,
//! without holding more than one citizen in memory. Everything about citizen `i` is a pure
//! function of `(seed, i)`, so the two streams are independent (the accounts stream
//! regenerates the citizen it needs), any citizen can be regenerated on its own
//! ([`citizen_at`], [`citizen_id_at`]) and the same seed always gives the same population.
//! The randomness is a SplitMix64 stream seeded from `(seed, i, purpose)`, implemented here
//! so that a population does not change when the `rand` crate changes its algorithms.
//! `demo-data` loads (and writes) the same records in citizen-id order ([`LoadOrder`]),
//! the order a first sync is fastest in.
//!
//! # Citizens
//!
//! - **Citizen ids** are valid 12-digit ids (`CitizenId::parse` accepts them), spread
//!   uniformly over the 63 province codes, both sexes and birth years 1935..=2007, and
//!   unique: index `i` gets serial `perm(i mod 10^6)` (a bijection of the 6-digit serials)
//!   and prefix (province, sex, birth year) number `(h(i mod 10^6) + i / 10^6) mod 9198`, so
//!   two indexes with the same serial never share a prefix. That makes
//!   [`MAX_CITIZENS`] = 9 198 000 000 distinct ids; the streams stop there.
//! - **Names** are Vietnamese, with diacritics: a family name weighted as in the population
//!   (Nguyễn about 38 %, then Trần, Lê, Phạm, Hoàng, Huỳnh, ...), a middle name that goes
//!   with the sex recorded in the id (mostly Văn / Thị, also Hữu, Đức, Minh, ... / Ngọc,
//!   Thu, Kim, ...; 15 % of women with Thị have a second one: Nguyễn Thị Ngọc Anh) and a
//!   given name from a few dozen per sex.
//! - **Date of birth**: a uniformly drawn day of the birth year the id encodes.
//! - **Status**: 0.1 % `ID_REVOKED`; otherwise `DECEASED` with a probability that grows
//!   with age (5 % of those born before 1950, 2.5 % of 1950-1969, 1 % after: about 2.2 %
//!   overall), with a date of death drawn uniformly from 2016-01-01 (or the day after the
//!   birth, if later) to 2026-10-31; the rest `ACTIVE`.
//! - **Legacy CMND numbers**: 9 % have one, 1 % two; 9 digits, unique (a bijection of
//!   `(i, j)` onto the 10^9 nine-digit numbers, for populations up to 500 million).
//! - `record_id` is `C{i:010}`, `version` is [`BASE_VERSION`]` + i` (2026-01-01 in
//!   microseconds, plus the index).
//!
//! # Accounts
//!
//! - **How many**: 0, 1, 2 or 3 declared accounts with probabilities 10/40/40/10 % (1.5 on
//!   average); none for `ID_REVOKED` citizens; deceased citizens keep theirs.
//! - **Kind and provider**: 65 % `BANK_ACCOUNT` (Agribank, Vietcombank, BIDV, VietinBank
//!   and the Bank for Social Policies (VBSP, 999888) three quarters of them, then
//!   Techcombank, MB, ACB, VPBank, ...), 25 % `EWALLET` (MoMo half of them, ZaloPay,
//!   VNPAY, ShopeePay, Payoo), 10 % `MOBILE_MONEY` (Viettel Money 60 %, VNPT Money,
//!   MobiFone Money). Every provider is in `reference/providers.csv`, active, of that kind.
//! - **Account reference**: a bank account number of 10 to 16 digits (a per-bank prefix and
//!   10 digits that are a bijection of `(i, k)`); for wallets and mobile money a mobile
//!   number written `0` + 3/5/7/8/9 + 8 digits, a bijection of `(i, k)` for populations up
//!   to 166 million. So no two accounts share a reference.
//! - **Holder name**: the citizen's name as banks print it (upper case, no diacritics) for
//!   97 %; 3 % carry only family and given name, so a `NAME_MATCH` on them fails.
//! - **Confirmation**: 60 % `ISSUER_CONFIRMED`, 25 % `NAME_MATCH`, 15 % none (the account
//!   stays pending).
//! - **Duplicate claims**: about 0.5 % of citizens also claim their predecessor's first
//!   account: an extra record for citizen `i` that copies citizen `i - 1`'s first account
//!   (kind, provider, reference, holder name) with `ISSUER_CONFIRMED`. It is only made when
//!   both citizens are `ACTIVE` and that account was itself `ISSUER_CONFIRMED`, so the
//!   account is verified for `i - 1` when the claim arrives (it comes later in the stream)
//!   and the registry refuses it as owned by another citizen.
//! - `record_id` is `A{i:010}-{k}` (`k` counts citizen `i`'s records from 0), `version` is
//!   the citizen's.

use time::Date;

use crate::domain::citizen_id::PROVINCES;
use crate::domain::name::normalize_name;
use crate::proto;

/// What population to generate: how many citizens, and the seed that makes it this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DemoSpec {
    pub citizens: u64,
    pub seed: u64,
}

/// The source version of every generated record is this (2026-01-01T00:00:00Z in
/// microseconds since the epoch) plus the citizen's index.
pub const BASE_VERSION: i64 = 1_767_225_600_000_000;

/// First birth year generated.
pub const FIRST_BIRTH_YEAR: i32 = 1935;

/// Last birth year generated.
pub const LAST_BIRTH_YEAR: i32 = 2007;

/// Serial numbers per (province, sex, birth year) prefix: the last 6 digits of an id.
const SERIALS: u64 = 1_000_000;

/// Birth years generated.
const BIRTH_YEARS: u64 = (LAST_BIRTH_YEAR - FIRST_BIRTH_YEAR + 1) as u64;

/// Distinct (province, sex, birth year) prefixes: 63 * 2 * 73 = 9198.
const PREFIXES: u64 = PROVINCES.len() as u64 * 2 * BIRTH_YEARS;

/// The largest population with distinct citizen ids; [`citizens`] and [`accounts`] stop
/// after this many citizens whatever [`DemoSpec::citizens`] says.
pub const MAX_CITIZENS: u64 = PREFIXES * SERIALS;

/// Generates the citizen records of `spec`, in index order, one at a time.
pub fn citizens(spec: &DemoSpec) -> impl Iterator<Item = proto::CitizenRecord> {
    let spec = *spec;
    (0..spec.citizens.min(MAX_CITIZENS)).map(move |i| citizen_at(&spec, i))
}

/// Generates the account records of `spec`, citizen by citizen in index order (so a
/// duplicate claim comes after the account it copies), one citizen's records at a time.
pub fn accounts(spec: &DemoSpec) -> impl Iterator<Item = proto::AccountRecord> {
    let spec = *spec;
    (0..spec.citizens.min(MAX_CITIZENS)).flat_map(move |i| accounts_at(&spec, i))
}

/// A population's citizens in the order a first sync loads fastest: by citizen id.
///
/// Every index the load writes most is keyed by citizen (the citizens, their accounts,
/// preferences, histories, events and the read model). Loaded in index order, whose ids
/// are spread at random, each batch inserts into a random page of each of them, and once
/// they outgrow the database's buffers most of those pages are read back and written out
/// again for a few rows. In id order the indexes grow at their right edge. Measured on 2
/// cores: SQLite loads 300 k citizens in 103.5 and 163.9 s against 158.3 and 248.8 s in
/// index order (two pairs); on PostgreSQL the load writes 9% less WAL and its backends
/// write out 44% fewer buffers, though at 1 M the time moved less than the machine's
/// run-to-run spread (127.6–186.4 s against 165.3–199.9 s).
///
/// Holds the order (16 bytes a citizen: 160 MB for 10 M), so unlike the streams it is not
/// lazy.
#[derive(Debug, Clone)]
pub struct LoadOrder {
    spec: DemoSpec,
    indexes: Vec<u64>,
}

impl LoadOrder {
    /// The indexes of `spec`'s citizens, ordered by their ids.
    pub fn by_citizen_id(spec: &DemoSpec) -> LoadOrder {
        let mut keyed: Vec<(u64, u64)> = (0..spec.citizens.min(MAX_CITIZENS))
            .map(|i| (IdParts::at(spec.seed, i).number(), i))
            .collect();
        keyed.sort_unstable();
        LoadOrder {
            spec: *spec,
            indexes: keyed.into_iter().map(|(_, i)| i).collect(),
        }
    }

    /// The citizen records, in this order.
    pub fn citizens(&self) -> impl Iterator<Item = proto::CitizenRecord> + '_ {
        self.indexes.iter().map(|&i| citizen_at(&self.spec, i))
    }

    /// The account records, in this order: first every citizen's declared accounts, then
    /// the duplicate claims (so that each still comes after the account it copies, which
    /// in id order may belong to a later citizen).
    pub fn accounts(&self) -> impl Iterator<Item = proto::AccountRecord> + '_ {
        let declared = self
            .indexes
            .iter()
            .flat_map(|&i| declared_accounts_at(&self.spec, &citizen_at(&self.spec, i), i));
        // Only the few citizens drawn to claim are generated again.
        let claims = self
            .indexes
            .iter()
            .filter(|&&i| AccountPlan::at(self.spec.seed, i).duplicate_claim)
            .filter_map(|&i| duplicate_claim_at(&self.spec, &citizen_at(&self.spec, i), i));
        declared.chain(claims)
    }
}

/// The citizen id of citizen `i`: what [`citizen_at`] would put in `citizen_id`, without
/// generating the rest of the record.
pub fn citizen_id_at(spec: &DemoSpec, i: u64) -> String {
    IdParts::at(spec.seed, i).citizen_id()
}

/// The record of citizen `i`, as [`citizens`] yields it.
pub fn citizen_at(spec: &DemoSpec, i: u64) -> proto::CitizenRecord {
    let id = IdParts::at(spec.seed, i);
    let mut draw = Draw::new(spec.seed, i, Purpose::Citizen);

    let full_name = full_name(&mut draw, id.female);

    let birth_days = u64::from(time::util::days_in_year(id.year));
    let ordinal = 1 + draw.below(birth_days) as u16;
    let born = Date::from_ordinal_date(id.year, ordinal)
        .expect("an ordinal within the days of a year between 1935 and 2007 is a valid date");

    let (status, died) = if draw.chance(REVOKED_PER_MILLION) {
        (proto::CitizenStatus::IdRevoked, None)
    } else if draw.chance(deceased_per_million(id.year)) {
        (
            proto::CitizenStatus::Deceased,
            Some(death_date(&mut draw, born)),
        )
    } else {
        (proto::CitizenStatus::Active, None)
    };

    let legacy_count = match draw.below(1000) {
        0..10 => 2,
        10..100 => 1,
        _ => 0,
    };
    let legacy_ids = (0..legacy_count)
        .map(|j| legacy_id(spec.seed, i, j))
        .collect();

    proto::CitizenRecord {
        record_id: format!("C{i:010}"),
        version: version_of(i),
        citizen_id: id.citizen_id(),
        full_name,
        date_of_birth: Some(date(born)),
        status: status.into(),
        date_of_death: died.map(date),
        legacy_ids,
    }
}

/// The account records of citizen `i`, as [`accounts`] yields them: its declared accounts
/// and, for a few, a duplicate claim on the previous citizen's first account.
pub fn accounts_at(spec: &DemoSpec, i: u64) -> Vec<proto::AccountRecord> {
    let citizen = citizen_at(spec, i);
    let mut records = declared_accounts_at(spec, &citizen, i);
    records.extend(duplicate_claim_at(spec, &citizen, i));
    records
}

/// The accounts citizen `i` (`citizen`, its record) declares.
fn declared_accounts_at(
    spec: &DemoSpec,
    citizen: &proto::CitizenRecord,
    i: u64,
) -> Vec<proto::AccountRecord> {
    if citizen.status == i32::from(proto::CitizenStatus::IdRevoked) {
        return Vec::new();
    }
    let plan = AccountPlan::at(spec.seed, i);
    (0..plan.count)
        .map(|k| account_at(spec, citizen, i, k))
        .collect()
}

/// Citizen `i`'s duplicate claim on citizen `i - 1`'s first account, if it makes one.
fn duplicate_claim_at(
    spec: &DemoSpec,
    citizen: &proto::CitizenRecord,
    i: u64,
) -> Option<proto::AccountRecord> {
    if citizen.status != i32::from(proto::CitizenStatus::Active) || i == 0 {
        return None;
    }
    let plan = AccountPlan::at(spec.seed, i);
    if !plan.duplicate_claim {
        return None;
    }
    let owned = claimable_account(spec, i - 1)?;
    Some(proto::AccountRecord {
        record_id: format!("A{i:010}-{}", plan.count),
        version: version_of(i),
        citizen_id: citizen.citizen_id.clone(),
        verification_method: proto::VerificationMethod::IssuerConfirmed.into(),
        removed: false,
        ..owned
    })
}

// ---------------------------------------------------------------------------------------
// Deterministic randomness
// ---------------------------------------------------------------------------------------

/// The golden-ratio increment of SplitMix64.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 finaliser: a bijective, well-mixing hash of a `u64`.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What a random stream is for; each citizen has one stream per purpose, so that adding a
/// draw to one (say, the accounts) does not change the others (the citizen).
#[derive(Clone, Copy)]
enum Purpose {
    Citizen,
    AccountPlan,
    Account(u64),
}

impl Purpose {
    fn tag(self) -> u64 {
        match self {
            Purpose::Citizen => 1,
            Purpose::AccountPlan => 2,
            Purpose::Account(k) => 16 + k,
        }
    }
}

/// A SplitMix64 stream seeded by (seed, citizen index, purpose).
struct Draw {
    state: u64,
}

impl Draw {
    fn new(seed: u64, index: u64, purpose: Purpose) -> Draw {
        Draw {
            state: mix(seed ^ index.wrapping_mul(GOLDEN)) ^ mix(purpose.tag().wrapping_add(GOLDEN)),
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix(self.state)
    }

    /// A number in `0..n` (`n > 0`), by multiply-shift; the bias is below 2^-40 for the
    /// ranges used here.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// True with probability `per_million` / 1 000 000.
    fn chance(&mut self, per_million: u64) -> bool {
        self.below(1_000_000) < per_million
    }

    /// One of `items` (not empty), uniformly.
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// One of `items` (not empty, weights not all zero), with probability proportional to
    /// its weight.
    fn weighted<T: Copy>(&mut self, items: &[(T, u32)]) -> T {
        let total: u64 = items.iter().map(|(_, w)| u64::from(*w)).sum();
        let mut point = self.below(total);
        for (item, weight) in items {
            let weight = u64::from(*weight);
            if point < weight {
                return *item;
            }
            point -= weight;
        }
        items[items.len() - 1].0
    }
}

/// `(x * a + c) mod m`: a bijection of `0..m` when `a` and `m` are coprime.
fn affine(x: u64, a: u64, c: u64, m: u64) -> u64 {
    ((u128::from(x % m) * u128::from(a) + u128::from(c)) % u128::from(m)) as u64
}

// ---------------------------------------------------------------------------------------
// Citizens
// ---------------------------------------------------------------------------------------

/// The parts of citizen `i`'s id.
struct IdParts {
    province: &'static str,
    female: bool,
    year: i32,
    serial: u64,
}

/// Multiplier of the serial permutation; coprime to 10^6.
const SERIAL_MULTIPLIER: u64 = 387_853;

impl IdParts {
    fn at(seed: u64, i: u64) -> IdParts {
        let low = i % SERIALS;
        let block = i / SERIALS;
        let serial = affine(low, SERIAL_MULTIPLIER, mix(seed) % SERIALS, SERIALS);
        // The same `low` (hence the same serial) with different blocks lands on different
        // prefixes, for up to PREFIXES blocks.
        let prefix =
            (mix(seed ^ mix(low.wrapping_add(GOLDEN))) % PREFIXES + block % PREFIXES) % PREFIXES;
        let province = PROVINCES[(prefix % PROVINCES.len() as u64) as usize].0;
        let rest = prefix / PROVINCES.len() as u64;
        IdParts {
            province,
            female: rest % 2 == 1,
            year: FIRST_BIRTH_YEAR + (rest / 2) as i32,
            serial,
        }
    }

    /// The id as a number, which orders as the id does: province (3 digits), sex and
    /// century (1), year within the century (2), serial (6).
    fn number(&self) -> u64 {
        let century = if self.year < 2000 { 0 } else { 2 };
        let province: u64 = self.province.parse().expect("a province code is 3 digits");
        ((province * 10 + century + u64::from(self.female)) * 100 + (self.year % 100) as u64)
            * SERIALS
            + self.serial
    }

    fn citizen_id(&self) -> String {
        format!("{:012}", self.number())
    }
}

fn version_of(i: u64) -> i64 {
    BASE_VERSION.saturating_add(i64::try_from(i).unwrap_or(i64::MAX))
}

/// `YYYY-MM-DD`.
fn date(d: Date) -> proto::google_type::Date {
    proto::google_type::Date {
        year: d.year(),
        month: i32::from(u8::from(d.month())),
        day: i32::from(d.day()),
    }
}

/// Family names with their approximate share of the population, per mille.
const FAMILY_NAMES: &[(&str, u32)] = &[
    ("Nguyễn", 380),
    ("Trần", 110),
    ("Lê", 95),
    ("Phạm", 70),
    ("Hoàng", 50),
    ("Huỳnh", 45),
    ("Phan", 45),
    ("Vũ", 39),
    ("Võ", 39),
    ("Đặng", 21),
    ("Bùi", 20),
    ("Đỗ", 14),
    ("Hồ", 13),
    ("Ngô", 13),
    ("Dương", 10),
    ("Lý", 5),
    ("Đinh", 5),
    ("Trương", 5),
    ("Lâm", 4),
    ("Mai", 4),
    ("Trịnh", 4),
    ("Đoàn", 4),
];

const MALE_MIDDLE_NAMES: &[(&str, u32)] = &[
    ("Văn", 40),
    ("Hữu", 8),
    ("Đức", 10),
    ("Minh", 12),
    ("Quang", 8),
    ("Công", 6),
    ("Đình", 6),
    ("Xuân", 4),
    ("Thanh", 6),
];

const FEMALE_MIDDLE_NAMES: &[(&str, u32)] = &[
    ("Thị", 45),
    ("Ngọc", 12),
    ("Thu", 8),
    ("Thanh", 8),
    ("Kim", 6),
    ("Thùy", 6),
    ("Mỹ", 5),
    ("Hồng", 5),
    ("Phương", 5),
];

/// Second middle names after Thị (Nguyễn Thị Ngọc Anh).
const FEMALE_SECOND_MIDDLE_NAMES: &[&str] = &["Ngọc", "Thu", "Kim", "Thanh", "Mỹ", "Hồng"];

const MALE_GIVEN_NAMES: &[&str] = &[
    "An", "Anh", "Bảo", "Bình", "Cường", "Dũng", "Duy", "Đạt", "Đông", "Giang", "Hải", "Hiếu",
    "Hoàng", "Hùng", "Huy", "Khang", "Khánh", "Khoa", "Kiên", "Lâm", "Long", "Lộc", "Mạnh", "Minh",
    "Nam", "Nghĩa", "Phong", "Phúc", "Quân", "Quang", "Sơn", "Tài", "Thắng", "Thành", "Tiến",
    "Toàn", "Trung", "Tuấn", "Việt", "Vinh",
];

const FEMALE_GIVEN_NAMES: &[&str] = &[
    "An", "Anh", "Ánh", "Châu", "Chi", "Dung", "Duyên", "Giang", "Hà", "Hạnh", "Hằng", "Hiền",
    "Hoa", "Hồng", "Huệ", "Hương", "Lan", "Liên", "Linh", "Loan", "Mai", "My", "Nga", "Ngân",
    "Nhung", "Oanh", "Phương", "Quyên", "Tâm", "Thảo", "Thủy", "Trang", "Trâm", "Tuyết", "Uyên",
    "Vân", "Yến",
];

/// A full name, "Family Middle [Middle] Given", for the given sex.
fn full_name(draw: &mut Draw, female: bool) -> String {
    let family = draw.weighted(FAMILY_NAMES);
    let (middle, given_names) = if female {
        (draw.weighted(FEMALE_MIDDLE_NAMES), FEMALE_GIVEN_NAMES)
    } else {
        (draw.weighted(MALE_MIDDLE_NAMES), MALE_GIVEN_NAMES)
    };
    let second_middle = (female && middle == "Thị" && draw.chance(150_000))
        .then(|| draw.pick(FEMALE_SECOND_MIDDLE_NAMES));
    // "Nguyễn Minh Minh" is not a name anyone is given: draw again (a bounded number of
    // times; the lists have dozens of other names).
    let mut given = draw.pick(given_names);
    for _ in 0..8 {
        if given != middle && Some(given) != second_middle {
            break;
        }
        given = draw.pick(given_names);
    }
    match second_middle {
        Some(second) => format!("{family} {middle} {second} {given}"),
        None => format!("{family} {middle} {given}"),
    }
}

/// Citizens whose id was revoked, per million.
const REVOKED_PER_MILLION: u64 = 1_000;

/// Deceased citizens per million, by birth year: the older, the likelier.
fn deceased_per_million(birth_year: i32) -> u64 {
    match birth_year {
        ..1950 => 50_000,
        1950..1970 => 25_000,
        _ => 10_000,
    }
}

/// A date of death after `born`, drawn uniformly from the last decade up to 2026-10-31.
fn death_date(draw: &mut Draw, born: Date) -> Date {
    const WINDOW_START: Date = time::macros::date!(2016 - 01 - 01);
    const LAST_DEATH: Date = time::macros::date!(2026 - 10 - 31);
    let first = (born.to_julian_day() + 1).max(WINDOW_START.to_julian_day());
    let last = LAST_DEATH.to_julian_day();
    let span = u64::try_from(last - first + 1).unwrap_or(1);
    let day = first + draw.below(span) as i32;
    Date::from_julian_day(day).unwrap_or(LAST_DEATH)
}

/// Citizens with distinct legacy numbers: `(i, j)` maps to key `i + j * LEGACY_SPAN`.
const LEGACY_SPAN: u64 = 500_000_000;

/// Nine-digit numbers.
const LEGACY_SPACE: u64 = 1_000_000_000;

/// Multiplier of the legacy-number permutation; coprime to 10^9.
const LEGACY_MULTIPLIER: u64 = 738_169_123;

/// Citizen `i`'s `j`-th legacy CMND number (`j` is 0 or 1).
fn legacy_id(seed: u64, i: u64, j: u64) -> String {
    let key = i % LEGACY_SPAN + j * LEGACY_SPAN;
    let n = affine(
        key,
        LEGACY_MULTIPLIER,
        mix(seed ^ 0x4C45_4741_4359) % LEGACY_SPACE,
        LEGACY_SPACE,
    );
    format!("{n:09}")
}

// ---------------------------------------------------------------------------------------
// Accounts
// ---------------------------------------------------------------------------------------

/// How many accounts citizen `i` declares, and whether it also claims its predecessor's.
struct AccountPlan {
    count: u64,
    duplicate_claim: bool,
}

/// Citizens drawn to make a duplicate claim, per million; about half of them are eligible
/// (both citizens active, the predecessor's first account issuer-confirmed), which gives
/// the 0.5 % of the module documentation.
const DUPLICATE_CLAIM_PER_MILLION: u64 = 10_000;

impl AccountPlan {
    fn at(seed: u64, i: u64) -> AccountPlan {
        let mut draw = Draw::new(seed, i, Purpose::AccountPlan);
        let count = draw.weighted(&[(0, 10), (1, 40), (2, 40), (3, 10)]);
        let duplicate_claim = draw.chance(DUPLICATE_CLAIM_PER_MILLION);
        AccountPlan {
            count,
            duplicate_claim,
        }
    }
}

/// A bank, its weight among bank accounts, and the leading digits of its account numbers
/// (10 more digits follow).
struct Bank {
    code: &'static str,
    weight: u32,
    prefix: &'static str,
}

const BANKS: &[Bank] = &[
    Bank {
        code: "970405",
        weight: 24,
        prefix: "150",
    }, // Agribank, 13 digits
    Bank {
        code: "970436",
        weight: 16,
        prefix: "007",
    }, // Vietcombank, 13
    Bank {
        code: "970418",
        weight: 14,
        prefix: "1201",
    }, // BIDV, 14
    Bank {
        code: "970415",
        weight: 12,
        prefix: "10",
    }, // VietinBank, 12
    Bank {
        code: "999888",
        weight: 8,
        prefix: "4000",
    }, // VBSP, 14
    Bank {
        code: "970407",
        weight: 5,
        prefix: "1903",
    }, // Techcombank, 14
    Bank {
        code: "970422",
        weight: 5,
        prefix: "068",
    }, // MB Bank, 13
    Bank {
        code: "970416",
        weight: 3,
        prefix: "",
    }, // ACB, 10
    Bank {
        code: "970432",
        weight: 3,
        prefix: "",
    }, // VPBank, 10
    Bank {
        code: "970403",
        weight: 3,
        prefix: "06",
    }, // Sacombank, 12
    Bank {
        code: "970437",
        weight: 2,
        prefix: "000000",
    }, // HDBank, 16
    Bank {
        code: "970443",
        weight: 2,
        prefix: "10",
    }, // SHB, 12
    Bank {
        code: "970423",
        weight: 2,
        prefix: "0",
    }, // TPBank, 11
];

const WALLETS: &[(&str, u32)] = &[
    ("MOMO", 50),
    ("ZALOPAY", 25),
    ("VNPAY", 10),
    ("SHOPEEPAY", 10),
    ("PAYOO", 5),
];

const MOBILE_MONEY: &[(&str, u32)] = &[
    ("VIETTELMONEY", 60),
    ("VNPTMONEY", 20),
    ("MOBIFONEMONEY", 20),
];

/// Bank account keys and numbers: the 10 digits after the bank's prefix.
const BANK_SPACE: u64 = 10_000_000_000;

/// Multiplier of the bank-number permutation; coprime to 10^10.
const BANK_MULTIPLIER: u64 = 6_364_136_223;

/// Mobile numbers: `0`, one of five leading digits, 8 digits.
const MSISDN_SPACE: u64 = 500_000_000;

/// Multiplier of the mobile-number permutation; coprime to 5 * 10^8.
const MSISDN_MULTIPLIER: u64 = 289_816_579;

/// Accounts one citizen can declare: keys of references are `i * ACCOUNT_SLOTS + k`.
const ACCOUNT_SLOTS: u64 = 3;

/// The bank account number of citizen `i`'s `k`-th account at `bank`.
fn bank_account_number(seed: u64, bank: &Bank, i: u64, k: u64) -> String {
    let key = i.wrapping_mul(ACCOUNT_SLOTS).wrapping_add(k);
    let n = affine(
        key,
        BANK_MULTIPLIER,
        mix(seed ^ 0x42414E4B) % BANK_SPACE,
        BANK_SPACE,
    );
    format!("{}{n:010}", bank.prefix)
}

/// The mobile number of citizen `i`'s `k`-th account, written the national way
/// (`0912345678`).
fn mobile_number(seed: u64, i: u64, k: u64) -> String {
    let key = i.wrapping_mul(ACCOUNT_SLOTS).wrapping_add(k);
    let n = affine(
        key,
        MSISDN_MULTIPLIER,
        mix(seed ^ 0x4D534953) % MSISDN_SPACE,
        MSISDN_SPACE,
    );
    let leading = [3, 5, 7, 8, 9][(n / 100_000_000) as usize];
    format!("0{leading}{:08}", n % 100_000_000)
}

/// Citizen `i`'s `k`-th declared account (`k < ACCOUNT_SLOTS`).
fn account_at(
    spec: &DemoSpec,
    citizen: &proto::CitizenRecord,
    i: u64,
    k: u64,
) -> proto::AccountRecord {
    let mut draw = Draw::new(spec.seed, i, Purpose::Account(k));
    let kind = draw.weighted(&[
        (proto::AccountKind::BankAccount, 65),
        (proto::AccountKind::Ewallet, 25),
        (proto::AccountKind::MobileMoney, 10),
    ]);
    let (provider_code, account_ref) = match kind {
        proto::AccountKind::BankAccount => {
            let weights: Vec<(usize, u32)> = BANKS
                .iter()
                .enumerate()
                .map(|(n, b)| (n, b.weight))
                .collect();
            let bank = &BANKS[draw.weighted(&weights)];
            (bank.code, bank_account_number(spec.seed, bank, i, k))
        }
        proto::AccountKind::Ewallet => (draw.weighted(WALLETS), mobile_number(spec.seed, i, k)),
        _ => (draw.weighted(MOBILE_MONEY), mobile_number(spec.seed, i, k)),
    };
    let holder_name = if draw.chance(970_000) {
        normalize_name(&citizen.full_name)
    } else {
        // Only the first and last words: what a bank's old core kept of the name.
        let words: Vec<&str> = citizen.full_name.split_whitespace().collect();
        let short = match (words.first(), words.last()) {
            (Some(first), Some(last)) if words.len() > 2 => format!("{first} {last}"),
            _ => citizen.full_name.clone(),
        };
        normalize_name(&short)
    };
    let confirmation = draw.weighted(&[
        (proto::VerificationMethod::IssuerConfirmed, 60),
        (proto::VerificationMethod::NameMatch, 25),
        (proto::VerificationMethod::Unspecified, 15),
    ]);
    proto::AccountRecord {
        record_id: format!("A{i:010}-{k}"),
        version: version_of(i),
        citizen_id: citizen.citizen_id.clone(),
        kind: kind.into(),
        provider_code: provider_code.to_owned(),
        account_ref,
        holder_name,
        verification_method: confirmation.into(),
        removed: false,
    }
}

/// Citizen `j`'s first account, if the registry will have verified it for `j` (so that a
/// claim by someone else is refused): `j` active, and the account issuer-confirmed.
fn claimable_account(spec: &DemoSpec, j: u64) -> Option<proto::AccountRecord> {
    let owner = citizen_at(spec, j);
    if owner.status != i32::from(proto::CitizenStatus::Active) {
        return None;
    }
    if AccountPlan::at(spec.seed, j).count == 0 {
        return None;
    }
    let first = account_at(spec, &owner, j, 0);
    (first.verification_method == i32::from(proto::VerificationMethod::IssuerConfirmed))
        .then_some(first)
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;
    use crate::domain::bank_account::BankAccountNumber;
    use crate::domain::msisdn::Msisdn;
    use crate::domain::{CitizenId, HolderName};

    const SPEC: DemoSpec = DemoSpec {
        citizens: 100_000,
        seed: 42,
    };

    fn is(value: i32, expected: impl Into<i32>) -> bool {
        value == expected.into()
    }

    #[test]
    fn the_same_seed_gives_the_same_population_and_another_seed_another() {
        let small = DemoSpec {
            citizens: 2_000,
            seed: 7,
        };
        let a: Vec<_> = citizens(&small).collect();
        let b: Vec<_> = citizens(&small).collect();
        assert_eq!(a.len(), 2_000);
        assert_eq!(a, b);
        let accounts_a: Vec<_> = accounts(&small).collect();
        assert_eq!(accounts_a, accounts(&small).collect::<Vec<_>>());

        let other = DemoSpec { seed: 8, ..small };
        let c: Vec<_> = citizens(&other).collect();
        let same_name = a
            .iter()
            .zip(&c)
            .filter(|(x, y)| x.full_name == y.full_name)
            .count();
        assert!(same_name < 500, "{same_name} identical names across seeds");
        assert_ne!(a[0].citizen_id, c[0].citizen_id);

        // Any citizen can be regenerated alone, and a bigger population starts with the
        // smaller one.
        for i in [0, 1, 999, 1_999] {
            assert_eq!(citizen_at(&small, i), a[i as usize]);
            assert_eq!(citizen_id_at(&small, i), a[i as usize].citizen_id);
        }
        let bigger = DemoSpec {
            citizens: 3_000,
            ..small
        };
        assert!(citizens(&bigger).take(2_000).eq(a.iter().cloned()));
    }

    #[test]
    fn citizen_ids_are_valid_unique_and_cover_every_province() {
        let mut seen = HashSet::with_capacity(200_000);
        let mut provinces = HashSet::new();
        let mut years = HashSet::new();
        let mut sexes = HashSet::new();
        for i in 0..200_000 {
            let id = citizen_id_at(&SPEC, i);
            let parsed = CitizenId::parse(&id).unwrap_or_else(|e| panic!("#{i} {id}: {e}"));
            assert!((FIRST_BIRTH_YEAR..=LAST_BIRTH_YEAR).contains(&parsed.birth_year()));
            provinces.insert(parsed.province_code().to_owned());
            years.insert(parsed.birth_year());
            sexes.insert(parsed.sex());
            assert!(seen.insert(id), "#{i}: duplicate id");
        }
        assert_eq!(provinces.len(), PROVINCES.len());
        assert_eq!(years.len(), BIRTH_YEARS as usize);
        assert_eq!(sexes.len(), 2);
    }

    #[test]
    fn indexes_that_share_a_serial_never_share_an_id_up_to_the_maximum() {
        // Every index with the same low six digits, across all PREFIXES blocks: these are
        // the only candidates for a collision.
        for low in [0, 1, 123_456, 999_999] {
            let mut seen = HashSet::with_capacity(PREFIXES as usize);
            for block in 0..PREFIXES {
                let i = low + block * SERIALS;
                let id = citizen_id_at(&SPEC, i);
                CitizenId::parse(&id).unwrap_or_else(|e| panic!("#{i} {id}: {e}"));
                assert!(seen.insert(id), "#{i}: duplicate id");
            }
        }
        assert_eq!(MAX_CITIZENS, 9_198_000_000);
        let huge = DemoSpec {
            citizens: u64::MAX,
            seed: 1,
        };
        assert_eq!(
            citizens(&huge).size_hint().0 as u64,
            MAX_CITIZENS.min(usize::MAX as u64)
        );
    }

    #[test]
    fn citizen_records_are_consistent() {
        let mut legacy = HashSet::new();
        for (i, c) in citizens(&SPEC).enumerate().take(50_000) {
            let i = i as u64;
            assert_eq!(c.record_id, format!("C{i:010}"));
            assert_eq!(c.version, BASE_VERSION + i as i64);
            let id = CitizenId::parse(&c.citizen_id).expect("valid id");

            let words: Vec<&str> = c.full_name.split(' ').collect();
            assert!((3..=4).contains(&words.len()), "{}", c.full_name);
            assert!(HolderName::parse(&c.full_name).is_ok(), "{}", c.full_name);
            let middle_names = match id.sex() {
                crate::domain::citizen_id::Sex::Male => MALE_MIDDLE_NAMES,
                crate::domain::citizen_id::Sex::Female => FEMALE_MIDDLE_NAMES,
            };
            assert!(
                middle_names.iter().any(|(m, _)| *m == words[1]),
                "{} does not go with {:?}",
                c.full_name,
                id.sex()
            );

            let format = time::macros::format_description!("[year]-[month]-[day]");
            let born = Date::parse(
                &crate::grpc::convert::date_in(c.date_of_birth.as_ref()),
                format,
            )
            .expect("ISO date of birth");
            assert_eq!(born.year(), id.birth_year());
            if is(c.status, proto::CitizenStatus::Deceased) {
                let died = Date::parse(
                    &crate::grpc::convert::date_in(c.date_of_death.as_ref()),
                    format,
                )
                .expect("ISO date of death");
                assert!(died > born, "{} died before birth", c.record_id);
                assert!(died <= time::macros::date!(2026 - 10 - 31));
            } else {
                assert!(c.date_of_death.is_none());
            }

            assert!(c.legacy_ids.len() <= 2);
            for l in &c.legacy_ids {
                assert!(l.len() == 9 && l.bytes().all(|b| b.is_ascii_digit()), "{l}");
                assert!(legacy.insert(l.clone()), "duplicate legacy id {l}");
            }
        }
    }

    #[test]
    fn distributions_are_realistic_on_100k_citizens() {
        let n = SPEC.citizens as f64;
        let (mut deceased, mut revoked, mut with_legacy, mut two_legacy, mut nguyen) =
            (0u64, 0u64, 0u64, 0u64, 0u64);
        for c in citizens(&SPEC) {
            if is(c.status, proto::CitizenStatus::Deceased) {
                deceased += 1;
            }
            if is(c.status, proto::CitizenStatus::IdRevoked) {
                revoked += 1;
            }
            match c.legacy_ids.len() {
                0 => {}
                1 => with_legacy += 1,
                _ => {
                    with_legacy += 1;
                    two_legacy += 1;
                }
            }
            if c.full_name.starts_with("Nguyễn ") {
                nguyen += 1;
            }
        }
        let share = |count: u64| count as f64 / n;
        assert!(
            (0.01..=0.03).contains(&share(deceased)),
            "deceased {deceased}"
        );
        assert!(
            (0.0003..=0.003).contains(&share(revoked)),
            "revoked {revoked}"
        );
        assert!(
            (0.08..=0.12).contains(&share(with_legacy)),
            "legacy {with_legacy}"
        );
        assert!(
            (0.005..=0.015).contains(&share(two_legacy)),
            "two legacy {two_legacy}"
        );
        assert!((0.34..=0.42).contains(&share(nguyen)), "Nguyễn {nguyen}");

        let mut records = 0u64;
        let mut duplicates = 0u64;
        let mut kinds: HashMap<i32, u64> = HashMap::new();
        let mut confirmations: HashMap<i32, u64> = HashMap::new();
        let mut providers: HashMap<String, u64> = HashMap::new();
        for a in accounts(&SPEC) {
            records += 1;
            if is_duplicate_claim(&a) {
                duplicates += 1;
                continue;
            }
            *kinds.entry(a.kind).or_default() += 1;
            *confirmations.entry(a.verification_method).or_default() += 1;
            *providers.entry(a.provider_code).or_default() += 1;
        }
        let declared = records - duplicates;
        let per_citizen = declared as f64 / n;
        assert!(
            (1.3..=1.7).contains(&per_citizen),
            "{per_citizen} accounts per citizen"
        );
        assert!(duplicates >= 5, "{duplicates} duplicate claims");
        assert!(share(duplicates) <= 0.01, "{duplicates} duplicate claims");

        let fraction = |map: &HashMap<i32, u64>, key: i32| {
            map.get(&key).copied().unwrap_or_default() as f64 / declared as f64
        };
        let bank = fraction(&kinds, proto::AccountKind::BankAccount.into());
        let wallet = fraction(&kinds, proto::AccountKind::Ewallet.into());
        let mobile = fraction(&kinds, proto::AccountKind::MobileMoney.into());
        assert!((0.62..=0.68).contains(&bank), "bank {bank}");
        assert!((0.22..=0.28).contains(&wallet), "wallet {wallet}");
        assert!((0.08..=0.12).contains(&mobile), "mobile {mobile}");
        let issuer = fraction(
            &confirmations,
            proto::VerificationMethod::IssuerConfirmed.into(),
        );
        let name = fraction(&confirmations, proto::VerificationMethod::NameMatch.into());
        let none = fraction(
            &confirmations,
            proto::VerificationMethod::Unspecified.into(),
        );
        assert!((0.57..=0.63).contains(&issuer), "issuer {issuer}");
        assert!((0.22..=0.28).contains(&name), "name match {name}");
        assert!((0.12..=0.18).contains(&none), "none {none}");
        let big_five: u64 = ["970405", "970436", "970418", "970415", "999888"]
            .iter()
            .map(|code| providers.get(*code).copied().unwrap_or_default())
            .sum();
        let big_five = big_five as f64 / (bank * declared as f64);
        assert!(
            (0.70..=0.78).contains(&big_five),
            "big five banks {big_five}"
        );
    }

    /// A duplicate claim is the record after a citizen's declared accounts.
    fn is_duplicate_claim(a: &proto::AccountRecord) -> bool {
        let Some((citizen, k)) = a
            .record_id
            .strip_prefix('A')
            .and_then(|r| r.split_once('-'))
        else {
            panic!("bad record id {}", a.record_id);
        };
        let i: u64 = citizen.parse().expect("index");
        let k: u64 = k.parse().expect("k");
        k >= AccountPlan::at(SPEC.seed, i).count
    }

    /// `reference/providers.csv`: code -> (kind, active).
    fn providers_csv() -> HashMap<String, (String, bool)> {
        let mut reader =
            csv::Reader::from_reader(include_str!("../../reference/providers.csv").as_bytes());
        reader
            .records()
            .map(|r| {
                let r = r.expect("providers.csv is well formed");
                (r[0].to_owned(), (r[1].to_owned(), &r[4] == "true"))
            })
            .collect()
    }

    #[test]
    fn every_provider_used_exists_is_active_and_of_the_right_kind() {
        let providers = providers_csv();
        let check = |code: &str, kind: &str| match providers.get(code) {
            Some((k, active)) => {
                assert_eq!(k, kind, "{code}");
                assert!(*active, "{code} is inactive");
            }
            None => panic!("{code} is not in reference/providers.csv"),
        };
        for bank in BANKS {
            check(bank.code, "BANK_ACCOUNT");
        }
        for (code, _) in WALLETS {
            check(code, "EWALLET");
        }
        for (code, _) in MOBILE_MONEY {
            check(code, "MOBILE_MONEY");
        }
    }

    #[test]
    fn every_account_is_valid_and_every_duplicate_claim_copies_a_verified_account() {
        let providers = providers_csv();
        let mut record_ids = HashSet::new();
        // (kind, provider, normalised ref) -> (citizen id, confirmation) of the declared
        // accounts.
        let mut owners: HashMap<(i32, String, String), (String, i32)> = HashMap::new();
        let mut duplicates = 0;
        let mut previous: Option<proto::CitizenRecord> = None;
        let mut current: Option<proto::CitizenRecord> = None;
        for a in accounts(&SPEC) {
            assert!(record_ids.insert(a.record_id.clone()), "{}", a.record_id);
            let i: u64 = a.record_id[1..11].parse().expect("index");
            if current.as_ref().map(|c| &c.record_id) != Some(&format!("C{i:010}")) {
                previous = Some(citizen_at(&SPEC, i.wrapping_sub(1)));
                current = Some(citizen_at(&SPEC, i));
            }
            let citizen = current.as_ref().expect("set above");
            assert_eq!(a.citizen_id, citizen.citizen_id);
            assert_eq!(a.version, citizen.version);
            assert!(!is(citizen.status, proto::CitizenStatus::IdRevoked));
            assert!(!a.removed);

            let kind = proto::AccountKind::try_from(a.kind).expect("known kind");
            let (provider_kind, active) = &providers[&a.provider_code];
            assert_eq!(
                provider_kind,
                crate::client::short_name(kind.as_str_name(), "ACCOUNT_KIND_")
            );
            assert!(active);
            let account_ref = match kind {
                proto::AccountKind::BankAccount => {
                    assert!((9..=16).contains(&a.account_ref.len()), "{}", a.account_ref);
                    BankAccountNumber::parse(&a.account_ref)
                        .unwrap_or_else(|e| panic!("{}: {e}", a.record_id))
                        .as_str()
                        .to_owned()
                }
                _ => Msisdn::parse(&a.account_ref)
                    .unwrap_or_else(|e| panic!("{}: {e}", a.record_id))
                    .as_str()
                    .to_owned(),
            };
            HolderName::parse(&a.holder_name).unwrap_or_else(|e| panic!("{}: {e}", a.holder_name));

            let key = (a.kind, a.provider_code.clone(), account_ref);
            if is_duplicate_claim(&a) {
                duplicates += 1;
                let owner = previous.as_ref().expect("set above");
                assert!(is(citizen.status, proto::CitizenStatus::Active));
                assert!(is(owner.status, proto::CitizenStatus::Active));
                assert!(is(
                    a.verification_method,
                    proto::VerificationMethod::IssuerConfirmed
                ));
                let (owner_id, confirmation) = owners
                    .get(&key)
                    .unwrap_or_else(|| panic!("{} claims no earlier account", a.record_id));
                assert_eq!(owner_id, &owner.citizen_id);
                assert_ne!(owner_id, &a.citizen_id);
                assert!(is(
                    *confirmation,
                    proto::VerificationMethod::IssuerConfirmed
                ));
            } else {
                assert!(
                    owners
                        .insert(key, (a.citizen_id.clone(), a.verification_method))
                        .is_none(),
                    "{} reuses a reference",
                    a.record_id
                );
                let words: Vec<&str> = citizen.full_name.split(' ').collect();
                let short = format!("{} {}", words[0], words[words.len() - 1]);
                assert!(
                    a.holder_name == normalize_name(&citizen.full_name)
                        || a.holder_name == normalize_name(&short),
                    "{} for {}",
                    a.holder_name,
                    citizen.full_name
                );
            }
        }
        assert!(duplicates >= 5);
    }

    #[test]
    fn references_stay_unique_beyond_the_test_population() {
        // Far indexes: the permutations, not luck, keep references apart.
        let mut banks = HashSet::new();
        let mut phones = HashSet::new();
        for i in (0..100_000_000u64)
            .step_by(9_973)
            .chain(160_000_000..160_010_000)
        {
            for k in 0..ACCOUNT_SLOTS {
                let bank = bank_account_number(SPEC.seed, &BANKS[0], i, k);
                assert!(BankAccountNumber::parse(&bank).is_ok(), "{bank}");
                assert!(banks.insert(bank));
                let phone = mobile_number(SPEC.seed, i, k);
                assert!(Msisdn::parse(&phone).is_ok(), "{phone}");
                assert!(phones.insert(phone));
            }
        }
    }

    #[test]
    fn the_load_order_has_every_record_once_citizens_by_id_and_each_claim_after_its_account() {
        let spec = DemoSpec {
            citizens: 20_000,
            seed: 42,
        };
        let order = LoadOrder::by_citizen_id(&spec);
        let loaded: Vec<proto::CitizenRecord> = order.citizens().collect();
        assert!(loaded.windows(2).all(|w| w[0].citizen_id < w[1].citizen_id));
        let mut by_index: Vec<proto::CitizenRecord> = citizens(&spec).collect();
        by_index.sort_by(|a, b| a.citizen_id.cmp(&b.citizen_id));
        assert_eq!(loaded, by_index, "the same records, by id");
        for i in [0, 1, 999_999, 1_000_000, 123_456_789] {
            let id = IdParts::at(7, i);
            assert_eq!(
                id.number().to_string(),
                id.citizen_id().trim_start_matches('0')
            );
        }

        let accounts_loaded: Vec<proto::AccountRecord> = order.accounts().collect();
        let mut in_load: Vec<&str> = accounts_loaded
            .iter()
            .map(|a| a.record_id.as_str())
            .collect();
        let by_index: Vec<proto::AccountRecord> = accounts(&spec).collect();
        let mut in_index: Vec<&str> = by_index.iter().map(|a| a.record_id.as_str()).collect();
        in_load.sort_unstable();
        in_index.sort_unstable();
        assert_eq!(in_load, in_index, "the same account records");
        // Every claim comes after the account it copies (the registry then refuses the
        // claim, not the holder's own record).
        let mut seen = HashSet::new();
        let mut claims = 0;
        for a in &accounts_loaded {
            let key = (a.kind, a.provider_code.clone(), a.account_ref.clone());
            if is_duplicate_claim(a) {
                claims += 1;
                assert!(seen.contains(&key), "{} before its account", a.record_id);
            } else {
                seen.insert(key);
            }
        }
        assert!(claims >= 5, "{claims}");
    }

    #[test]
    fn both_streams_are_lazy() {
        // A billion citizens: only what is taken is generated.
        let spec = DemoSpec {
            citizens: 1_000_000_000,
            seed: 3,
        };
        assert_eq!(citizens(&spec).take(1_000).count(), 1_000);
        assert_eq!(accounts(&spec).take(1_000).count(), 1_000);
        let last = citizen_at(&spec, spec.citizens - 1);
        assert_eq!(last.record_id, "C0999999999");
        assert!(CitizenId::parse(&last.citizen_id).is_ok());
        assert_eq!(citizen_id_at(&spec, spec.citizens - 1), last.citizen_id);
        assert_eq!(
            citizens(&DemoSpec {
                citizens: 0,
                seed: 3
            })
            .count(),
            0
        );
    }
}
