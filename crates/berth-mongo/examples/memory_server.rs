//! The gateway on a plaintext port over the tests' in-memory backend, for
//! trying real drivers by hand (user `alice`, password `secret`, SCRAM or
//! PLAIN): `cargo run -p berth-mongo --example memory_server [ADDR]`, then
//! e.g. `MongoClient("mongodb://alice:secret@127.0.0.1:27017/")`.

#[path = "../tests/it/memory.rs"]
mod memory;

use std::sync::Arc;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    // RUST_LOG=trace shows every request (command, compressor, flags).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "debug".into()),
        )
        .init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:27017".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("mongo gateway (in-memory backend) on {addr}");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    berth_mongo::serve(
        listener,
        None,
        Arc::new(memory::Memory::new()),
        berth_mongo::MongoConfig::default(),
        shutdown,
    )
    .await
}
