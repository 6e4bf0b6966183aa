//! Layers sochi provides itself: found through the image's SOCI index and
//! mounted lazily over FUSE, or (no zTOC for that layer) fetched whole and
//! unpacked by sochi (docs/format.md §6.3, steps 2 and 3).
//!
//! Image plans (index and zTOCs) are cached per image manifest; a lookup
//! that found no index is forgotten after `no_index_ttl`, so an index
//! pushed later is seen without a restart (the reference caches the miss
//! until it restarts).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sochi_format::Digest;
use sochi_fs::Keeper;
use sochi_lazy::{ImageMount, ImagePlan, LayerState, MountOptions, MountTarget};
use sochi_registry::{Client, DiscoveryOptions, Reference};
use tokio::runtime::Handle;

use crate::config::Config;
use crate::decision::{LayerRequest, Offer};

/// What became of a request to provide a layer.
#[derive(Debug)]
pub enum Outcome {
    /// Mounted at the snapshot's `fs` dir: `lazy` or `unpacked`.
    Provided {
        /// `lazy` or `unpacked`.
        mode: &'static str,
        /// The SOCI index used.
        index: Option<Digest>,
        /// Why the layer is not lazy (when unpacked).
        reason: Option<String>,
    },
    /// The image has no SOCI index: containerd pulls it.
    NoIndex,
    /// Something failed: containerd pulls the layer.
    Failed(String),
}

type PlanResult = Result<Arc<ImagePlan>, PlanFailure>;

/// Why an image could not be planned.
#[derive(Clone, Debug)]
struct PlanFailure {
    /// The error chain.
    reason: String,
    /// The registry wanted credentials sochi does not have. Not cached: a
    /// pull through the CRI image service may bring them any moment.
    no_credentials: bool,
}

impl PlanFailure {
    fn of(error: &(dyn std::error::Error + 'static)) -> PlanFailure {
        let mut no_credentials = false;
        let mut cause = Some(error);
        while let Some(e) = cause {
            let registry = e
                .downcast_ref::<sochi_registry::Error>()
                .or_else(|| e.downcast_ref::<Box<sochi_registry::Error>>().map(|b| &**b));
            if matches!(registry, Some(sochi_registry::Error::NoCredentials { .. })) {
                no_credentials = true;
            }
            cause = e.source();
        }
        PlanFailure {
            reason: sochi_format::error_chain(error),
            no_credentials,
        }
    }
}

/// What a snapshot's layer mount is called among the users of a layer's
/// local state and in the FUSE keeper.
pub fn mount_id(id: u64) -> String {
    format!("{USER_PREFIX}{id}")
}

/// The prefix of [`mount_id`]s, for the start-up sweep.
pub const USER_PREFIX: &str = "snapshot-";

/// Provides layers and keeps their mounts.
pub struct RemoteLayers {
    client: Client,
    runtime: Handle,
    root: PathBuf,
    config: Arc<Config>,
    plans: Mutex<HashMap<String, (Instant, PlanResult)>>,
    mounts: Mutex<HashMap<u64, ImageMount>>,
    /// The spans in memory of all layers: `[directory_cache] memory_bytes`
    /// for the node, not per layer.
    span_memory: Arc<sochi_spans::SpanMemory>,
    /// The span caches on disk of all layers: `[directory_cache]
    /// max_bytes` for the node.
    span_disk: Option<Arc<sochi_spans::DiskBudget>>,
    keeper: Option<Arc<Keeper>>,
    /// The load orders being recorded, one per image (`[load_order]`).
    load_orders: Option<Arc<sochi_lazy::LoadRecorders>>,
    /// One prefetch queue per image manifest, shared by its layers' mounts
    /// (a load order's priorities run across layers).
    prefetch_queues: Mutex<HashMap<String, std::sync::Weak<sochi_spans::PrefetchQueue>>>,
}

impl RemoteLayers {
    /// Layers read through `client` on `runtime`, local state under `root`.
    /// With `keeper`, lazy layers' FUSE connections are handed to it.
    pub fn new(
        client: Client,
        runtime: Handle,
        root: PathBuf,
        config: Arc<Config>,
        keeper: Option<Arc<Keeper>>,
    ) -> RemoteLayers {
        let span_memory = sochi_spans::SpanMemory::new(config.directory_cache.memory_bytes);
        let span_disk = config
            .directory_cache
            .max_bytes
            .map(sochi_spans::DiskBudget::new);
        let load_orders = config.load_order.options().map(|options| {
            let never = Arc::new(std::sync::atomic::AtomicBool::new(false));
            sochi_lazy::LoadRecorders::start(&root, options, never)
        });
        RemoteLayers {
            client,
            runtime,
            root,
            config,
            load_orders,
            prefetch_queues: Mutex::new(HashMap::new()),
            plans: Mutex::new(HashMap::new()),
            mounts: Mutex::new(HashMap::new()),
            span_memory,
            span_disk,
            keeper,
        }
    }

