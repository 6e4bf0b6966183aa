//! `TestImages`: the OCI image layouts of `scripts/build-test-images.sh`
//! (busybox, debian-python, edgecase), each built at most once per test
//! process and on first use, and pushed to a [`Registry`] with skopeo.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use sha2::{Digest, Sha256};

use crate::layouts::read_json;
use crate::process::{display_command, run_ok, target_dir, workspace_root};
use crate::registry::Registry;

/// The images the build script knows.
pub const IMAGE_NAMES: [&str; 3] = ["busybox", "debian-python", "edgecase"];

/// The shared image directory of this test process.
///
/// It is `SOCHI_TEST_IMAGES` when set (a prebuilt dir is reused as it is;
/// an image missing there is built into it), else
/// `target/sochi-e2e-images/<hash of the build script>`, which later test
/// runs reuse until the script changes. The debootstrap rootfs is cached in
/// `BASE_CACHE`, by default `target/sochi-e2e-images/minbase.tar`.
///
/// Builds need root and the packages of `scripts/e2e-deps.sh`; busybox and
/// edgecase take a few seconds, debian-python about a minute (30 s with the
/// rootfs cached). Digests differ between builds (except edgecase's): read
/// them with [`TestImages::manifest_digest`].
#[derive(Debug)]
pub struct TestImages {
    dir: PathBuf,
    base_cache: PathBuf,
    built: Mutex<HashMap<String, Arc<OnceLock<PathBuf>>>>,
}

