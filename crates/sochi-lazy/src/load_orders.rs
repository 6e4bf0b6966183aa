//! Recorded load orders on disk, and the recorders of the images being
//! recorded (docs/prefetch.md).
//!
//! A recording is written when it ends, to `<root>/load-orders/<manifest
//! hex>.json` (a snapshotter) or to the file `sochi mount
//! --record-load-order` names. The first complete recording of an image
//! is kept: a later start of the same image mounts only the layers it
//! does not share with a running one, and would record less.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sochi_format::LoadOrder;
use sochi_spans::{LoadRecorder, RecordEnd, RecordOptions};

use crate::error::{Context, Result};
use crate::local_state::private_dir;

/// Where a root keeps its load orders.
pub fn load_order_dir(root: &Path) -> PathBuf {
    root.join("load-orders")
}

/// Writes `order` to `path` whole (through a rename). Unless `replace`, a
/// complete recording already there is kept (a later start, after a
/// restart or with some layers mounted already, may record less).
pub fn write_load_order(path: &Path, order: &LoadOrder, replace: bool) -> Result<()> {
    if !replace {
        let existing = std::fs::read(path)
            .ok()
            .and_then(|bytes| LoadOrder::from_bytes(&bytes).ok());
        if existing.is_some_and(|existing| existing.complete) {
            tracing::info!(path = %path.display(), "a complete load order is kept; this incomplete one is not written");
            return Ok(());
        }
    }
    let temp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&temp, order.to_bytes())
        .and_then(|()| std::fs::rename(&temp, path))
        .with_context(|| format!("writing the load order {}", path.display()))?;
    Ok(())
}

/// The newest load order under `root` recorded for `image` (a reference
/// as the recording named it, or a manifest digest).
pub fn find_load_order(root: &Path, image: &str) -> Result<Option<(PathBuf, LoadOrder)>> {
    let dir = load_order_dir(root);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("reading {}", dir.display())),
    };
    let mut newest: Option<(std::time::SystemTime, PathBuf, LoadOrder)> = None;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let Ok(order) = std::fs::read(&path).map_err(|_| ()).and_then(|bytes| {
            LoadOrder::from_bytes(&bytes).map_err(|error| {
                tracing::warn!(path = %path.display(), error = %sochi_format::error_chain(&error), "not a load order");
            })
        }) else {
            continue;
        };
        if order.image != image && order.manifest.as_deref() != Some(image) {
            continue;
        }
        let modified = entry
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH);
        if newest.as_ref().is_none_or(|(when, _, _)| modified > *when) {
            newest = Some((modified, path, order));
        }
    }
    Ok(newest.map(|(_, path, order)| (path, order)))
}

/// The recorders of a snapshotter: one per image manifest, from its first
/// layer mount until it ends; each is written under the root when it does.
#[derive(Debug)]
pub struct LoadRecorders {
    root: PathBuf,
    options: RecordOptions,
    recording: Mutex<HashMap<String, Arc<LoadRecorder>>>,
    /// Manifests recorded already by this process (not recorded again).
    recorded: Mutex<std::collections::HashSet<String>>,
}