    /// Whether the keeper holds the FUSE connection of snapshot `id`'s
    /// layer (a mount a previous process left for this one to take over).
    pub fn is_kept(&self, id: u64) -> bool {
        self.keeper
            .as_ref()
            .is_some_and(|keeper| matches!(keeper.get(&mount_id(id)), Ok(Some(_))))
    }

    /// The plan of an image, from the cache or the registry. Blocking.
    fn plan(&self, request: &LayerRequest) -> PlanResult {
        let ttl = Duration::from_secs(self.config.no_index_ttl_sec);
        if let Some((when, cached)) = self.plans.lock().get(request.manifest.as_str()) {
            let fresh = match cached {
                Ok(plan) => plan.index.is_some() || when.elapsed() < ttl,
                Err(_) => when.elapsed() < ttl,
            };
            if fresh {
                return cached.clone();
            }
        }
        let result = self.fetch_plan(request);
        if matches!(&result, Err(failure) if failure.no_credentials) {
            return result;
        }
        self.plans.lock().insert(
            request.manifest.clone().to_string(),
            (Instant::now(), result.clone()),
        );
        result
    }

    fn fetch_plan(&self, request: &LayerRequest) -> PlanResult {
        let repository = Reference::parse(&request.image_ref).map_err(|e| PlanFailure {
            reason: format!("image reference {:?}: {e}", request.image_ref),
            no_credentials: false,
        })?;
        let discovery = DiscoveryOptions {
            v1: self.config.pull_modes.soci_v1.enable,
            v2: self.config.pull_modes.soci_v2.enable,
            explicit_index: request.index.as_ref().map(ToString::to_string),
        };
        let cache = self.root.join("artifact-cache");
        let plan = self.runtime.block_on(sochi_lazy::plan_image_manifest(
            &self.client,
            &repository,
            &request.manifest,
            &discovery,
            Some(&cache),
        ));
        plan.map(Arc::new).map_err(|e| PlanFailure::of(&e))
    }

    /// What the image of `request` offers for its layer (the plan is
    /// fetched once and cached). Blocking.
    pub fn offer(&self, request: &LayerRequest) -> Offer {
        let plan = match self.plan(request) {
            Ok(plan) => plan,
            Err(failure) if failure.no_credentials => return Offer::NoCredentials(failure.reason),
            Err(failure) => return Offer::PlanFailed(failure.reason),
        };
        // Without an index only zstd:chunked layers can be lazy; an image
        // with none is containerd's to pull.
        if plan.index.is_none() && plan.lazy_layers() == 0 {
            return Offer::NoIndex(plan.index_problem.clone());
        }
        match plan
            .layers
            .iter()
            .find(|l| l.descriptor.digest == request.layer)
        {
            None => Offer::LayerNotInImage,
            Some(layer) if layer.ztoc.is_some() => Offer::Ztoc,
            Some(layer) => Offer::NoZtoc(
                layer
                    .no_ztoc_reason
                    .clone()
                    .unwrap_or_else(|| "no zTOC".into()),
            ),
        }
    }

