//! Reading blobs: size (`HEAD`), a streaming `GET` that resumes after a
//! broken or stalled connection, byte ranges, and whole small blobs.
//!
//! Resuming: when the body of a blob `GET` fails part-way (connection
//! reset, no byte for the stall timeout, or a body shorter than its
//! `Content-Length`), [`BlobStream`] asks again from the registry URL (not
//! the redirect target, whose presigned URL may have expired) with
//! `Range: bytes=<received>-`. A `206` must start at `<received>`; a `200`
//! (a server or proxy that ignores ranges) is read from its start with the
//! first `<received>` bytes dropped. Resumes count against `max_retries`.
//! At the end of the stream the bytes' digest is checked.

use std::future::Future as _;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt as _};
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, RANGE};
use reqwest::{Method, Url};
use sochi_format::Descriptor;
use tokio::io::{AsyncRead, AsyncReadExt as _, ReadBuf};

use crate::auth::Scope;
use crate::client::{header_str, network_error, redact_url, status_error, Client, RequestSpec};
use crate::digest::ContentHasher;
use crate::error::{Error, Result};
use crate::reference::{check_digest, Reference};

/// [`Client::read_blob`] refuses blobs bigger than this; stream them with
/// [`Client::get_blob`] instead.
const MAX_READ_BLOB: u64 = 64 << 20;

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;
type Reopen = Pin<Box<dyn std::future::Future<Output = Result<Opened>> + Send>>;

/// A blob body as opened: where its bytes start relative to what we asked.
struct Opened {
    body: Body,
    /// Bytes at the start of `body` to drop (a `200` to a `Range` request).
    skip: u64,
    /// Blob size, if the answer told it.
    size: Option<u64>,
}

/// The content of a blob, read as it arrives; resumes after connection
/// errors (see the module doc) and checks the digest at the end (a
/// mismatch is an [`io::ErrorKind::InvalidData`] error wrapping
/// [`Error::DigestMismatch`]).
///
/// Invariant: `pending` is empty whenever a body is re-opened, so
/// `received` is both the bytes hashed and the offset to resume at.
pub struct BlobStream {
    client: Client,
    repo: Reference,
    digest: String,
    url: Url,
    size: Option<u64>,
    received: u64,
    skip: u64,
    pending: Bytes,
    body: Option<Body>,
    reopen: Option<Reopen>,
    resumes: u32,
    hasher: Option<ContentHasher>,
    done: bool,
    /// The stall timeout, and the timer running while the body is silent.
    stall_timeout: Duration,
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl std::fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStream")
            .field("digest", &self.digest)
            .field("size", &self.size)
            .field("received", &self.received)
            .field("resumes", &self.resumes)
            .finish_non_exhaustive()
    }
}

impl BlobStream {
    /// The blob's size, when the registry said (`Content-Length`).
    pub fn size(&self) -> Option<u64> {
        self.size
    }

    /// Starts re-opening the body at `received`, or gives up with `cause`.
    fn resume(&mut self, cause: Error) -> io::Result<()> {
        let retry = self.client.inner.retry;
        if self.resumes >= retry.max_retries {
            return Err(to_io(cause));
        }
        let wait = retry.backoff(self.resumes);
        self.resumes += 1;
        tracing::debug!(digest = %self.digest, offset = self.received, error = %cause, "resuming blob body");
        self.body = None;
        let (client, repo, digest, url, offset) = (
            self.client.clone(),
            self.repo.clone(),
            self.digest.clone(),
            self.url.clone(),
            self.received,
        );
        self.reopen = Some(Box::pin(async move {
            tokio::time::sleep(wait).await;
            client.open_blob(&repo, &digest, &url, offset).await
        }));
        Ok(())
    }

