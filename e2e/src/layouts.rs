//! Small OCI image layouts made here, for what no real image builder
//! writes: the layers an attacker would (setuid-root copies of `id`, device
//! nodes, overlayfs xattrs, malformed file capabilities, a wrong
//! `diff_id`), or a tool writes rarely (a PAX global header first, as
//! `git archive` does). Layers are tars built with the `tar` crate (names
//! and modes exactly as given), gzip or plain; an image may sit on top of
//! another layout's layers (debian-python, to run a container).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// One tar entry of a layer.
#[derive(Debug, Clone)]
pub struct Entry {
    name: String,
    kind: Kind,
    mode: u32,
    uid: u64,
    gid: u64,
    xattrs: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone)]
enum Kind {
    Dir,
    File(Vec<u8>),
    CharDevice(u32, u32),
    /// A PAX global header with these records.
    GlobalHeader(Vec<(String, String)>),
}

impl Entry {
    /// A directory, 0755 root:root.
    pub fn dir(name: &str) -> Entry {
        Entry::new(name, Kind::Dir, 0o755)
    }

    /// A regular file, 0644 root:root.
    pub fn file(name: &str, data: &[u8]) -> Entry {
        Entry::new(name, Kind::File(data.to_vec()), 0o644)
    }

    /// A character device, 0666 root:root.
    pub fn char_device(name: &str, major: u32, minor: u32) -> Entry {
        Entry::new(name, Kind::CharDevice(major, minor), 0o666)
    }

    /// A PAX global header (`pax_global_header`, as `git archive` writes).
    pub fn global_header(records: &[(&str, &str)]) -> Entry {
        let records = records
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Entry::new("pax_global_header", Kind::GlobalHeader(records), 0o666)
    }

    fn new(name: &str, kind: Kind, mode: u32) -> Entry {
        Entry {
            name: name.to_string(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            xattrs: Vec::new(),
        }
    }

    /// With mode bits `mode` (setuid etc. included).
    pub fn mode(mut self, mode: u32) -> Entry {
        self.mode = mode;
        self
    }

    /// Owned by `uid:gid`.
    pub fn owner(mut self, uid: u64, gid: u64) -> Entry {
        self.uid = uid;
        self.gid = gid;
        self
    }

    /// With the xattr `name` (a `SCHILY.xattr.` PAX record).
    pub fn xattr(mut self, name: &str, value: &[u8]) -> Entry {
        self.xattrs.push((name.to_string(), value.to_vec()));
        self
    }
}

/// The tar of `entries`, in order, with the end-of-archive blocks.
#[track_caller]
pub fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        if !entry.xattrs.is_empty() {
            let records: Vec<(String, Vec<u8>)> = entry
                .xattrs
                .iter()
                .map(|(name, value)| (format!("SCHILY.xattr.{name}"), value.clone()))
                .collect();
            builder
                .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .unwrap_or_else(|err| panic!("pax records of {}: {err}", entry.name));
        }
        let mut header = tar::Header::new_ustar();
        header
            .set_path(&entry.name)
            .unwrap_or_else(|err| panic!("name {}: {err}", entry.name));
        header.set_mode(entry.mode);
        header.set_uid(entry.uid);
        header.set_gid(entry.gid);
        header.set_mtime(1_700_000_000);
        let data: Vec<u8> = match &entry.kind {
            Kind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                Vec::new()
            }
            Kind::File(data) => {
                header.set_entry_type(tar::EntryType::Regular);
                data.clone()
            }
            Kind::CharDevice(major, minor) => {
                header.set_entry_type(tar::EntryType::Char);
                header
                    .set_device_major(*major)
                    .unwrap_or_else(|e| panic!("{e}"));
                header
                    .set_device_minor(*minor)
                    .unwrap_or_else(|e| panic!("{e}"));
                Vec::new()
            }
            Kind::GlobalHeader(records) => {
                header.set_entry_type(tar::EntryType::XGlobalHeader);
                let mut data = Vec::new();
                for (key, value) in records {
                    // "<len> key=value\n", len counting itself.
                    let body = format!(" {key}={value}\n");
                    let mut len = body.len() + 1;
                    while format!("{len}").len() + body.len() != len {
                        len += 1;
                    }
                    data.extend_from_slice(format!("{len}{body}").as_bytes());
                }
                data
            }
        };
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder
            .append(&header, &data[..])
            .unwrap_or_else(|err| panic!("appending {}: {err}", entry.name));
    }
    builder
        .into_inner()
        .unwrap_or_else(|err| panic!("finishing a tar: {err}"))
}

/// gzip of `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder
        .write_all(data)
        .and_then(|()| encoder.finish())
        .unwrap_or_else(|err| panic!("gzip: {err}"))
}

/// `sha256:<hex>` of `bytes`.
/// `len` bytes that do not compress, different for each `seed`.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// An OCI image layout being made: layers on top of an optional base
/// image, then [`ImageLayout::finish`] writes config, manifest and
/// `index.json` (tag `latest`).
#[derive(Debug)]
pub struct ImageLayout {
    dir: PathBuf,
    config: serde_json::Value,
    layers: Vec<serde_json::Value>,
    diff_ids: Vec<String>,
}

