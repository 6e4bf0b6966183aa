//! `sochi push REF`: publish the v1 SOCI index of an image (config `{}`,
//! zTOCs, index manifest) into the image's repository, found through the
//! referrers API or its fallback tag (docs/format.md §5.1).
//!
//! Blobs go first and the index manifest last, so a registry never holds an
//! index that points at missing blobs.

use std::process::ExitCode;

use anyhow::{bail, Result};
use sochi_image::{open_image, push_indexes, ExistingIndex, ImageRef, PushRequest};

use super::Global;
use crate::output::print_json_line;

/// What to do when the registry already has a SOCI index for the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "lower")]
pub enum ExistingIndexArg {
    /// Say so and push anyway.
    Warn,
    /// Don't push.
    Skip,
    /// Push without a word.
    Allow,
}

/// Flags of `push`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to do if the registry already has a v1 SOCI index for the image.
    #[arg(long, value_enum, default_value_t = ExistingIndexArg::Warn)]
    existing_index: ExistingIndexArg,
    /// Blobs uploaded at once.
    #[arg(long, default_value_t = 3)]
    max_concurrent_uploads: usize,
    /// Platform whose index to push (os/arch[/variant]); repeat for more.
    #[arg(long, short = 'p')]
    platform: Vec<String>,
    /// Push the indexes of every platform.
    #[arg(long, conflicts_with = "platform")]
    all_platforms: bool,
    /// Print nothing but errors.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Print one JSON document per pushed index.
    #[arg(long)]
    json: bool,
    /// The image in its registry.
    image: String,
}

/// Runs `push`.
pub fn run(global: &Global, args: Args) -> Result<ExitCode> {
    let ImageRef::Registry(reference) = ImageRef::parse(&args.image)? else {
        bail!("push takes a registry reference, not an OCI layout");
    };
    let build = super::BuildArgs {
        span_size: 0,
        min_layer_size: 0,
        optimizations: Vec::new(),
        platform: args.platform.clone(),
        all_platforms: args.all_platforms,
        force: false,
        jobs: None,
        prefetch_file: Vec::new(),
        prefetch_files_json: None,
        load_order: None,
        zstd_frames: false,
    };
    let (_, selection) = build.options()?;
    let store = global.store()?;
    let opened = open_image(
        &global.client_config()?,
        &ImageRef::Registry(reference.clone()),
    )?;
    let request = PushRequest {
        reference: reference.clone(),
        selection,
        existing: match args.existing_index {
            ExistingIndexArg::Warn => ExistingIndex::Warn,
            ExistingIndexArg::Skip => ExistingIndex::Skip,
            ExistingIndexArg::Allow => ExistingIndex::Allow,
        },
        max_concurrent_uploads: args.max_concurrent_uploads,
    };
    for report in push_indexes(&store, &opened, &request)? {
        let platform = &report.platform;
        if !args.quiet {
            if !report.pushed {
                eprintln!(
                    "{platform}: {reference} already has a SOCI index ({}); skipped",
                    report
                        .existing
                        .first()
                        .map(|digest| digest.as_str())
                        .unwrap_or_default()
                );
            } else if !report.existing.is_empty() && args.existing_index == ExistingIndexArg::Warn {
                eprintln!(
                    "warning: {platform}: {reference} already has {} SOCI index(es); pushing another",
                    report.existing.len()
                );
            }
        }
        if args.json {
            print_json_line(&report)?;
        } else if report.pushed && !args.quiet {
            println!(
                "pushed soci index {} for {} ({platform}) via {}",
                report.index, report.manifest, report.via
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
