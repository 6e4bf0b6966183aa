//! What `Prepare` does with a snapshot, decided from its labels and from
//! what the image offers for the layer, apart from doing it (mounting,
//! the store, gRPC): a pure function, tested branch by branch.
//!
//! The tree (docs/format.md §6.3, the remote-snapshot contract of
//! docs/snapshotter.md):
//! - not an active snapshot, or no `containerd.io/snapshot.ref`: an
//!   ordinary snapshot, nothing remote about it;
//! - the target is committed already: `AlreadyExists`, nothing to do;
//! - the image labels are missing (`ctr pull` sends none): containerd
//!   pulls the layer, and the reason is recorded;
//! - the image's plan failed, it has no SOCI index, or the layer is not
//!   in it: containerd pulls the layer, and the reason is recorded;
//! - the index has a zTOC for the layer: mount it lazily; else fetch and
//!   unpack it here.

use std::collections::BTreeMap;

use sochi_format::snapshot_labels as labels;
use sochi_format::Digest;

use crate::metadata::Kind;

/// The labels containerd passes for a layer (docs/format.md §6.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerRequest {
    /// `containerd.io/snapshot/cri.image-ref`.
    pub image_ref: String,
    /// `containerd.io/snapshot/cri.manifest-digest`.
    pub manifest: Digest,
    /// `containerd.io/snapshot/cri.layer-digest`.
    pub layer: Digest,
    /// `containerd.io/snapshot/remote/soci.index.digest`.
    pub index: Option<Digest>,
}

/// What the image offers for a layer, as the snapshotter's plan of the
/// image says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Offer {
    /// The index has a zTOC for the layer.
    Ztoc,
    /// The index has no zTOC for it (a small layer), for this reason.
    NoZtoc(String),
    /// The image has no SOCI index, or (with why) none it can use: the
    /// one it names is not in the repository.
    NoIndex(Option<String>),
    /// The image manifest does not list the layer.
    LayerNotInImage,
    /// The registry wants credentials sochi does not have, with the error.
    NoCredentials(String),
    /// Finding out failed (registry, index, zTOC), with the error.
    PlanFailed(String),
}

/// Why a layer goes back to containerd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// The client sent no image labels.
    NoLabels,
    /// The image has no SOCI index, or (with why) none it can use.
    NoIndex(Option<String>),
    /// The registry wants credentials sochi does not have (the image was
    /// pulled around sochi's CRI image service, or the node has none).
    NoCredentials(String),
    /// Providing it failed, with the error.
    Failed(String),
}

impl Fallback {
    /// The reason recorded on the snapshot and shown by `sochi snapshotter
    /// layers`.
    pub fn reason(&self) -> String {
        match self {
            Fallback::NoLabels => "no image labels (the client passed no cri.* labels)".into(),
            Fallback::NoIndex(None) => "the image has no SOCI index".into(),
            Fallback::NoIndex(Some(why)) => format!("the image has no usable SOCI index: {why}"),
            Fallback::NoCredentials(why) => format!(
                "no credentials for the image's registry (pull through sochi's CRI image service, or give the node credentials): {why}"
            ),
            Fallback::Failed(why) => format!("sochi could not provide it: {why}"),
        }
    }

    /// The outcome label of `sochi_snapshotter_layers_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Fallback::NoLabels => "containerd_no_labels",
            Fallback::NoIndex(_) => "containerd_no_index",
            Fallback::NoCredentials(_) => "containerd_no_credentials",
            Fallback::Failed(_) => "containerd_error",
        }
    }
}

/// What to do with a `Prepare` (or `View`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// An ordinary snapshot that containerd fills (or uses) itself.
    Ordinary,
    /// The target snapshot exists: answer `AlreadyExists`.
    TargetExists(String),
    /// A layer sochi will not provide: an ordinary snapshot that
    /// containerd fills, with the reason recorded.
    HandBack(Fallback),
    /// Provide the layer (then commit it as `target`).
    Provide {
        /// The committed name.
        target: String,
        /// The layer.
        request: LayerRequest,
        /// Lazily over FUSE, or fetched and unpacked here (with why).
        lazily: bool,
        /// Why not lazily, when not.
        reason: Option<String>,
    },
}

