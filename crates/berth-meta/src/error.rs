//! The one error type of the cluster layer and the services above it.
//!
//! Every failure carries a stable [`Code`]. Gateways translate codes into their
//! protocol's terms in one table each (the native API: gRPC status plus the
//! symbolic code in `x-berth-code`; the FUSE mount: errno). A code, once
//! published, keeps its meaning forever.

use berth_raft::{NodeId, RaftError};

/// Stable error codes, named after the POSIX errno they map to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// ENOENT: the path or record does not exist.
    NotFound,
    /// EEXIST: the path or record already exists.
    Exists,
    /// ENOTDIR: a path component is not a directory.
    NotDir,
    /// EISDIR: the operation needs a non-directory.
    IsDir,
    /// ENOTEMPTY: the directory or volume still holds entries.
    NotEmpty,
    /// EACCES: denied by mode bits, an ACE or the ticket's scope.
    Access,
    /// EPERM: only the owner or an administrator may do this.
    Perm,
    /// EXDEV: the operation would cross volumes.
    CrossVolume,
    /// EINVAL: malformed argument.
    Invalid,
    /// EDQUOT: the volume quota is exhausted.
    Quota,
    /// EBUSY: the entry is in use (e.g. a volume mount point).
    Busy,
    /// EAUTH: no, or an invalid, credential.
    Auth,
    /// EAGAIN: transient; retrying the same request may succeed.
    Again,
    /// EIO: storage or internal failure.
    Io,
    /// ENAMETOOLONG: a name exceeds 255 bytes or a path 4096.
    NameTooLong,
    /// ELOOP: too many symbolic links or a rename into its own subtree.
    Loop,
    /// ENODATA: no such extended attribute.
    NoData,
    /// E2BIG: a value (e.g. an extended attribute) is too large.
    TooBig,
    /// ESTALE: the server no longer knows what the request names (a lock
    /// session lost to a server restart or an expired lease).
    Stale,
    /// ENOLCK: the lock table (or the caller's share of it) is full.
    NoLocks,
    /// EROFS: the entry is read-only (a snapshot, a read-only mount).
    ReadOnly,
    /// ERANGE: a position outside what exists (a stream offset before the
    /// log start or past its end).
    Range,
    /// EBADMSG: malformed data (a record batch that fails its checks).
    BadMessage,
}

impl Code {
    /// The symbolic name sent on the wire (`x-berth-code`).
    pub fn symbol(self) -> &'static str {
        match self {
            Code::NotFound => "ENOENT",
            Code::Exists => "EEXIST",
            Code::NotDir => "ENOTDIR",
            Code::IsDir => "EISDIR",
            Code::NotEmpty => "ENOTEMPTY",
            Code::Access => "EACCES",
            Code::Perm => "EPERM",
            Code::CrossVolume => "EXDEV",
            Code::Invalid => "EINVAL",
            Code::Quota => "EDQUOT",
            Code::Busy => "EBUSY",
            Code::Auth => "EAUTH",
            Code::Again => "EAGAIN",
            Code::Io => "EIO",
            Code::NameTooLong => "ENAMETOOLONG",
            Code::Loop => "ELOOP",
            Code::NoData => "ENODATA",
            Code::TooBig => "E2BIG",
            Code::Stale => "ESTALE",
            Code::NoLocks => "ENOLCK",
            Code::ReadOnly => "EROFS",
            Code::Range => "ERANGE",
            Code::BadMessage => "EBADMSG",
        }
    }

    /// Parses a symbol produced by [`Code::symbol`].
    pub fn from_symbol(s: &str) -> Option<Code> {
        ALL.iter().copied().find(|c| c.symbol() == s)
    }

    /// Whether retrying the identical request may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, Code::Again)
    }
}

/// Every code, for tables and tests.
pub const ALL: [Code; 23] = [
    Code::NotFound,
    Code::Exists,
    Code::NotDir,
    Code::IsDir,
    Code::NotEmpty,
    Code::Access,
    Code::Perm,
    Code::CrossVolume,
    Code::Invalid,
    Code::Quota,
    Code::Busy,
    Code::Auth,
    Code::Again,
    Code::Io,
    Code::NameTooLong,
    Code::Loop,
    Code::NoData,
    Code::TooBig,
    Code::Stale,
    Code::NoLocks,
    Code::ReadOnly,
    Code::Range,
    Code::BadMessage,
];

/// A failure with a stable code and a message for humans.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{message}")]
pub struct Error {
    pub code: Code,
    pub message: String,
    /// The node to send the request to instead: set only on a retryable
    /// refusal made before anything was done (this node holds no replica of
    /// the shard, or does not hold what the call needs), so a client may
    /// repeat any request there. Gateways tell their clients where that node
    /// is (the native API: its address in `x-berth-leader`).
    pub redirect: Option<NodeId>,
}

impl Error {
    pub fn new(code: Code, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
            redirect: None,
        }
    }
    /// A retryable refusal made before anything was done: `node` serves the
    /// request (see [`Error::redirect`]).
    pub fn elsewhere(node: NodeId, message: impl Into<String>) -> Error {
        Error {
            code: Code::Again,
            message: message.into(),
            redirect: Some(node),
        }
    }
    pub fn not_found(what: impl std::fmt::Display) -> Error {
        Error::new(Code::NotFound, format!("no such file or directory: {what}"))
    }
    pub fn exists(what: impl std::fmt::Display) -> Error {
        Error::new(Code::Exists, format!("already exists: {what}"))
    }
    pub fn invalid(message: impl Into<String>) -> Error {
        Error::new(Code::Invalid, message)
    }
    pub fn access(message: impl Into<String>) -> Error {
        Error::new(Code::Access, message)
    }
    pub fn corrupt(message: impl Into<String>) -> Error {
        Error::new(Code::Io, format!("corrupt record: {}", message.into()))
    }
}

impl From<RaftError> for Error {
    fn from(e: RaftError) -> Error {
        let code = if e.is_retryable() {
            Code::Again
        } else {
            Code::Io
        };
        // Never a redirect: a proposal that failed NotLeader may still be
        // committed by the next leader, so it must not be sent again there.
        // Only refusals made before anything was done name a node.
        Error::new(code, format!("replication: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_redirect() {
        let e = Error::elsewhere(3, "shard 9 is led by node 3");
        assert_eq!((e.code, e.redirect), (Code::Again, Some(3)));
        assert!(e.code.is_retryable());
        assert_eq!(Error::new(Code::Again, "x").redirect, None);
        assert_eq!(Error::from(RaftError::Timeout).redirect, None);
    }

    #[test]
    fn symbols_are_unique_and_parse_back() {
        let mut seen = std::collections::HashSet::new();
        for c in ALL {
            assert!(seen.insert(c.symbol()), "duplicate symbol {}", c.symbol());
            assert_eq!(Code::from_symbol(c.symbol()), Some(c));
        }
        assert_eq!(Code::from_symbol("nope"), None);
    }
}
