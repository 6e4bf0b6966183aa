//! `sochi`: build, push and inspect Seekable OCI indexes, mount images
//! lazily, and serve containerd as its snapshotter. Each command parses its
//! flags, calls the libraries (mostly `sochi-image` and `sochi-lazy`) and
//! prints what they report.
//!
//! Exit codes: 0 success, 1 failure, 2 usage error.

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod malloc;
mod output;
mod progress;

/// Seekable OCI (SOCI) in Rust: build SOCI indexes for container images and
/// inspect them.
#[derive(Debug, Parser)]
#[command(name = "sochi", version, about, long_about = None,
    after_help = "Exit status: 0 on success, 1 on failure, 2 on a usage error.")]
struct Cli {
    /// Root of sochi's local store (content store and artifacts database).
    #[arg(
        long,
        global = true,
        default_value = "/var/lib/sochi",
        env = "SOCHI_ROOT"
    )]
    root: PathBuf,

    /// Log level (error, warn, info, debug, trace) or a RUST_LOG-style filter.
    #[arg(long, global = true, default_value = "warn", env = "SOCHI_LOG")]
    log_level: String,

    #[command(flatten)]
    registry: cmd::RegistryArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build the SOCI index (v1) of an image and keep it in the local store.
    Create(cmd::create::Args),
    /// Make a SOCI-enabled image (SOCI index manifest v2) from an image.
    Convert(cmd::convert::Args),
    /// Push the v1 SOCI index of an image to its registry repository.
    Push(cmd::push::Args),
    /// Work with zTOCs.
    #[command(subcommand)]
    Ztoc(cmd::ztoc::Command),
    /// Work with SOCI indexes in the local store.
    #[command(subcommand)]
    Index(cmd::index::Command),
    /// Mount an image from a registry lazily (read-only; as root): the
    /// overlay of its layers, or one layer. A daemon serves it until
    /// `sochi unmount`.
    Mount(cmd::mount::Args),
    /// Unmount what `sochi mount` mounted and release its layers.
    Unmount(cmd::unmount::Args),
    /// Run the containerd remote snapshotter (gRPC on a unix socket).
    Snapshotter(cmd::snapshotter::Args),
    /// Pull an image into containerd lazily: each layer is offered to the
    /// snapshotter as a remote snapshot, the others are unpacked.
    Pull(cmd::pull::Args),
    /// Record load orders: which spans a real start of an image reads.
    #[command(subcommand)]
    LoadOrder(cmd::load_order::Command),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_level);
    if matches!(
        cli.command,
        Command::Mount(_) | Command::Snapshotter(_) | Command::LoadOrder(_)
    ) {
        malloc::fix_mmap_threshold();
    }
    let global = cmd::Global {
        root: cli.root,
        registry: cli.registry,
    };
    let result = match cli.command {
        Command::Create(args) => cmd::create::run(&global, args),
        Command::Convert(args) => cmd::convert::run(&global, args),
        Command::Push(args) => cmd::push::run(&global, args),
        Command::Ztoc(command) => cmd::ztoc::run(&global, command),
        Command::Index(command) => cmd::index::run(&global, command),
        Command::Mount(args) => cmd::mount::run(&global, args),
        Command::Unmount(args) => cmd::unmount::run(&global, args),
        Command::Snapshotter(args) => cmd::snapshotter::run(&global, args),
        Command::Pull(args) => cmd::pull::run(&global, args),
        Command::LoadOrder(command) => cmd::load_order::run(&global, command),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            if is_broken_pipe(&error) {
                return ExitCode::SUCCESS;
            }
            // Every error states its own fact, its causes follow: `{:#}` joins
            // them on one line.
            eprintln!("sochi: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn init_logging(level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
