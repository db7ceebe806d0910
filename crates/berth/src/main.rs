//! `berth`: the one binary of Berth. `berth server` runs a node; every other
//! subcommand is a client of the native API (through `berth-client`).
//!
//! Invariants: errors reach the user as one line, `error: <what>` on stderr,
//! exit code 1 (2 for usage errors, from clap) — never a backtrace or a
//! `Debug` dump; a ticket is written only to 0600 files, never to stdout.

mod acl;
mod auth;
mod bench;
mod bench_fs;
mod cli;
mod cp;
mod ctx;
mod fs;
mod mount;
mod mount_helper;
mod node;
mod output;
mod principals;
mod server;
mod snapshot;
mod status;
mod stream;
mod table;
mod volume;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::ctx::Ctx;

/// An error already printed to stderr (commands on several paths report each
/// failure as it happens); main only sets the exit code.
#[derive(Debug)]
pub struct Reported;

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("failed")
    }
}

impl std::error::Error for Reported {}

/// Prints an error the one way errors are printed: the error and its
/// causes on one line, skipping causes whose text is already shown (client
/// errors include their cause in their own text).
pub fn report(e: &anyhow::Error) {
    let mut text = String::new();
    for cause in e.chain() {
        let t = cause.to_string();
        if text.contains(&t) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&t);
    }
    eprintln!("error: {text}");
}

fn main() -> ExitCode {
    // One TLS crypto provider for the process (ring); with none installed,
    // rustls would have to guess. An error means one is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    std::panic::set_hook(Box::new(|info| {
        eprintln!("error: internal error (a bug in berth, please report it): {info}");
    }));

    // mount(8) remounting a Berth mount runs `berth SOURCE MOUNTPOINT -o …`.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if mount_helper::is_helper_call(&args) {
        return mount_helper::run(&args);
    }
    let cli = Cli::parse();
    let long_running = matches!(
        cli.command,
        Command::Server(_)
            | Command::Mount(_)
            | Command::ContainerRun(_)
            | Command::DockerPlugin(_)
    );
    if !long_running {
        // A client writing into a closed pipe (`berth ls | head`) ends quietly,
        // as coreutils do, instead of failing on every later print. Servers
        // and mounts keep Rust's default (ignored) so a vanished peer (a
        // restarted server's socket) is an error, not a death.
        // SAFETY: called before any thread is spawned; SIG_DFL is a valid
        // disposition for SIGPIPE.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if e.downcast_ref::<Reported>().is_none() {
                report(&e);
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = Ctx { global: cli.global };
    match cli.command {
        Command::Server(mut args) => {
            args.insecure = ctx.global.insecure;
            server::run(*args).await
        }
        Command::Login(args) => auth::login(&ctx, args).await,
        Command::Whoami => auth::whoami(&ctx).await,
        Command::Ticket(cmd) => auth::ticket(&ctx, cmd).await,
        Command::User(cmd) => principals::user(&ctx, cmd).await,
        Command::Group(cmd) => principals::group(&ctx, cmd).await,
        Command::Volume(cmd) => volume::volume(&ctx, cmd).await,
        Command::Snapshot(cmd) => snapshot::snapshot(&ctx, cmd).await,
        Command::Stream(cmd) => stream::stream(&ctx, cmd).await,
        Command::Table(cmd) => table::table(&ctx, cmd).await,
        Command::Ls(args) => fs::ls(&ctx, args).await,
        Command::Mkdir(args) => fs::mkdir(&ctx, args).await,
        Command::Rm(args) => fs::rm(&ctx, args).await,
        Command::Stat(args) => fs::stat(&ctx, args).await,
        Command::Mv(args) => fs::mv(&ctx, args).await,
        Command::Cp(args) => cp::cp(&ctx, args.recursive, &args.paths).await,
        Command::Touch(args) => fs::touch(&ctx, args).await,
        Command::Ln(args) => fs::ln(&ctx, args).await,
        Command::Chmod(args) => fs::chmod(&ctx, args).await,
        Command::Chown(args) => fs::chown(&ctx, args).await,
        Command::Acl(cmd) => acl::acl(&ctx, cmd).await,
        Command::Mount(args) => mount::mount(&ctx, args).await,
        Command::Umount(args) => mount::umount(args).await,
        Command::ContainerRun(args) => {
            std::process::exit(berth_container::container_run(args).await?)
        }
        Command::DockerPlugin(args) => berth_container::docker_plugin(args).await,
        Command::Status => status::status(&ctx).await,
        Command::Node(cmd) => node::node(&ctx, cmd).await,
        Command::Cluster(cmd) => node::cluster(&ctx, cmd).await,
        Command::Bench(cmd) => bench::bench(&ctx, cmd).await,
    }
}
