//! Pushing blobs (distribution spec "Pushing blobs").
//!
//! 1. `HEAD` the blob: there already → [`PushBlob::Exists`].
//! 2. With a source repository: `POST uploads/?mount=<digest>&from=<repo>`;
//!    `201` → [`PushBlob::Mounted`], `202` → not mounted, go on with the
//!    upload session it opened.
//! 3. Else `POST uploads/` → `202` with the session's `Location`.
//! 4. Blobs up to `chunk_size`: one `PUT <Location>&digest=<digest>` with
//!    the bytes (what distribution 2.8 calls a monolithic upload). Bigger
//!    ones: `PATCH <Location>` per chunk with `Content-Range: <first>-<last>`
//!    (each answer's `Location` is the next URL), then an empty `PUT`.
//!
//! `Location` may be relative or absolute and may carry a query (`_state`);
//! `digest=` is appended to it. The registry checks the digest; its
//! `400 DIGEST_INVALID` becomes [`Error::DigestRejected`].

use bytes::{Bytes, BytesMut};
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE};
use reqwest::{Method, Response, Url};
use sochi_format::Descriptor;
use tokio::io::{AsyncRead, AsyncReadExt as _};

use crate::auth::Scope;
use crate::client::{header_str, redact_url, status_error, Client, RequestSpec};
use crate::digest::{digest_like, ContentHasher};
use crate::error::{Error, Result};
use crate::reference::{check_digest, Reference};

/// What [`Client::push_blob`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushBlob {
    /// The repository already had the blob; nothing was sent.
    Exists,
    /// The registry mounted the blob from the source repository.
    Mounted,
    /// The bytes were uploaded.
    Uploaded,
}

/// Where a push stands after its first steps.
enum Session {
    Done(PushBlob),
    Upload(Url),
}

const OCTET_STREAM: &str = "application/octet-stream";

impl Client {
    /// Pushes a blob held in memory; `bytes` must match `descriptor` (size
    /// and digest). `mount_from` is a repository of the same registry to
    /// mount the blob from, if it has it.
    pub async fn push_blob(
        &self,
        repo: &Reference,
        descriptor: &Descriptor,
        bytes: Bytes,
        mount_from: Option<&str>,
    ) -> Result<PushBlob> {
        let size = checked_size(descriptor)?;
        if bytes.len() as u64 != size {
            return Err(Error::InvalidArgument {
                what: "blob",
                detail: format!(
                    "{} bytes given for {} of size {size}",
                    bytes.len(),
                    descriptor.digest
                ),
            });
        }
        let actual = digest_like(&descriptor.digest, &bytes);
        if actual != descriptor.digest {
            return Err(Error::InvalidArgument {
                what: "blob",
                detail: format!(
                    "the bytes given hash to {actual}, not to {}",
                    descriptor.digest
                ),
            });
        }
        let mut location = match self.start_upload(repo, descriptor, mount_from).await? {
            Session::Done(done) => return Ok(done),
            Session::Upload(location) => location,
        };
        let chunk_size = self.inner.config.chunk_size.max(1);
        if bytes.len() <= chunk_size {
            return self.finish_upload(repo, descriptor, location, bytes).await;
        }
        let mut offset = 0usize;
        while offset < bytes.len() {
            let end = (offset + chunk_size).min(bytes.len());
            location = self
                .upload_chunk(repo, location, offset as u64, bytes.slice(offset..end))
                .await?;
            offset = end;
        }
        self.finish_upload(repo, descriptor, location, Bytes::new())
            .await
    }

