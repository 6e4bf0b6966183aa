//! An image mounted lazily: each layer with a zTOC is a FUSE mount served
//! from the registry on demand, each layer without one is fetched whole and
//! unpacked, and a read-only overlay stacks them at the mountpoint.
//!
//! Local state lives under a root directory ([`crate::local_state`]): the
//! span cache of each lazy layer (docs/format.md §6.6) and each unpacked layer,
//! shared by the mounts that use it and released by the last of them.
//! The layer mountpoints themselves live in the caller's state directory.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{invalid, Context as _, Result};
use sochi_format::{Descriptor, Digest, LayerCompression, Ztoc};
use sochi_fs::{Keeper, KeptMount, Layer, LayerConfig, MountHandle};
use sochi_registry::{Client, Reference};
use sochi_spans::{
    BackgroundOptions, LayerMetrics, PrefetchOptions, SpanManager, SpanStoreConfig, PREFETCH_DONE,
    PREFETCH_FAILED, PREFETCH_RUNNING,
};
use tokio::runtime::Handle;
use tokio_util::io::SyncIoBridge;

use crate::blob::RegistryBlob;
use crate::local_state::{private_dir, LayerDir};
use crate::plan::{ImagePlan, LayerPrefetch, PlannedLayer};
use crate::unpack::{unpack_layer, ExpectedDigests};

/// How an image is mounted.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Root of the shared local state (span caches, unpacked layers).
    pub root: PathBuf,
    /// This mount's own directory: layer mountpoints go in `l/`.
    pub state_dir: PathBuf,
    /// A name for this mount, unique among the mounts sharing `root`:
    /// `mount-<id>` or `snapshot-<id>` (see [`crate::local_state`]); the
    /// layers it uses record it, and the FUSE keeper names connections by
    /// it.
    pub mount_id: String,
    /// Check each file's tar header on first read (docs/format.md §3.6).
    pub verify: bool,
    /// Fetch the rest of each lazy layer in the background; `None` to
    /// fetch only what is read.
    pub background: Option<BackgroundOptions>,
    /// Layers fetched in the background at the same time.
    pub background_jobs: usize,
    /// Fetch the spans of each lazy layer's prefetch artifact right after
    /// the mount (not waiting for them); `None` to ignore the artifacts.
    pub prefetch: Option<PrefetchOptions>,
    /// The queue the layers' prefetch requests go to, shared by the
    /// mounts of one image's layers (a snapshotter mounts each layer on
    /// its own); `None`: a queue of this mount's own.
    pub prefetch_queue: Option<Arc<sochi_spans::PrefetchQueue>>,
    /// Bound of one range read from the registry.
    pub fetch_timeout: Duration,
    /// FUSE threads per layer.
    pub fuse_threads: usize,
    /// Bound of each layer's on-disk span cache, in bytes.
    pub span_cache_limit: Option<u64>,
    /// A bound of the on-disk span caches of all layers together (a
    /// snapshotter's `[directory_cache] max_bytes`).
    pub span_disk_budget: Option<Arc<sochi_spans::DiskBudget>>,
    /// The in-memory span cache the layers share, and its limit (a
    /// snapshotter gives all its layers one: the node's budget).
    pub span_memory: Arc<sochi_spans::SpanMemory>,
    /// The FUSE keeper to hand a layer's connection to, for a mount of one
    /// layer ([`MountTarget::Layer`]): the mount then survives this
    /// process, and a later mount with the same `mount_id` takes it over.
    pub keeper: Option<Arc<Keeper>>,
    /// Record the lazy layers' reads into this load order (docs/prefetch.md).
    pub load_order: Option<Arc<sochi_spans::LoadRecorder>>,
}

