//! MongoDB's error codes: the one table from a code to the `codeName`
//! drivers show, and [`MongoError`], the error every backend call and
//! command answers with. Codes are MongoDB's own (stable, never reused by
//! MongoDB); the gateway invents none.

use std::borrow::Cow;

/// A failed command or write, in MongoDB's terms: the code a driver acts
/// on and a message for people. Sent as `{ok: 0, errmsg, code, codeName}`
/// (or as one entry of `writeErrors`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct MongoError {
    pub code: i32,
    pub message: String,
    /// Fields the reply carries beside `code`, `errmsg` and `codeName`
    /// (a duplicate key's `keyPattern` and `keyValue`), in its error
    /// document or its `writeErrors` entry.
    pub info: Option<Box<bson::Document>>,
}

impl MongoError {
    pub fn new(code: i32, message: impl Into<String>) -> MongoError {
        MongoError {
            code,
            message: message.into(),
            info: None,
        }
    }

    /// This error with the extra reply fields `info`.
    pub fn with_info(mut self, info: bson::Document) -> MongoError {
        self.info = Some(Box::new(info));
        self
    }

    /// The `codeName` of [`MongoError::code`].
    pub fn code_name(&self) -> Cow<'static, str> {
        code_name(self.code)
    }

    pub fn bad_value(message: impl Into<String>) -> MongoError {
        MongoError::new(BAD_VALUE, message)
    }

    pub fn failed_to_parse(message: impl Into<String>) -> MongoError {
        MongoError::new(FAILED_TO_PARSE, message)
    }

    pub fn type_mismatch(message: impl Into<String>) -> MongoError {
        MongoError::new(TYPE_MISMATCH, message)
    }

    pub fn internal(message: impl Into<String>) -> MongoError {
        MongoError::new(INTERNAL_ERROR, message)
    }
}

pub const INTERNAL_ERROR: i32 = 1;
pub const INVALID_RESUME_TOKEN: i32 = 260;
pub const CHANGE_STREAM_FATAL_ERROR: i32 = 280;
pub const CHANGE_STREAM_HISTORY_LOST: i32 = 286;
pub const BAD_VALUE: i32 = 2;
pub const NO_SUCH_KEY: i32 = 4;
pub const FAILED_TO_PARSE: i32 = 9;
pub const USER_NOT_FOUND: i32 = 11;
pub const UNAUTHORIZED: i32 = 13;
pub const TYPE_MISMATCH: i32 = 14;
pub const OVERFLOW: i32 = 15;
pub const INVALID_LENGTH: i32 = 16;
pub const PROTOCOL_ERROR: i32 = 17;
pub const AUTHENTICATION_FAILED: i32 = 18;
pub const ILLEGAL_OPERATION: i32 = 20;
pub const INVALID_BSON: i32 = 22;
pub const NAMESPACE_NOT_FOUND: i32 = 26;
pub const INDEX_NOT_FOUND: i32 = 27;
pub const PATH_NOT_VIABLE: i32 = 28;
pub const CONFLICTING_UPDATE_OPERATORS: i32 = 40;
pub const CURSOR_NOT_FOUND: i32 = 43;
pub const NAMESPACE_EXISTS: i32 = 48;
pub const MAX_TIME_MS_EXPIRED: i32 = 50;
pub const DOLLAR_PREFIXED_FIELD_NAME: i32 = 52;
pub const INVALID_ID_FIELD: i32 = 53;
pub const NOT_SINGLE_VALUE_FIELD: i32 = 54;
pub const EMPTY_FIELD_NAME: i32 = 56;
pub const COMMAND_NOT_FOUND: i32 = 59;
pub const IMMUTABLE_FIELD: i32 = 66;
pub const INVALID_OPTIONS: i32 = 72;
pub const INVALID_NAMESPACE: i32 = 73;
pub const INDEX_OPTIONS_CONFLICT: i32 = 85;
pub const INDEX_KEY_SPECS_CONFLICT: i32 = 86;
pub const OPERATION_FAILED: i32 = 96;
pub const COMMAND_NOT_SUPPORTED: i32 = 115;
pub const DOCUMENT_VALIDATION_FAILURE: i32 = 121;
pub const WRITE_CONFLICT: i32 = 112;
pub const CONFLICTING_OPERATION_IN_PROGRESS: i32 = 117;
pub const TRANSACTION_TOO_OLD: i32 = 225;
pub const NO_SUCH_TRANSACTION: i32 = 251;
pub const TRANSACTION_COMMITTED: i32 = 256;
pub const TRANSACTION_TOO_LARGE: i32 = 257;
pub const OPERATION_NOT_SUPPORTED_IN_TRANSACTION: i32 = 263;
pub const MECHANISM_UNAVAILABLE: i32 = 334;
pub const UNSUPPORTED_OP_QUERY_COMMAND: i32 = 352;
pub const NOT_WRITABLE_PRIMARY: i32 = 10107;
pub const BSON_OBJECT_TOO_LARGE: i32 = 10334;
pub const DUPLICATE_KEY: i32 = 11000;
/// A write that would grow its volume past the volume's quota.
pub const OUT_OF_DISK_SPACE: i32 = 14031;
/// IDL parsers' unknown field ("BSON field 'x.y' is an unknown field.").
pub const UNKNOWN_FIELD: i32 = 40415;
pub const INTERRUPTED_AT_SHUTDOWN: i32 = 11600;

