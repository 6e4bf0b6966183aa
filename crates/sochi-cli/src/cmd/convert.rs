//! `sochi convert SRC DST`: the SOCI-enabled image (index manifest v2), as
//! `soci convert` makes it. Source and destination are each a registry
//! reference or an OCI layout (`oci:PATH[:TAG]`), in any mix.
//!
//! Each layer is read once from the source, by the indexer; the same stream
//! fills a layout destination, or is uploaded to a registry on another
//! host. A registry destination gets only the blobs it lacks (mounted
//! within one registry, without a download), children before parents, and
//! the tag last, so a failed run never leaves a tag pointing at missing
//! blobs.

use std::process::ExitCode;

use anyhow::Result;
use sochi_image::{convert_image, open_image, ConvertRequest, ImageRef};

use super::{BuildArgs, Global};
use crate::output::print_json_line;
use crate::progress::LayerBars;

/// Flags of `convert`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    build: BuildArgs,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// Blobs uploaded at once to a registry destination.
    #[arg(long, default_value_t = 3)]
    max_concurrent_uploads: usize,
    /// The source image: a registry reference or oci:PATH[:TAG].
    source: String,
    /// The destination: a registry reference with a tag (no digest), or
    /// oci:PATH[:TAG] (created if missing).
    destination: String,
}

/// Runs `convert`.
pub fn run(global: &Global, args: Args) -> Result<ExitCode> {
    let (options, selection) = args.build.options()?;
    let source = ImageRef::parse(&args.source)?;
    let destination = ImageRef::parse(&args.destination)?;
    let client = global.client_config()?;
    let opened = open_image(&client, &source)?;
    let bars = LayerBars::new();
    let request = ConvertRequest {
        source: &source,
        destination: &destination,
        options,
        selection,
        max_concurrent_uploads: args.max_concurrent_uploads,
    };
    let report = convert_image(&client, &opened, &request, &|e| bars.on_event(e))?;
    if args.json {
        print_json_line(&report)?;
    } else {
        for i in &report.indexes {
            let prefetch = match i.prefetch_artifacts {
                0 => String::new(),
                n => format!(", {n} prefetch artifacts"),
            };
            println!(
                "soci index {} ({}, {} ztocs{prefetch})",
                i.index, i.platform, i.ztocs
            );
        }
        println!("image {} -> {}", report.image, report.destination);
    }
    Ok(ExitCode::SUCCESS)
}