    /// End of a body: resume if short, else check size and digest.
    fn finish(&mut self) -> io::Result<bool> {
        if let Some(size) = self.size {
            if self.received < size {
                let cause = Error::Malformed {
                    what: "blob body",
                    url: redact_url(&self.url),
                    detail: format!("ended after {} of {size} bytes", self.received),
                };
                self.resume(cause)?;
                return Ok(false);
            }
        }
        self.done = true;
        if let Some(hasher) = self.hasher.take() {
            let actual = hasher.finish();
            if actual != self.digest {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    Error::DigestMismatch {
                        what: "blob",
                        url: redact_url(&self.url),
                        expected: self.digest.clone(),
                        actual,
                    },
                ));
            }
        }
        Ok(true)
    }

    /// Takes a chunk of the current body: drops what must be skipped,
    /// checks it does not run past the size, hashes it.
    fn accept(&mut self, mut chunk: Bytes) -> io::Result<()> {
        if self.skip > 0 {
            let drop = self.skip.min(chunk.len() as u64);
            self.skip -= drop;
            chunk = chunk.slice(drop as usize..);
        }
        if let Some(size) = self.size {
            if self.received + chunk.len() as u64 > size {
                return Err(to_io(Error::SizeMismatch {
                    what: "blob body",
                    url: redact_url(&self.url),
                    expected: size,
                    actual: self.received + chunk.len() as u64,
                }));
            }
        }
        self.received += chunk.len() as u64;
        if let Some(h) = &mut self.hasher {
            h.update(&chunk);
        }
        self.pending = chunk;
        Ok(())
    }
}

impl AsyncRead for BlobStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.done {
                return Poll::Ready(Ok(()));
            }
            if let Some(reopen) = &mut this.reopen {
                let opened = ready!(reopen.as_mut().poll(cx));
                this.reopen = None;
                let opened = opened.map_err(to_io)?;
                if let (Some(had), Some(now)) = (this.size, opened.size) {
                    if had != now {
                        return Poll::Ready(Err(to_io(Error::Malformed {
                            what: "resumed blob",
                            url: redact_url(&this.url),
                            detail: format!("size changed from {had} to {now} bytes"),
                        })));
                    }
                }
                this.size = this.size.or(opened.size);
                this.skip = opened.skip;
                this.body = Some(opened.body);
            }
            let Some(body) = &mut this.body else {
                return Poll::Ready(Err(io::Error::other("blob stream has no body")));
            };
            let polled = body.poll_next_unpin(cx);
            let Poll::Ready(next) = polled else {
                // Nothing yet: give up on this body after the stall timeout.
                let timeout = this.stall_timeout;
                if timeout.is_zero() {
                    return Poll::Pending;
                }
                let sleep = this
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                ready!(sleep.as_mut().poll(cx));
                this.stall = None;
                let cause = Error::Stalled {
                    url: redact_url(&this.url),
                    after: timeout,
                };
                this.resume(cause)?;
                continue;
            };
            this.stall = None;
            match next {
                Some(Ok(chunk)) => this.accept(chunk)?,
                Some(Err(e)) => {
                    let cause = network_error(&this.url, e);
                    this.resume(cause)?;
                }
                None => {
                    this.finish()?;
                }
            }
        }
    }
}

/// Our error as an `io::Error` (the inner error is kept for `downcast`).
fn to_io(e: Error) -> io::Error {
    io::Error::other(e)
}

/// Back from `io::Error` to ours, for errors that came through
/// [`BlobStream`].
fn from_io(e: io::Error, digest: &str) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        if let Some(inner) = e.into_inner() {
            if let Ok(ours) = inner.downcast::<Error>() {
                return *ours;
            }
        }
        return Error::InvalidArgument {
            what: "blob stream",
            detail: "lost its error".into(),
        };
    }
    Error::Read {
        digest: digest.to_string(),
        source: e,
    }
}

/// A `206` to a range request must say, in its `Content-Range`, that it
/// carries exactly bytes `from..=last`.
fn check_range_answer(response: &reqwest::Response, url: &Url, from: u64, last: u64) -> Result<()> {
    let header = header_str(response, CONTENT_RANGE)
        .unwrap_or("")
        .to_string();
    match parse_content_range(&header) {
        Some((first, end, _)) if first == from && end == last => Ok(()),
        _ => Err(Error::Malformed {
            what: "Content-Range header",
            url: redact_url(url),
            detail: format!("{header:?} is not the range asked for (bytes {from}-{last})"),
        }),
    }
}

