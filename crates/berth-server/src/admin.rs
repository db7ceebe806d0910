//! The admin HTTP listener: `/health` and `/metrics` (Prometheus text).
//!
//! Both answer without a ticket: they expose no data, only liveness and
//! counters, and monitoring systems scrape them unauthenticated. The
//! listener speaks TLS (with the node certificate) unless the node runs
//! `--insecure`. The REST API and web console will live here and will
//! require tickets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use berth_meta::map::{META_SHARD, ROOT_SHARD};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::Node;

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(node)
}

async fn health(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let raft = &node.native.raft;
    let meta_ok = raft.leader(META_SHARD).is_some();
    let root_ok = raft.leader(ROOT_SHARD).is_some();
    let body = serde_json::json!({
        "status": if meta_ok && root_ok { "ok" } else { "degraded" },
        "node": node.native.node_id,
        "cluster": node.native.meta.map().cluster_name(),
        "meta_shard_leader": raft.leader(META_SHARD),
        "root_shard_leader": raft.leader(ROOT_SHARD),
        "version": env!("CARGO_PKG_VERSION"),
    });
    let code = if meta_ok && root_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body))
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let text = crate::metrics::render(&node.native.metrics, &node.native.raft, &node.store);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// A TCP listener that completes a TLS handshake before handing out a
/// connection. Failed handshakes are logged and skipped.
pub struct TlsListener {
    pub tcp: TcpListener,
    pub acceptor: TlsAcceptor,
}

/// Longest a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (tcp, addr) = match self.tcp.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => return (tls, addr),
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "admin TLS handshake failed"),
                Err(_) => tracing::debug!(%addr, "admin TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