/// How one layer is served.
#[derive(Debug)]
pub enum LayerState {
    /// From its zTOC over FUSE.
    Lazy {
        /// Where the layer is mounted.
        mountpoint: PathBuf,
        /// Its span manager (metrics, cache).
        spans: Arc<SpanManager>,
        /// The FUSE session; unmounts on drop.
        handle: MountHandle,
    },
    /// Fetched whole and unpacked.
    Unpacked {
        /// The unpacked tree.
        dir: PathBuf,
        /// Why it was not mounted lazily.
        reason: String,
    },
}

/// One mounted layer.
#[derive(Debug)]
pub struct MountedLayer {
    /// The layer's descriptor.
    pub descriptor: Descriptor,
    /// How it is served.
    pub state: LayerState,
    /// Its local state (span cache or unpacked tree).
    local: LayerDir,
    /// Its prefetch artifact's digest and span ranges, when it has one
    /// that was not refused.
    prefetch: Option<(Digest, sochi_spans::PrefetchRanges)>,
}

impl MountedLayer {
    /// The digest of the layer's prefetch artifact, if it has one that was
    /// not refused.
    pub fn prefetch_artifact(&self) -> Option<&Digest> {
        self.prefetch.as_ref().map(|(digest, _)| digest)
    }

    /// The directory overlayfs stacks for this layer.
    pub fn lower_dir(&self) -> &Path {
        match &self.state {
            LayerState::Lazy { mountpoint, .. } => mountpoint,
            LayerState::Unpacked { dir, .. } => dir,
        }
    }
}

/// Where an image is mounted.
#[derive(Clone, Copy, Debug)]
pub enum MountTarget<'a> {
    /// Only the layers, in the state directory.
    LayersOnly,
    /// The overlay of all layers at this path.
    Overlay(&'a Path),
    /// The plan's only layer directly at this path.
    Layer(&'a Path),
}

/// A mounted image.
pub struct ImageMount {
    /// The layers, bottom first.
    pub layers: Vec<MountedLayer>,
    /// Where the overlay is mounted, if it is.
    overlay: Option<PathBuf>,
    stop: Arc<AtomicBool>,
    background: Vec<std::thread::JoinHandle<()>>,
    prefetching: Vec<Arc<sochi_spans::PrefetchJob>>,
    options: MountOptions,
}

impl std::fmt::Debug for ImageMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageMount")
            .field("layers", &self.layers.len())
            .field("overlay", &self.overlay)
            .finish_non_exhaustive()
    }
}

impl ImageMount {
    /// Mounts every layer of `plan` and what `target` asks for. On error
    /// everything mounted so far is unmounted again.
    pub fn mount(
        plan: &ImagePlan,
        client: &Client,
        runtime: &Handle,
        options: MountOptions,
        target: MountTarget<'_>,
    ) -> Result<ImageMount> {
        if matches!(target, MountTarget::Layer(_)) && plan.layers.len() != 1 {
            invalid!(
                "mounting one layer needs a plan of one layer, not {}",
                plan.layers.len()
            );
        }
        let direct = match target {
            MountTarget::Layer(path) => Some(path),
            _ => None,
        };
        let mut image = ImageMount {
            layers: Vec::with_capacity(plan.layers.len()),
            overlay: None,
            stop: Arc::new(AtomicBool::new(false)),
            background: Vec::new(),
            prefetching: Vec::new(),
            options,
        };
        if let Err(error) = image.mount_all(plan, client, runtime, target, direct) {
            // Nothing of a failed mount stays: what was mounted is
            // unmounted and the layers it registered for are let go.
            if let Err(cleanup) = image.unmount(true) {
                tracing::warn!(error = %sochi_format::error_chain(&cleanup), "cleaning up after a failed mount");
            }
            return Err(error);
        }
        image.start_prefetch();
        image.start_background();
        Ok(image)
    }

