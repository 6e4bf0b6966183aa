//! OCI image-spec 1.1 documents as Go's `ocispec` types read and write them.
//!
//! Decoding is permissive (unknown fields are dropped, as Go drops them);
//! encoding is Go-canonical ([`crate::json`]), fields in `ocispec` order.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::json::JsonWriter;
use crate::{Digest, Sha256Digest};

/// Media types sochi reads and writes.
pub mod media_types {
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// Docker schema 2 manifest.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list.
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// OCI gzip layer.
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// OCI uncompressed layer.
    pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    /// OCI zstd layer.
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// Docker gzip layer.
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// Docker uncompressed layer.
    pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
    /// Docker zstd layer.
    pub const DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";
    /// A zTOC blob.
    pub const ZTOC: &str = "application/octet-stream";
    /// SOCI index v1 (config media type / artifact type).
    pub const SOCI_INDEX_V1: &str = "application/vnd.amazon.soci.index.v1+json";
    /// SOCI index v2 (config media type / artifact type).
    pub const SOCI_INDEX_V2: &str = "application/vnd.amazon.soci.index.v2+json";
    /// SOCI prefetch artifact.
    pub const SOCI_PREFETCH: &str = "application/vnd.amazon.soci.prefetch.v1+json";
}

/// An OCI platform (`ocispec.Platform`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Platform {
    /// CPU architecture, e.g. `amd64`.
    #[serde(default)]
    pub architecture: String,
    /// Operating system, e.g. `linux`.
    #[serde(default)]
    pub os: String,
    /// OS version (Windows).
    #[serde(default, rename = "os.version")]
    pub os_version: String,
    /// OS features.
    #[serde(default, rename = "os.features")]
    pub os_features: Vec<String>,
    /// CPU variant, e.g. `v8`.
    #[serde(default)]
    pub variant: String,
}

impl Platform {
    /// `os/arch[/variant]`, as containerd's `platforms.Format` writes it.
    pub fn to_spec_string(&self) -> String {
        if self.variant.is_empty() {
            format!("{}/{}", self.os, self.architecture)
        } else {
            format!("{}/{}/{}", self.os, self.architecture, self.variant)
        }
    }

    /// Parses `os/arch[/variant]`, normalizing like containerd for the
    /// common cases (`x86_64` → `amd64`, `aarch64` → `arm64`, arm64 `v8`
    /// dropped).
    pub fn parse(spec: &str) -> Result<Platform> {
        let parts: Vec<&str> = spec.split('/').collect();
        let invalid = || Error::Invalid {
            what: "platform",
            detail: format!("{spec:?} is not os/arch[/variant]"),
        };
        if parts.len() < 2 || parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
            return Err(invalid());
        }
        let architecture = match parts[1] {
            "x86_64" | "x86-64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        }
        .to_string();
        let mut variant = parts.get(2).map(|s| s.to_string()).unwrap_or_default();
        if architecture == "arm64" && variant == "v8" {
            variant.clear();
        }
        Ok(Platform {
            architecture,
            os: parts[0].to_string(),
            variant,
            ..Platform::default()
        })
    }

    /// Whether `self` (a requested platform) matches `other` (an image's),
    /// treating an empty arm64 variant as `v8`.
    pub fn matches(&self, other: &Platform) -> bool {
        let norm = |p: &Platform| {
            let v = if p.architecture == "arm64" && p.variant.is_empty() {
                "v8".to_string()
            } else {
                p.variant.clone()
            };
            (p.os.clone(), p.architecture.clone(), v)
        };
        let (a, b) = (norm(self), norm(other));
        a.0 == b.0 && a.1 == b.1 && (a.2 == b.2 || a.2.is_empty())
    }

    /// The platform of an image config: `ocispec.Image` embeds `Platform`,
    /// so its fields sit at the top of the config (the rest is ignored).
    pub fn from_image_config(bytes: &[u8]) -> Result<Platform> {
        serde_json::from_slice(bytes).map_err(|source| Error::Json {
            what: "image config",
            source,
        })
    }

    /// The platform of the machine sochi runs on.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            other => other,
        };
        Platform {
            architecture: architecture.to_string(),
            os: std::env::consts::OS.to_string(),
            ..Platform::default()
        }
    }

    fn write(&self, w: &mut JsonWriter) {
        w.begin_object();
        w.key("architecture");
        w.string(&self.architecture);
        w.key("os");
        w.string(&self.os);
        if !self.os_version.is_empty() {
            w.key("os.version");
            w.string(&self.os_version);
        }
        if !self.os_features.is_empty() {
            w.key("os.features");
            w.string_array(&self.os_features);
        }
        if !self.variant.is_empty() {
            w.key("variant");
            w.string(&self.variant);
        }
        w.end_object();
    }
}