impl ImageLayout {
    /// An empty image at `dir` (created).
    #[track_caller]
    pub fn new(dir: &Path) -> ImageLayout {
        let layout = ImageLayout {
            dir: dir.to_path_buf(),
            config: serde_json::json!({
                "architecture": host_architecture(),
                "os": "linux",
                "config": {"Cmd": ["/bin/sh"]},
                "rootfs": {"type": "layers", "diff_ids": []}
            }),
            layers: Vec::new(),
            diff_ids: Vec::new(),
        };
        create_dir(&dir.join("blobs/sha256"));
        write(
            &dir.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        );
        layout
    }

    /// An image at `dir` whose first layers (and config) are those of the
    /// image `manifest_digest` in layout `base`; blobs are hard-linked.
    #[track_caller]
    pub fn on_top_of(dir: &Path, base: &Path, manifest_digest: &str) -> ImageLayout {
        let mut layout = ImageLayout::new(dir);
        let manifest = read_json(&blob_path(base, manifest_digest));
        let config_digest = manifest["config"]["digest"].as_str().unwrap_or_default();
        layout.config = read_json(&blob_path(base, config_digest));
        for layer in manifest["layers"].as_array().cloned().unwrap_or_default() {
            let digest = layer["digest"].as_str().unwrap_or_default().to_string();
            let target = blob_path(dir, &digest);
            if let Err(err) = std::fs::hard_link(blob_path(base, &digest), &target) {
                panic!("linking {digest} into {}: {err}", dir.display());
            }
            layout.layers.push(layer);
        }
        layout.diff_ids = layout.config["rootfs"]["diff_ids"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|d| d.as_str().map(str::to_string))
            .collect();
        layout
    }

    /// Adds a layer of `entries`, gzip-compressed or a plain tar; returns
    /// its digest.
    #[track_caller]
    pub fn layer(&mut self, entries: &[Entry], gzipped: bool) -> String {
        let tar = tar_of(entries);
        let (blob, media_type) = if gzipped {
            (gzip(&tar), "application/vnd.oci.image.layer.v1.tar+gzip")
        } else {
            (tar.clone(), "application/vnd.oci.image.layer.v1.tar")
        };
        let digest = self.blob(&blob);
        self.layers.push(serde_json::json!({
            "mediaType": media_type,
            "digest": digest,
            "size": blob.len(),
        }));
        self.diff_ids.push(sha256(&tar));
        digest
    }

    /// Makes `args` what a container runs when it names no command of its
    /// own: the config's `Entrypoint`, with no `Cmd`.
    pub fn entrypoint(&mut self, args: &[&str]) {
        self.config["config"]["Entrypoint"] = serde_json::json!(args);
        if let Some(config) = self.config["config"].as_object_mut() {
            config.remove("Cmd");
        }
    }

    /// Gives layer `index` a `diff_id` its bytes do not have.
    pub fn wrong_diff_id(&mut self, index: usize) -> String {
        let wrong = sha256(format!("not layer {index}").as_bytes());
        if let Some(slot) = self.diff_ids.get_mut(index) {
            slot.clone_from(&wrong);
        }
        wrong
    }

    /// The `diff_id`s so far.
    pub fn diff_ids(&self) -> &[String] {
        &self.diff_ids
    }

    /// Writes a blob; returns its digest.
    #[track_caller]
    fn blob(&self, bytes: &[u8]) -> String {
        let digest = sha256(bytes);
        write(&blob_path(&self.dir, &digest), bytes);
        digest
    }

    /// Writes config, manifest and `index.json` (tag `latest`); returns the
    /// manifest digest.
    #[track_caller]
    pub fn finish(mut self) -> String {
        self.config["rootfs"]["diff_ids"] = serde_json::json!(self.diff_ids);
        let config = self.config.to_string().into_bytes();
        let config_digest = self.blob(&config);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": self.layers,
        })
        .to_string()
        .into_bytes();
        let manifest_digest = self.blob(&manifest);
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": "latest"},
            }],
        });
        write(&self.dir.join("index.json"), index.to_string().as_bytes());
        manifest_digest
    }
}

/// The OCI architecture name of this machine.
fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Where OCI layout `layout` keeps the blob `digest` (`sha256:` if it
/// names no algorithm).
pub fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let (algorithm, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
    layout.join("blobs").join(algorithm).join(hex)
}

#[track_caller]
fn create_dir(path: &Path) {
    if let Err(err) = std::fs::create_dir_all(path) {
        panic!("creating {}: {err}", path.display());
    }
}

#[track_caller]
fn write(path: &Path, bytes: &[u8]) {
    if let Err(err) = std::fs::write(path, bytes) {
        panic!("writing {}: {err}", path.display());
    }
}

/// The JSON document in file `path`; panics naming the file otherwise.
#[track_caller]
pub fn read_json(path: &Path) -> serde_json::Value {
    let bytes =
        std::fs::read(path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|err| panic!("parsing {}: {err}", path.display()))
}
