//! The one table from the native API's error codes to POSIX errno values,
//! and the bounded retry loop every call goes through.

use std::future::Future;
use std::time::{Duration, Instant};

use berth_client::ClientError;
use fuser::Errno;

/// Attempts per call (the first one included) before a transient failure
/// becomes EIO.
pub const ATTEMPTS_MAX: u32 = 5;
/// Time allowed for one attempt; a slower answer counts as transient.
pub const ATTEMPT_TIMEOUT_MS: u64 = 20_000;
/// First pause between attempts; doubles each time up to `BACKOFF_MAX_MS`.
pub const BACKOFF_FIRST_MS: u64 = 50;
/// Longest pause between attempts.
pub const BACKOFF_MAX_MS: u64 = 1_000;
/// No new attempt starts after this much time in one call.
pub const CALL_BUDGET_MS: u64 = 45_000;

/// What a failed call turns into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Fail the file system operation with this errno.
    Fail(Errno),
    /// Transient: the same request may succeed; retry (bounded), then EIO.
    Retry,
}

/// The table. `code` is the `x-berth-code` of the error or, when the server
/// sent none (transport failures, other servers), the gRPC code name, as
/// [`ClientError::code`] reports it.
pub fn classify(code: &str) -> Outcome {
    use Outcome::{Fail, Retry};
    match code {
        "ENOENT" | "NOT_FOUND" => Fail(Errno::ENOENT),
        "EEXIST" | "ALREADY_EXISTS" => Fail(Errno::EEXIST),
        "ENOTDIR" => Fail(Errno::ENOTDIR),
        "EISDIR" => Fail(Errno::EISDIR),
        "ENOTEMPTY" => Fail(Errno::ENOTEMPTY),
        "EACCES" | "PERMISSION_DENIED" => Fail(Errno::EACCES),
        "EPERM" => Fail(Errno::EPERM),
        "EXDEV" => Fail(Errno::EXDEV),
        "EINVAL" | "INVALID_ARGUMENT" | "OUT_OF_RANGE" => Fail(Errno::EINVAL),
        "EDQUOT" => Fail(Errno::EDQUOT),
        "EBUSY" => Fail(Errno::EBUSY),
        "ENAMETOOLONG" => Fail(Errno::ENAMETOOLONG),
        "ELOOP" => Fail(Errno::ELOOP),
        "ENODATA" => Fail(Errno::ENODATA),
        "E2BIG" => Fail(Errno::E2BIG),
        "ESTALE" => Fail(Errno::ESTALE),
        "ENOLCK" => Fail(Errno::ENOLCK),
        "EROFS" => Fail(Errno::EROFS),
        // An expired or rejected ticket: the caller may not do this.
        "EAUTH" | "UNAUTHENTICATED" => Fail(Errno::EACCES),
        "UNIMPLEMENTED" => Fail(Errno::ENOSYS),
        "EAGAIN" | "UNAVAILABLE" | "ABORTED" | "DEADLINE_EXCEEDED" => Retry,
        // EIO, INTERNAL, UNKNOWN, DATA_LOSS and anything newer than this table.
        _ => Fail(Errno::EIO),
    }
}

/// Pause before attempt `attempt` (1-based retry count).
fn backoff(attempt: u32) -> Duration {
    let ms = BACKOFF_FIRST_MS.saturating_mul(1 << attempt.min(16).saturating_sub(1));
    Duration::from_millis(ms.min(BACKOFF_MAX_MS))
}