/// Decides what a `Prepare`/`View` of `kind` with `labels` does.
/// `target_exists` answers whether a snapshot of that name is committed;
/// `offer` asks the image about the layer (only called for a layer pull
/// with complete labels).
pub fn decide(
    kind: Kind,
    labels: &BTreeMap<String, String>,
    target_exists: impl FnOnce(&str) -> bool,
    offer: impl FnOnce(&LayerRequest) -> Offer,
) -> Decision {
    if kind != Kind::Active {
        return Decision::Ordinary;
    }
    let Some(target) = labels.get(labels::TARGET) else {
        return Decision::Ordinary;
    };
    if target_exists(target) {
        return Decision::TargetExists(target.clone());
    }
    let Some(request) = layer_request(labels) else {
        return Decision::HandBack(Fallback::NoLabels);
    };
    match offer(&request) {
        Offer::Ztoc => Decision::Provide {
            target: target.clone(),
            request,
            lazily: true,
            reason: None,
        },
        Offer::NoZtoc(reason) => Decision::Provide {
            target: target.clone(),
            request,
            lazily: false,
            reason: Some(reason),
        },
        Offer::NoIndex(why) => Decision::HandBack(Fallback::NoIndex(why)),
        Offer::LayerNotInImage => Decision::HandBack(Fallback::Failed(format!(
            "layer {} is not in image {}",
            request.layer, request.manifest
        ))),
        Offer::NoCredentials(why) => Decision::HandBack(Fallback::NoCredentials(why)),
        Offer::PlanFailed(why) => Decision::HandBack(Fallback::Failed(why)),
    }
}