/// An OCI content descriptor (`ocispec.Descriptor`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Descriptor {
    /// Media type of the content.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// Content digest, `algorithm:hex`.
    pub digest: Digest,
    /// Content size in bytes.
    pub size: i64,
    /// Alternate URLs.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Embedded content, base64 (kept as text).
    #[serde(default)]
    pub data: Option<String>,
    /// Platform of the content.
    #[serde(default)]
    pub platform: Option<Platform>,
    /// Artifact type.
    #[serde(rename = "artifactType", default)]
    pub artifact_type: Option<String>,
}

impl Descriptor {
    /// A descriptor of `bytes` with the given media type.
    pub fn of(media_type: &str, bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest: Sha256Digest::of(bytes).into(),
            size: bytes.len() as i64,
            ..Descriptor::default()
        }
    }

    /// The digest as a SHA-256 digest (the only algorithm sochi stores).
    pub fn sha256(&self) -> Result<Sha256Digest> {
        Sha256Digest::parse(&self.digest)
    }

    /// Writes the descriptor as Go encodes it.
    pub fn write(&self, w: &mut JsonWriter) {
        w.begin_object();
        w.key("mediaType");
        w.string(&self.media_type);
        w.key("digest");
        w.string(&self.digest);
        w.key("size");
        w.int(self.size);
        if !self.urls.is_empty() {
            w.key("urls");
            w.string_array(&self.urls);
        }
        if !self.annotations.is_empty() {
            w.key("annotations");
            w.string_map(&self.annotations);
        }
        if let Some(data) = self.data.as_deref().filter(|d| !d.is_empty()) {
            w.key("data");
            w.string(data);
        }
        if let Some(platform) = &self.platform {
            w.key("platform");
            platform.write(w);
        }
        if let Some(t) = self.artifact_type.as_deref().filter(|t| !t.is_empty()) {
            w.key("artifactType");
            w.string(t);
        }
        w.end_object();
    }

    /// The Go-canonical JSON of this descriptor.
    pub fn to_go_json(&self) -> String {
        let mut w = JsonWriter::new();
        self.write(&mut w);
        w.finish()
    }
}

/// An image manifest (`ocispec.Manifest`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ImageManifest {
    /// Always 2.
    #[serde(rename = "schemaVersion", default)]
    pub schema_version: i64,
    /// Manifest media type.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// Artifact type.
    #[serde(rename = "artifactType", default)]
    pub artifact_type: Option<String>,
    /// Config blob.
    pub config: Descriptor,
    /// Layers; `None` when the document had none (Go writes `null`).
    #[serde(default)]
    pub layers: Option<Vec<Descriptor>>,
    /// The manifest this one refers to.
    #[serde(default)]
    pub subject: Option<Descriptor>,
    /// Annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl ImageManifest {
    /// Decodes a manifest.
    pub fn from_json(bytes: &[u8]) -> Result<ImageManifest> {
        serde_json::from_slice(bytes).map_err(|source| Error::Json {
            what: "image manifest",
            source,
        })
    }

    /// The layers (empty when absent).
    pub fn layers(&self) -> &[Descriptor] {
        self.layers.as_deref().unwrap_or(&[])
    }

    /// The Go-canonical JSON bytes of this manifest.
    pub fn to_go_json(&self) -> Vec<u8> {
        let mut w = JsonWriter::new();
        write_head(
            &mut w,
            self.schema_version,
            &self.media_type,
            self.artifact_type.as_deref(),
        );
        w.key("config");
        self.config.write(&mut w);
        write_descriptors(&mut w, "layers", self.layers.as_deref());
        write_tail(&mut w, self.subject.as_ref(), &self.annotations);
        w.finish().into_bytes()
    }
}

/// `schemaVersion`, `mediaType`, `artifactType`: how manifests and indexes
/// begin (`ocispec` field order).
fn write_head(
    w: &mut JsonWriter,
    schema_version: i64,
    media_type: &str,
    artifact_type: Option<&str>,
) {
    w.begin_object();
    w.key("schemaVersion");
    w.int(schema_version);
    if !media_type.is_empty() {
        w.key("mediaType");
        w.string(media_type);
    }
    if let Some(t) = artifact_type.filter(|t| !t.is_empty()) {
        w.key("artifactType");
        w.string(t);
    }
}

/// A descriptor list that Go does not omit when empty (`null` when absent).
fn write_descriptors(w: &mut JsonWriter, key: &str, descriptors: Option<&[Descriptor]>) {
    w.key(key);
    match descriptors {
        None => w.null(),
        Some(list) => {
            w.begin_array();
            for d in list {
                d.write(w);
            }
            w.end_array();
        }
    }
}

/// `subject`, `annotations` and the closing brace: how manifests and
/// indexes end.
fn write_tail(
    w: &mut JsonWriter,
    subject: Option<&Descriptor>,
    annotations: &BTreeMap<String, String>,
) {
    if let Some(subject) = subject {
        w.key("subject");
        subject.write(w);
    }
    if !annotations.is_empty() {
        w.key("annotations");
        w.string_map(annotations);
    }
    w.end_object();
}