/// The `codeName` MongoDB reports for `code`; codes without a name are
/// reported as MongoDB does for its numbered assertions, `Location<code>`.
pub fn code_name(code: i32) -> Cow<'static, str> {
    let name = match code {
        0 => "OK",
        INTERNAL_ERROR => "InternalError",
        BAD_VALUE => "BadValue",
        NO_SUCH_KEY => "NoSuchKey",
        FAILED_TO_PARSE => "FailedToParse",
        USER_NOT_FOUND => "UserNotFound",
        UNAUTHORIZED => "Unauthorized",
        TYPE_MISMATCH => "TypeMismatch",
        OVERFLOW => "Overflow",
        INVALID_LENGTH => "InvalidLength",
        PROTOCOL_ERROR => "ProtocolError",
        AUTHENTICATION_FAILED => "AuthenticationFailed",
        ILLEGAL_OPERATION => "IllegalOperation",
        INVALID_BSON => "InvalidBSON",
        NAMESPACE_NOT_FOUND => "NamespaceNotFound",
        INDEX_NOT_FOUND => "IndexNotFound",
        PATH_NOT_VIABLE => "PathNotViable",
        CONFLICTING_UPDATE_OPERATORS => "ConflictingUpdateOperators",
        CURSOR_NOT_FOUND => "CursorNotFound",
        NAMESPACE_EXISTS => "NamespaceExists",
        MAX_TIME_MS_EXPIRED => "MaxTimeMSExpired",
        DOLLAR_PREFIXED_FIELD_NAME => "DollarPrefixedFieldName",
        INVALID_ID_FIELD => "InvalidIdField",
        NOT_SINGLE_VALUE_FIELD => "NotSingleValueField",
        EMPTY_FIELD_NAME => "EmptyFieldName",
        COMMAND_NOT_FOUND => "CommandNotFound",
        IMMUTABLE_FIELD => "ImmutableField",
        INVALID_OPTIONS => "InvalidOptions",
        INVALID_NAMESPACE => "InvalidNamespace",
        INDEX_OPTIONS_CONFLICT => "IndexOptionsConflict",
        INDEX_KEY_SPECS_CONFLICT => "IndexKeySpecsConflict",
        OPERATION_FAILED => "OperationFailed",
        COMMAND_NOT_SUPPORTED => "CommandNotSupported",
        DOCUMENT_VALIDATION_FAILURE => "DocumentValidationFailure",
        WRITE_CONFLICT => "WriteConflict",
        CONFLICTING_OPERATION_IN_PROGRESS => "ConflictingOperationInProgress",
        TRANSACTION_TOO_OLD => "TransactionTooOld",
        NO_SUCH_TRANSACTION => "NoSuchTransaction",
        TRANSACTION_COMMITTED => "TransactionCommitted",
        TRANSACTION_TOO_LARGE => "TransactionTooLarge",
        OPERATION_NOT_SUPPORTED_IN_TRANSACTION => "OperationNotSupportedInTransaction",
        MECHANISM_UNAVAILABLE => "MechanismUnavailable",
        UNSUPPORTED_OP_QUERY_COMMAND => "UnsupportedOpQueryCommand",
        NOT_WRITABLE_PRIMARY => "NotWritablePrimary",
        BSON_OBJECT_TOO_LARGE => "BSONObjectTooLarge",
        DUPLICATE_KEY => "DuplicateKey",
        OUT_OF_DISK_SPACE => "OutOfDiskSpace",
        INTERRUPTED_AT_SHUTDOWN => "InterruptedAtShutdown",
        INVALID_RESUME_TOKEN => "InvalidResumeToken",
        CHANGE_STREAM_FATAL_ERROR => "ChangeStreamFatalError",
        CHANGE_STREAM_HISTORY_LOST => "ChangeStreamHistoryLost",
        other => return Cow::Owned(format!("Location{other}")),
    };
    Cow::Borrowed(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names drivers match on, as MongoDB spells them.
    #[test]
    fn code_names() {
        let table = [
            (1, "InternalError"),
            (2, "BadValue"),
            (9, "FailedToParse"),
            (13, "Unauthorized"),
            (17, "ProtocolError"),
            (18, "AuthenticationFailed"),
            (20, "IllegalOperation"),
            (26, "NamespaceNotFound"),
            (43, "CursorNotFound"),
            (48, "NamespaceExists"),
            (50, "MaxTimeMSExpired"),
            (59, "CommandNotFound"),
            (334, "MechanismUnavailable"),
            (11000, "DuplicateKey"),
            (14031, "OutOfDiskSpace"),
            (260, "InvalidResumeToken"),
            (286, "ChangeStreamHistoryLost"),
        ];
        for (code, name) in table {
            assert_eq!(code_name(code), name, "{code}");
        }
        assert_eq!(code_name(40415), "Location40415");
        let e = MongoError::new(DUPLICATE_KEY, "E11000 duplicate key");
        assert_eq!(e.code_name(), "DuplicateKey");
        assert_eq!(e.to_string(), "E11000 duplicate key (code 11000)");
    }

    /// Every named constant has its own name (none falls through to
    /// `Location`), and no two codes share a name.
    #[test]
    fn every_code_is_named_once() {
        let codes = [
            INTERNAL_ERROR,
            BAD_VALUE,
            NO_SUCH_KEY,
            FAILED_TO_PARSE,
            USER_NOT_FOUND,
            UNAUTHORIZED,
            TYPE_MISMATCH,
            OVERFLOW,
            INVALID_LENGTH,
            PROTOCOL_ERROR,
            AUTHENTICATION_FAILED,
            ILLEGAL_OPERATION,
            INVALID_BSON,
            NAMESPACE_NOT_FOUND,
            INDEX_NOT_FOUND,
            PATH_NOT_VIABLE,
            CONFLICTING_UPDATE_OPERATORS,
            CURSOR_NOT_FOUND,
            NAMESPACE_EXISTS,
            MAX_TIME_MS_EXPIRED,
            DOLLAR_PREFIXED_FIELD_NAME,
            INVALID_ID_FIELD,
            NOT_SINGLE_VALUE_FIELD,
            EMPTY_FIELD_NAME,
            COMMAND_NOT_FOUND,
            IMMUTABLE_FIELD,
            INVALID_OPTIONS,
            INVALID_NAMESPACE,
            INDEX_OPTIONS_CONFLICT,
            INDEX_KEY_SPECS_CONFLICT,
            OPERATION_FAILED,
            COMMAND_NOT_SUPPORTED,
            DOCUMENT_VALIDATION_FAILURE,
            WRITE_CONFLICT,
            CONFLICTING_OPERATION_IN_PROGRESS,
            TRANSACTION_TOO_OLD,
            NO_SUCH_TRANSACTION,
            TRANSACTION_COMMITTED,
            TRANSACTION_TOO_LARGE,
            OPERATION_NOT_SUPPORTED_IN_TRANSACTION,
            MECHANISM_UNAVAILABLE,
            UNSUPPORTED_OP_QUERY_COMMAND,
            NOT_WRITABLE_PRIMARY,
            BSON_OBJECT_TOO_LARGE,
            DUPLICATE_KEY,
            OUT_OF_DISK_SPACE,
            INTERRUPTED_AT_SHUTDOWN,
        ];
        let mut names = std::collections::HashSet::new();
        for code in codes {
            let name = code_name(code);
            assert!(!name.starts_with("Location"), "{code}");
            assert!(names.insert(name), "{code}");
        }
    }
}
