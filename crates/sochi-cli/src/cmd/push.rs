//! `sochi push REF`: publish the v1 SOCI index of an image (config `{}`,
//! zTOCs, index manifest) into the image's repository, found through the
//! referrers API or its fallback tag (docs/format.md §5.1).
//!
//! Blobs go first and the index manifest last, so a registry never holds an
//! index that points at missing blobs.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use serde::Serialize;
use sochi_build::select_manifests;
use sochi_format::{media_types, Descriptor, Sha256Digest, SociIndex, EMPTY_CONFIG};
use sochi_registry::{PushBlob, ReferrerPush};
use sochi_store::ArtifactKind;

use super::{open_image, Global};
use crate::image_ref::ImageRef;
use crate::output::print_json_line;

/// What to do when the registry already has a SOCI index for the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExistingIndex {
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
    #[arg(long, value_enum, default_value_t = ExistingIndex::Warn)]
    existing_index: ExistingIndex,
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

#[derive(Serialize)]
struct PushReport {
    index: String,
    manifest: String,
    platform: String,
    pushed: bool,
    /// "referrers-api", "fallback-tag", or "skipped".
    via: &'static str,
    blobs_uploaded: usize,
    blobs_present: usize,
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
    };
    let (_, selection) = build.options()?;
    let store = global.store()?;
    let opened = open_image(global, &ImageRef::Registry(reference.clone()))?;
    let Some(registry) = opened.registry.clone() else {
        bail!("push needs a registry");
    };
    let manifests = select_manifests(opened.source.as_ref(), &opened.image, &selection)?;
    let entries = store.artifacts().list()?;
    for manifest in &manifests {
        let platform = manifest.platform.to_spec_string();
        let Some(entry) = entries
            .iter()
            .filter(|e| {
                e.kind == ArtifactKind::SociIndex
                    && e.original_digest == manifest.descriptor.digest
                    && e.artifact_type == media_types::SOCI_INDEX_V1
            })
            .max_by_key(|e| e.created_at)
        else {
            bail!(
                "no SOCI index for {reference} ({platform}, manifest {}) in the local store: run `sochi create {reference}` first",
                manifest.descriptor.digest
            );
        };
        let index_digest = Sha256Digest::parse(&entry.digest)?;
        let index_bytes = store.content().read_blob(&index_digest)?;
        let index = SociIndex::from_bytes(&index_bytes)?;
        let subject = manifest.descriptor.clone();

        let existing = registry
            .block_on(registry.client.referrers(
                &reference,
                &subject.digest,
                Some(media_types::SOCI_INDEX_V1),
            ))
            .with_context(|| format!("listing the SOCI indexes of {}", subject.digest))?;
        if !existing.is_empty() {
            match args.existing_index {
                ExistingIndex::Skip => {
                    if !args.quiet {
                        eprintln!(
                            "{platform}: {reference} already has a SOCI index ({}); skipped",
                            existing[0].digest
                        );
                    }
                    report(
                        &args,
                        PushReport {
                            index: entry.digest.clone(),
                            manifest: subject.digest.clone(),
                            platform,
                            pushed: false,
                            via: "skipped",
                            blobs_uploaded: 0,
                            blobs_present: 0,
                        },
                    )?;
                    continue;
                }
                ExistingIndex::Warn if !args.quiet => {
                    eprintln!("warning: {platform}: {reference} already has {} SOCI index(es); pushing another", existing.len());
                }
                _ => {}
            }
        }

        // Blobs first: the config, then every zTOC (and prefetch artifact).
        let mut blobs: Vec<(Descriptor, Vec<u8>)> =
            vec![(index_config(&index), EMPTY_CONFIG.to_vec())];
        for d in &index.blobs {
            let digest = d.sha256()?;
            let bytes = store.content().read_blob(&digest).with_context(|| {
                format!(
                    "reading {} of index {} from the local store",
                    d.digest, entry.digest
                )
            })?;
            blobs.push((d.clone(), bytes));
        }
        let outcomes: Vec<PushBlob> = registry.block_on(
            stream::iter(blobs.into_iter().map(|(d, bytes)| {
                let client = registry.client.clone();
                let reference = reference.clone();
                async move {
                    client
                        .push_blob(&reference, &d, bytes.into(), None)
                        .await
                        .with_context(|| format!("pushing blob {}", d.digest))
                }
            }))
            .buffer_unordered(args.max_concurrent_uploads.max(1))
            .try_collect(),
        )?;
        let uploaded = outcomes
            .iter()
            .filter(|o| !matches!(o, PushBlob::Exists))
            .count();

        // Then the index manifest, and the referrer link.
        let via = registry
            .block_on(registry.client.push_referrer(
                &reference,
                &index_bytes,
                media_types::OCI_MANIFEST,
                &subject,
                media_types::SOCI_INDEX_V1,
                &index.annotations,
            ))
            .with_context(|| format!("pushing SOCI index {}", entry.digest))?;
        let via = match via {
            ReferrerPush::Api => "referrers-api",
            ReferrerPush::FallbackTag => "fallback-tag",
        };
        if !args.quiet && !args.json {
            println!(
                "pushed soci index {} for {} ({platform}) via {via}",
                entry.digest, subject.digest
            );
        }
        report(
            &args,
            PushReport {
                index: entry.digest.clone(),
                manifest: subject.digest.clone(),
                platform,
                pushed: true,
                via,
                blobs_uploaded: uploaded,
                blobs_present: outcomes.len() - uploaded,
            },
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn index_config(index: &SociIndex) -> Descriptor {
    index.config_descriptor()
}

fn report(args: &Args, report: PushReport) -> Result<()> {
    if args.json {
        print_json_line(&report)?;
    }
    Ok(())
}