/// An image index (`ocispec.Index`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ImageIndex {
    /// Always 2.
    #[serde(rename = "schemaVersion", default)]
    pub schema_version: i64,
    /// Index media type.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// Artifact type.
    #[serde(rename = "artifactType", default)]
    pub artifact_type: Option<String>,
    /// Manifests; `None` when the document had none (Go writes `null`).
    #[serde(default)]
    pub manifests: Option<Vec<Descriptor>>,
    /// The manifest this one refers to.
    #[serde(default)]
    pub subject: Option<Descriptor>,
    /// Annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl ImageIndex {
    /// Decodes an index.
    pub fn from_json(bytes: &[u8]) -> Result<ImageIndex> {
        serde_json::from_slice(bytes).map_err(|source| Error::Json {
            what: "image index",
            source,
        })
    }

    /// The manifests (empty when absent).
    pub fn manifests(&self) -> &[Descriptor] {
        self.manifests.as_deref().unwrap_or(&[])
    }

    /// The Go-canonical JSON bytes of this index.
    pub fn to_go_json(&self) -> Vec<u8> {
        let mut w = JsonWriter::new();
        write_head(
            &mut w,
            self.schema_version,
            &self.media_type,
            self.artifact_type.as_deref(),
        );
        write_descriptors(&mut w, "manifests", self.manifests.as_deref());
        write_tail(&mut w, self.subject.as_ref(), &self.annotations);
        w.finish().into_bytes()
    }
}

/// Whether `media_type` names a manifest list or OCI index.
pub fn is_index_media_type(media_type: &str) -> bool {
    media_type == media_types::OCI_INDEX || media_type == media_types::DOCKER_MANIFEST_LIST
}

/// Whether the image a descriptor of `media_type` names, with these
/// `bytes`, is an index (or manifest list) rather than one manifest: the
/// one answer for every caller. The descriptor's media type decides; an
/// OCI layout may omit it, and then the document's own `mediaType`, or
/// else having `manifests` and no `layers`.
pub fn is_image_index(media_type: &str, bytes: &[u8]) -> bool {
    if is_index_media_type(media_type) {
        return true;
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return false;
    };
    match value.get("mediaType").and_then(|m| m.as_str()) {
        Some(m) => is_index_media_type(m),
        None => value.get("manifests").is_some() && value.get("layers").is_none(),
    }
}

/// The uncompressed digests (`diff_ids`) an image config gives its layers,
/// bottom first: what an unpack checks each layer's tar stream against.
pub fn image_diff_ids(config: &[u8]) -> Result<Vec<Sha256Digest>> {
    #[derive(Deserialize)]
    struct Config {
        rootfs: Option<RootFs>,
    }
    #[derive(Deserialize)]
    struct RootFs {
        #[serde(default)]
        diff_ids: Vec<String>,
    }
    let config: Config = serde_json::from_slice(config).map_err(|source| Error::Json {
        what: "image config",
        source,
    })?;
    let rootfs = config.rootfs.ok_or_else(|| Error::Invalid {
        what: "image config",
        detail: "no rootfs".into(),
    })?;
    rootfs
        .diff_ids
        .iter()
        .map(|text| Sha256Digest::parse(text))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_answer_to_is_this_an_image_index() {
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        let manifest = br#"{"schemaVersion":2,"config":{},"layers":[]}"#;
        let typed = br#"{"mediaType":"application/vnd.oci.image.index.v1+json"}"#;
        assert!(is_image_index(media_types::OCI_INDEX, b"not even json"));
        assert!(is_image_index(media_types::DOCKER_MANIFEST_LIST, manifest));
        assert!(is_image_index("", index));
        assert!(is_image_index(media_types::OCI_MANIFEST, typed));
        assert!(!is_image_index("", manifest));
        assert!(!is_image_index("", br#"{"manifests":[],"layers":[]}"#));
        assert!(!is_image_index(media_types::OCI_MANIFEST, b"not json"));
    }

    #[test]
    fn manifest_reencodes_byte_identically() {
        let fixture = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:5d4d4410fdd96f6b1f37e0655f4bfbb1bbcba375b4c03c66bdedab335e619745","size":348},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:dc323829a89243a5e5b8f9570ae038b356c8a927a8f585ccd3224173b9a4f6fb","size":492510}],"annotations":{"b":"1","a":"<&>"}}"#;
        let m = ImageManifest::from_json(fixture).unwrap();
        let out = String::from_utf8(m.to_go_json()).unwrap();
        assert!(
            out.ends_with(r#""annotations":{"a":"\u003c\u0026\u003e","b":"1"}}"#),
            "{out}"
        );
    }

    #[test]
    fn platform_parse_normalizes() {
        let p = Platform::parse("linux/x86_64").unwrap();
        assert_eq!(p.to_spec_string(), "linux/amd64");
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux/arm64/v8")
            .unwrap()
            .variant
            .is_empty());
    }
}