    fn mount_all(
        &mut self,
        plan: &ImagePlan,
        client: &Client,
        runtime: &Handle,
        target: MountTarget<'_>,
        direct: Option<&Path>,
    ) -> Result<()> {
        for (position, layer) in plan.layers.iter().enumerate() {
            let mounted = self
                .mount_layer(position, layer, &plan.repository, client, runtime, direct)
                .with_context(|| format!("layer {position} ({})", layer.descriptor.digest))?;
            self.layers.push(mounted);
        }
        match target {
            MountTarget::Overlay(path) => {
                let lowers: Vec<&Path> = self
                    .layers
                    .iter()
                    .rev()
                    .map(MountedLayer::lower_dir)
                    .collect();
                crate::overlay::mount_overlay(&lowers, path)?;
                self.overlay = Some(path.to_path_buf());
            }
            MountTarget::Layer(path) => {
                if let Some(MountedLayer {
                    state: LayerState::Unpacked { dir, .. },
                    ..
                }) = self.layers.first()
                {
                    crate::overlay::mount_overlay(&[dir.as_path()], path)?;
                    self.overlay = Some(path.to_path_buf());
                }
            }
            MountTarget::LayersOnly => {}
        }
        Ok(())
    }

    fn mount_layer(
        &self,
        position: usize,
        layer: &PlannedLayer,
        repository: &Reference,
        client: &Client,
        runtime: &Handle,
        direct: Option<&Path>,
    ) -> Result<MountedLayer> {
        let digest = &layer.descriptor.digest;
        let hex = digest_hex(digest)?;
        let Some(ztoc) = &layer.ztoc else {
            let reason = layer
                .no_ztoc_reason
                .clone()
                .unwrap_or_else(|| "no zTOC".into());
            tracing::info!(layer = %digest, %reason, "layer fetched whole and unpacked");
            let state = LayerDir::new(self.options.root.join("layers").join(hex));
            state.register(&self.options.mount_id)?;
            if let Err(error) = self.unpack(layer, repository, client, runtime, &state) {
                state.unregister(&self.options.mount_id, true);
                return Err(error);
            }
            return Ok(MountedLayer {
                descriptor: layer.descriptor.clone(),
                state: LayerState::Unpacked {
                    dir: state.path().join("fs"),
                    reason,
                },
                local: state,
                prefetch: None,
            });
        };
        let state = LayerDir::new(self.options.root.join("cache").join(hex));
        state.register(&self.options.mount_id)?;
        match self.mount_lazy(
            position, layer, ztoc, repository, client, runtime, direct, &state,
        ) {
            Ok(layer_state) => {
                let prefetch = match (&layer.prefetch, &layer_state) {
                    (
                        Some(LayerPrefetch::Refused { reason, .. }),
                        LayerState::Lazy { spans, .. },
                    ) => {
                        spans.metrics().refuse_prefetch(*reason);
                        None
                    }
                    (Some(LayerPrefetch::Ready { artifact, ranges }), _) => {
                        Some((artifact.clone(), ranges.clone()))
                    }
                    _ => None,
                };
                Ok(MountedLayer {
                    descriptor: layer.descriptor.clone(),
                    state: layer_state,
                    local: state,
                    prefetch,
                })
            }
            Err(error) => {
                state.unregister(&self.options.mount_id, true);
                Err(error)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn mount_lazy(
        &self,
        position: usize,
        layer: &PlannedLayer,
        ztoc: &Arc<Ztoc>,
        repository: &Reference,
        client: &Client,
        runtime: &Handle,
        direct: Option<&Path>,
        state: &LayerDir,
    ) -> Result<LayerState> {
        let digest = &layer.descriptor.digest;
        let blob = RegistryBlob::new(
            client.clone(),
            repository.clone(),
            digest.to_string(),
            runtime.clone(),
            self.options.fetch_timeout,
        );
        let config = LayerConfig {
            layer_digest: Some(digest.to_string()),
            layer_size: u64::try_from(layer.descriptor.size).unwrap_or(0),
            verify: self.options.verify,
            threads: self.options.fuse_threads,
            spans: SpanStoreConfig {
                cache_dir: Some(state.path().join("spans")),
                memory_limit: self.options.span_memory.limit(),
                memory: Some(Arc::clone(&self.options.span_memory)),
                disk_limit: self.options.span_cache_limit,
                disk_budget: self.options.span_disk_budget.clone(),
                wait_bound: self.options.fetch_timeout * 2,
            },
        };
        let opened =
            Layer::open(Arc::clone(ztoc), Arc::new(blob), config).context("opening the layer")?;
        let mountpoint = match direct {
            Some(path) => path.to_path_buf(),
            None => {
                let path = self.options.state_dir.join("l").join(position.to_string());
                private_dir(&path)?;
                path
            }
        };
        let handle = match (&self.options.keeper, direct) {
            (Some(keeper), Some(_)) => {
                let (handle, how) = opened
                    .mount_kept(&mountpoint, Arc::clone(keeper), &self.options.mount_id)
                    .with_context(|| format!("mounting the layer at {}", mountpoint.display()))?;
                if how == KeptMount::TakenOver {
                    tracing::info!(layer = %digest, mountpoint = %mountpoint.display(), "took over the kept FUSE connection of a live mount");
                }
                handle
            }
            _ => opened
                .mount(&mountpoint)
                .with_context(|| format!("mounting the layer at {}", mountpoint.display()))?,
        };
        let spans = Arc::clone(opened.spans());
        if let Some(recorder) = &self.options.load_order {
            spans.record_load_order(recorder, digest.as_str());
        }
        tracing::info!(layer = %digest, mountpoint = %mountpoint.display(), spans = spans.span_count(), kept = handle.is_kept(), "layer mounted lazily");
        Ok(LayerState::Lazy {
            mountpoint,
            spans,
            handle,
        })
    }

    /// Fetches a layer whole and unpacks it into `<state>/fs` (once: an
    /// unpacked layer is reused by later mounts), checking its digest and
    /// its `diff_id`. The layer's lock is held meanwhile, so that mounts of
    /// one layer unpack it once; a failed unpack leaves no partial tree.
    fn unpack(
        &self,
        layer: &PlannedLayer,
        repository: &Reference,
        client: &Client,
        runtime: &Handle,
        state: &LayerDir,
    ) -> Result<()> {
        let descriptor = &layer.descriptor;
        let _lock = state.lock()?;
        let fs_dir = state.path().join("fs");
        if state.path().join("complete").exists() && fs_dir.is_dir() {
            return Ok(());
        }
        // With the lock held nobody else is unpacking: any partial tree is
        // a crashed unpack's.
        state.remove_partial_unpacks()?;
        let compression =
            LayerCompression::of_media_type(&descriptor.media_type).with_context(|| {
                format!(
                    "cannot unpack a layer of media type {}",
                    descriptor.media_type
                )
            })?;
        let temp = state.path().join(format!("fs.tmp-{}", std::process::id()));
        private_dir(&temp)?;
        let started = Instant::now();
        let unpacked = (|| {
            let stream = runtime
                .block_on(client.get_blob(repository, &descriptor.digest))
                .with_context(|| format!("fetching layer {}", descriptor.digest))?;
            // The stream checks the blob's digest at its end (naming both);
            // the unpack checks the diff_id.
            let reader = SyncIoBridge::new_with_handle(stream, runtime.clone());
            let expected = ExpectedDigests {
                compressed: None,
                diff_id: Some(&layer.diff_id),
            };
            unpack_layer(reader, compression, &temp, expected)
                .with_context(|| format!("unpacking layer {}", descriptor.digest))
        })();
        let stats = match unpacked {
            Ok(stats) => stats,
            Err(error) => {
                if let Err(cleanup) = fs::remove_dir_all(&temp) {
                    tracing::warn!(dir = %temp.display(), error = %cleanup, "cannot remove a failed unpack");
                }
                return Err(error);
            }
        };
        // The unpacked tree is the layer's own: nobody but root traverses it.
        fs::set_permissions(&temp, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", temp.display()))?;
        if fs_dir.exists() {
            fs::remove_dir_all(&fs_dir)
                .with_context(|| format!("removing {}", fs_dir.display()))?;
        }
        fs::rename(&temp, &fs_dir).with_context(|| format!("renaming {}", temp.display()))?;
        fs::write(state.path().join("complete"), descriptor.digest.as_str())
            .with_context(|| format!("marking {} complete", state.path().display()))?;
        tracing::info!(
            layer = %descriptor.digest,
            entries = stats.entries,
            seconds = started.elapsed().as_secs_f64(),
            "layer unpacked"
        );
        Ok(())
    }

    /// Starts the prefetch of each lazy layer with a prefetch artifact:
    /// its requests go to the image's prefetch queue, which runs them in
    /// priority order across layers with up to `concurrency` in flight
    /// (docs/prefetch.md). The mount does not wait for it.
    fn start_prefetch(&mut self) {
        let Some(options) = self.options.prefetch.clone() else {
            return;
        };
        let queue = self
            .options
            .prefetch_queue
            .clone()
            .unwrap_or_else(|| sochi_spans::PrefetchQueue::new(options));
        for layer in &self.layers {
            let (LayerState::Lazy { spans, .. }, Some((artifact, ranges))) =
                (&layer.state, &layer.prefetch)
            else {
                continue;
            };
            let metrics = Arc::clone(spans.metrics());
            metrics
                .prefetch_state
                .store(PREFETCH_RUNNING, Ordering::Relaxed);
            let (artifact, digest, started) = (
                artifact.clone(),
                layer.descriptor.digest.clone(),
                Instant::now(),
            );
            let job = queue.submit(
                Arc::clone(spans),
                ranges,
                Arc::clone(&self.stop),
                move |outcome| match outcome {
                    Ok(()) => {
                        metrics.prefetch_state.store(PREFETCH_DONE, Ordering::Relaxed);
                        tracing::info!(layer = %digest, %artifact, spans = LayerMetrics::get(&metrics.prefetch_spans), seconds = started.elapsed().as_secs_f64(), "layer prefetched");
                    }
                    Err(error) => {
                        metrics.prefetch_state.store(PREFETCH_FAILED, Ordering::Relaxed);
                        if !matches!(error, sochi_spans::Error::Stopped) {
                            tracing::warn!(layer = %digest, %artifact, error = %sochi_format::error_chain(&error), "prefetch failed; reads fetch what they need");
                        }
                    }
                },
            );
            self.prefetching.push(job);
        }
    }

    /// Starts the background fetch of the lazy layers, bottom first; a
    /// layer being prefetched is fetched once its prefetch has ended.
    fn start_background(&mut self) {
        let Some(options) = self.options.background.clone() else {
            return;
        };
        let work: Arc<Vec<(Arc<SpanManager>, Digest, u64)>> = Arc::new(
            self.layers
                .iter()
                .filter_map(|layer| match &layer.state {
                    LayerState::Lazy { spans, .. } => Some((
                        Arc::clone(spans),
                        layer.descriptor.digest.clone(),
                        u64::try_from(layer.descriptor.size).unwrap_or(0),
                    )),
                    LayerState::Unpacked { .. } => None,
                })
                .collect(),
        );
        let next = Arc::new(AtomicUsize::new(0));
        for _ in 0..self.options.background_jobs.max(1).min(work.len()) {
            let (work, next, stop, options) = (
                Arc::clone(&work),
                Arc::clone(&next),
                Arc::clone(&self.stop),
                options.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name("sochi-bg-fetch".into())
                .spawn(move || {
                    while let Some((spans, digest, size)) = work.get(next.fetch_add(1, Ordering::Relaxed)) {
                        while spans.metrics().prefetch_state.load(Ordering::Relaxed) == PREFETCH_RUNNING {
                            if stop.load(Ordering::Relaxed) {
                                return;
                            }
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        let started = Instant::now();
                        match spans.fetch_all(digest, *size, &options, &stop) {
                            Ok(()) => tracing::info!(layer = %digest, seconds = started.elapsed().as_secs_f64(), "layer fetched and verified"),
                            Err(sochi_spans::Error::Stopped) => return,
                            Err(error) => {
                                LayerMetrics::add(&spans.metrics().background_failures, 1);
                                tracing::error!(layer = %digest, error = %sochi_format::error_chain(&error), "background fetch failed");
                            }
                        }
                    }
                });
            match spawned {
                Ok(handle) => self.background.push(handle),
                Err(error) => tracing::warn!(%error, "cannot start the background fetch"),
            }
        }
    }

    /// Whether this mount prefetches the layers' prefetch artifacts.
    pub fn prefetches(&self) -> bool {
        self.options.prefetch.is_some()
    }

    /// The Prometheus text of every lazy layer, plus image-level counts.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        self.render_layer_metrics(out);
        let lazy = self
            .layers
            .iter()
            .filter(|l| matches!(l.state, LayerState::Lazy { .. }))
            .count();
        let _ = writeln!(out, "sochi_image_layers{{kind=\"lazy\"}} {lazy}");
        let _ = writeln!(
            out,
            "sochi_image_layers{{kind=\"unpacked\"}} {}",
            self.layers.len() - lazy
        );
    }

    /// The Prometheus text of every lazy layer.
    pub fn render_layer_metrics(&self, out: &mut String) {
        for layer in &self.layers {
            if let LayerState::Lazy { spans, .. } = &layer.state {
                let labels = format!("layer=\"{}\"", layer.descriptor.digest);
                spans.metrics().render(
                    out,
                    &labels,
                    spans.span_count() as u64,
                    u64::try_from(layer.descriptor.size).unwrap_or(0),
                );
            }
        }
    }

    /// Stops serving but leaves the layers whose FUSE connection the keeper
    /// holds mounted, and the overlays of unpacked layers too (a daemon
    /// exiting for a restart: running containers keep their layers, and
    /// the next daemon takes the connections over). Layers not kept are
    /// unmounted.
    pub fn leave(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for handle in self.background.drain(..) {
            let _ = handle.join();
        }
        for job in self.prefetching.drain(..) {
            job.wait();
        }
        if self.options.keeper.is_some() {
            // Unpacked layers' overlays stay for the containers on them.
            self.overlay = None;
        }
        for layer in self.layers.drain(..) {
            if let LayerState::Lazy { handle, .. } = layer.state {
                handle.leave();
            }
        }
    }

    /// Unmounts the overlay (if mounted here) and every layer, stops the
    /// background fetch and, with `release`, deletes the local state of
    /// the layers no other mount uses.
    pub fn unmount(mut self, release: bool) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        let mut first_error = None;
        if let Some(target) = self.overlay.take() {
            if let Err(error) = crate::overlay::unmount(&target) {
                first_error.get_or_insert(error);
            }
        }
        for handle in self.background.drain(..) {
            let _ = handle.join();
        }
        // A request in flight ends with its range read (bounded by the
        // fetch timeout); queued ones are dropped once `stop` is set.
        for job in self.prefetching.drain(..) {
            job.wait();
        }
        for layer in self.layers.drain(..) {
            if let LayerState::Lazy {
                mountpoint, handle, ..
            } = layer.state
            {
                drop(handle);
                if mountpoint.starts_with(&self.options.state_dir) {
                    let _ = fs::remove_dir(&mountpoint);
                }
            }
            // This mount no longer uses the layer's state, kept or not.
            layer.local.unregister(&self.options.mount_id, release);
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

impl Drop for ImageMount {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(target) = self.overlay.take() {
            let _ = crate::overlay::unmount(&target);
        }
    }
}

/// The hex of a `sha256:` digest, refusing anything that could not be a
/// single path component.
fn digest_hex(digest: &str) -> Result<&str> {
    match digest.split_once(':') {
        Some((_, hex)) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(hex),
        _ => invalid!("layer digest {digest:?} is not algorithm:hex"),
    }
}