/// Runs one API call with bounded retries of transient failures and maps
/// the final failure to an errno. `what` and `path` only label log lines.
///
/// Retrying is safe for reads and writes (same bytes at the same offset).
/// A retried namespace change whose first attempt was applied although its
/// answer was lost reports what the second attempt finds (e.g. EEXIST for a
/// mkdir): the same ambiguity NFS clients have.
pub async fn call<T, F, Fut>(what: &str, path: &str, mut f: F) -> Result<T, Errno>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let started = Instant::now();
    let mut attempt = 0u32;
    loop {
        let code = match tokio::time::timeout(Duration::from_millis(ATTEMPT_TIMEOUT_MS), f()).await
        {
            Ok(Ok(resp)) => return Ok(resp.into_inner()),
            Ok(Err(status)) => {
                let e = ClientError::from_status(status);
                match e.code() {
                    Some(code) => (code.to_string(), e.to_string()),
                    None => ("EIO".to_string(), e.to_string()),
                }
            }
            Err(_) => (
                "DEADLINE_EXCEEDED".to_string(),
                format!("no answer in {ATTEMPT_TIMEOUT_MS} ms"),
            ),
        };
        let (code, text) = code;
        match classify(&code) {
            Outcome::Fail(errno) => {
                if errno == Errno::EIO {
                    tracing::warn!(op = what, path, "{text}");
                } else {
                    tracing::debug!(op = what, path, "{text}");
                }
                return Err(errno);
            }
            Outcome::Retry => {
                attempt += 1;
                let pause = backoff(attempt);
                let spent = started.elapsed() + pause;
                if attempt >= ATTEMPTS_MAX || spent > Duration::from_millis(CALL_BUDGET_MS) {
                    tracing::warn!(
                        op = what,
                        path,
                        attempts = attempt,
                        "giving up (EIO): {text}"
                    );
                    return Err(Errno::EIO);
                }
                tracing::debug!(op = what, path, attempt, "retrying: {text}");
                tokio::time::sleep(pause).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn table() {
        let same = [
            ("ENOENT", libc::ENOENT),
            ("EEXIST", libc::EEXIST),
            ("ENOTDIR", libc::ENOTDIR),
            ("EISDIR", libc::EISDIR),
            ("ENOTEMPTY", libc::ENOTEMPTY),
            ("EACCES", libc::EACCES),
            ("EPERM", libc::EPERM),
            ("EXDEV", libc::EXDEV),
            ("EINVAL", libc::EINVAL),
            ("EDQUOT", libc::EDQUOT),
            ("EBUSY", libc::EBUSY),
            ("ENAMETOOLONG", libc::ENAMETOOLONG),
            ("ELOOP", libc::ELOOP),
            ("EIO", libc::EIO),
            ("ESTALE", libc::ESTALE),
            ("ENOLCK", libc::ENOLCK),
            ("EROFS", libc::EROFS),
        ];
        for (code, errno) in same {
            assert_eq!(
                classify(code),
                Outcome::Fail(Errno::from_i32(errno)),
                "{code}"
            );
        }
        assert_eq!(classify("EAUTH"), Outcome::Fail(Errno::EACCES));
        assert_eq!(classify("UNAUTHENTICATED"), Outcome::Fail(Errno::EACCES));
        assert_eq!(classify("UNIMPLEMENTED"), Outcome::Fail(Errno::ENOSYS));
        assert_eq!(classify("EAGAIN"), Outcome::Retry);
        assert_eq!(classify("UNAVAILABLE"), Outcome::Retry);
        assert_eq!(classify("INTERNAL"), Outcome::Fail(Errno::EIO));
        assert_eq!(classify("ESOMETHINGNEW"), Outcome::Fail(Errno::EIO));
        // gRPC names stand in when no Berth code came back.
        assert_eq!(classify("NOT_FOUND"), Outcome::Fail(Errno::ENOENT));
    }

    #[test]
    fn backoff_is_bounded() {
        assert_eq!(backoff(1), Duration::from_millis(BACKOFF_FIRST_MS));
        assert_eq!(backoff(2), Duration::from_millis(2 * BACKOFF_FIRST_MS));
        assert_eq!(backoff(40), Duration::from_millis(BACKOFF_MAX_MS));
        let total: u64 = (1..ATTEMPTS_MAX)
            .map(|a| backoff(a).as_millis() as u64)
            .sum();
        assert!(total < CALL_BUDGET_MS);
    }

    fn status(code: &str) -> tonic::Status {
        let mut s = tonic::Status::unavailable("m");
        s.metadata_mut()
            .insert(berth_api::CODE_METADATA, code.parse().unwrap());
        s
    }

    #[tokio::test]
    async fn transient_errors_retry_then_eio() {
        let n = AtomicU32::new(0);
        let r: Result<(), Errno> = call("t", "/x", || {
            n.fetch_add(1, Ordering::SeqCst);
            async { Err(status("EAGAIN")) }
        })
        .await;
        assert_eq!(r, Err(Errno::EIO));
        assert_eq!(n.load(Ordering::SeqCst), ATTEMPTS_MAX);
    }

    #[tokio::test]
    async fn transient_then_success() {
        let n = AtomicU32::new(0);
        let r = call("t", "/x", || {
            let i = n.fetch_add(1, Ordering::SeqCst);
            async move {
                if i < 2 {
                    Err(status("EAGAIN"))
                } else {
                    Ok(tonic::Response::new(7u32))
                }
            }
        })
        .await;
        assert_eq!(r, Ok(7));
    }

    #[tokio::test]
    async fn permanent_errors_do_not_retry() {
        let n = AtomicU32::new(0);
        let r: Result<(), Errno> = call("t", "/x", || {
            n.fetch_add(1, Ordering::SeqCst);
            async { Err(status("ENOTEMPTY")) }
        })
        .await;
        assert_eq!(r, Err(Errno::ENOTEMPTY));
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }
}
