//! Bridges raft-rs's `slog` logs to `tracing` (target `raft`), so there is one log stream.

use std::fmt::{self, Write as _};

use slog::{Drain, Level, OwnedKVList, Record, KV};

/// A slog drain that forwards every record to `tracing`.
pub(crate) struct TracingDrain;

struct KvText(String);

impl slog::Serializer for KvText {
    fn emit_arguments(&mut self, key: slog::Key, val: &fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

fn enabled(level: Level) -> bool {
    match level {
        Level::Critical | Level::Error => tracing::enabled!(target: "raft", tracing::Level::ERROR),
        Level::Warning => tracing::enabled!(target: "raft", tracing::Level::WARN),
        Level::Info => tracing::enabled!(target: "raft", tracing::Level::INFO),
        Level::Debug => tracing::enabled!(target: "raft", tracing::Level::DEBUG),
        Level::Trace => tracing::enabled!(target: "raft", tracing::Level::TRACE),
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        let level = record.level();
        if !enabled(level) {
            return Ok(());
        }
        let mut kv = KvText(String::new());
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        let msg = record.msg();
        let kv = kv.0;
        match level {
            Level::Critical | Level::Error => tracing::error!(target: "raft", "{msg}{kv}"),
            Level::Warning => tracing::warn!(target: "raft", "{msg}{kv}"),
            Level::Info => tracing::info!(target: "raft", "{msg}{kv}"),
            Level::Debug => tracing::debug!(target: "raft", "{msg}{kv}"),
            Level::Trace => tracing::trace!(target: "raft", "{msg}{kv}"),
        }
        Ok(())
    }
}

/// The root logger handed to every raft group of a node.
pub(crate) fn root(node: u64) -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!("node" => node))
}

#[cfg(test)]
mod tests {
    #[test]
    fn slog_records_reach_tracing_without_panicking() {
        let log = super::root(7);
        slog::info!(log, "became leader"; "term" => 3);
        slog::debug!(log.new(slog::o!("shard" => 1)), "tick");
    }
}