impl LoadRecorders {
    /// Recorders writing under `root`, ending by `options`, with a thread
    /// that ends and writes them (every half second) until `stop` is set.
    pub fn start(root: &Path, options: RecordOptions, stop: Arc<AtomicBool>) -> Arc<LoadRecorders> {
        let recorders = Arc::new(LoadRecorders {
            root: root.to_path_buf(),
            options,
            recording: Mutex::new(HashMap::new()),
            recorded: Mutex::new(std::collections::HashSet::new()),
        });
        let weak = Arc::downgrade(&recorders);
        let spawned = std::thread::Builder::new()
            .name("sochi-load-order".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(500));
                    match weak.upgrade() {
                        Some(recorders) => recorders.poll(),
                        None => return,
                    }
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start the load order thread: recordings end only at shutdown");
        }
        recorders
    }

    /// The recorder of image `manifest` (`image` its reference), started
    /// now if it has none; `None` once it was recorded.
    pub fn recorder(&self, image: &str, manifest: &str) -> Option<Arc<LoadRecorder>> {
        if self.recorded.lock().contains(manifest) {
            return None;
        }
        let mut recording = self.recording.lock();
        let recorder = recording.entry(manifest.to_string()).or_insert_with(|| {
            tracing::info!(image, manifest, "recording the load order");
            LoadRecorder::new(image, Some(manifest), self.options.clone())
        });
        Some(Arc::clone(recorder))
    }

    /// Ends the recordings whose bounds say so, and writes them.
    pub fn poll(&self) {
        let ended: Vec<(String, Arc<LoadRecorder>)> = {
            let mut recording = self.recording.lock();
            let ended: Vec<String> = recording
                .iter()
                .filter(|(_, recorder)| recorder.poll().is_some())
                .map(|(manifest, _)| manifest.clone())
                .collect();
            ended
                .into_iter()
                .filter_map(|m| recording.remove(&m).map(|r| (m, r)))
                .collect()
        };
        for (manifest, recorder) in ended {
            self.recorded.lock().insert(manifest.clone());
            self.write(&manifest, &recorder);
        }
    }

    /// Ends every recording (shutdown) and writes it.
    pub fn end_all(&self) {
        let all: Vec<(String, Arc<LoadRecorder>)> = self.recording.lock().drain().collect();
        for (manifest, recorder) in all {
            recorder.end(RecordEnd::Shutdown);
            self.write(&manifest, &recorder);
        }
    }

    fn write(&self, manifest: &str, recorder: &LoadRecorder) {
        let order = recorder.load_order();
        if order.runs.is_empty() {
            return;
        }
        let dir = load_order_dir(&self.root);
        let hex = manifest.rsplit(':').next().unwrap_or(manifest);
        let path = dir.join(format!("{hex}.json"));
        let written = private_dir(&dir).and_then(|()| write_load_order(&path, &order, false));
        match written {
            Ok(()) => {
                tracing::info!(image = %order.image, path = %path.display(), runs = order.runs.len(), ended = %order.ended, "load order written")
            }
            Err(error) => {
                tracing::warn!(image = %order.image, error = %sochi_format::error_chain(&error), "cannot write the load order")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(image: &str, complete: bool) -> LoadOrder {
        LoadOrder {
            version: sochi_format::LOAD_ORDER_VERSION,
            image: image.into(),
            manifest: Some(format!("sha256:{}", "c".repeat(64))),
            complete,
            ..LoadOrder::default()
        }
    }

    #[test]
    fn a_complete_recording_is_kept_and_found_by_image_or_manifest() {
        let root = tempfile::tempdir().unwrap();
        let dir = load_order_dir(root.path());
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.json");
        write_load_order(&path, &order("reg/app:1", false), false).unwrap();
        write_load_order(&path, &order("reg/app:1", true), false).unwrap();
        let mut later = order("reg/app:1", true);
        later.duration_ms = 7;
        write_load_order(&path, &later, false).unwrap();
        let (found, kept) = find_load_order(root.path(), "reg/app:1").unwrap().unwrap();
        assert_eq!(found, path);
        assert!(kept.complete, "a complete one replaced the incomplete one");
        assert_eq!(kept.duration_ms, 0, "the first complete one is kept");
        let manifest = format!("sha256:{}", "c".repeat(64));
        assert!(find_load_order(root.path(), &manifest).unwrap().is_some());
        assert!(find_load_order(root.path(), "reg/other:1")
            .unwrap()
            .is_none());
        std::fs::write(dir.join("junk.json"), b"{").unwrap();
        assert!(find_load_order(root.path(), "reg/app:1").unwrap().is_some());
    }
}
