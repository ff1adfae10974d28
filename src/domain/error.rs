//! Why a request was refused, in terms a client can act on.
//!
//! Every refusal carries a stable, machine-readable [`Reason`] (sent to clients as
//! `google.rpc.ErrorInfo.reason`), the request field at fault when there is one (sent as a
//! `google.rpc.BadRequest` field violation) and a human sentence. The gRPC layer turns a
//! [`Rejection`] into a `tonic::Status` in exactly one place; nothing here knows about
//! transport.

use std::fmt;

/// The class of a refusal; each maps to one gRPC status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// The request itself is malformed: INVALID_ARGUMENT.
    InvalidArgument,
    /// The request is well formed but the registry's state forbids it: FAILED_PRECONDITION.
    FailedPrecondition,
    /// The named entity does not exist: NOT_FOUND.
    NotFound,
    /// Optimistic concurrency failed; re-read and retry: ABORTED.
    Aborted,
    /// The idempotency key was used before with a different request: ALREADY_EXISTS.
    AlreadyExists,
    /// A position outside what is kept (pruned events): OUT_OF_RANGE.
    OutOfRange,
    /// Not available yet; retry later: UNAVAILABLE.
    Unavailable,
    /// The caller is authenticated but not entitled to this: PERMISSION_DENIED.
    PermissionDenied,
    /// No valid identity: UNAUTHENTICATED.
    Unauthenticated,
    /// A limit was reached (rate, size): RESOURCE_EXHAUSTED.
    ResourceExhausted,
    /// The call's deadline passed: DEADLINE_EXCEEDED.
    DeadlineExceeded,
    /// A bug: INTERNAL.
    Internal,
}

macro_rules! reasons {
    ($($variant:ident = $code:literal => $category:ident,)*) => {
        /// Stable reason codes. The string form is part of the API: never rename one,
        /// only add.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason { $($variant,)* }

        impl Reason {
            /// The `google.rpc.ErrorInfo.reason` string.
            pub fn as_str(self) -> &'static str {
                match self { $(Reason::$variant => $code,)* }
            }

            /// Which status code this reason is sent with.
            pub fn category(self) -> Category {
                match self { $(Reason::$variant => Category::$category,)* }
            }

            /// Parses the string form back (for replaying stored refusals).
            pub fn parse(s: &str) -> Option<Reason> {
                match s { $($code => Some(Reason::$variant),)* _ => None }
            }

            /// Every reason, for documentation and tests.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];
        }
    };
}