/// `bytes <first>-<last>/<total|*>` → (first, last, total).
pub(crate) fn parse_content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (first, last) = range.trim().split_once('-')?;
    let first = first.trim().parse::<u64>().ok()?;
    let last = last.trim().parse::<u64>().ok()?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse::<u64>().ok()?),
    };
    if last < first || total.is_some_and(|t| last >= t) {
        return None;
    }
    Some((first, last, total))
}

fn invalid_digest(digest: &str) -> impl Fn(String) -> Error + '_ {
    move |reason| Error::InvalidArgument {
        what: "digest",
        detail: format!("{digest:?}: {reason}"),
    }
}

impl Client {
    /// The size of a blob (`HEAD`), or `None` when the registry does not
    /// have it.
    pub async fn blob_size(&self, repo: &Reference, digest: &str) -> Result<Option<u64>> {
        self.blob_size_scoped(repo, digest, Scope::pull(&repo.repository))
            .await
    }

    pub(crate) async fn blob_size_scoped(
        &self,
        repo: &Reference,
        digest: &str,
        scope: Scope,
    ) -> Result<Option<u64>> {
        check_digest(digest).map_err(invalid_digest(digest))?;
        let url = self.url(repo, &format!("blobs/{digest}"))?;
        let response = self
            .execute(
                repo,
                RequestSpec::new(Method::HEAD, url.clone(), scope.clone()),
            )
            .await?;
        match response.status().as_u16() {
            404 => return Ok(None),
            200..=299 => {}
            _ => return Err(status_error(&Method::HEAD, response).await),
        }
        // HEAD has no body: the size is the Content-Length header itself.
        if let Some(size) =
            header_str(&response, CONTENT_LENGTH).and_then(|v| v.trim().parse::<u64>().ok())
        {
            return Ok(Some(size));
        }
        // No Content-Length (some proxies): ask for one byte and read the
        // total of Content-Range.
        let spec = RequestSpec::new(Method::GET, url.clone(), scope).header(RANGE, "bytes=0-0")?;
        let response = self.execute(repo, spec).await?;
        let total = match response.status().as_u16() {
            206 => header_str(&response, CONTENT_RANGE)
                .and_then(parse_content_range)
                .and_then(|(_, _, total)| total),
            200 => header_str(&response, CONTENT_LENGTH).and_then(|v| v.trim().parse().ok()),
            404 => return Ok(None),
            _ => return Err(status_error(&Method::GET, response).await),
        };
        total.map(Some).ok_or_else(|| Error::Malformed {
            what: "blob size",
            url: redact_url(&url),
            detail: "neither Content-Length nor Content-Range total".into(),
        })
    }

    /// Opens the blob at `offset` (see the module doc).
    async fn open_blob(
        &self,
        repo: &Reference,
        _digest: &str,
        url: &Url,
        offset: u64,
    ) -> Result<Opened> {
        let mut spec = RequestSpec::new(Method::GET, url.clone(), Scope::pull(&repo.repository))
            .header(reqwest::header::ACCEPT_ENCODING, "identity")?;
        if offset > 0 {
            spec = spec.header(RANGE, &format!("bytes={offset}-"))?;
        }
        let response = self.execute(repo, spec).await?;
        let status = response.status().as_u16();
        let opened = |response: reqwest::Response, skip, size| Opened {
            body: Box::pin(response.bytes_stream()),
            skip,
            size,
        };
        match status {
            200 => {
                let size =
                    header_str(&response, CONTENT_LENGTH).and_then(|v| v.trim().parse().ok());
                Ok(opened(response, offset, size))
            }
            206 if offset > 0 => {
                let range = header_str(&response, CONTENT_RANGE).and_then(parse_content_range);
                match range {
                    Some((first, _, total)) if first == offset => Ok(opened(response, 0, total)),
                    _ => Err(Error::Malformed {
                        what: "Content-Range header",
                        url: redact_url(response.url()),
                        detail: format!(
                            "{:?} does not start at the offset asked for ({offset})",
                            header_str(&response, CONTENT_RANGE).unwrap_or("")
                        ),
                    }),
                }
            }
            _ => Err(status_error(&Method::GET, response).await),
        }
    }