    /// Pushes a blob read from `body`, which must yield exactly the
    /// descriptor's bytes: in one `PUT` when it fits in `chunk_size` (read
    /// into memory first), else in chunks of `chunk_size` (one chunk in
    /// memory at a time). The content is hashed on the way; a mismatch
    /// cancels the upload before the registry commits it.
    pub async fn push_blob_stream(
        &self,
        repo: &Reference,
        descriptor: &Descriptor,
        body: impl AsyncRead + Send + Unpin + 'static,
        mount_from: Option<&str>,
    ) -> Result<PushBlob> {
        let size = checked_size(descriptor)?;
        let mut body = body;
        let mut location = match self.start_upload(repo, descriptor, mount_from).await? {
            Session::Done(done) => return Ok(done),
            Session::Upload(location) => location,
        };
        let chunk_size = self.inner.config.chunk_size.max(1);
        let mut hasher = ContentHasher::for_digest(&descriptor.digest);
        let too_long = || Error::InvalidArgument {
            what: "blob stream",
            detail: format!("more than the {size} bytes of {}", descriptor.digest),
        };
        let read_error = |source| Error::Read {
            digest: descriptor.digest.to_string(),
            source,
        };
        if size <= chunk_size as u64 {
            // One more byte than the blob, to notice a longer stream.
            let bytes = match read_chunk(&mut body, size as usize + 1).await {
                Ok(bytes) => bytes,
                Err(source) => {
                    self.cancel_upload(repo, &location).await;
                    return Err(read_error(source));
                }
            };
            let checked = if bytes.len() as u64 > size {
                Err(too_long())
            } else if (bytes.len() as u64) < size {
                Err(short_stream(descriptor, bytes.len() as u64, size))
            } else {
                if let Some(h) = &mut hasher {
                    h.update(&bytes);
                }
                check_hash(hasher, descriptor)
            };
            if let Err(e) = checked {
                self.cancel_upload(repo, &location).await;
                return Err(e);
            }
            return self.finish_upload(repo, descriptor, location, bytes).await;
        }
        let mut offset = 0u64;
        loop {
            let chunk = match read_chunk(&mut body, chunk_size).await {
                Ok(chunk) => chunk,
                Err(source) => {
                    self.cancel_upload(repo, &location).await;
                    return Err(read_error(source));
                }
            };
            let len = chunk.len() as u64;
            if len == 0 {
                break;
            }
            if offset + len > size {
                self.cancel_upload(repo, &location).await;
                return Err(too_long());
            }
            if let Some(h) = &mut hasher {
                h.update(&chunk);
            }
            location = self.upload_chunk(repo, location, offset, chunk).await?;
            offset += len;
            if len < chunk_size as u64 {
                break;
            }
        }
        let checked = if offset != size {
            Err(short_stream(descriptor, offset, size))
        } else {
            check_hash(hasher, descriptor)
        };
        if let Err(e) = checked {
            self.cancel_upload(repo, &location).await;
            return Err(e);
        }
        self.finish_upload(repo, descriptor, location, Bytes::new())
            .await
    }

    /// Steps 1–3 of the module doc.
    async fn start_upload(
        &self,
        repo: &Reference,
        descriptor: &Descriptor,
        mount_from: Option<&str>,
    ) -> Result<Session> {
        let digest = descriptor.digest.as_str();
        let push = Scope::push(&repo.repository);
        if self
            .blob_size_scoped(repo, digest, push.clone())
            .await?
            .is_some()
        {
            return Ok(Session::Done(PushBlob::Exists));
        }
        let uploads = self.url(repo, "blobs/uploads/")?;
        if let Some(from) = mount_from.filter(|f| !f.is_empty() && *f != repo.repository) {
            let mut url = uploads.clone();
            url.query_pairs_mut()
                .append_pair("mount", digest)
                .append_pair("from", from);
            let spec =
                RequestSpec::new(Method::POST, url, Scope::push_mount(&repo.repository, from))
                    .header(CONTENT_LENGTH, "0")?
                    .body(Bytes::new());
            let response = self.execute(repo, spec).await?;
            return match response.status().as_u16() {
                201 => Ok(Session::Done(PushBlob::Mounted)),
                202 => Ok(Session::Upload(upload_location(&response)?)),
                _ => Err(status_error(&Method::POST, response).await),
            };
        }
        // An explicit zero length: proxies in front of registries may
        // answer 411 to a POST without one.
        let spec = RequestSpec::new(Method::POST, uploads, push)
            .header(CONTENT_LENGTH, "0")?
            .body(Bytes::new());
        let response = self.execute(repo, spec).await?;
        match response.status().as_u16() {
            202 => Ok(Session::Upload(upload_location(&response)?)),
            _ => Err(status_error(&Method::POST, response).await),
        }
    }

