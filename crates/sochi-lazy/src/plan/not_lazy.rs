//! Why a planned layer is not lazy, in words (the reason `sochi mount
//! --json` and `sochi snapshotter layers` show) and as a counter
//! (`sochi_layers_not_lazy_total{why}`).
//!
//! None of these fails a mount: a layer without a usable zTOC is fetched
//! whole and unpacked (or, in the snapshotter, an image without an index
//! is handed to containerd). Copies of an image are the usual cause of the
//! unusual ones: `skopeo copy` with recompression keeps the image
//! manifest's index annotation although the layers changed and the index
//! stayed behind (issue 16).
//!
//! The counters are process-wide because plans are made by free functions
//! that both the mount daemon and the snapshotter call; each of those
//! renders them with its own metrics.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use sochi_format::{Descriptor, LayerCompression};

/// The reason of a zstd layer: no zTOC describes zstd (docs/zstd.md).
pub(crate) const ZSTD_REASON: &str = "zstd layer: no zTOC (the reference cannot index zstd)";

/// Why a layer is planned to be unpacked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NotLazy {
    /// The image has no SOCI index.
    NoIndex,
    /// The image names a SOCI index the repository does not have.
    IndexMissing,
    /// The index names none of the image's layers: it was made for other
    /// layer blobs.
    IndexStale,
    /// The index has no zTOC for the layer (a small layer).
    NoZtoc,
    /// The index's zTOC for the layer does not describe it, or is not in
    /// the repository.
    ZtocMismatch,
    /// A zstd layer, which no zTOC describes.
    Zstd,
    /// A zstd:chunked layer whose table of contents cannot serve it.
    ChunkedToc,
}

impl NotLazy {
    const ALL: [NotLazy; 7] = [
        NotLazy::NoIndex,
        NotLazy::IndexMissing,
        NotLazy::IndexStale,
        NotLazy::NoZtoc,
        NotLazy::ZtocMismatch,
        NotLazy::Zstd,
        NotLazy::ChunkedToc,
    ];

    /// The `why` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            NotLazy::NoIndex => "no_index",
            NotLazy::IndexMissing => "index_missing",
            NotLazy::IndexStale => "index_stale",
            NotLazy::NoZtoc => "no_ztoc",
            NotLazy::ZtocMismatch => "ztoc_mismatch",
            NotLazy::Zstd => "zstd",
            NotLazy::ChunkedToc => "chunked_toc",
        }
    }

    fn counter(self) -> &'static AtomicU64 {
        // One per variant, indexed by the discriminant (as in ALL).
        static COUNTS: [AtomicU64; NotLazy::ALL.len()] =
            [const { AtomicU64::new(0) }; NotLazy::ALL.len()];
        &COUNTS[self as usize]
    }
}

/// Whether `layer` is zstd-compressed (by its media type).
pub(crate) fn is_zstd(layer: &Descriptor) -> bool {
    LayerCompression::of_media_type(&layer.media_type) == Some(LayerCompression::Zstd)
}

/// Counts a layer of `layer`'s kind planned without a zTOC for `why`, and
/// returns the reason to show. A zstd layer says so first (then what else
/// is true of the image, but "no zTOC" for it), and counts as `zstd`
/// unless something is wrong with the index (a missing or stale index, a
/// zTOC that does not fit, counted as such).
pub(crate) fn not_lazy(layer: &Descriptor, why: NotLazy, detail: &str) -> String {
    let zstd = is_zstd(layer);
    let counted = match why {
        NotLazy::NoIndex | NotLazy::NoZtoc if zstd => NotLazy::Zstd,
        other => other,
    };
    counted.counter().fetch_add(1, Ordering::Relaxed);
    match (zstd, why) {
        (true, NotLazy::NoZtoc | NotLazy::Zstd) => ZSTD_REASON.to_string(),
        (true, _) => format!("{ZSTD_REASON}; {detail}"),
        (false, _) => detail.to_string(),
    }
}

/// Appends `sochi_layers_not_lazy_total` in the Prometheus text format.
pub fn render_plan_metrics(out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP sochi_layers_not_lazy_total Layers planned to be fetched whole and unpacked, by why (no_index, index_missing, index_stale, no_ztoc, ztoc_mismatch, zstd, chunked_toc)."
    );
    let _ = writeln!(out, "# TYPE sochi_layers_not_lazy_total counter");
    for kind in NotLazy::ALL {
        let _ = writeln!(
            out,
            "sochi_layers_not_lazy_total{{why=\"{}\"}} {}",
            kind.label(),
            kind.counter().load(Ordering::Relaxed)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sochi_format::media_types;

    fn layer(media_type: &str) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            ..Descriptor::of(media_type, b"layer")
        }
    }

    fn count(kind: NotLazy) -> u64 {
        kind.counter().load(Ordering::Relaxed)
    }

    #[test]
    fn zstd_layers_say_so_and_index_problems_stay_counted_as_such() {
        let gzip = layer(media_types::OCI_LAYER_GZIP);
        let zstd = layer(media_types::OCI_LAYER_ZSTD);
        assert_eq!(not_lazy(&gzip, NotLazy::NoZtoc, "small"), "small");
        assert_eq!(not_lazy(&zstd, NotLazy::NoZtoc, "small"), ZSTD_REASON);
        let no_index = not_lazy(&zstd, NotLazy::NoIndex, "no index");
        assert_eq!(no_index, format!("{ZSTD_REASON}; no index"));
        let missing = not_lazy(&zstd, NotLazy::IndexMissing, "index gone");
        assert_eq!(missing, format!("{ZSTD_REASON}; index gone"));

        // Counters are process-wide (other tests plan too): they only grow.
        let before = count(NotLazy::IndexMissing);
        not_lazy(&zstd, NotLazy::IndexMissing, "index gone");
        assert!(count(NotLazy::IndexMissing) > before);
        let before = count(NotLazy::Zstd);
        not_lazy(&zstd, NotLazy::NoIndex, "none");
        assert!(count(NotLazy::Zstd) > before);
        let mut out = String::new();
        render_plan_metrics(&mut out);
        for kind in NotLazy::ALL {
            let line = format!("sochi_layers_not_lazy_total{{why=\"{}\"}} ", kind.label());
            assert!(out.contains(&line), "{out}");
        }
    }
}