    /// Streams a blob. Resumes after connection errors and checks the
    /// digest at the end (see [`BlobStream`]).
    pub async fn get_blob(&self, repo: &Reference, digest: &str) -> Result<BlobStream> {
        check_digest(digest).map_err(invalid_digest(digest))?;
        let url = self.url(repo, &format!("blobs/{digest}"))?;
        let opened = self.open_blob(repo, digest, &url, 0).await?;
        Ok(BlobStream {
            client: self.clone(),
            repo: repo.clone(),
            digest: digest.to_string(),
            url,
            size: opened.size,
            received: 0,
            skip: opened.skip,
            pending: Bytes::new(),
            body: Some(opened.body),
            reopen: None,
            resumes: 0,
            hasher: ContentHasher::for_digest(digest),
            done: false,
            stall_timeout: self.stall(),
            stall: None,
        })
    }

    /// Exactly the bytes `range` of a blob (`Range: bytes=a-b`). A `206`
    /// must carry the matching `Content-Range`; a `200` (the whole blob) is
    /// read up to the end of the range and cut. A broken body is asked
    /// again for what is missing. The bytes are not digest-checked (a range
    /// cannot be).
    ///
    /// At most [`ClientConfig::max_range_requests_per_host`] of these are in
    /// flight to one registry at once; the rest wait for a turn.
    ///
    /// [`ClientConfig::max_range_requests_per_host`]: crate::ClientConfig::max_range_requests_per_host
    pub async fn get_blob_range(
        &self,
        repo: &Reference,
        digest: &str,
        range: Range<u64>,
    ) -> Result<Bytes> {
        let _turn = self.range_turn(repo, false).await;
        self.read_blob_range(repo, digest, range).await
    }

    /// [`Client::get_blob_range`] for a background fetch: it waits for
    /// turns of its own
    /// ([`ClientConfig::max_background_requests_per_host`]), never for a
    /// reader's.
    ///
    /// [`ClientConfig::max_background_requests_per_host`]: crate::ClientConfig::max_background_requests_per_host
    pub async fn get_blob_range_in_background(
        &self,
        repo: &Reference,
        digest: &str,
        range: Range<u64>,
    ) -> Result<Bytes> {
        let _turn = self.range_turn(repo, true).await;
        self.read_blob_range(repo, digest, range).await
    }

