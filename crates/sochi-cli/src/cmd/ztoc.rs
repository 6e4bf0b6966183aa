//! `sochi ztoc build|info|get-file|list`.

use std::fs::{self, File};
use std::io::{BufReader, Read as _, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use sochi_build::{extract_file, find_entry, LayerCompression, DEFAULT_SPAN_SIZE};
use sochi_format::{Sha256Digest, Ztoc, ZtocInfo};
use sochi_image::{build_ztoc_file, list_ztocs, stored_layer_of, ZtocFilter};
use sochi_store::Store;

use super::Global;
use crate::output::{print_go_pretty_json, print_json_line};

/// zTOC commands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Build the zTOC of one local layer blob.
    Build(BuildArgs),
    /// Print what a zTOC holds, as JSON (as `soci ztoc info`).
    Info(InfoArgs),
    /// Extract one file of a layer through its zTOC.
    GetFile(GetFileArgs),
    /// List the zTOCs in the local store.
    #[command(alias = "ls")]
    List(ListArgs),
}

/// Flags of `ztoc build`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Span size in bytes of uncompressed data between checkpoints.
    #[arg(long, default_value_t = DEFAULT_SPAN_SIZE)]
    span_size: u64,
    /// Layer compression; by default guessed from the first bytes.
    #[arg(long, value_parser = ["gzip", "uncompressed", "zstd"])]
    algorithm: Option<String>,
    /// Index a multi-frame zstd layer at its frame starts. A sochi
    /// extension: the reference and AWS Fargate cannot read the zTOC.
    #[arg(long)]
    zstd_frames: bool,
    /// Where to write the zTOC.
    #[arg(long, short = 'o')]
    output: PathBuf,
    /// Print a JSON summary.
    #[arg(long)]
    json: bool,
    /// The layer blob (gzip or tar).
    layer: PathBuf,
}

/// Flags of `ztoc info`.
#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// A zTOC digest in the local store, or a zTOC file.
    ztoc: String,
}

/// Flags of `ztoc get-file`.
#[derive(Debug, clap::Args)]
pub struct GetFileArgs {
    /// The layer blob; by default found through the local store.
    #[arg(long)]
    layer: Option<PathBuf>,
    /// Write the file here instead of stdout.
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
    /// A zTOC digest in the local store, or a zTOC file.
    ztoc: String,
    /// The file's path in the layer.
    path: String,
}

/// Flags of `ztoc list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only this zTOC.
    #[arg(long)]
    ztoc_digest: Option<String>,
    /// Only zTOCs built for this image reference.
    #[arg(long)]
    image_ref: Option<String>,
    /// Print digests only.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// One JSON document per line.
    #[arg(long)]
    json: bool,
}

/// Runs a zTOC command.
pub fn run(global: &Global, command: Command) -> Result<ExitCode> {
    match command {
        Command::Build(args) => build(args),
        Command::Info(args) => info(global, args),
        Command::GetFile(args) => get_file(global, args),
        Command::List(args) => list(global, args),
    }
}