    /// `PATCH` one chunk at `offset`; returns the next upload URL.
    async fn upload_chunk(
        &self,
        repo: &Reference,
        location: Url,
        offset: u64,
        chunk: Bytes,
    ) -> Result<Url> {
        let last = offset + chunk.len() as u64 - 1;
        tracing::trace!(offset, len = chunk.len(), "uploading chunk");
        let spec = RequestSpec::new(
            Method::PATCH,
            location.clone(),
            Scope::push(&repo.repository),
        )
        .header(CONTENT_TYPE, OCTET_STREAM)?
        .header(CONTENT_RANGE, &format!("{offset}-{last}"))?
        .body(chunk);
        let response = self.execute(repo, spec).await?;
        match response.status().as_u16() {
            202 | 204 => {
                check_upload_range(&response, last)?;
                Ok(next_location(&response, &location)?)
            }
            // A retried PATCH whose first try arrived: the registry is past
            // `offset`. Ask where it stands.
            416 => {
                let status = self.upload_status(repo, &location).await?;
                match status {
                    (Some(end), next) if end == last => Ok(next),
                    (end, _) => Err(Error::Malformed {
                        what: "upload session",
                        url: redact_url(&location),
                        detail: format!(
                            "the registry refused bytes {offset}-{last} and holds {}",
                            end.map_or("nothing".to_string(), |e| format!("bytes 0-{e}"))
                        ),
                    }),
                }
            }
            _ => Err(status_error(&Method::PATCH, response).await),
        }
    }

    /// `GET <location>`: the last byte the registry holds, and the URL to
    /// go on with.
    async fn upload_status(&self, repo: &Reference, location: &Url) -> Result<(Option<u64>, Url)> {
        let spec = RequestSpec::new(Method::GET, location.clone(), Scope::push(&repo.repository));
        let response = self.execute(repo, spec).await?;
        if !response.status().is_success() {
            return Err(status_error(&Method::GET, response).await);
        }
        let end = header_str(&response, RANGE)
            .and_then(|r| r.trim().strip_prefix("bytes=").or(Some(r.trim())))
            .and_then(|r| r.split_once('-'))
            .and_then(|(_, end)| end.trim().parse::<u64>().ok());
        Ok((end, next_location(&response, location)?))
    }

    /// The final `PUT <location>&digest=…`.
    async fn finish_upload(
        &self,
        repo: &Reference,
        descriptor: &Descriptor,
        location: Url,
        body: Bytes,
    ) -> Result<PushBlob> {
        let digest = descriptor.digest.as_str();
        let mut url = location;
        url.query_pairs_mut().append_pair("digest", digest);
        let spec = RequestSpec::new(Method::PUT, url.clone(), Scope::push(&repo.repository))
            .header(CONTENT_TYPE, OCTET_STREAM)?
            .header(CONTENT_LENGTH, &body.len().to_string())?
            .body(body);
        let response = self.execute(repo, spec).await?;
        if response.status().is_success() {
            tracing::debug!(repository = %repo.repository, %digest, "uploaded blob");
            return Ok(PushBlob::Uploaded);
        }
        let error = status_error(&Method::PUT, response).await;
        match &error {
            Error::Status {
                status: 400,
                code: Some(code),
                message,
                ..
            } if code == "DIGEST_INVALID" => Err(Error::DigestRejected {
                registry: repo.registry.clone(),
                repository: repo.repository.clone(),
                digest: digest.to_string(),
                message: message.clone().unwrap_or_default(),
            }),
            // A retried PUT whose first try was committed finds no session.
            Error::Status { status: 404, .. }
                if self
                    .blob_size_scoped(repo, digest, Scope::push(&repo.repository))
                    .await?
                    .is_some() =>
            {
                Ok(PushBlob::Uploaded)
            }
            _ => Err(error),
        }
    }

