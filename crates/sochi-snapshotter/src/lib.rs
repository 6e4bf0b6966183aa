//! sochi's containerd remote snapshotter: containerd's Snapshots gRPC
//! service on a unix socket (docs/format.md §6). Layers of images with a SOCI index
//! are mounted lazily over FUSE ([`sochi_lazy`]), layers without a zTOC are
//! fetched and unpacked by sochi, and images without an index are handed
//! back to containerd. Snapshot metadata survives restarts, and the layers
//! sochi provided are mounted again from their caches on start.
//!
//! - [`config`]: the TOML configuration.
//! - [`service`]: the Snapshots service and its decision tree.
//! - [`serve`]: binds the socket and runs until a signal.

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub mod config;
pub mod decision;
mod error;
mod filter;
pub mod keychain;
pub mod metadata;
pub mod remote;
pub mod service;

/// containerd's API as generated from proto/.
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]
pub mod api {
    /// `containerd.*`
    pub mod containerd {
        /// `containerd.types`
        pub mod types {
            tonic::include_proto!("containerd.types");
        }
        /// `containerd.services`
        pub mod services {
            /// `containerd.services.snapshots`
            pub mod snapshots {
                /// `containerd.services.snapshots.v1`
                pub mod v1 {
                    tonic::include_proto!("containerd.services.snapshots.v1");
                }
            }
        }
    }
}

pub use config::Config;
pub use error::{Error, Result};
pub use keychain::CriKeychain;
pub use service::{Service, Snapshotter};

/// What `serve` needs.
pub struct Daemon {
    /// The unix socket to listen on.
    pub address: PathBuf,
    /// Local state (snapshots, span caches, zTOCs).
    pub root: PathBuf,
    /// Configuration.
    pub config: Arc<Config>,
    /// How to reach registries (TLS, credentials); the configuration's
    /// `[registry]`, `[resolver]` and `[cri_keychain]` are added to it.
    pub registry: sochi_registry::ClientConfig,
    /// How to start the FUSE keeper (`fuse.keep_connections`): a program
    /// and its arguments, to which `--socket PATH` is appended.
    pub keeper_command: Option<(PathBuf, Vec<std::ffi::OsString>)>,
}

/// The keeper's socket under `root`.
pub fn keeper_socket(root: &Path) -> PathBuf {
    root.join("fuse-keeper.sock")
}

fn start_keeper(daemon: &Daemon) -> Option<Arc<sochi_fs::Keeper>> {
    if !daemon.config.fuse.keep_connections {
        return None;
    }
    let (program, args) = daemon.keeper_command.as_ref()?;
    let socket = keeper_socket(&daemon.root);
    let mut args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    args.push("--socket".as_ref());
    args.push(socket.as_os_str());
    match sochi_fs::Keeper::connect_or_start(
        &socket,
        program,
        &args,
        &daemon.root.join("fuse-keeper.log"),
    ) {
        Ok(keeper) => {
            tracing::info!(socket = %socket.display(), "FUSE connections are kept across restarts");
            Some(Arc::new(keeper))
        }
        Err(error) => {
            tracing::warn!(%error, "no FUSE keeper: layers end with this process");
            None
        }
    }
}

/// Serves the Snapshots API on `daemon.address` until SIGTERM or SIGINT,
/// then leaves its layers to the FUSE keeper (`fuse.keep_connections`) or
/// unmounts them. Call from within a multi-thread
/// tokio runtime.
pub async fn serve(daemon: Daemon) -> Result<()> {
    let runtime = tokio::runtime::Handle::current();
    sochi_lazy::root_dir(&daemon.root).map_err(|e| serve_error("creating the root", e))?;
    let keeper = start_keeper(&daemon);
    let keychain = daemon
        .config
        .cri_keychain
        .enable_keychain
        .then(|| Arc::new(CriKeychain::new(keeper.clone())));
    let client = registry_client(&daemon, keychain.clone())?;
    let remote = Arc::new(remote::RemoteLayers::new(
        client.clone(),
        runtime.clone(),
        daemon.root.clone(),
        Arc::clone(&daemon.config),
        keeper,
    ));
    let root = daemon.root.clone();
    let snapshotter = {
        let remote = Arc::clone(&remote);
        tokio::task::spawn_blocking(move || Snapshotter::open(&root, remote))
            .await
            .map_err(|e| serve_error("opening the snapshotter", e))??
    };
    let snapshotter = Arc::new(snapshotter);
    let stop = Arc::new(AtomicBool::new(false));
    if !daemon.config.metrics_address.is_empty() {
        let (snapshotter, remote) = (Arc::clone(&snapshotter), Arc::clone(&remote));
        let render = Arc::new(move || {
            let mut out = String::new();
            sochi_spans::LayerMetrics::render_help(&mut out);
            remote.render_metrics(&mut out);
            render_counters(&snapshotter.counters, &mut out);
            sochi_lazy::render_plan_metrics(&mut out);
            render_registry_hosts(&client.host_stats(), &mut out);
            out
        });
        let bound =
            sochi_lazy::serve_metrics(&daemon.config.metrics_address, render, Arc::clone(&stop))
                .map_err(|e| serve_error("serving metrics", e))?;
        tracing::info!(address = %bound, "metrics");
    }
    let listener = bind(&daemon.address)?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    tracing::info!(socket = %daemon.address.display(), root = %daemon.root.display(), "sochi snapshotter ready");
    let service = api::containerd::services::snapshots::v1::snapshots_server::SnapshotsServer::new(
        Service(Arc::clone(&snapshotter)),
    );
    // The kubelet's image service endpoint: pulls pass through here so that
    // their credentials are known before containerd prepares the layers.
    let images = keychain.map(|keychain| {
        let upstream = PathBuf::from(&daemon.config.cri_keychain.image_service_path);
        tracing::info!(upstream = %upstream.display(), "serving the CRI image service: pull credentials are kept for lazy reads");
        sochi_cri::ImageServiceProxy::new(upstream, keychain)
    });
    tonic::transport::Server::builder()
        .add_service(service)
        .add_optional_service(images)
        .serve_with_incoming_shutdown(incoming, shutdown_signal())
        .await
        .map_err(|e| serve_error("serving the snapshots API", e))?;
    stop.store(true, Ordering::Relaxed);
    tracing::info!("shutting down: unmounting layers");
    let inner = Arc::clone(&snapshotter);
    tokio::task::spawn_blocking(move || inner.shutdown())
        .await
        .map_err(|e| serve_error("shutting down", e))?;
    let _ = std::fs::remove_file(&daemon.address);
    Ok(())
}