fn build(args: BuildArgs) -> Result<ExitCode> {
    let compression = match args.algorithm.as_deref() {
        Some("gzip") => Some(LayerCompression::Gzip),
        Some("zstd") => Some(LayerCompression::Zstd),
        Some(_) => Some(LayerCompression::Uncompressed),
        None => None,
    };
    let compression = match compression {
        Some(compression) => compression,
        None => guess_compression(&args.layer)?,
    };
    if compression == LayerCompression::Zstd && !args.zstd_frames {
        bail!(
            "{} is zstd: its zTOC would be sochi's multi-frame zstd variant, which the reference and AWS Fargate cannot read (pass --zstd-frames to build it)",
            args.layer.display()
        );
    }
    let report = build_ztoc_file(&args.layer, &args.output, args.span_size, Some(compression))?;
    if args.json {
        print_json_line(&report)?;
    } else {
        println!(
            "ztoc {} ({} bytes, {} spans, {} files) -> {}",
            report.digest, report.size, report.spans, report.files, report.output
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The compression of `layer`, from its first bytes. A zstd stream may
/// open with a skippable frame (`pzstd` puts one before every frame,
/// RFC 8878 §3.1.2), which `LayerCompression::sniff` does not know.
fn guess_compression(layer: &Path) -> Result<LayerCompression> {
    let mut magic = [0u8; 4];
    let n = File::open(layer)
        .and_then(|mut file| file.read(&mut magic))
        .with_context(|| format!("reading {}", layer.display()))?;
    if n == 4 && u32::from_le_bytes(magic) & 0xFFFF_FFF0 == 0x184D_2A50 {
        return Ok(LayerCompression::Zstd);
    }
    Ok(LayerCompression::sniff(magic.get(..n).unwrap_or_default()))
}

/// Reads a zTOC named by a digest in the store or by a file path.
fn load_ztoc(global: &Global, name: &str) -> Result<(Ztoc, Vec<u8>, Option<Store>)> {
    let (bytes, store) = if name.starts_with("sha256:") && !Path::new(name).exists() {
        let digest = Sha256Digest::parse(name)?;
        let store = global.store()?;
        let bytes = store
            .content()
            .read_blob(&digest)
            .with_context(|| format!("reading zTOC {name} from the local store"))?;
        (bytes, Some(store))
    } else {
        (
            fs::read(name).with_context(|| format!("reading zTOC file {name}"))?,
            None,
        )
    };
    let ztoc = Ztoc::from_bytes(&bytes).with_context(|| format!("decoding zTOC {name}"))?;
    Ok((ztoc, bytes, store))
}

fn info(global: &Global, args: InfoArgs) -> Result<ExitCode> {
    let (ztoc, bytes, _) = load_ztoc(global, &args.ztoc)?;
    let info = ZtocInfo::new(&ztoc, bytes.len() as u64)?;
    print_go_pretty_json(&info)?;
    Ok(ExitCode::SUCCESS)
}

fn get_file(global: &Global, args: GetFileArgs) -> Result<ExitCode> {
    let (ztoc, bytes, store) = load_ztoc(global, &args.ztoc)?;
    let layer_path = match &args.layer {
        Some(path) => path.clone(),
        None => find_layer(global, store, &Sha256Digest::of(&bytes))?,
    };
    let entry = find_entry(&ztoc, &args.path)?;
    let mut blob = BufReader::new(
        File::open(&layer_path)
            .with_context(|| format!("opening layer {}", layer_path.display()))?,
    );
    match &args.output {
        Some(path) => {
            let mut out =
                File::create(path).with_context(|| format!("creating {}", path.display()))?;
            extract_file(&ztoc, &mut blob, entry, &mut out)?;
            out.flush()?;
        }
        None => {
            let mut out = std::io::stdout().lock();
            extract_file(&ztoc, &mut blob, entry, &mut out)?;
            out.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn find_layer(
    global: &Global,
    store: Option<Store>,
    ztoc_digest: &Sha256Digest,
) -> Result<PathBuf> {
    let store = match store {
        Some(s) => s,
        None => global.store()?,
    };
    Ok(stored_layer_of(&store, ztoc_digest)?)
}

fn list(global: &Global, args: ListArgs) -> Result<ExitCode> {
    let store = global.store()?;
    let filter = ZtocFilter {
        ztoc_digest: args.ztoc_digest.clone(),
        image_ref: args.image_ref.clone(),
    };
    let rows = list_ztocs(&store, &filter)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        drop(out);
        for row in &rows {
            print_json_line(row)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.quiet {
        for row in &rows {
            writeln!(out, "{}", row.digest)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<72} {:>10} {:<72}",
        "DIGEST", "SIZE", "LAYER DIGEST"
    )?;
    for row in &rows {
        writeln!(
            out,
            "{:<72} {:>10} {:<72}",
            row.digest, row.size, row.layer_digest
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
