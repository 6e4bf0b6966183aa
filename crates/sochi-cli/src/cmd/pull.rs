//! `sochi pull IMAGE`: a lazy pull into containerd (like the reference's
//! former `soci image rpull`). Every layer is offered to the snapshotter as
//! a remote snapshot; the layers it declines are fetched and unpacked
//! through containerd. Afterwards `ctr run --snapshotter sochi IMAGE …`
//! runs the image. The work is `sochi_containerd::pull`; this file parses
//! flags and prints.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use sochi_containerd::{Containerd, LayerReport, PullOptions, PullReport};
use sochi_format::Platform;
use sochi_registry::Reference;

use super::Global;
use crate::output::print_json_line;

/// Flags of `sochi pull`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// containerd's gRPC socket.
    #[arg(
        long,
        short = 'a',
        default_value = "/run/containerd/containerd.sock",
        env = "CONTAINERD_ADDRESS"
    )]
    pub address: PathBuf,
    /// The containerd namespace to pull into.
    #[arg(
        long,
        short = 'n',
        default_value = "default",
        env = "CONTAINERD_NAMESPACE"
    )]
    pub namespace: String,
    /// The snapshotter to unpack into (`overlayfs` for a plain full pull).
    #[arg(long, default_value = "sochi", env = "CONTAINERD_SNAPSHOTTER")]
    pub snapshotter: String,
    /// The platform to pull (os/arch[/variant]; default: the host's).
    #[arg(long, short = 'p')]
    pub platform: Option<String>,
    /// Print the result as one JSON document.
    #[arg(long)]
    pub json: bool,
    /// The image in its registry, e.g. `127.0.0.1:5000/py:soci`.
    pub image: String,
}

/// Runs `sochi pull`.
pub fn run(global: &Global, args: Args) -> Result<ExitCode> {
    let image = Reference::parse(&args.image)?;
    let mut options = PullOptions::new(&args.snapshotter);
    if let Some(platform) = &args.platform {
        options.platform = Platform::parse(platform)?;
    }
    let registry = global.registry()?;
    let report = registry.block_on(async {
        let containerd = Containerd::connect(&args.address, &args.namespace).await?;
        sochi_containerd::pull(&containerd, &registry.client, &image, &options).await
    });
    let report = report.with_context(|| format!("pulling {image}"))?;
    if args.json {
        print_json_line(&report)?;
    } else {
        print_text(&report)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_text(report: &PullReport) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for layer in &report.layers {
        writeln!(out, "{}", layer_line(layer))?;
    }
    writeln!(
        out,
        "{}: {} layers: {} lazy, {} pulled, {} present (manifest {}, snapshotter {}, {:.2} s)",
        report.image,
        report.layers.len(),
        report.lazy,
        report.pulled,
        report.present,
        report.manifest,
        report.snapshotter,
        report.seconds
    )?;
    Ok(())
}

fn layer_line(layer: &LayerReport) -> String {
    format!(
        "layer {} {} {:>10} {}",
        layer.index,
        layer.digest,
        human_size(layer.size),
        layer.outcome.as_str()
    )
}

fn human_size(bytes: i64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_ls_h() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(3 * 1024 * 1024 + 512 * 1024), "3.5 MiB");
    }
}