    async fn read_blob_range(
        &self,
        repo: &Reference,
        digest: &str,
        range: Range<u64>,
    ) -> Result<Bytes> {
        check_digest(digest).map_err(invalid_digest(digest))?;
        if range.start > range.end {
            return Err(Error::InvalidArgument {
                what: "range",
                detail: format!("{}..{} ends before it starts", range.start, range.end),
            });
        }
        let want = range.end - range.start;
        if want == 0 {
            return Ok(Bytes::new());
        }
        let url = self.url(repo, &format!("blobs/{digest}"))?;
        let retry = self.inner.retry;
        let mut out = BytesMut::with_capacity(want.min(MAX_READ_BLOB) as usize);
        let mut attempt = 0u32;
        loop {
            let start_len = out.len() as u64;
            let from = range.start + start_len;
            let last = range.end - 1;
            let spec = RequestSpec::new(Method::GET, url.clone(), Scope::pull(&repo.repository))
                .header(RANGE, &format!("bytes={from}-{last}"))?
                .header(reqwest::header::ACCEPT_ENCODING, "identity")?;
            let mut response = self.execute(repo, spec).await?;
            let final_url = response.url().clone();
            let status = response.status().as_u16();
            let mut skip = match status {
                206 => {
                    check_range_answer(&response, &final_url, from, last)?;
                    0
                }
                // The whole blob: drop what comes before the range.
                200 => from,
                _ => return Err(status_error(&Method::GET, response).await),
            };
            let read = loop {
                match self.next_chunk(&mut response, &final_url).await {
                    Ok(Some(mut chunk)) => {
                        if skip > 0 {
                            let drop = skip.min(chunk.len() as u64);
                            skip -= drop;
                            chunk = chunk.slice(drop as usize..);
                        }
                        let room = (want - out.len() as u64) as usize;
                        if chunk.len() > room {
                            if status == 206 {
                                return Err(Error::Malformed {
                                    what: "range body",
                                    url: redact_url(&final_url),
                                    detail: format!("more bytes than the {want} asked for"),
                                });
                            }
                            chunk.truncate(room);
                        }
                        out.extend_from_slice(&chunk);
                        if out.len() as u64 == want {
                            // A 200 goes on to the end of the blob; dropping
                            // the response here closes that connection.
                            return Ok(out.freeze());
                        }
                    }
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
            };
            let cause = match read {
                Ok(()) if status == 200 => {
                    return Err(Error::Malformed {
                        what: "blob",
                        url: redact_url(&final_url),
                        detail: format!(
                            "the blob is {} bytes, shorter than the range asked for ({}..{})",
                            from - skip + (out.len() as u64 - start_len),
                            range.start,
                            range.end
                        ),
                    })
                }
                Ok(()) => Error::Malformed {
                    what: "range body",
                    url: redact_url(&final_url),
                    detail: format!("ended after {} of {want} bytes", out.len()),
                },
                Err(e) => e,
            };
            if attempt >= retry.max_retries {
                return Err(cause);
            }
            tracing::debug!(%digest, offset = from, error = %cause, "resuming range read");
            tokio::time::sleep(retry.backoff(attempt)).await;
            attempt += 1;
        }
    }

    /// A whole blob of at most 64 MiB, its size and digest checked against
    /// `descriptor`.
    pub async fn read_blob(&self, repo: &Reference, descriptor: &Descriptor) -> Result<Vec<u8>> {
        match self.read_blob_once(repo, descriptor).await {
            // Bytes damaged on the way (a proxy, a flaky link) are asked for
            // once more: an image config or zTOC lost to one bad answer
            // would make the whole image non-lazy until the plan expires.
            Err(error @ Error::DigestMismatch { .. }) => {
                tracing::warn!(%error, "blob digest mismatch; reading it once more");
                self.read_blob_once(repo, descriptor).await
            }
            other => other,
        }
    }

    async fn read_blob_once(&self, repo: &Reference, descriptor: &Descriptor) -> Result<Vec<u8>> {
        let digest = descriptor.digest.as_str();
        let url = self.url(repo, &format!("blobs/{digest}"));
        let shown = url.as_ref().map(redact_url).unwrap_or_default();
        let size = u64::try_from(descriptor.size).map_err(|_| Error::InvalidArgument {
            what: "descriptor",
            detail: format!("negative size {} for {digest}", descriptor.size),
        })?;
        if size > MAX_READ_BLOB {
            return Err(Error::TooLarge {
                what: "blob",
                url: shown,
                size,
                limit: MAX_READ_BLOB,
            });
        }
        let mut stream = self.get_blob(repo, digest).await?;
        if let Some(announced) = stream.size().filter(|&s| s != size) {
            return Err(Error::SizeMismatch {
                what: "blob",
                url: shown,
                expected: size,
                actual: announced,
            });
        }
        let mut out = Vec::with_capacity(size as usize);
        (&mut stream)
            .take(size + 1)
            .read_to_end(&mut out)
            .await
            .map_err(|e| from_io(e, digest))?;
        if out.len() as u64 != size {
            return Err(Error::SizeMismatch {
                what: "blob",
                url: shown,
                expected: size,
                actual: out.len() as u64,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_parse() {
        assert_eq!(
            parse_content_range("bytes 0-99/1088411"),
            Some((0, 99, Some(1088411)))
        );
        assert_eq!(parse_content_range("bytes 5-5/*"), Some((5, 5, None)));
        assert_eq!(parse_content_range("bytes 9-5/100"), None);
        assert_eq!(parse_content_range("bytes 0-100/100"), None);
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("0-5"), None);
    }
}
