//! The native gRPC gateway (`berth.v1`): authenticates each call's ticket,
//! hands the resulting `Principal` to the services, and translates results
//! and errors. It decides nothing itself.

pub mod cluster;
pub mod errors;
pub mod files;
pub mod inodes;
pub mod locks;
pub mod namespace;
pub mod node_admin;
pub mod raft;
pub mod security;
mod streams;
mod tables;
pub mod volumes;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use berth_api::AUTH_METADATA;
use berth_fs::Namespace;
use berth_meta::{Code, Error, Meta};
use berth_raft::RaftNode;
use berth_security::principal::Principal;
use tonic::{Request, Response, Status};

use crate::metrics::RequestMetrics;

/// Shared state of every native service.
pub struct Native {
    pub meta: Arc<Meta>,
    pub ns: Arc<Namespace>,
    pub raft: RaftNode,
    pub metrics: Arc<RequestMetrics>,
    pub node_id: u64,
    /// Turns true once the node has loaded its shards and cluster map.
    /// Calls arriving earlier wait for it (bounded) instead of failing.
    pub ready: tokio::sync::watch::Receiver<bool>,
    /// The placement driver's view (from the meta leader), for operators.
    pub placement: Arc<node_admin::Placement>,
    /// Set while the node has joined a cluster but holds no replica of the
    /// cluster map yet: calls fail at once instead of waiting.
    pub awaiting_replicas: std::sync::atomic::AtomicBool,
}

/// Longest a call waits for a starting node to become ready.
pub const READY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Extracts the bearer ticket from a request's metadata.
pub fn bearer<T>(req: &Request<T>) -> Result<&str, Error> {
    let v = req.metadata().get(AUTH_METADATA).ok_or_else(|| {
        Error::new(
            Code::Auth,
            "no ticket: send `authorization: Bearer <ticket>` (berth CLI: set BERTH_TICKET_FILE or run `berth login`)",
        )
    })?;
    let v = v.to_str().map_err(|_| {
        Error::new(
            Code::Auth,
            "the authorization metadata is not printable text",
        )
    })?;
    v.strip_prefix("Bearer ").map(str::trim).ok_or_else(|| {
        Error::new(
            Code::Auth,
            "the authorization metadata must read `Bearer <ticket>`",
        )
    })
}

impl Native {
    pub fn authenticate<T>(&self, req: &Request<T>) -> Result<Principal, Error> {
        self.meta.authenticate(bearer(req)?)
    }

    /// Runs one authenticated call: verifies the ticket, runs `f` with the
    /// principal, records metrics, logs denials, maps errors.
    pub async fn call<T, R, F, Fut>(
        &self,
        method: &'static str,
        req: Request<T>,
        f: F,
    ) -> Result<Response<R>, Status>
    where
        F: FnOnce(Principal, T) -> Fut,
        Fut: Future<Output = Result<R, Error>>,
    {
        let started = Instant::now();
        if let Err(e) = self.wait_ready().await {
            return self.finish(method, started, Err(e));
        }
        let result = match self.authenticate(&req) {
            Ok(p) => {
                let who = p.name.clone();
                let r = f(p, req.into_inner()).await;
                if let Err(e) = &r {
                    if matches!(e.code, Code::Access | Code::Perm) {
                        tracing::info!(target: "audit", method, principal = %who, reason = %e.message, "denied");
                    }
                }
                r
            }
            Err(e) => {
                tracing::info!(target: "audit", method, reason = %e.message, "unauthenticated");
                Err(e)
            }
        };
        self.finish(method, started, result)
    }

    /// Waits until the node serves requests (bounded by [`READY_WAIT`]).
    pub async fn wait_ready(&self) -> Result<(), Error> {
        if *self.ready.borrow() {
            return Ok(());
        }
        if self
            .awaiting_replicas
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(Error::new(
                Code::Again,
                format!(
                    "node {} has joined the cluster but holds no replicas yet: send requests to \
                     another node of the cluster",
                    self.node_id
                ),
            ));
        }
        let mut ready = self.ready.clone();
        let became_ready = tokio::time::timeout(READY_WAIT, ready.wait_for(|r| *r))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false);
        if became_ready {
            Ok(())
        } else {
            Err(Error::new(
                Code::Again,
                "this node is still starting; retry",
            ))
        }
    }

    /// Records and converts a result (also for calls without a ticket).
    pub fn finish<R>(
        &self,
        method: &'static str,
        started: Instant,
        result: Result<R, Error>,
    ) -> Result<Response<R>, Status> {
        let code = match &result {
            Ok(_) => "OK",
            Err(e) => e.code.symbol(),
        };
        self.metrics.record(method, code, started.elapsed());
        result.map(Response::new).map_err(|e| self.status_of(&e))
    }

    /// The status of a failed call; a refusal naming the node that serves
    /// the request ([`Error::redirect`]) carries that node's native address
    /// from the cluster map, so the client goes straight there.
    pub fn status_of(&self, e: &Error) -> Status {
        let addr = e
            .redirect
            .filter(|n| *n != self.node_id)
            .and_then(|n| {
                let map = self.meta.map();
                map.nodes
                    .iter()
                    .find(|x| x.id == n)
                    .map(|x| x.native_addr.clone())
            })
            .filter(|a| !a.is_empty());
        errors::to_status_at(e, addr.as_deref())
    }
}

pub use cluster::ClusterService;
pub use files::FilesService;
pub use inodes::InodesService;
pub use locks::LocksService;
pub use namespace::NamespaceService;
pub use raft::{
    Authenticator, GrpcTransport, MetaDirectory, PeerAuth, PeerDirectory, RaftService,
    RAFT_BATCH_BYTES_MAX, SNAPSHOT_RATE_DEFAULT,
};
pub use security::SecurityService;
pub use streams::StreamsService;
pub use tables::TablesService;
pub use volumes::VolumesService;