// The list mirrors `ErrorReason` in proto/payoutregistry/v1/registry.proto, in the same
// order (a test compares the two): each value's proto comment says when it is sent and
// what the caller should do.
reasons! {
    FieldRequired = "FIELD_REQUIRED" => InvalidArgument,
    CitizenIdInvalidLength = "CITIZEN_ID_INVALID_LENGTH" => InvalidArgument,
    CitizenIdNotDigits = "CITIZEN_ID_NOT_DIGITS" => InvalidArgument,
    CitizenIdInvalidProvince = "CITIZEN_ID_INVALID_PROVINCE" => InvalidArgument,
    CitizenIdBirthYearInFuture = "CITIZEN_ID_BIRTH_YEAR_IN_FUTURE" => InvalidArgument,
    MsisdnInvalid = "MSISDN_INVALID" => InvalidArgument,
    BankAccountInvalid = "BANK_ACCOUNT_INVALID" => InvalidArgument,
    HolderNameInvalid = "HOLDER_NAME_INVALID" => InvalidArgument,
    EnumValueUnknown = "ENUM_VALUE_UNKNOWN" => InvalidArgument,
    IdempotencyKeyInvalid = "IDEMPOTENCY_KEY_INVALID" => InvalidArgument,
    AccountIdInvalid = "ACCOUNT_ID_INVALID" => InvalidArgument,
    TimestampInvalid = "TIMESTAMP_INVALID" => InvalidArgument,
    PageTokenInvalid = "PAGE_TOKEN_INVALID" => InvalidArgument,
    PageSizeInvalid = "PAGE_SIZE_INVALID" => InvalidArgument,
    TextTooLong = "TEXT_TOO_LONG" => InvalidArgument,
    ProviderUnknown = "PROVIDER_UNKNOWN" => InvalidArgument,
    ProgramUnknown = "PROGRAM_UNKNOWN" => InvalidArgument,
    ProviderInactive = "PROVIDER_INACTIVE" => FailedPrecondition,
    ProviderKindMismatch = "PROVIDER_KIND_MISMATCH" => InvalidArgument,
    AccountNotFound = "ACCOUNT_NOT_FOUND" => NotFound,
    AccountNotOwnedByCitizen = "ACCOUNT_NOT_OWNED_BY_CITIZEN" => NotFound,
    IllegalTransition = "ILLEGAL_TRANSITION" => FailedPrecondition,
    AccountNotVerified = "ACCOUNT_NOT_VERIFIED" => FailedPrecondition,
    AccountOwnedByAnotherCitizen = "ACCOUNT_OWNED_BY_ANOTHER_CITIZEN" => FailedPrecondition,
    AccountAlreadyLinked = "ACCOUNT_ALREADY_LINKED" => FailedPrecondition,
    TooManyOpenAccounts = "TOO_MANY_OPEN_ACCOUNTS" => FailedPrecondition,
    CitizenNotActive = "CITIZEN_NOT_ACTIVE" => FailedPrecondition,
    CitizenNameUnknown = "CITIZEN_NAME_UNKNOWN" => FailedPrecondition,
    HolderNameMismatch = "HOLDER_NAME_MISMATCH" => FailedPrecondition,
    VersionMismatch = "VERSION_MISMATCH" => Aborted,
    IdempotencyKeyReused = "IDEMPOTENCY_KEY_REUSED" => AlreadyExists,
    PurposeRequired = "PURPOSE_REQUIRED" => InvalidArgument,
    TextInvalid = "TEXT_INVALID" => InvalidArgument,
    LegacyIdInvalid = "LEGACY_ID_INVALID" => InvalidArgument,
    LegacyIdTaken = "LEGACY_ID_TAKEN" => FailedPrecondition,
    SourceVersionInvalid = "SOURCE_VERSION_INVALID" => InvalidArgument,
    CitizenStatusInvalid = "CITIZEN_STATUS_INVALID" => InvalidArgument,
    DateInvalid = "DATE_INVALID" => InvalidArgument,
    SyncRecordMoved = "SYNC_RECORD_MOVED" => FailedPrecondition,
    WatchListRequired = "WATCH_LIST_REQUIRED" => FailedPrecondition,
    FeedPositionInvalid = "FEED_POSITION_INVALID" => InvalidArgument,
    FeedPositionPruned = "FEED_POSITION_PRUNED" => OutOfRange,
    ProvinceCodeInvalid = "PROVINCE_CODE_INVALID" => InvalidArgument,
    SyncDigestNotReady = "SYNC_DIGEST_NOT_READY" => Unavailable,
    AssertionNotAllowed = "ASSERTION_NOT_ALLOWED" => PermissionDenied,
    NotActingForCitizen = "NOT_ACTING_FOR_CITIZEN" => PermissionDenied,
    AsOfInFuture = "AS_OF_IN_FUTURE" => InvalidArgument,
    RequestMalformed = "REQUEST_MALFORMED" => InvalidArgument,
    RequestTooLarge = "REQUEST_TOO_LARGE" => ResourceExhausted,
    CredentialsMissing = "CREDENTIALS_MISSING" => Unauthenticated,
    CredentialsInvalid = "CREDENTIALS_INVALID" => Unauthenticated,
    CredentialsConflict = "CREDENTIALS_CONFLICT" => Unauthenticated,
    TokenRequiresTls = "TOKEN_REQUIRES_TLS" => Unauthenticated,
    ScopeMissing = "SCOPE_MISSING" => PermissionDenied,
    MethodNotOpen = "METHOD_NOT_OPEN" => PermissionDenied,
    RateLimited = "RATE_LIMITED" => ResourceExhausted,
    Overloaded = "OVERLOADED" => Unavailable,
    AccessLogUnavailable = "ACCESS_LOG_UNAVAILABLE" => Unavailable,
    ServiceUnavailable = "SERVICE_UNAVAILABLE" => Unavailable,
    Internal = "INTERNAL" => Internal,
    DatabaseUnavailable = "DATABASE_UNAVAILABLE" => Unavailable,
    DatabaseTimeout = "DATABASE_TIMEOUT" => Unavailable,
    DatabaseContention = "DATABASE_CONTENTION" => Unavailable,
    ShuttingDown = "SHUTTING_DOWN" => Unavailable,
    DeadlineExceeded = "DEADLINE_EXCEEDED" => DeadlineExceeded,
    ReservationNotAllowed = "RESERVATION_NOT_ALLOWED" => InvalidArgument,
    ReservationPeriodInvalid = "RESERVATION_PERIOD_INVALID" => InvalidArgument,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused request: what rule failed, on which field, explained in one sentence.
///
/// The message must never contain personal data in clear (citizen ids, account numbers):
/// it is logged and sent to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct Rejection {
    pub reason: Reason,
    /// The request field at fault (`citizen_id`, `account_ref`, ...), when there is one.
    pub field: Option<String>,
    pub message: String,
    /// More for `google.rpc.ErrorInfo.metadata` (a limit, the scopes required, ...);
    /// the field, when there is one, is added there too.
    pub metadata: Vec<(&'static str, String)>,
}

impl Rejection {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Rejection {
            reason,
            field: None,
            message: message.into(),
            metadata: Vec::new(),
        }
    }

    /// A refusal caused by one request field.
    pub fn field(reason: Reason, field: impl Into<String>, message: impl Into<String>) -> Self {
        Rejection {
            reason,
            field: Some(field.into()),
            message: message.into(),
            metadata: Vec::new(),
        }
    }

    /// An enum field holding a value this version of the API does not define: one reason
    /// and one wording for every enum.
    pub fn unknown_enum_value(field: impl Into<String>) -> Self {
        let field = field.into();
        let message = format!("{field} is not one of the values this version of the API defines");
        Rejection::field(Reason::EnumValueUnknown, field, message)
    }

    /// Adds `key: value` to the refusal's ErrorInfo metadata.
    pub fn with(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.metadata.push((key, value.into()));
        self
    }

    /// Re-targets a parser's error at the request field it was parsing, e.g.
    /// `request.account.citizen_id`.
    pub fn at(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn category(&self) -> Category {
        self.reason.category()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_strings_are_screaming_snake_case() {
        assert_eq!(
            Reason::CitizenIdInvalidProvince.as_str(),
            "CITIZEN_ID_INVALID_PROVINCE"
        );
        assert_eq!(
            Reason::AccountOwnedByAnotherCitizen.as_str(),
            "ACCOUNT_OWNED_BY_ANOTHER_CITIZEN"
        );
        assert_eq!(Reason::MsisdnInvalid.as_str(), "MSISDN_INVALID");
    }

    #[test]
    fn every_reason_string_is_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.as_str()), "duplicate reason {}", r.as_str());
        }
    }
}
