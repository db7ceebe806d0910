//! Errors in MongoDB's terms: a numeric code, its name, and a message.

use bson::Document;

/// A failed document operation, with the MongoDB error code a driver expects.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct DocError {
    /// MongoDB's error code (e.g. 2 BadValue, 9 FailedToParse, 11000 DuplicateKey).
    pub code: i32,
    pub message: String,
    /// Fields MongoDB adds to this error's reply beside `code` and
    /// `errmsg`, that drivers expose (a duplicate key's `keyPattern` and
    /// `keyValue`).
    pub info: Option<Box<Document>>,
}

/// MongoDB error codes used here.
pub mod codes {
    pub const BAD_VALUE: i32 = 2;
    pub const NO_SUCH_KEY: i32 = 4;
    pub const FAILED_TO_PARSE: i32 = 9;
    pub const UNAUTHORIZED: i32 = 13;
    pub const TYPE_MISMATCH: i32 = 14;
    pub const OVERFLOW: i32 = 15;
    pub const AUTHENTICATION_FAILED: i32 = 18;
    pub const ILLEGAL_OPERATION: i32 = 20;
    pub const NAMESPACE_NOT_FOUND: i32 = 26;
    pub const INDEX_NOT_FOUND: i32 = 27;
    pub const PATH_NOT_VIABLE: i32 = 28;
    pub const CONFLICTING_UPDATE_OPERATORS: i32 = 40;
    pub const CURSOR_NOT_FOUND: i32 = 43;
    pub const NAMESPACE_EXISTS: i32 = 48;
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
    pub const WRITE_CONFLICT: i32 = 112;
    pub const CONFLICTING_OPERATION: i32 = 117;
    pub const NO_SUCH_TRANSACTION: i32 = 251;
    pub const OPERATION_NOT_SUPPORTED_IN_TRANSACTION: i32 = 263;
    pub const TRANSACTION_TOO_LARGE: i32 = 257;
    pub const NOT_WRITABLE_PRIMARY: i32 = 10107;
    pub const DUPLICATE_KEY: i32 = 11000;
    /// A write that would grow its volume past the volume's quota.
    pub const OUT_OF_DISK_SPACE: i32 = 14031;
    pub const LOCATION_40352: i32 = 40352;
    pub const INTERNAL_ERROR: i32 = 1;
    pub const CHANGE_STREAM_HISTORY_LOST: i32 = 286;
}

impl DocError {
    pub fn new(code: i32, message: impl Into<String>) -> DocError {
        DocError {
            code,
            message: message.into(),
            info: None,
        }
    }

    /// This error with the extra reply fields `info`.
    pub fn with_info(mut self, info: Document) -> DocError {
        self.info = Some(Box::new(info));
        self
    }

    /// Code 2, BadValue.
    pub fn bad_value(message: impl Into<String>) -> DocError {
        DocError::new(codes::BAD_VALUE, message)
    }

    /// Code 1, InternalError: stored data that cannot be read.
    pub fn internal(message: impl Into<String>) -> DocError {
        DocError::new(codes::INTERNAL_ERROR, message)
    }

    /// Code 9, FailedToParse.
    pub fn parse(message: impl Into<String>) -> DocError {
        DocError::new(codes::FAILED_TO_PARSE, message)
    }

    /// The error code's name, as drivers show it in `codeName`.
    pub fn code_name(&self) -> &'static str {
        code_name(self.code)
    }
}

/// The `codeName` MongoDB reports for a code.
pub fn code_name(code: i32) -> &'static str {
    use codes::*;
    match code {
        BAD_VALUE => "BadValue",
        NO_SUCH_KEY => "NoSuchKey",
        FAILED_TO_PARSE => "FailedToParse",
        UNAUTHORIZED => "Unauthorized",
        TYPE_MISMATCH => "TypeMismatch",
        OVERFLOW => "Overflow",
        AUTHENTICATION_FAILED => "AuthenticationFailed",
        ILLEGAL_OPERATION => "IllegalOperation",
        NAMESPACE_NOT_FOUND => "NamespaceNotFound",
        INDEX_NOT_FOUND => "IndexNotFound",
        PATH_NOT_VIABLE => "PathNotViable",
        CONFLICTING_UPDATE_OPERATORS => "ConflictingUpdateOperators",
        CURSOR_NOT_FOUND => "CursorNotFound",
        NAMESPACE_EXISTS => "NamespaceExists",
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
        WRITE_CONFLICT => "WriteConflict",
        NOT_WRITABLE_PRIMARY => "NotWritablePrimary",
        DUPLICATE_KEY => "DuplicateKey",
        OUT_OF_DISK_SPACE => "OutOfDiskSpace",
        INTERNAL_ERROR => "InternalError",
        CHANGE_STREAM_HISTORY_LOST => "ChangeStreamHistoryLost",
        _ => "Location",
    }
}