/// The layer labels of a Prepare, if complete.
pub fn layer_request(labels: &BTreeMap<String, String>) -> Option<LayerRequest> {
    Some(LayerRequest {
        image_ref: labels.get(labels::IMAGE_REF)?.clone(),
        manifest: labels.get(labels::MANIFEST_DIGEST)?.as_str().into(),
        layer: labels.get(labels::LAYER_DIGEST)?.as_str().into(),
        index: labels
            .get(labels::SOCI_INDEX_DIGEST)
            .map(|digest| digest.as_str().into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer_labels() -> BTreeMap<String, String> {
        [
            (labels::TARGET, "sha256:chain"),
            (labels::IMAGE_REF, "registry.example/app:v1"),
            (labels::MANIFEST_DIGEST, "sha256:manifest"),
            (labels::LAYER_DIGEST, "sha256:layer"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn request() -> LayerRequest {
        LayerRequest {
            image_ref: "registry.example/app:v1".into(),
            manifest: "sha256:manifest".into(),
            layer: "sha256:layer".into(),
            index: None,
        }
    }

    /// Every branch of the tree, each from the labels and the offer alone.
    #[test]
    fn every_branch_of_the_prepare_decision() {
        let full = layer_labels();
        let mut no_image = full.clone();
        no_image.remove(labels::IMAGE_REF);
        let mut no_target = full.clone();
        no_target.remove(labels::TARGET);
        let failed = |why: &str| Decision::HandBack(Fallback::Failed(why.to_string()));
        /// What, the snapshot kind, its labels, whether the target exists,
        /// what the image offers, and the decision expected.
        type Case<'a> = (
            &'a str,
            Kind,
            &'a BTreeMap<String, String>,
            bool,
            Offer,
            Decision,
        );
        let cases: Vec<Case<'_>> = vec![
            (
                "a view",
                Kind::View,
                &full,
                false,
                Offer::Ztoc,
                Decision::Ordinary,
            ),
            (
                "a committed kind",
                Kind::Committed,
                &full,
                false,
                Offer::Ztoc,
                Decision::Ordinary,
            ),
            (
                "no target label",
                Kind::Active,
                &no_target,
                false,
                Offer::Ztoc,
                Decision::Ordinary,
            ),
            (
                "target committed already",
                Kind::Active,
                &full,
                true,
                Offer::Ztoc,
                Decision::TargetExists("sha256:chain".into()),
            ),
            (
                "no image labels",
                Kind::Active,
                &no_image,
                false,
                Offer::Ztoc,
                Decision::HandBack(Fallback::NoLabels),
            ),
            (
                "a zTOC: lazily",
                Kind::Active,
                &full,
                false,
                Offer::Ztoc,
                Decision::Provide {
                    target: "sha256:chain".into(),
                    request: request(),
                    lazily: true,
                    reason: None,
                },
            ),
            (
                "no zTOC: unpacked here",
                Kind::Active,
                &full,
                false,
                Offer::NoZtoc("small layer".into()),
                Decision::Provide {
                    target: "sha256:chain".into(),
                    request: request(),
                    lazily: false,
                    reason: Some("small layer".into()),
                },
            ),
            (
                "no index",
                Kind::Active,
                &full,
                false,
                Offer::NoIndex(None),
                Decision::HandBack(Fallback::NoIndex(None)),
            ),
            (
                "the index the image names is missing",
                Kind::Active,
                &full,
                false,
                Offer::NoIndex(Some("index gone".into())),
                Decision::HandBack(Fallback::NoIndex(Some("index gone".into()))),
            ),
            (
                "layer not in the image",
                Kind::Active,
                &full,
                false,
                Offer::LayerNotInImage,
                failed("layer sha256:layer is not in image sha256:manifest"),
            ),
            (
                "plan failed",
                Kind::Active,
                &full,
                false,
                Offer::PlanFailed("registry down".into()),
                failed("registry down"),
            ),
            (
                "no credentials",
                Kind::Active,
                &full,
                false,
                Offer::NoCredentials("401".into()),
                Decision::HandBack(Fallback::NoCredentials("401".into())),
            ),
        ];
        for (what, kind, labels, exists, offer, expected) in cases {
            let decision = decide(kind, labels, |_| exists, |_| offer);
            assert_eq!(decision, expected, "{what}");
        }
    }

    #[test]
    fn the_image_is_asked_only_for_a_layer_pull_with_its_labels() {
        let mut no_image = layer_labels();
        no_image.remove(labels::MANIFEST_DIGEST);
        for (kind, labels) in [
            (Kind::View, layer_labels()),
            (Kind::Active, BTreeMap::new()),
            (Kind::Active, no_image),
        ] {
            decide(kind, &labels, |_| false, |_| panic!("asked the image"));
        }
        decide(
            Kind::Active,
            &layer_labels(),
            |_| true,
            |_| panic!("asked the image"),
        );
    }

    #[test]
    fn an_explicit_index_label_travels_with_the_request() {
        let mut with_index = layer_labels();
        with_index.insert(labels::SOCI_INDEX_DIGEST.into(), "sha256:index".into());
        let Decision::Provide { request, .. } =
            decide(Kind::Active, &with_index, |_| false, |_| Offer::Ztoc)
        else {
            panic!("not provided")
        };
        assert_eq!(request.index.as_deref(), Some("sha256:index"));
    }

    #[test]
    fn fallbacks_say_why_and_count_where() {
        for (fallback, outcome, words) in [
            (
                Fallback::NoLabels,
                "containerd_no_labels",
                "no image labels",
            ),
            (
                Fallback::NoIndex(None),
                "containerd_no_index",
                "no SOCI index",
            ),
            (
                Fallback::NoIndex(Some("index gone".into())),
                "containerd_no_index",
                "no usable SOCI index: index gone",
            ),
            (
                Fallback::Failed("boom".into()),
                "containerd_error",
                "could not provide it: boom",
            ),
            (
                Fallback::NoCredentials("401".into()),
                "containerd_no_credentials",
                "no credentials for the image's registry",
            ),
        ] {
            assert_eq!(fallback.outcome(), outcome);
            assert!(fallback.reason().contains(words), "{}", fallback.reason());
        }
    }
}