/// The registry client: the daemon's connection settings, the
/// configuration's hosts (its `config_path` before the command line's) and
/// mirrors, and the CRI keychain.
fn registry_client(
    daemon: &Daemon,
    keychain: Option<Arc<CriKeychain>>,
) -> Result<sochi_registry::Client> {
    let mut config = daemon.registry.clone();
    let hosts = daemon.config.hosts();
    if hosts.dir.is_some() {
        config.hosts.dir = hosts.dir;
    }
    config.hosts.mirrors.extend(hosts.mirrors);
    config.max_range_requests_per_host = daemon.config.blob.max_range_requests_per_host;
    config.max_background_requests_per_host = daemon.config.blob.max_background_requests_per_host;
    if let Some(keychain) = keychain {
        config.keychain = Some(keychain);
    }
    sochi_registry::Client::new(config)
        .map_err(|e| serve_error("configuring the registry client", e))
}

fn bind(address: &Path) -> Result<tokio::net::UnixListener> {
    let failed = || Error::io(format!("listening on {}", address.display()));
    if let Some(parent) = address.parent() {
        std::fs::create_dir_all(parent).map_err(failed())?;
    }
    // A socket left by a previous run refuses connections; replace it.
    if address.exists() && std::os::unix::net::UnixStream::connect(address).is_err() {
        std::fs::remove_file(address).map_err(failed())?;
    }
    tokio::net::UnixListener::bind(address).map_err(failed())
}

fn serve_error(context: &str, source: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Serve {
        context: context.to_string(),
        source: Box::new(source),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM"),
                _ = int.recv() => tracing::info!("SIGINT"),
            }
        }
        _ => std::future::pending::<()>().await,
    }
}

fn render_registry_hosts(
    stats: &std::collections::BTreeMap<String, sochi_registry::HostStats>,
    out: &mut String,
) {
    use std::fmt::Write as _;
    for (name, help, value) in [
        (
            "sochi_registry_requests_total",
            "Requests sent to each registry host (mirrors and origins), retries included.",
            (|s: &sochi_registry::HostStats| s.requests) as fn(&sochi_registry::HostStats) -> u64,
        ),
        (
            "sochi_registry_failovers_total",
            "Requests that went on to the next host after this one failed.",
            |s: &sochi_registry::HostStats| s.failovers,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for (host, host_stats) in stats {
            let _ = writeln!(out, "{name}{{host=\"{host}\"}} {}", value(host_stats));
        }
    }
}

fn render_counters(counters: &service::Counters, out: &mut String) {
    use std::fmt::Write as _;
    let g = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "# HELP sochi_snapshotter_layers_total Layers by how they were provided."
    );
    let _ = writeln!(out, "# TYPE sochi_snapshotter_layers_total counter");
    for (outcome, value) in [
        ("lazy", g(&counters.lazy)),
        ("unpacked", g(&counters.unpacked)),
        ("containerd_no_index", g(&counters.no_index)),
        ("containerd_error", g(&counters.failed)),
        ("containerd_no_labels", g(&counters.no_labels)),
        ("containerd_no_credentials", g(&counters.no_credentials)),
    ] {
        let _ = writeln!(
            out,
            "sochi_snapshotter_layers_total{{outcome=\"{outcome}\"}} {value}"
        );
    }
}
