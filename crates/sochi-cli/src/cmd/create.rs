//! `sochi create IMAGE`: build the v1 SOCI index of an image and keep it,
//! with its zTOCs, in the local store.

use std::process::ExitCode;

use anyhow::Result;
use sochi_image::{create_indexes, open_image, CreateRequest, ImageRef};

use super::{BuildArgs, Global};
use crate::output::print_json_line;
use crate::progress::LayerBars;

/// Flags of `create`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    build: BuildArgs,
    /// Print one JSON document per index instead of text.
    #[arg(long)]
    json: bool,
    /// The image: a registry reference, or oci:PATH[:TAG].
    image: String,
}

/// Runs `create`.
pub fn run(global: &Global, args: Args) -> Result<ExitCode> {
    let image_ref = ImageRef::parse(&args.image)?;
    let (options, selection) = args.build.options()?;
    let store = global.store()?;
    let opened = open_image(&global.client_config()?, &image_ref)?;
    let bars = LayerBars::new();
    let request = CreateRequest {
        image_ref: &image_ref,
        options,
        selection,
        force: args.build.force,
    };
    let reports = create_indexes(&store, &opened, &request, &|e| bars.on_event(e))?;
    for report in &reports {
        if args.json {
            print_json_line(report)?;
            continue;
        }
        for l in &report.layers {
            match (&l.ztoc, &l.skipped) {
                (Some(z), _) if l.reused => {
                    println!("layer {} -> ztoc {z} (already exists)", l.layer)
                }
                (Some(z), _) => println!("layer {} -> ztoc {z}", l.layer),
                (None, Some(reason)) => println!("layer {} -> ztoc skipped - {reason}", l.layer),
                (None, None) => {}
            }
        }
        for p in &report.prefetch {
            println!(
                "Created prefetch artifact for layer {}: {}",
                p.layer, p.artifact
            );
        }
        for layer in &report.load_order_unmatched_layers {
            println!("load order: layer {layer} is not in the image or has no zTOC; its reads are not prefetched");
        }
        println!("index {} ({})", report.index, report.platform);
    }
    Ok(ExitCode::SUCCESS)
}
