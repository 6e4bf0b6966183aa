//! `sochi index list|info|rm`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use sochi_format::{Platform, Sha256Digest};
use sochi_image::{list_indexes, IndexFilter};
use sochi_store::ArtifactKind;

use super::Global;
use crate::output::{age, print_json_line};

/// Index commands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List the SOCI indexes in the local store, newest first.
    #[command(alias = "ls")]
    List(ListArgs),
    /// Print a SOCI index manifest (pretty JSON).
    Info(InfoArgs),
    /// Remove SOCI indexes from the local store.
    #[command(alias = "remove")]
    Rm(RmArgs),
}

/// Flags of `index list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only indexes of this image reference.
    #[arg(long = "ref")]
    image_ref: Option<String>,
    /// Only indexes for this platform.
    #[arg(long, short = 'p')]
    platform: Option<String>,
    /// Print digests only.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// One JSON document per line.
    #[arg(long)]
    json: bool,
}

/// Flags of `index info`.
#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// The index digest.
    digest: String,
}

/// Flags of `index rm`.
#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// Remove every index of this image reference.
    #[arg(long = "ref")]
    image_ref: Option<String>,
    /// Index digests.
    digests: Vec<String>,
}

/// Runs an index command.
pub fn run(global: &Global, command: Command) -> Result<ExitCode> {
    match command {
        Command::List(args) => list(global, args),
        Command::Info(args) => info(global, args),
        Command::Rm(args) => rm(global, args),
    }
}

fn list(global: &Global, args: ListArgs) -> Result<ExitCode> {
    let store = global.store()?;
    let filter = IndexFilter {
        image_ref: args.image_ref.clone(),
        platform: args.platform.as_deref().map(Platform::parse).transpose()?,
    };
    let rows = list_indexes(&store, &filter)?;
    if args.json {
        for row in &rows {
            print_json_line(row)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    if args.quiet {
        for row in &rows {
            writeln!(out, "{}", row.digest)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<72} {:>6} {:<30} {:<12} {:<44} {:<8} CREATED",
        "DIGEST", "SIZE", "IMAGE REF", "PLATFORM", "MEDIA TYPE", "VERSION"
    )?;
    for r in &rows {
        writeln!(
            out,
            "{:<72} {:>6} {:<30} {:<12} {:<44} {:<8} {}",
            r.digest,
            r.size,
            r.image_ref,
            r.platform,
            r.media_type,
            r.manifest_version,
            age(r.created_at)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn info(global: &Global, args: InfoArgs) -> Result<ExitCode> {
    let store = global.store()?;
    let digest = Sha256Digest::parse(&args.digest)?;
    let bytes = store
        .content()
        .read_blob(&digest)
        .with_context(|| format!("reading index {} from the local store", args.digest))?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("index {} is not JSON", args.digest))?;
    crate::output::print_go_pretty_json(&value)?;
    Ok(ExitCode::SUCCESS)
}

fn rm(global: &Global, args: RmArgs) -> Result<ExitCode> {
    if args.digests.is_empty() && args.image_ref.is_none() {
        bail!("name index digests or --ref");
    }
    let store = global.store()?;
    let removed = store.artifacts().remove_where(|e| {
        e.kind == ArtifactKind::SociIndex
            && (args.digests.iter().any(|d| *d == e.digest)
                || args.image_ref.as_ref() == Some(&e.image_ref))
    })?;
    for d in &args.digests {
        if !removed.iter().any(|e| &e.digest == d) {
            bail!("index {d} is not in the local store");
        }
    }
    for e in &removed {
        if let Ok(digest) = Sha256Digest::parse(&e.digest) {
            store.content().remove_blob(&digest)?;
        }
        println!("removed {}", e.digest);
    }
    Ok(ExitCode::SUCCESS)
}
