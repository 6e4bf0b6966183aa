//! A recorded load order: which parts of an image's layers a real start
//! read, in the order of first use (docs/prefetch.md).
//!
//! sochi's own format (JSON, `"version": 1`), written by the snapshotter
//! and by `sochi load-order record`, read by `sochi create` / `convert
//! --load-order`, which turn it into standard prefetch artifacts. Each
//! [`LoadRun`] is a run of adjacent spans of one layer first read one
//! after the other, named twice: by span (the zTOC the recording ran
//! with) and by uncompressed byte range. The builder uses the byte range,
//! so a load order stays right for an index built with another span size.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};

/// The version this code writes and reads.
pub const LOAD_ORDER_VERSION: u32 = 1;

/// The largest load order read (16 MiB: some 100,000 runs).
pub const MAX_LOAD_ORDER_SIZE: usize = 16 << 20;

/// A recorded load order of one image.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadOrder {
    /// Always [`LOAD_ORDER_VERSION`].
    pub version: u32,
    /// The image reference the recording ran for.
    pub image: String,
    /// The image manifest's digest, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// The command that ran, when known (`sochi load-order record`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Whether the recording ended as planned (the container went quiet
    /// or exited) rather than at a bound or a shutdown.
    pub complete: bool,
    /// Why the recording ended.
    #[serde(default)]
    pub ended: String,
    /// From the first mount to the end of the recording.
    pub duration_ms: u64,
    /// The layers recorded, bottom first, as far as known.
    pub layers: Vec<LoadLayer>,
    /// The runs of spans, in the order of first use.
    pub runs: Vec<LoadRun>,
}

/// One layer of a recording.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadLayer {
    /// The layer's (compressed) digest.
    pub digest: String,
    /// Spans of the zTOC the recording read it through.
    pub span_count: u64,
    /// Its uncompressed size.
    pub uncompressed_size: u64,
}

/// Adjacent spans of one layer, first read one after the other.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadRun {
    /// The layer's digest.
    pub layer: String,
    /// First span.
    pub start_span: u64,
    /// Last span (inclusive).
    pub end_span: u64,
    /// Uncompressed offset of the first span's start.
    pub start_offset: u64,
    /// Uncompressed offset of the last span's end (exclusive).
    pub end_offset: u64,
    /// Milliseconds from the first mount to the first read of the run.
    pub at_ms: u64,
}

impl LoadOrder {
    /// Reads a load order, refusing one over [`MAX_LOAD_ORDER_SIZE`], of
    /// another version, or with a run that names no valid layer digest or
    /// ends before it starts.
    pub fn from_bytes(bytes: &[u8]) -> Result<LoadOrder> {
        let invalid = |detail: String| Error::Invalid {
            what: "load order",
            detail,
        };
        if bytes.len() > MAX_LOAD_ORDER_SIZE {
            return Err(invalid(format!(
                "{} bytes, more than the {MAX_LOAD_ORDER_SIZE} sochi reads",
                bytes.len()
            )));
        }
        let order: LoadOrder = serde_json::from_slice(bytes).map_err(|source| Error::Json {
            what: "load order",
            source,
        })?;
        if order.version != LOAD_ORDER_VERSION {
            return Err(invalid(format!(
                "unsupported version {} (expected {LOAD_ORDER_VERSION})",
                order.version
            )));
        }
        for (index, run) in order.runs.iter().enumerate() {
            Digest::parse(&run.layer).map_err(|_| {
                invalid(format!(
                    "run {index}: {:?} is not a layer digest",
                    run.layer
                ))
            })?;
            if run.end_span < run.start_span || run.end_offset < run.start_offset {
                return Err(invalid(format!("run {index} ends before it starts")));
            }
        }
        Ok(order)
    }

    /// Pretty JSON, one field per line.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Plain data of strings and integers: serializing cannot fail.
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    /// The runs of `layer`, in order of first use, each with its position
    /// in the whole load order (all layers).
    pub fn runs_of<'a>(&'a self, layer: &'a str) -> impl Iterator<Item = (usize, &'a LoadRun)> {
        self.runs
            .iter()
            .enumerate()
            .filter(move |(_, run)| run.layer == layer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LoadOrder {
        LoadOrder {
            version: LOAD_ORDER_VERSION,
            image: "registry.example/app:1".into(),
            manifest: Some(format!("sha256:{}", "a".repeat(64))),
            command: vec!["python3".into(), "/app/main.py".into()],
            complete: true,
            ended: "quiet".into(),
            duration_ms: 1234,
            layers: vec![LoadLayer {
                digest: format!("sha256:{}", "b".repeat(64)),
                span_count: 3,
                uncompressed_size: 10 << 20,
            }],
            runs: vec![LoadRun {
                layer: format!("sha256:{}", "b".repeat(64)),
                start_span: 1,
                end_span: 2,
                start_offset: 4 << 20,
                end_offset: 10 << 20,
                at_ms: 12,
            }],
        }
    }

    #[test]
    fn round_trips() {
        let order = sample();
        assert_eq!(LoadOrder::from_bytes(&order.to_bytes()).unwrap(), order);
    }

    #[test]
    fn refuses_other_versions_bad_digests_and_reversed_runs() {
        let mut order = sample();
        order.version = 2;
        let error = LoadOrder::from_bytes(&order.to_bytes()).unwrap_err();
        assert!(error.to_string().contains("version 2"), "{error}");

        let mut order = sample();
        order.runs[0].layer = "../../etc".into();
        let error = LoadOrder::from_bytes(&order.to_bytes()).unwrap_err();
        assert!(error.to_string().contains("not a layer digest"), "{error}");

        let mut order = sample();
        order.runs[0].end_span = 0;
        let error = LoadOrder::from_bytes(&order.to_bytes()).unwrap_err();
        assert!(error.to_string().contains("ends before"), "{error}");
    }

    #[test]
    fn refuses_bad_json_and_huge_bodies() {
        assert!(LoadOrder::from_bytes(b"{\"version\":1,").is_err());
        let huge = vec![b' '; MAX_LOAD_ORDER_SIZE + 1];
        let error = LoadOrder::from_bytes(&huge).unwrap_err();
        assert!(error.to_string().contains("more than"), "{error}");
    }
}
