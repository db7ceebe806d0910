//! The one error type of the client, and the one place where a gRPC status
//! becomes a Berth error.

use std::error::Error as _;

/// What went wrong talking to a Berth cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Configuration is missing or wrong; the text says what and how to fix it.
    #[error("{0}")]
    Config(String),

    /// No server in the list accepted a connection.
    #[error(
        "cannot connect to {addr}: {}; {}",
        chain(source),
        connect_hint(source)
    )]
    Connect {
        /// The server(s) tried, `host:port`.
        addr: String,
        /// The transport error of the last attempt.
        #[source]
        source: tonic::transport::Error,
    },

    /// The server answered with an error.
    #[error("{}", api_text(code, message))]
    Api {
        /// The `x-berth-code` of the error (`ENOENT`, ...) or, when the server
        /// sent none, the gRPC code name (`UNAVAILABLE`, ...).
        code: String,
        /// The server's message (usually the path or object concerned).
        message: String,
    },
}

impl ClientError {
    /// Turns a gRPC status into an [`ClientError::Api`]: the code is the
    /// `x-berth-code` metadata entry when present, else the gRPC code name.
    pub fn from_status(status: tonic::Status) -> ClientError {
        let berth_code = status
            .metadata()
            .get(berth_api::CODE_METADATA)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        // A connection that failed under the call (closed by a restarted
        // server, reset) gives no answer at all: that is an unavailable
        // server, which callers may retry, not an unknown error.
        let transport = status.code() == tonic::Code::Unknown
            && status
                .source()
                .is_some_and(|e| e.downcast_ref::<tonic::transport::Error>().is_some());
        let code = berth_code.unwrap_or_else(|| {
            if transport {
                "UNAVAILABLE".to_string()
            } else {
                grpc_code_name(status.code()).to_string()
            }
        });
        let mut message = status.message().to_string();
        if message.is_empty() && berth_code_description(&code).is_none() {
            // Transport-level failures carry their detail in the source chain.
            if let Some(source) = status.source() {
                message = source.to_string();
            }
        }
        ClientError::Api { code, message }
    }

    /// The symbolic code for [`ClientError::Api`] errors, e.g. `ENOENT`.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// True when the error is an API error with this code.
    pub fn is(&self, code: &str) -> bool {
        self.code() == Some(code)
    }
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        ClientError::from_status(status)
    }
}

/// Human description of a Berth error code, as `strerror` would say it.
pub fn berth_code_description(code: &str) -> Option<&'static str> {
    Some(match code {
        "ENOENT" => "no such file or directory",
        "EEXIST" => "file exists",
        "ENOTDIR" => "not a directory",
        "EISDIR" => "is a directory",
        "ENOTEMPTY" => "directory not empty",
        "EACCES" => "permission denied",
        "EXDEV" => "cross-volume link or rename",
        "EINVAL" => "invalid argument",
        "EDQUOT" => "quota exceeded",
        "EBUSY" => "resource busy",
        "EAUTH" => "authentication failed",
        "EAGAIN" => "try again",
        "EIO" => "input/output error",
        "EPERM" => "operation not permitted",
        "ENAMETOOLONG" => "file name too long",
        "ELOOP" => "too many levels of symbolic links",
        "ENODATA" => "no such attribute",
        "E2BIG" => "value too large",
        "ESTALE" => "stale: the server no longer knows it (e.g. a lost lock session)",
        "ENOLCK" => "no locks available",
        "EROFS" => "read-only (a snapshot or read-only mount)",
        "ERANGE" => "out of range (e.g. a stream offset outside the log)",
        "EBADMSG" => "malformed data",
        _ => return None,
    })
}

/// The canonical (upper snake case) name of a gRPC status code.
fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// "ENOENT: no such file or directory: /a/b". The description is skipped
/// when the server's message already starts with it.
fn api_text(code: &str, message: &str) -> String {
    let description = berth_code_description(code).or_else(|| grpc_description(code));
    let mut out = code.to_string();
    match description {
        Some(d) if !message.to_ascii_lowercase().starts_with(d) => {
            out.push_str(": ");
            out.push_str(d);
        }
        _ => {}
    }
    if !message.is_empty() {
        out.push_str(": ");
        out.push_str(message);
    }
    out
}

fn grpc_description(code: &str) -> Option<&'static str> {
    Some(match code {
        "UNAVAILABLE" => "server unavailable",
        "DEADLINE_EXCEEDED" => "deadline exceeded",
        "UNAUTHENTICATED" => "not authenticated",
        "PERMISSION_DENIED" => "permission denied",
        "UNIMPLEMENTED" => "not implemented by this server",
        "INTERNAL" => "internal server error",
        _ => return None,
    })
}

/// What to check, judged from the transport error's text.
fn connect_hint(e: &tonic::transport::Error) -> &'static str {
    let text = chain(e).to_ascii_lowercase();
    let tls_words = [
        "certificate",
        "tls",
        "handshake",
        "corrupt message",
        "issuer",
        "notvalidforname",
    ];
    if tls_words.iter().any(|w| text.contains(w)) {
        "is the CA file (BERTH_CA_FILE / --ca-file) the cluster's <data-dir>/tls/ca.crt, \
         does the server's certificate name this host (server --advertise), \
         and does the server speak TLS (not --insecure)?"
    } else {
        "is the server running and listening on that address (BERTH_SERVERS / --servers)?"
    }
}

/// An error and its sources, joined with ": " (tonic's transport error says
/// only "transport error"; the cause is further down).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    let mut depth = 0;
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
        depth += 1;
        if depth >= 8 {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    fn status_with_code(code: tonic::Code, msg: &str, berth: &str) -> tonic::Status {
        let mut s = tonic::Status::new(code, msg);
        s.metadata_mut().insert(
            berth_api::CODE_METADATA,
            MetadataValue::try_from(berth).unwrap(),
        );
        s
    }

    #[test]
    fn berth_code_wins_over_grpc_code() {
        let e = ClientError::from_status(status_with_code(tonic::Code::NotFound, "/a/b", "ENOENT"));
        assert!(e.is("ENOENT"));
        assert_eq!(e.to_string(), "ENOENT: no such file or directory: /a/b");
    }

    #[test]
    fn grpc_code_name_when_no_berth_code() {
        let e = ClientError::from_status(tonic::Status::unavailable("node is starting"));
        assert_eq!(e.code(), Some("UNAVAILABLE"));
        assert_eq!(
            e.to_string(),
            "UNAVAILABLE: server unavailable: node is starting"
        );
    }

    #[test]
    fn description_not_repeated() {
        let e = ClientError::from_status(status_with_code(
            tonic::Code::AlreadyExists,
            "file exists: /x",
            "EEXIST",
        ));
        assert_eq!(e.to_string(), "EEXIST: file exists: /x");
    }

    #[test]
    fn empty_message_and_unknown_code() {
        let e = ClientError::from_status(status_with_code(tonic::Code::Unknown, "", "EWHATEVER"));
        assert_eq!(e.to_string(), "EWHATEVER");
        let e = ClientError::from_status(status_with_code(tonic::Code::Unknown, "", "EACCES"));
        assert_eq!(e.to_string(), "EACCES: permission denied");
    }

    #[test]
    fn blank_berth_code_falls_back() {
        let e =
            ClientError::from_status(status_with_code(tonic::Code::InvalidArgument, "bad", " "));
        assert_eq!(e.code(), Some("INVALID_ARGUMENT"));
        assert_eq!(e.to_string(), "INVALID_ARGUMENT: bad");
    }
}