impl TestImages {
    /// The process-wide instance (builds nothing yet).
    pub fn get() -> &'static TestImages {
        static IMAGES: OnceLock<TestImages> = OnceLock::new();
        IMAGES.get_or_init(TestImages::from_env)
    }

    fn from_env() -> TestImages {
        let cache_root = target_dir().join("sochi-e2e-images");
        let dir = match std::env::var_os("SOCHI_TEST_IMAGES").filter(|dir| !dir.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => {
                let dir = cache_root.join(script_hash());
                remove_stale_siblings(&cache_root, &dir);
                dir
            }
        };
        let base_cache = std::env::var_os("BASE_CACHE")
            .filter(|path| !path.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| cache_root.join("minbase.tar"));
        TestImages {
            dir,
            base_cache,
            built: Mutex::new(HashMap::new()),
        }
    }

    /// Where the layouts are (`<dir>/<name>`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The OCI layout of image `name` (tag `latest`), built on first use.
    #[track_caller]
    pub fn layout(&self, name: &str) -> PathBuf {
        if !IMAGE_NAMES.contains(&name) {
            panic!("no test image {name:?}; there are {IMAGE_NAMES:?}");
        }
        let cell = {
            let mut built = match self.built.lock() {
                Ok(built) => built,
                Err(poisoned) => poisoned.into_inner(),
            };
            Arc::clone(built.entry(name.to_string()).or_default())
        };
        cell.get_or_init(|| self.build(name)).clone()
    }

    /// Builds (or finds) every image at once.
    #[track_caller]
    pub fn build_all(&self) {
        for name in IMAGE_NAMES {
            self.layout(name);
        }
    }

    /// `oci:<layout>:latest`, sochi's and skopeo's name for the local image.
    #[track_caller]
    pub fn oci_ref(&self, name: &str) -> String {
        format!("oci:{}:latest", self.layout(name).display())
    }

    /// The layout's `index.json` entry for `latest`: the manifest digest.
    #[track_caller]
    pub fn manifest_digest(&self, name: &str) -> String {
        self.manifest_digest_of(name, "latest")
    }

    /// The manifest digest of `tag` (debian-python also has `base`, its
    /// first layer alone).
    #[track_caller]
    pub fn manifest_digest_of(&self, name: &str, tag: &str) -> String {
        let index_path = self.layout(name).join("index.json");
        let index = read_json(&index_path);
        let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
        manifests
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .and_then(|m| m["digest"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("{} has no tag {tag}", index_path.display()))
    }

    /// The parsed image manifest of `latest`.
    #[track_caller]
    pub fn manifest(&self, name: &str) -> serde_json::Value {
        let digest = self.manifest_digest(name);
        read_json(&self.blob_path(name, &digest))
    }

    /// The layer digests of `name`'s manifest, bottom first.
    #[track_caller]
    pub fn layer_digests(&self, name: &str) -> Vec<String> {
        let manifest = self.manifest(name);
        let Some(layers) = manifest["layers"].as_array() else {
            panic!("the manifest of {name} has no layers: {manifest:#}");
        };
        layers
            .iter()
            .filter_map(|layer| layer["digest"].as_str().map(str::to_string))
            .collect()
    }

    /// The file of blob `digest` (`sha256:…`) in the layout of `name`.
    #[track_caller]
    pub fn blob_path(&self, name: &str, digest: &str) -> PathBuf {
        let Some((algorithm, hex)) = digest.split_once(':') else {
            panic!("not a digest: {digest}");
        };
        self.layout(name).join("blobs").join(algorithm).join(hex)
    }

    /// Pushes image `name` to `registry` as `name:latest` and returns the
    /// reference (`ADDR/name:latest`). Digests are kept.
    #[track_caller]
    pub fn push_to(&self, registry: &Registry, name: &str) -> String {
        self.push_as(registry, name, &format!("{name}:latest"))
    }

    /// Pushes image `name` to `registry` as `repo_and_tag` (e.g.
    /// `other/repo:v1`) and returns the reference.
    #[track_caller]
    pub fn push_as(&self, registry: &Registry, name: &str, repo_and_tag: &str) -> String {
        let source = self.oci_ref(name);
        let reference = registry.reference(repo_and_tag);
        run_ok(
            Command::new("skopeo")
                .args(["copy", "--quiet", "--preserve-digests"])
                .args(registry.skopeo_args("dest-"))
                .arg(&source)
                .arg(format!("docker://{reference}")),
        );
        reference
    }

    #[track_caller]
    fn build(&self, name: &str) -> PathBuf {
        let layout = self.dir.join(name);
        if layout.join("index.json").is_file() {
            return layout;
        }
        if let Err(err) = std::fs::create_dir_all(&self.dir) {
            panic!("creating {}: {err}", self.dir.display());
        }
        let script = workspace_root().join("scripts/build-test-images.sh");
        // flock: another test process may build into the same dir.
        let mut cmd = if Path::new("/usr/bin/flock").is_file() {
            let mut cmd = Command::new("/usr/bin/flock");
            cmd.arg(self.dir.join(format!(".{name}.lock"))).arg(&script);
            cmd
        } else {
            Command::new(&script)
        };
        cmd.args(["--only", name, "--keep-existing"])
            .arg(&self.dir)
            .env("BASE_CACHE", &self.base_cache);
        eprintln!(
            "sochi-e2e: building test image {name}: {}",
            display_command(&cmd)
        );
        run_ok(&mut cmd);
        if !layout.join("index.json").is_file() {
            panic!("{} did not produce {}", script.display(), layout.display());
        }
        layout
    }
}

/// The first 12 hex digits of the build script's SHA-256: a new script
/// means new images.
fn script_hash() -> String {
    let script = workspace_root().join("scripts/build-test-images.sh");
    let bytes = match std::fs::read(&script) {
        Ok(bytes) => bytes,
        Err(err) => panic!("reading {}: {err}", script.display()),
    };
    hex::encode(Sha256::digest(&bytes))[..12].to_string()
}

/// Removes image dirs of older build scripts (12-hex-digit names) next to
/// `keep`; best effort.
fn remove_stale_siblings(root: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_hash = name.len() == 12 && name.chars().all(|c| c.is_ascii_hexdigit());
        if is_hash && path != keep && path.is_dir() {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}
