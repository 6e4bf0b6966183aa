//! Directories the tests build once and keep between runs (oracle root
//! filesystems, recompressed images): built once per process, and safely
//! when several test processes build the same one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// Returns `dest`, built by `build` if it is not complete yet. `build`
/// fills a temporary directory beside `dest` (its argument, not created
/// yet) and writes `complete` (a path relative to it) last; the directory
/// is then renamed into place. Later callers in this process wait for the
/// first; another process building the same `dest` loses the rename and
/// uses the winner's. `what` names it in the progress line.
#[track_caller]
pub fn build_once(dest: &Path, complete: &str, what: &str, build: impl FnOnce(&Path)) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<PathBuf, Arc<OnceLock<()>>>>> = OnceLock::new();
    let cell = {
        let mut built = match BUILT.get_or_init(Default::default).lock() {
            Ok(built) => built,
            Err(poisoned) => poisoned.into_inner(),
        };
        Arc::clone(built.entry(dest.to_path_buf()).or_default())
    };
    cell.get_or_init(|| {
        if dest.join(complete).exists() {
            return;
        }
        let (Some(parent), Some(name)) = (dest.parent(), dest.file_name()) else {
            panic!("{} has no parent directory", dest.display());
        };
        if let Err(err) = std::fs::create_dir_all(parent) {
            panic!("creating {}: {err}", parent.display());
        }
        let temp = parent.join(format!(
            ".{}.tmp-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&temp);
        let started = Instant::now();
        build(&temp);
        if !temp.join(complete).exists() {
            panic!("building {what} left no {}", temp.join(complete).display());
        }
        if std::fs::rename(&temp, dest).is_err() {
            let _ = std::fs::remove_dir_all(&temp);
            if !dest.join(complete).exists() {
                panic!("could not put {what} at {}", dest.display());
            }
        }
        eprintln!(
            "sochi-e2e: {what} at {} ({:.1} s)",
            dest.display(),
            started.elapsed().as_secs_f64()
        );
    });
    dest.to_path_buf()
}
