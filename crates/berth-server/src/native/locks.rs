//! `berth.v1.Locks`: advisory locks shared by every client of the cluster,
//! served from the in-memory table of `berth_fs::locks` (see there for the
//! semantics, sessions and leases). This file only translates.

use std::sync::Arc;

use berth_api::v1::locks_server::Locks as LocksApi;
use berth_api::v1::{
    Empty, HeldLock, LockKind as ApiKind, LockRequest, LockResponse, LockSession,
    LockSessionRequest, LockType as ApiType, ReleaseLocksRequest,
};
use berth_fs::locks::{ByteRange, Lock, LockArgs, LockKind, LockService, LockType};
use berth_meta::Error;
use tonic::{Request, Response, Status};

use super::Native;

pub struct LocksService {
    pub native: Arc<Native>,
    pub locks: Arc<LockService>,
}

fn kind(k: i32) -> Result<LockKind, Error> {
    match ApiKind::try_from(k) {
        Ok(ApiKind::Posix) => Ok(LockKind::Posix),
        Ok(ApiKind::Flock) => Ok(LockKind::Flock),
        Err(_) => Err(Error::invalid(format!("unknown lock kind {k}"))),
    }
}

/// The requested type; `None` = unlock.
fn typ(t: i32) -> Result<Option<LockType>, Error> {
    match ApiType::try_from(t) {
        Ok(ApiType::Read) => Ok(Some(LockType::Read)),
        Ok(ApiType::Write) => Ok(Some(LockType::Write)),
        Ok(ApiType::Unlock) => Ok(None),
        Ok(ApiType::Unspecified) | Err(_) => Err(Error::invalid(
            "a lock request needs a type: READ, WRITE or UNLOCK",
        )),
    }
}

fn args(r: LockRequest) -> Result<LockArgs, Error> {
    Ok(LockArgs {
        session: r.session,
        handle: r.handle,
        owner: r.owner,
        kind: kind(r.kind)?,
        typ: typ(r.r#type)?,
        range: ByteRange::from_len(r.start, r.length)?,
        pid: r.pid,
        wait: r.wait,
        wait_ms: u64::from(r.wait_ms),
    })
}

fn held(l: Lock) -> HeldLock {
    HeldLock {
        r#type: match l.typ {
            LockType::Read => ApiType::Read,
            LockType::Write => ApiType::Write,
        } as i32,
        start: l.range.start,
        length: l.range.length(),
        pid: l.pid,
        kind: match l.kind {
            LockKind::Posix => ApiKind::Posix,
            LockKind::Flock => ApiKind::Flock,
        } as i32,
    }
}

fn answer(conflict: Option<Lock>) -> LockResponse {
    LockResponse {
        granted: conflict.is_none(),
        conflict: conflict.map(held),
    }
}

#[tonic::async_trait]
impl LocksApi for LocksService {
    async fn open_session(&self, req: Request<Empty>) -> Result<Response<LockSession>, Status> {
        let l = &self.locks;
        self.native
            .call("Locks/OpenSession", req, |p, _| async move {
                let (session, lease_ms) = l.open_session(&p)?;
                Ok(LockSession { session, lease_ms })
            })
            .await
    }

    async fn renew(
        &self,
        req: Request<LockSessionRequest>,
    ) -> Result<Response<LockSession>, Status> {
        let l = &self.locks;
        self.native
            .call("Locks/Renew", req, |p, r| async move {
                let lease_ms = l.renew(&p, r.session)?;
                Ok(LockSession {
                    session: r.session,
                    lease_ms,
                })
            })
            .await
    }

    async fn close_session(
        &self,
        req: Request<LockSessionRequest>,
    ) -> Result<Response<Empty>, Status> {
        let l = &self.locks;
        self.native
            .call("Locks/CloseSession", req, |p, r| async move {
                l.close_session(&p, r.session).map(|_| Empty {})
            })
            .await
    }

    async fn set_lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let l = &self.locks;
        self.native
            .call("Locks/SetLock", req, |p, r| async move {
                let a = args(r)?;
                l.set(&p, &a).await.map(answer)
            })
            .await
    }

    async fn test_lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let l = &self.locks;
        self.native
            .call("Locks/TestLock", req, |p, r| async move {
                let a = args(r)?;
                l.test(&p, &a).map(answer)
            })
            .await
    }

    async fn release_locks(
        &self,
        req: Request<ReleaseLocksRequest>,
    ) -> Result<Response<Empty>, Status> {
        let l = &self.locks;
        self.native
            .call("Locks/ReleaseLocks", req, |p, r| async move {
                let k = kind(r.kind)?;
                l.release(&p, r.session, &r.handle, r.owner, k)
                    .map(|_| Empty {})
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_translate() {
        let a = args(LockRequest {
            session: 3,
            owner: 4,
            kind: ApiKind::Posix as i32,
            r#type: ApiType::Write as i32,
            start: 10,
            length: 0,
            wait: true,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            a.range,
            ByteRange {
                start: 10,
                end: u64::MAX
            }
        );
        assert_eq!(a.typ, Some(LockType::Write));
        let unlock = LockRequest {
            r#type: ApiType::Unlock as i32,
            kind: ApiKind::Flock as i32,
            length: 5,
            ..Default::default()
        };
        let a = args(unlock).unwrap();
        assert_eq!(
            (a.typ, a.kind, a.range.length()),
            (None, LockKind::Flock, 5)
        );
        let bad = LockRequest::default();
        assert!(args(bad).is_err(), "a type is required");
        let overflow = LockRequest {
            r#type: ApiType::Read as i32,
            start: u64::MAX,
            length: 2,
            ..Default::default()
        };
        assert!(args(overflow).is_err());
    }
}
