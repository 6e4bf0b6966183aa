//! containerd's content store over gRPC: whether a blob is there, writing
//! one (streamed, size and digest checked by containerd on commit), and
//! setting labels on one.
//!
//! `Content.Write` is a bidirectional stream (containerd
//! `services/content/contentserver`): every request gets one answer, the
//! first request names the ingest `ref` (which containerd locks for the
//! session), and a request with `expected` set answers `AlreadyExists` at
//! once when that digest is already stored. We write in lockstep, one
//! request and its answer at a time, so an error surfaces at the chunk
//! that caused it. A write at offset 0 truncates what an earlier,
//! interrupted session left under the same ref.

use std::collections::{BTreeMap, HashMap};

use containerd_client::services::v1::{
    AbortRequest, Info, InfoRequest, UpdateRequest, WriteAction, WriteContentRequest,
    WriteContentResponse,
};
use containerd_client::tonic::{self, Code, Streaming};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::Containerd;
use crate::error::{Error, Result};

/// Bytes per `Write` request; containerd takes messages up to 16 MiB.
const WRITE_CHUNK: usize = 1 << 20;

/// How a write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    /// This session committed the blob.
    Committed,
    /// The store had it already (maybe committed by someone else meanwhile).
    Exists,
}

impl Containerd {
    /// The store's record of blob `digest`, or `None` if it has no such
    /// blob.
    pub(crate) async fn content_info(&self, digest: &str) -> Result<Option<Info>> {
        let request = InfoRequest {
            digest: digest.to_string(),
        };
        match self.content().info(request).await {
            Ok(response) => Ok(response.into_inner().info),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(Error::status("Content.Info", digest, status)),
        }
    }

    /// Whether the store holds blob `digest`, which then stays as long as
    /// this connection's lease: the pull's answer to "is it there?". A
    /// bare [`Containerd::content_info`] can say yes for a blob the
    /// collector removes a moment later.
    pub(crate) async fn content_kept(&self, digest: &str) -> Result<bool> {
        self.lease_resource("content", digest).await?;
        Ok(self.content_info(digest).await?.is_some())
    }

