//! Lazy images: an image in a registry, mounted without pulling it.
//!
//! - [`plan_image`] resolves an image for a platform, finds its SOCI index
//!   (v2 annotation, then v1 referrers or fallback tag; docs/format.md §5.2) and
//!   fetches the zTOC of each indexed layer.
//! - [`ImageMount::mount`] mounts each layer with a zTOC over FUSE, reading
//!   its spans from the registry through a [`RegistryBlob`] (bounded range
//!   reads) and fetching the rest in the background; each layer without a
//!   zTOC is fetched whole and unpacked ([`unpack`]); an overlay stacks
//!   them read-only.
//! - [`LoadRecorders`] record which spans each image's start reads
//!   (load orders), written under the root when a recording ends.
//! - [`serve_metrics`] publishes the layers' counters for Prometheus, and
//!   [`render_plan_metrics`] why layers were planned to be unpacked.

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub use blob::{RegistryBlob, DEFAULT_FETCH_TIMEOUT};
pub use daemon::{
    daemon_alive, daemon_lock, is_mounted, process_start_time, serve_image_mount,
    serve_local_layer, state_dir, unmount_image, ImageMountRequest, LayerInfo, MountState,
    Unmounted,
};
pub use error::{Error, Result};
pub use load_orders::{find_load_order, load_order_dir, write_load_order, LoadRecorders};
pub use local_state::{
    private_dir, root_dir, sweep_layer_state, FileLock, SweepReport, PRIVATE_DIR_MODE,
};
pub use metrics_server::serve_metrics;
pub use mount::{ImageMount, LayerState, MountOptions, MountTarget, MountedLayer};
pub use overlay::{mount_overlay, unmount};
pub use plan::{
    plan_image, plan_image_manifest, render_plan_metrics, ImagePlan, IndexSource, PlannedLayer,
};

mod blob;
mod daemon;
mod error;
mod load_orders;
mod local_state;
mod metrics_server;
mod mount;
mod overlay;
mod plan;
pub mod unpack;