    /// Best-effort `DELETE` of an upload session we give up on.
    async fn cancel_upload(&self, repo: &Reference, location: &Url) {
        let spec = RequestSpec::new(
            Method::DELETE,
            location.clone(),
            Scope::push(&repo.repository),
        );
        if let Err(e) = self.execute(repo, spec).await {
            tracing::debug!(error = %e, "cancelling an upload failed");
        }
    }
}

/// The stream's digest must be the descriptor's.
fn check_hash(hasher: Option<ContentHasher>, descriptor: &Descriptor) -> Result<()> {
    if let Some(h) = hasher {
        let actual = h.finish();
        if actual != descriptor.digest {
            return Err(Error::DigestMismatch {
                what: "blob stream to push",
                url: "the local stream".into(),
                expected: descriptor.digest.to_string(),
                actual,
            });
        }
    }
    Ok(())
}

fn checked_size(descriptor: &Descriptor) -> Result<u64> {
    check_digest(&descriptor.digest).map_err(|reason| Error::InvalidArgument {
        what: "descriptor",
        detail: reason,
    })?;
    u64::try_from(descriptor.size).map_err(|_| Error::InvalidArgument {
        what: "descriptor",
        detail: format!(
            "negative size {} for {}",
            descriptor.size, descriptor.digest
        ),
    })
}

fn short_stream(descriptor: &Descriptor, got: u64, size: u64) -> Error {
    Error::InvalidArgument {
        what: "blob stream",
        detail: format!(
            "ended after {got} of the {size} bytes of {}",
            descriptor.digest
        ),
    }
}

/// Reads up to `len` bytes, fewer only at the end of the stream.
async fn read_chunk(body: &mut (impl AsyncRead + Unpin), len: usize) -> std::io::Result<Bytes> {
    let mut buf = BytesMut::zeroed(len);
    let mut filled = 0;
    while filled < len {
        let n = body.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    buf.truncate(filled);
    Ok(buf.freeze())
}

/// The session URL of a `202` (relative `Location`s against the URL that
/// answered).
fn upload_location(response: &Response) -> Result<Url> {
    let base = response.url().clone();
    let location = header_str(response, LOCATION).ok_or_else(|| Error::Malformed {
        what: "upload answer",
        url: redact_url(&base),
        detail: "no Location header".into(),
    })?;
    base.join(location).map_err(|e| Error::Malformed {
        what: "Location header",
        url: redact_url(&base),
        detail: format!("{location:?} is not a url: {e}"),
    })
}

/// The `Location` of a `PATCH` answer, or the current URL if none.
fn next_location(response: &Response, current: &Url) -> Result<Url> {
    if header_str(response, LOCATION).is_some() {
        upload_location(response)
    } else {
        Ok(current.clone())
    }
}

/// A `Range: 0-<last>` answer must end where our chunk ended.
fn check_upload_range(response: &Response, last: u64) -> Result<()> {
    let Some(range) = header_str(response, RANGE) else {
        return Ok(());
    };
    let end = range
        .trim()
        .trim_start_matches("bytes=")
        .split_once('-')
        .and_then(|(_, end)| end.trim().parse::<u64>().ok());
    match end {
        Some(end) if end == last => Ok(()),
        _ => Err(Error::Malformed {
            what: "upload Range header",
            url: redact_url(response.url()),
            detail: format!("{range:?} after sending up to byte {last}"),
        }),
    }
}
