//! The JSON documents sochi reads (image manifests and indexes, SOCI index
//! manifests, prefetch artifacts, load orders, image configs) and platform
//! strings.
//! Whatever parses must re-encode to Go-canonical JSON that parses back
//! and re-encodes to the same bytes: the reference re-encodes what it
//! fetches and compares digests, so the encoding must be a fixed point.
//!
//! Input: byte 0 picks the parser, the rest is the document.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sochi_format::{
    ImageIndex, ImageManifest, LoadOrder, Platform, PrefetchArtifact, Sha256Digest,
    SociIndex,
};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, document)) = data.split_first() else {
        return;
    };
    match selector % 7 {
        0 => {
            if let Ok(manifest) = ImageManifest::from_json(document) {
                let json = manifest.to_go_json();
                let again = ImageManifest::from_json(&json)
                    .unwrap_or_else(|err| panic!("re-encoded manifest does not parse: {err}"));
                assert!(
                    again.to_go_json() == json,
                    "manifest encoding is not a fixed point"
                );
                for layer in manifest.layers() {
                    let _ = layer.sha256();
                }
            }
        }
        1 => {
            if let Ok(index) = ImageIndex::from_json(document) {
                let json = index.to_go_json();
                let again = ImageIndex::from_json(&json)
                    .unwrap_or_else(|err| panic!("re-encoded index does not parse: {err}"));
                assert!(
                    again.to_go_json() == json,
                    "index encoding is not a fixed point"
                );
            }
        }
        2 => {
            if let Ok(index) = SociIndex::from_bytes(document) {
                let bytes = index.to_bytes();
                let again = SociIndex::from_bytes(&bytes)
                    .unwrap_or_else(|err| panic!("re-encoded SOCI index does not parse: {err}"));
                assert!(
                    again.to_bytes() == bytes,
                    "SOCI index encoding is not a fixed point"
                );
                let _ = index.ztocs().count();
            }
        }
        3 => {
            if let Ok(artifact) = PrefetchArtifact::from_bytes(document) {
                let bytes = artifact.to_bytes();
                let again = PrefetchArtifact::from_bytes(&bytes).unwrap_or_else(|err| {
                    panic!("re-encoded prefetch artifact does not parse: {err}")
                });
                assert_eq!(again, artifact);
                // Checking the ranges against any span count never panics.
                let digest = sochi_format::Digest::from("sha256:fuzz");
                let _ = artifact.validate_against(&digest, document.len());
                let _ = PrefetchArtifact::merged(artifact.prefetch_spans.iter().copied());
            }
        }
        5 => {
            // A load order that parses round-trips, and its runs per layer
            // can be listed.
            if let Ok(order) = LoadOrder::from_bytes(document) {
                let again = LoadOrder::from_bytes(&order.to_bytes())
                    .unwrap_or_else(|err| panic!("re-encoded load order does not parse: {err}"));
                assert_eq!(again, order);
                for layer in &order.layers {
                    let _ = order.runs_of(&layer.digest).count();
                }
            }
        }
        4 => {
            if let Ok(platform) = Platform::from_image_config(document) {
                let _ = platform.to_spec_string();
            }
        }
        _ => {
            let Ok(text) = std::str::from_utf8(document) else {
                return;
            };
            if let Ok(platform) = Platform::parse(text) {
                let spec = platform.to_spec_string();
                let again = Platform::parse(&spec)
                    .unwrap_or_else(|err| panic!("{spec:?} does not parse: {err}"));
                assert_eq!(again.to_spec_string(), spec);
            }
            if let Ok(digest) = Sha256Digest::parse(text) {
                assert_eq!(Sha256Digest::parse(&digest.to_string()).ok(), Some(digest));
            }
        }
    }
});