    /// Adds `labels` to blob `digest` (other labels stay).
    pub(crate) async fn add_content_labels(
        &self,
        digest: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<()> {
        if labels.is_empty() {
            return Ok(());
        }
        let request = UpdateRequest {
            info: Some(Info {
                digest: digest.to_string(),
                labels: labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                ..Info::default()
            }),
            // "labels.<key>" updates that one label (containerd
            // metadata/content.go Update).
            update_mask: Some(prost_types::FieldMask {
                paths: labels.keys().map(|key| format!("labels.{key}")).collect(),
            }),
        };
        self.content()
            .update(request)
            .await
            .map_err(|status| Error::status("Content.Update", digest, status))?;
        Ok(())
    }

    /// Puts `bytes` into the store as blob `digest` with `labels`, or adds
    /// the labels if the blob is there already.
    pub(crate) async fn put_content(
        &self,
        reference: &str,
        digest: &str,
        bytes: &[u8],
        labels: &BTreeMap<String, String>,
    ) -> Result<Written> {
        if self.content_kept(digest).await? {
            self.add_content_labels(digest, labels).await?;
            return Ok(Written::Exists);
        }
        let size = i64::try_from(bytes.len()).unwrap_or(i64::MAX);
        let written = self
            .write_content(reference, digest, size, labels, bytes)
            .await?;
        if written == Written::Exists {
            self.add_content_labels(digest, labels).await?;
        }
        Ok(written)
    }

    /// Streams `body` into the store as blob `digest` of `size` bytes under
    /// ingest ref `reference`, and commits it with `labels`. containerd
    /// checks size and digest on commit. On failure the ingest is aborted.
    pub(crate) async fn write_content<R: AsyncRead + Unpin>(
        &self,
        reference: &str,
        digest: &str,
        size: i64,
        labels: &BTreeMap<String, String>,
        body: R,
    ) -> Result<Written> {
        let result = self
            .write_session(reference, digest, size, labels, body)
            .await;
        if result.is_err() {
            // Best effort: the error that matters is the write's.
            let abort = AbortRequest {
                r#ref: reference.to_string(),
            };
            if let Err(status) = self.content().abort(abort).await {
                tracing::debug!(reference, error = %status, "aborting the ingest failed");
            }
        }
        result
    }

    async fn write_session<R: AsyncRead + Unpin>(
        &self,
        reference: &str,
        digest: &str,
        size: i64,
        labels: &BTreeMap<String, String>,
        mut body: R,
    ) -> Result<Written> {
        let (sender, receiver) = mpsc::channel::<WriteContentRequest>(1);
        let mut session = Session {
            sender,
            reference,
            digest,
        };
        // The first request goes out before the call: containerd answers
        // (and so sends the response headers the call waits for) only once
        // it has read it.
        session
            .send(WriteContentRequest {
                action: WriteAction::Stat as i32,
                r#ref: reference.to_string(),
                total: size,
                expected: digest.to_string(),
                ..WriteContentRequest::default()
            })
            .await?;
        let mut answers = match self.content().write(ReceiverStream::new(receiver)).await {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == Code::AlreadyExists => return Ok(Written::Exists),
            Err(status) => return Err(Error::status("Content.Write", digest, status)),
        };
        if session.answer(&mut answers).await?.is_none() {
            return Ok(Written::Exists);
        }

        let mut offset: i64 = 0;
        let mut buffer = vec![0u8; WRITE_CHUNK];
        loop {
            let filled = fill(&mut body, &mut buffer)
                .await
                .map_err(|source| Error::BlobRead {
                    digest: digest.to_string(),
                    source,
                })?;
            if filled == 0 {
                break;
            }
            session
                .send(WriteContentRequest {
                    action: WriteAction::Write as i32,
                    r#ref: reference.to_string(),
                    offset,
                    data: buffer[..filled].to_vec(),
                    ..WriteContentRequest::default()
                })
                .await?;
            offset += i64::try_from(filled).unwrap_or(i64::MAX);
            let Some(answer) = session.answer(&mut answers).await? else {
                return Ok(Written::Exists);
            };
            if answer.offset != offset {
                return Err(Error::Protocol {
                    call: "Content.Write",
                    target: digest.to_string(),
                    detail: format!(
                        "containerd is at offset {} after a write up to {offset}",
                        answer.offset
                    ),
                });
            }
            if offset > size {
                return Err(Error::Protocol {
                    call: "Content.Write",
                    target: digest.to_string(),
                    detail: format!("the blob is longer than its descriptor's {size} bytes"),
                });
            }
        }
        session
            .send(WriteContentRequest {
                action: WriteAction::Commit as i32,
                r#ref: reference.to_string(),
                total: size,
                expected: digest.to_string(),
                offset,
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<HashMap<_, _>>(),
                ..WriteContentRequest::default()
            })
            .await?;
        match session.answer(&mut answers).await? {
            Some(_) => Ok(Written::Committed),
            None => Ok(Written::Exists),
        }
    }
}

/// The sending half of one `Content.Write` session.
struct Session<'a> {
    sender: mpsc::Sender<WriteContentRequest>,
    reference: &'a str,
    digest: &'a str,
}

impl Session<'_> {
    async fn send(&mut self, request: WriteContentRequest) -> Result<()> {
        self.sender
            .send(request)
            .await
            .map_err(|_| Error::Protocol {
                call: "Content.Write",
                target: self.digest.to_string(),
                detail: format!("the stream of ref {} closed early", self.reference),
            })
    }

    /// The answer to the last request; `None` when containerd says the
    /// blob exists.
    async fn answer(
        &mut self,
        answers: &mut Streaming<WriteContentResponse>,
    ) -> Result<Option<WriteContentResponse>> {
        match answers.message().await {
            Ok(Some(answer)) => Ok(Some(answer)),
            Ok(None) => Err(Error::Protocol {
                call: "Content.Write",
                target: self.digest.to_string(),
                detail: format!(
                    "containerd ended the session of ref {} early",
                    self.reference
                ),
            }),
            Err(status) if status.code() == Code::AlreadyExists => Ok(None),
            Err(status) => Err(status_error(self.digest, status)),
        }
    }
}

fn status_error(digest: &str, status: tonic::Status) -> Error {
    Error::status("Content.Write", digest, status)
}

/// Reads until `buffer` is full or `body` ends; the count read.
async fn fill<R: AsyncRead + Unpin>(body: &mut R, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        let n = body.read(&mut buffer[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}
