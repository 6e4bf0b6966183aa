//! Referrers: the OCI 1.1 referrers API and its tag-schema fallback
//! (distribution spec "Listing Referrers" and "Referrers Tag Schema"; our
//! docs/format.md §5.1 and §5.2).
//!
//! Listing: `GET /v2/<name>/referrers/<digest>?artifactType=…` → `200` with
//! an OCI index (filtered here unless `OCI-Filters-Applied: artifactType`,
//! pages followed through `Link: <…>; rel="next"`). A `404` that is not
//! `NAME_UNKNOWN` means the registry has no such API (distribution 2.8
//! answers `text/plain` "404 page not found") → the index under the tag
//! `<alg>-<hex>` of the subject digest. What a repository supports is
//! remembered for the client's life.
//!
//! Pushing: `PUT` the manifest by digest. `OCI-Subject` in the answer →
//! the registry indexed it. Else, if the registry has no referrers API, the
//! fallback tag's index gets the new descriptor (a new empty index if the
//! tag does not exist), is put back under the tag as Go writes it, and the
//! previous index is deleted by digest, best effort. Two clients adding
//! referrers to one subject at once can lose one of them: the tag schema
//! has no compare-and-swap.

use reqwest::header::{HeaderValue, ACCEPT, LINK};
use reqwest::Method;
use sochi_format::{is_index_media_type, media_types, Descriptor, ImageIndex};
use std::collections::BTreeMap;

use crate::auth::Scope;
use crate::client::{read_limited, redact_url, status_error, Client, RequestSpec};
use crate::digest::sha256_of;
use crate::error::{Error, Result};
use crate::reference::{check_digest, Reference};

/// Referrers pages followed at most, against a registry whose `Link`s loop.
const MAX_PAGES: usize = 1000;
/// Largest referrers page read.
const MAX_PAGE_SIZE: u64 = 4 << 20;

/// How [`Client::push_referrer`] made the referrer findable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReferrerPush {
    /// The registry indexed the manifest's `subject` (referrers API).
    Api,
    /// The client updated the fallback tag `sha256-<hex>` of the subject.
    FallbackTag,
}

/// The fallback tag of a subject digest: `<alg>-<hex>`, the algorithm cut to
/// 32 characters and the hex to 64, as the distribution spec says.
pub(crate) fn fallback_tag(subject: &str) -> String {
    let (algorithm, hex) = subject.split_once(':').unwrap_or(("sha256", subject));
    let algorithm: String = algorithm.chars().take(32).collect();
    let hex: String = hex.chars().take(64).collect();
    format!("{algorithm}-{hex}")
}

