//! `sochi snapshotter`: the containerd remote snapshotter daemon, and
//! `sochi snapshotter config default|dump`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use sochi_snapshotter::config::{Config, DEFAULT_CONFIG_PATH};

use super::Global;

/// Flags of `sochi snapshotter`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    /// The unix socket containerd's proxy plugin connects to.
    #[arg(long, default_value = "/run/sochi/snapshotter.sock")]
    pub address: PathBuf,
    /// The configuration file (TOML; default /etc/sochi/snapshotter.toml,
    /// all defaults if that is missing).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Show the configuration instead of running.
    #[command(subcommand)]
    pub command: Option<Sub>,
}

/// `sochi snapshotter config ...`
#[derive(Debug, clap::Subcommand)]
pub enum Sub {
    /// Print a configuration.
    Config {
        /// `default`: the defaults; `dump`: what --config (or the default file) gives.
        #[arg(value_parser = ["default", "dump"])]
        which: String,
        /// The configuration file to dump.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// How each layer snapshot was provided: lazily, unpacked by sochi, or
    /// by containerd (and why), read from the snapshotter's metadata under
    /// `--root`.
    Layers {
        /// Only layers of this image reference.
        #[arg(long)]
        image: Option<String>,
        /// One JSON object per layer.
        #[arg(long)]
        json: bool,
    },
    /// The load order recorded for an image (`[load_order]`): the spans
    /// its first start read, in the order of first use, for `sochi
    /// convert --load-order`.
    LoadOrder {
        /// The image reference (as containerd pulled it) or manifest digest.
        #[arg(long)]
        image: String,
        /// Write it to this file instead of standard output.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
    },
    /// The FUSE keeper the snapshotter starts itself (`[fuse]
    /// keep_connections`): holds the layers' FUSE connections so that they
    /// outlive a snapshotter restart; exits when it holds none.
    #[command(hide = true)]
    Keeper {
        /// Its unix socket.
        #[arg(long)]
        socket: PathBuf,
    },
}

/// Runs `sochi snapshotter`.
pub fn run(global: &Global, args: Args) -> Result<ExitCode> {
    if let Some(Sub::Config { which, config }) = &args.command {
        let config = match which.as_str() {
            "default" => Config::default(),
            _ => load(config.as_ref().or(args.config.as_ref()))?,
        };
        print!("{}", config.to_toml()?);
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(Sub::Layers { image, json }) = &args.command {
        return layers(global, image.as_deref(), *json);
    }
    if let Some(Sub::LoadOrder { image, output }) = &args.command {
        return load_order(global, image, output.as_deref());
    }
    if let Some(Sub::Keeper { socket }) = &args.command {
        sochi_fs::serve_keeper(socket)
            .with_context(|| format!("FUSE keeper on {}", socket.display()))?;
        return Ok(ExitCode::SUCCESS);
    }
    let config = Arc::new(load(args.config.as_ref())?);
    let registry = global.registry_with_threads(4)?;
    sochi_lazy::root_dir(&global.root)?;
    let daemon = sochi_snapshotter::Daemon {
        address: args.address.clone(),
        root: global.root.clone(),
        config,
        registry: global.client_config()?,
        keeper_command: std::env::current_exe().ok().map(|exe| {
            let args = ["--log-level", "info", "snapshotter", "keeper"];
            (exe, args.iter().map(Into::into).collect())
        }),
    };
    registry.block_on(sochi_snapshotter::serve(daemon))?;
    Ok(ExitCode::SUCCESS)
}

fn load(path: Option<&PathBuf>) -> Result<Config> {
    match path {
        Some(path) => Ok(Config::load(path, true)?),
        None => Ok(Config::load(
            std::path::Path::new(DEFAULT_CONFIG_PATH),
            false,
        )?),
    }
}

/// `sochi snapshotter layers`.
fn layers(global: &Global, image: Option<&str>, json: bool) -> Result<ExitCode> {
    for record in sochi_snapshotter::metadata::layer_records(&global.root, image)? {
        if json {
            println!("{}", serde_json::to_string(&record)?);
        } else {
            println!(
                "{}\t{}\t{}\t{}",
                record.image,
                record.layer,
                record.mode,
                record.reason.unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `sochi snapshotter load-order`.
fn load_order(global: &Global, image: &str, output: Option<&std::path::Path>) -> Result<ExitCode> {
    let Some((_, order)) = sochi_lazy::find_load_order(&global.root, image)? else {
        anyhow::bail!(
            "no load order recorded for {image} under {} (a recording is written once the \
             image's readers have been quiet for [load_order] quiet_sec, or at shutdown)",
            sochi_lazy::load_order_dir(&global.root).display()
        );
    };
    match output {
        Some(output) => std::fs::write(output, order.to_bytes())
            .with_context(|| format!("writing {}", output.display()))?,
        None => {
            use std::io::Write as _;
            std::io::stdout().write_all(&order.to_bytes())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