    /// Provides layer `request` for snapshot `id` at `fs_dir`. Blocking.
    pub fn provide(
        &self,
        id: u64,
        state_dir: &Path,
        fs_dir: &Path,
        request: &LayerRequest,
    ) -> Outcome {
        let plan = match self.plan(request) {
            Ok(plan) => plan,
            Err(failure) => return Outcome::Failed(failure.reason),
        };
        if plan.index.is_none() && plan.lazy_layers() == 0 {
            return Outcome::NoIndex;
        }
        let Some(layer) = plan
            .layers
            .iter()
            .find(|l| l.descriptor.digest == request.layer)
        else {
            return Outcome::Failed(format!(
                "layer {} is not in image {}",
                request.layer, request.manifest
            ));
        };
        let single = ImagePlan {
            layers: vec![layer.clone()],
            ..(*plan).clone()
        };
        let options = MountOptions {
            root: self.root.clone(),
            state_dir: state_dir.to_path_buf(),
            mount_id: mount_id(id),
            verify: !self.config.fuse.disable_verification,
            background: (!self.config.background_fetch.disable).then(|| {
                sochi_spans::BackgroundOptions {
                    idle: Duration::from_millis(self.config.background_fetch.idle_msec),
                    start_delay: Duration::from_millis(
                        self.config.background_fetch.silence_period_msec,
                    ),
                    ..sochi_spans::BackgroundOptions::default()
                }
            }),
            background_jobs: 1,
            prefetch: self.config.prefetch.options(),
            prefetch_queue: self.prefetch_queue(request),
            fetch_timeout: Duration::from_secs(self.config.blob.fetching_timeout_sec.max(1)),
            fuse_threads: self.config.fuse.threads.max(1),
            span_cache_limit: None,
            span_disk_budget: self.span_disk.clone(),
            span_memory: Arc::clone(&self.span_memory),
            keeper: self.keeper.clone(),
            load_order: self.load_orders.as_ref().and_then(|recorders| {
                recorders.recorder(&request.image_ref, request.manifest.as_str())
            }),
        };
        match ImageMount::mount(
            &single,
            &self.client,
            &self.runtime,
            options,
            MountTarget::Layer(fs_dir),
        ) {
            Ok(mount) => {
                let (mode, reason) = match mount.layers.first().map(|l| &l.state) {
                    Some(LayerState::Unpacked { reason, .. }) => ("unpacked", Some(reason.clone())),
                    _ => ("lazy", None),
                };
                self.mounts.lock().insert(id, mount);
                Outcome::Provided {
                    mode,
                    index: plan.index.as_ref().map(|index| index.digest.clone()),
                    reason,
                }
            }
            Err(error) => Outcome::Failed(sochi_format::error_chain(&error)),
        }
    }

    /// The prefetch queue of the image of `request`, shared with the
    /// mounts of its other layers while any of them lives.
    fn prefetch_queue(&self, request: &LayerRequest) -> Option<Arc<sochi_spans::PrefetchQueue>> {
        let options = self.config.prefetch.options()?;
        let mut queues = self.prefetch_queues.lock();
        queues.retain(|_, queue| queue.strong_count() > 0);
        let key = request.manifest.to_string();
        if let Some(queue) = queues.get(&key).and_then(std::sync::Weak::upgrade) {
            return Some(queue);
        }
        let queue = sochi_spans::PrefetchQueue::new(options);
        queues.insert(key, Arc::downgrade(&queue));
        Some(queue)
    }

    /// Whether snapshot `id` has a mount here.
    pub fn is_mounted(&self, id: u64) -> bool {
        self.mounts.lock().contains_key(&id)
    }

    /// Unmounts snapshot `id`'s layer and releases its local state if no
    /// other snapshot uses it. Blocking.
    pub fn release(&self, id: u64) {
        let mount = self.mounts.lock().remove(&id);
        if let Some(mount) = mount {
            if let Err(error) = mount.unmount(true) {
                tracing::warn!(id, error = %sochi_format::error_chain(&error), "releasing a layer");
            }
        }
    }

    /// Shutdown: with a keeper, leaves every layer mounted for the next
    /// process to take over; without, unmounts every layer (not
    /// releasing its local state).
    pub fn unmount_all(&self) {
        if let Some(recorders) = &self.load_orders {
            recorders.end_all();
        }
        let mounts: Vec<ImageMount> = self.mounts.lock().drain().map(|(_, m)| m).collect();
        for mount in mounts {
            if self.keeper.is_some() {
                mount.leave();
            } else if let Err(error) = mount.unmount(false) {
                tracing::warn!(error = %sochi_format::error_chain(&error), "unmounting a layer");
            }
        }
    }

    /// Prometheus text of every mounted layer.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        for mount in self.mounts.lock().values() {
            mount.render_layer_metrics(out);
        }
        let memory = &self.span_memory;
        let mut gauges = vec![
            (
                "sochi_span_memory_bytes",
                "Uncompressed spans held in memory, all layers together.",
                memory.bytes(),
            ),
            (
                "sochi_span_memory_limit_bytes",
                "The node's span memory budget ([directory_cache] memory_bytes).",
                memory.limit(),
            ),
        ];
        if let Some(disk) = &self.span_disk {
            gauges.push((
                "sochi_span_disk_bytes",
                "Uncompressed spans in the on-disk caches, all layers together.",
                disk.bytes(),
            ));
            gauges.push((
                "sochi_span_disk_limit_bytes",
                "The node's span disk budget ([directory_cache] max_bytes).",
                disk.limit(),
            ));
        }
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
    }
}