impl Client {
    /// The manifests that name `subject` (a manifest digest in `repo`) as
    /// their subject, only those of `artifact_type` if given. Empty when
    /// there are none.
    pub async fn referrers(
        &self,
        repo: &Reference,
        subject: &str,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Descriptor>> {
        check_digest(subject).map_err(|reason| Error::InvalidArgument {
            what: "subject digest",
            detail: reason,
        })?;
        if self.referrers_capability(repo) != Some(false) {
            let listed = self.referrers_api(repo, subject, artifact_type).await?;
            self.set_referrers_capability(repo, listed.is_some());
            if let Some(listed) = listed {
                return Ok(listed);
            }
        }
        let Some((_, index)) = self.fallback_index(repo, subject).await? else {
            return Ok(Vec::new());
        };
        Ok(index
            .manifests()
            .iter()
            .filter(|m| matches_type(m, artifact_type))
            .cloned()
            .collect())
    }

    /// Pushes a referrer manifest (one with a `subject`) by digest and makes
    /// it findable from `subject`: by the registry, or through the fallback
    /// tag, whose entry gets `artifact_type` and `annotations`.
    pub async fn push_referrer(
        &self,
        repo: &Reference,
        manifest: &[u8],
        media_type: &str,
        subject: &Descriptor,
        artifact_type: &str,
        annotations: &BTreeMap<String, String>,
    ) -> Result<ReferrerPush> {
        check_digest(&subject.digest).map_err(|reason| Error::InvalidArgument {
            what: "subject digest",
            detail: reason,
        })?;
        let digest = sha256_of(manifest);
        let at_digest = Reference {
            tag: None,
            digest: Some(digest.clone()),
            ..repo.clone()
        };
        let put = self.put_manifest(&at_digest, media_type, manifest).await?;
        if put.subject_indexed {
            self.set_referrers_capability(repo, true);
            return Ok(ReferrerPush::Api);
        }
        let supported = match self.referrers_capability(repo) {
            Some(known) => known,
            None => {
                let probe = self.referrers_api(repo, &subject.digest, None).await?;
                self.set_referrers_capability(repo, probe.is_some());
                probe.is_some()
            }
        };
        if supported {
            return Ok(ReferrerPush::Api);
        }
        let referrer = Descriptor {
            media_type: media_type.to_string(),
            digest: digest.clone().into(),
            size: manifest.len() as i64,
            annotations: annotations.clone(),
            artifact_type: Some(artifact_type.to_string()).filter(|t| !t.is_empty()),
            ..Descriptor::default()
        };
        self.add_to_fallback_tag(repo, &subject.digest, referrer)
            .await?;
        Ok(ReferrerPush::FallbackTag)
    }

    async fn add_to_fallback_tag(
        &self,
        repo: &Reference,
        subject: &str,
        referrer: Descriptor,
    ) -> Result<()> {
        let (previous, mut index) = match self.fallback_index(repo, subject).await? {
            Some((descriptor, index)) => (Some(descriptor.digest), index),
            None => (
                None,
                ImageIndex {
                    schema_version: 2,
                    media_type: media_types::OCI_INDEX.to_string(),
                    manifests: Some(Vec::new()),
                    ..ImageIndex::default()
                },
            ),
        };
        let manifests = index.manifests.get_or_insert_with(Vec::new);
        if manifests.iter().any(|m| m.digest == referrer.digest) {
            return Ok(());
        }
        manifests.push(referrer);
        index.schema_version = 2;
        index.media_type = media_types::OCI_INDEX.to_string();
        let bytes = index.to_go_json();
        let tag = repo.with_tag(&fallback_tag(subject));
        let put = self
            .put_manifest(&tag, media_types::OCI_INDEX, &bytes)
            .await?;
        tracing::debug!(%tag, index = %put.digest, "updated the referrers fallback tag");
        if let Some(previous) = previous.filter(|p| *p != put.digest) {
            if let Err(e) = self.delete_manifest(&repo.with_digest(&previous)).await {
                tracing::debug!(%previous, error = %e, "could not delete the previous referrers index");
            }
        }
        Ok(())
    }

    /// The index under the fallback tag of `subject`, if there is one.
    async fn fallback_index(
        &self,
        repo: &Reference,
        subject: &str,
    ) -> Result<Option<(Descriptor, ImageIndex)>> {
        let tag = repo.with_tag(&fallback_tag(subject));
        let (descriptor, bytes) = match self.get_manifest(&tag).await {
            Ok(found) => found,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let url = self.url(repo, &format!("manifests/{}", tag.reference()))?;
        if !is_index_media_type(&descriptor.media_type) {
            return Err(Error::Malformed {
                what: "referrers fallback tag",
                url: redact_url(&url),
                detail: format!("holds a {}, not an image index", descriptor.media_type),
            });
        }
        let index = ImageIndex::from_json(&bytes).map_err(|source| Error::Format {
            url: redact_url(&url),
            source,
        })?;
        Ok(Some((descriptor, index)))
    }

    /// The referrers API's answer, or `None` when the registry has no
    /// referrers API.
    async fn referrers_api(
        &self,
        repo: &Reference,
        subject: &str,
        artifact_type: Option<&str>,
    ) -> Result<Option<Vec<Descriptor>>> {
        let mut url = self.url(repo, &format!("referrers/{subject}"))?;
        if let Some(t) = artifact_type {
            url.query_pairs_mut().append_pair("artifactType", t);
        }
        let mut out = Vec::new();
        for page in 0..MAX_PAGES {
            let spec = RequestSpec::new(Method::GET, url.clone(), Scope::pull(&repo.repository))
                .header(ACCEPT, media_types::OCI_INDEX)?;
            let response = self.execute(repo, spec).await?;
            match response.status().as_u16() {
                200 => {}
                404 if page == 0 => {
                    let error = status_error(&Method::GET, response).await;
                    return match &error {
                        Error::Status {
                            code: Some(code), ..
                        } if code == "NAME_UNKNOWN" => Err(error),
                        _ => Ok(None),
                    };
                }
                _ => return Err(status_error(&Method::GET, response).await),
            }
            let filtered = response
                .headers()
                .get_all("oci-filters-applied")
                .iter()
                .filter_map(|v: &HeaderValue| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|f| f.trim() == "artifactType");
            let next = response
                .headers()
                .get_all(LINK)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(next_link)
                .map(|link| {
                    response.url().join(&link).map_err(|e| Error::Malformed {
                        what: "Link header",
                        url: redact_url(response.url()),
                        detail: format!("{link:?} is not a url: {e}"),
                    })
                })
                .transpose()?;
            let page_url = response.url().clone();
            let bytes = read_limited(
                response,
                MAX_PAGE_SIZE,
                "referrers index",
                &page_url,
                self.stall(),
            )
            .await?;
            let index = ImageIndex::from_json(&bytes).map_err(|source| Error::Format {
                url: redact_url(&page_url),
                source,
            })?;
            out.extend(
                index
                    .manifests()
                    .iter()
                    .filter(|m| filtered || matches_type(m, artifact_type))
                    .cloned(),
            );
            match next {
                Some(next) => url = next,
                None => return Ok(Some(out)),
            }
        }
        Err(Error::Malformed {
            what: "referrers",
            url: redact_url(&url),
            detail: format!("more than {MAX_PAGES} pages"),
        })
    }

    fn referrers_capability(&self, repo: &Reference) -> Option<bool> {
        self.inner.referrers.lock().get(&repo.name()).copied()
    }

    fn set_referrers_capability(&self, repo: &Reference, supported: bool) {
        self.inner.referrers.lock().insert(repo.name(), supported);
    }
}

fn matches_type(descriptor: &Descriptor, artifact_type: Option<&str>) -> bool {
    artifact_type.is_none_or(|t| descriptor.artifact_type.as_deref() == Some(t))
}

/// The target of the `rel="next"` link of a `Link` value (RFC 8288).
fn next_link(value: &str) -> Option<String> {
    value.split(',').find_map(|link| {
        let link = link.trim();
        let target = link.strip_prefix('<')?;
        let (target, params) = target.split_once('>')?;
        let is_next = params.split(';').any(|p| {
            let p = p.trim();
            p.strip_prefix("rel=")
                .map(|r| r.trim_matches('"').split_whitespace().any(|r| r == "next"))
                .unwrap_or(false)
        });
        is_next.then(|| target.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_tags() {
        let hex = "a".repeat(64);
        assert_eq!(
            fallback_tag(&format!("sha256:{hex}")),
            format!("sha256-{hex}")
        );
        let long = "b".repeat(128);
        assert_eq!(
            fallback_tag(&format!("sha512:{long}")),
            format!("sha512-{}", &long[..64])
        );
    }

    #[test]
    fn link_headers() {
        assert_eq!(
            next_link(r#"</v2/a/referrers/sha256:1?n=10&last=x>; rel="next""#).as_deref(),
            Some("/v2/a/referrers/sha256:1?n=10&last=x")
        );
        assert_eq!(
            next_link(r#"<https://a/p>; rel="prev", <https://a/n>; rel=next"#).as_deref(),
            Some("https://a/n")
        );
        assert_eq!(next_link("<https://a/p>"), None);
        assert_eq!(next_link("garbage"), None);
    }
}
