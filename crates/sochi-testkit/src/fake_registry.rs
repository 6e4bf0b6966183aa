//! A small in-memory distribution registry on 127.0.0.1 for unit tests of
//! anything that talks to a registry: blobs (ranges, uploads monolithic and chunked, mounts),
//! manifests, referrers API (on or off), basic or bearer auth, redirects to
//! a second origin, and injected faults (statuses, cut or stalled bodies,
//! ranges ignored, tokens revoked). It logs every request it gets.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use reqwest::Url;
use sochi_format::{Descriptor, ImageIndex, ImageManifest};

/// `sha256:<hex>` of `bytes`.
fn sha256_of(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

type Body = BoxBody<Bytes, std::io::Error>;

/// How the fake wants to be authenticated.
#[derive(Clone, Debug, Default)]
pub enum Auth {
    #[default]
    None,
    Basic {
        user: String,
        password: String,
    },
    /// Tokens from `/token`; with credentials, the token service wants them.
    Bearer {
        credentials: Option<(String, String)>,
    },
}

/// Knobs of the fake.
#[derive(Clone, Debug, Default)]
pub struct Config {
    pub auth: Auth,
    /// Serve `/v2/<name>/referrers/<digest>`; else `404 page not found`.
    pub referrers_api: bool,
    /// With the referrers API: say `OCI-Filters-Applied: artifactType`.
    pub filters_applied: bool,
    /// With the referrers API: entries per page (0 = all).
    pub page_size: usize,
    /// Upload `Location`s are absolute URLs (else relative paths).
    pub absolute_locations: bool,
    /// Blob GET/HEAD answer 307 to `http://localhost:<port>/_storage/…`.
    pub redirect_blobs: bool,
    /// Answer tokens in `access_token` instead of `token`.
    pub access_token_field: bool,
    /// Flip a byte of every upload before checking its digest.
    pub corrupt_uploads: bool,
    /// Accept this OAuth2 refresh token at `POST /token`.
    pub refresh_token: Option<String>,
    /// Refuse every token (as a registry whose token service is broken).
    pub refuse_tokens: bool,
    /// Answer mounts with 202 (not mounted) even when the source has it.
    pub refuse_mounts: bool,
}

/// What an injected fault does to the request it matches.
#[derive(Clone, Debug)]
pub enum FaultAction {
    /// Answer this status with these headers instead.
    Status(u16, Vec<(&'static str, String)>),
    /// Answer this status with an OCI error body of this code.
    Error(u16, &'static str),
    /// Answer normally but close the connection after this many body bytes.
    Cut(usize),
    /// Answer normally but stop sending after this many body bytes.
    Stall(usize),
    /// Answer a `Range` request with the whole blob (`200`).
    IgnoreRange,
    /// Forget every token issued so far (they "expired").
    RevokeTokens,
    /// Send this `Docker-Content-Digest` instead of the right one.
    WrongDigestHeader(String),
    /// Never answer (the headers do not come).
    Hang,
    /// Do what the request asks, then answer this status anyway (as when
    /// the answer is lost on the way back).
    ThenStatus(u16),
}

#[derive(Clone, Debug)]
pub struct Fault {
    pub method: &'static str,
    /// A substring of the path.
    pub path: String,
    pub action: FaultAction,
}

/// One request as the fake saw it.
#[derive(Clone, Debug)]
pub struct Logged {
    pub method: String,
    pub host: String,
    pub path: String,
    pub query: String,
    pub headers: HashMap<String, String>,
}

impl Logged {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

#[derive(Default)]
pub struct State {
    pub config: Config,
    pub port: u16,
    /// (repository, digest) → bytes.
    pub blobs: HashMap<(String, String), Bytes>,
    /// (repository, digest) → (content type, bytes).
    pub manifests: HashMap<(String, String), (String, Bytes)>,
    /// (repository, tag) → digest.
    pub tags: HashMap<(String, String), String>,
    /// upload id → (repository, bytes so far).
    uploads: HashMap<u64, (String, Vec<u8>)>,
    next_upload: u64,
    /// token → scopes.
    tokens: HashMap<String, HashSet<String>>,
    pub tokens_issued: usize,
    pub faults: VecDeque<Fault>,
    pub log: Vec<Logged>,
}

/// A running fake; stops when dropped.
pub struct FakeRegistry {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeRegistry {
    pub async fn start(config: Config) -> FakeRegistry {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            config,
            port: addr.port(),
            ..State::default()
        }));
        let shared = state.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeRegistry {
            addr,
            state,
            server,
        }
    }

    /// `127.0.0.1:<port>/<repository>`: a reference to parse.
    pub fn repository(&self, repository: &str) -> String {
        format!("{}/{repository}", self.addr)
    }

    pub fn add_blob(&self, repository: &str, bytes: &[u8]) -> Descriptor {
        let descriptor = Descriptor::of("application/octet-stream", bytes);
        self.add_blob_as(repository, &descriptor.digest, bytes);
        descriptor
    }

    /// Stores `bytes` under `digest`, right or wrong.
    pub fn add_blob_as(&self, repository: &str, digest: &str, bytes: &[u8]) {
        self.state.lock().blobs.insert(
            (repository.to_string(), digest.to_string()),
            Bytes::copy_from_slice(bytes),
        );
    }

    pub fn add_manifest(
        &self,
        repository: &str,
        tag: Option<&str>,
        media_type: &str,
        bytes: &[u8],
    ) -> String {
        let digest = sha256_of(bytes);
        self.add_manifest_as(repository, &digest, media_type, bytes);
        if let Some(tag) = tag {
            self.state
                .lock()
                .tags
                .insert((repository.to_string(), tag.to_string()), digest.clone());
        }
        digest
    }

    pub fn add_manifest_as(&self, repository: &str, digest: &str, media_type: &str, bytes: &[u8]) {
        self.state.lock().manifests.insert(
            (repository.to_string(), digest.to_string()),
            (media_type.to_string(), Bytes::copy_from_slice(bytes)),
        );
    }

    pub fn fault(&self, method: &'static str, path: &str, action: FaultAction) {
        self.state.lock().faults.push_back(Fault {
            method,
            path: path.to_string(),
            action,
        });
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().log.clone()
    }

    /// Requests whose method is `method` and whose path contains `path`.
    pub fn requests(&self, method: &str, path: &str) -> Vec<Logged> {
        self.log()
            .into_iter()
            .filter(|l| l.method == method && l.path.contains(path))
            .collect()
    }

    pub fn blob(&self, repository: &str, digest: &str) -> Option<Bytes> {
        self.state
            .lock()
            .blobs
            .get(&(repository.to_string(), digest.to_string()))
            .cloned()
    }

    pub fn tagged(&self, repository: &str, tag: &str) -> Option<(String, Bytes)> {
        let state = self.state.lock();
        let digest = state.tags.get(&(repository.to_string(), tag.to_string()))?;
        state
            .manifests
            .get(&(repository.to_string(), digest.clone()))
            .map(|(_, b)| (digest.clone(), b.clone()))
    }

    pub fn has_manifest(&self, repository: &str, digest: &str) -> bool {
        self.state
            .lock()
            .manifests
            .contains_key(&(repository.to_string(), digest.to_string()))
    }
}

/// A response before it becomes hyper's.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
    /// Close the connection after this many body bytes.
    cut: Option<usize>,
    /// Stop sending after this many body bytes.
    stall: Option<usize>,
    /// Do not answer at all.
    hang: bool,
}

impl Answer {
    fn new(status: u16) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
            cut: None,
            stall: None,
            hang: false,
        }
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Answer {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    fn body(mut self, body: impl Into<Bytes>) -> Answer {
        self.body = body.into();
        self
    }

    fn error(status: u16, code: &str, message: &str) -> Answer {
        Answer::new(status)
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"errors":[{{"code":"{code}","message":"{message}","detail":null}}]}}"#
            ))
    }

    fn into_response(self, head: bool) -> Response<Body> {
        let mut builder = Response::builder().status(self.status);
        let has_length = self.headers.iter().any(|(n, _)| n == "content-length");
        for (name, value) in &self.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        if !has_length && !head {
            builder = builder.header("content-length", self.body.len().to_string());
        }
        let body: Body = if head {
            Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed()
        } else if let Some(n) = self.cut {
            let part = self.body.slice(..n.min(self.body.len()));
            // Pause before the error so that hyper flushes what came before.
            let first = futures_util::stream::iter(vec![Ok(Frame::data(part))]);
            let cut = futures_util::stream::once(async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err(std::io::Error::other("fake: connection cut"))
            });
            StreamBody::new(futures_util::StreamExt::chain(first, cut)).boxed()
        } else if let Some(n) = self.stall {
            let part = self.body.slice(..n.min(self.body.len()));
            let first = futures_util::stream::iter(vec![Ok(Frame::data(part))]);
            let never = futures_util::stream::once(async {
                tokio::time::sleep(Duration::from_secs(600)).await;
                Err(std::io::Error::other("fake: stalled"))
            });
            StreamBody::new(futures_util::StreamExt::chain(first, never)).boxed()
        } else {
            Full::new(self.body).map_err(|never| match never {}).boxed()
        };
        builder.body(body).unwrap()
    }
}

async fn handle(
    state: Arc<Mutex<State>>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let head = parts.method == hyper::Method::HEAD;
    let answer = state.lock().respond(&parts, body);
    if answer.hang {
        tokio::time::sleep(Duration::from_secs(600)).await;
    }
    Ok(answer.into_response(head))
}

fn parse_range(value: &str, len: usize) -> Option<(usize, usize)> {
    let spec = value.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let a: usize = a.parse().ok()?;
    let b: usize = if b.is_empty() {
        len.checked_sub(1)?
    } else {
        b.parse::<usize>().ok()?.min(len.checked_sub(1)?)
    };
    (a <= b).then_some((a, b))
}

impl State {
    fn respond(&mut self, parts: &hyper::http::request::Parts, body: Bytes) -> Answer {
        let method = parts.method.as_str().to_string();
        let path = parts.uri.path().to_string();
        let query = parts.uri.query().unwrap_or("").to_string();
        let headers: HashMap<String, String> = parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let host = headers.get("host").cloned().unwrap_or_default();
        let logged = Logged {
            method: method.clone(),
            host,
            path: path.clone(),
            query: query.clone(),
            headers,
        };
        self.log.push(logged.clone());

        let mut cut = None;
        let mut stall = None;
        let mut ignore_range = false;
        let mut wrong_digest = None;
        let mut hang = false;
        let mut then_status = None;
        if let Some(i) = self
            .faults
            .iter()
            .position(|f| f.method == method && path.contains(&f.path))
        {
            let fault = self.faults.remove(i).unwrap();
            match fault.action {
                FaultAction::Status(status, headers) => {
                    let mut answer = Answer::error(status, "FAULT", "injected");
                    for (n, v) in headers {
                        answer = answer.header(n, v);
                    }
                    return answer;
                }
                FaultAction::Error(status, code) => return Answer::error(status, code, "injected"),
                FaultAction::Cut(n) => cut = Some(n),
                FaultAction::Stall(n) => stall = Some(n),
                FaultAction::IgnoreRange => ignore_range = true,
                FaultAction::RevokeTokens => self.tokens.clear(),
                FaultAction::WrongDigestHeader(d) => wrong_digest = Some(d),
                FaultAction::Hang => hang = true,
                FaultAction::ThenStatus(status) => then_status = Some(status),
            }
        }

        let mut answer = self.route(&logged, body, ignore_range);
        if let Some(d) = wrong_digest {
            answer.headers.retain(|(n, _)| n != "docker-content-digest");
            answer = answer.header("docker-content-digest", d);
        }
        if let Some(status) = then_status {
            answer = Answer::error(status, "FAULT", "answer lost");
        }
        answer.cut = cut;
        answer.stall = stall;
        answer.hang = hang;
        answer
    }

    // Long: one dispatch on (method, endpoint) for the whole API the fake
    // serves, so what it answers and what it refuses read in one place;
    // each arm is a few lines on the shared state.
    fn route(&mut self, req: &Logged, body: Bytes, ignore_range: bool) -> Answer {
        let query: Vec<(String, String)> = Url::parse(&format!("http://x/?{}", req.query))
            .unwrap()
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let param = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        if req.path == "/token" && req.method == "POST" {
            let form: Vec<(String, String)> =
                Url::parse(&format!("http://x/?{}", String::from_utf8_lossy(&body)))
                    .unwrap()
                    .query_pairs()
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
            let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
            let ok = field("grant_type").as_deref() == Some("refresh_token")
                && field("refresh_token").is_some()
                && field("refresh_token") == self.config.refresh_token;
            if !ok {
                return Answer::error(401, "UNAUTHORIZED", "bad refresh token");
            }
            let scopes: Vec<(String, String)> = field("scope")
                .unwrap_or_default()
                .split(' ')
                .map(|s| ("scope".to_string(), s.to_string()))
                .collect();
            return self.issue_token(&scopes);
        }
        if req.path == "/token" {
            return self.token(req, &query);
        }
        if let Some(rest) = req.path.strip_prefix("/_storage/") {
            // The redirect target: another origin, no auth, presigned.
            let Some((repo, digest)) = rest.rsplit_once('/') else {
                return Answer::new(404);
            };
            return self.serve_blob(req, repo, digest, ignore_range);
        }
        let Some(v2) = req.path.strip_prefix("/v2/") else {
            return Answer::new(404).body("404 page not found");
        };
        let route = ["/blobs/uploads/", "/blobs/", "/manifests/", "/referrers/"]
            .iter()
            .find_map(|kind| {
                v2.find(kind)
                    .map(|i| (v2[..i].to_string(), *kind, v2[i + kind.len()..].to_string()))
            });
        let Some((repo, kind, rest)) = route else {
            return Answer::new(200).body("{}");
        };
        if let Some(denied) = self.check_auth(req, &repo) {
            return denied;
        }
        match (req.method.as_str(), kind) {
            ("GET" | "HEAD", "/blobs/") => {
                if self.config.redirect_blobs {
                    return Answer::new(307).header(
                        "location",
                        format!(
                            "http://localhost:{}/_storage/{repo}/{rest}?X-Amz-Signature=secret",
                            self.port
                        ),
                    );
                }
                self.serve_blob(req, &repo, &rest, ignore_range)
            }
            ("POST", "/blobs/uploads/") => {
                if let (Some(digest), Some(from)) = (param("mount"), param("from")) {
                    let source = self.blobs.get(&(from, digest.clone())).cloned();
                    if let (Some(bytes), false) = (source, self.config.refuse_mounts) {
                        self.blobs.insert((repo.clone(), digest.clone()), bytes);
                        return Answer::new(201)
                            .header("location", format!("/v2/{repo}/blobs/{digest}"))
                            .header("docker-content-digest", digest);
                    }
                }
                self.next_upload += 1;
                let id = self.next_upload;
                self.uploads.insert(id, (repo.clone(), Vec::new()));
                Answer::new(202)
                    .header("location", self.location(&repo, id))
                    .header("range", "0-0")
            }
            ("PATCH", "/blobs/uploads/") => {
                let Some((id, data)) = self.upload(&rest) else {
                    return Answer::error(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown");
                };
                let have = data.len();
                if let Some(range) = req.header("content-range") {
                    let start: Option<usize> =
                        range.split_once('-').and_then(|(a, _)| a.parse().ok());
                    if start != Some(have) {
                        return Answer::new(416)
                            .header("range", format!("0-{}", have.saturating_sub(1)));
                    }
                }
                data.extend_from_slice(&body);
                let len = data.len();
                Answer::new(202)
                    .header("location", self.location(&repo, id))
                    .header("range", format!("0-{}", len - 1))
            }
            ("GET", "/blobs/uploads/") => {
                let Some((id, data)) = self.upload(&rest) else {
                    return Answer::error(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown");
                };
                let len = data.len();
                Answer::new(204)
                    .header("location", self.location(&repo, id))
                    .header("range", format!("0-{}", len.saturating_sub(1)))
            }
            ("DELETE", "/blobs/uploads/") => {
                let Some((id, _)) = self.upload(&rest) else {
                    return Answer::error(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown");
                };
                self.uploads.remove(&id);
                Answer::new(204)
            }
            ("PUT", "/blobs/uploads/") => {
                let Some((id, data)) = self.upload(&rest) else {
                    return Answer::error(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown");
                };
                data.extend_from_slice(&body);
                let mut data = std::mem::take(data);
                self.uploads.remove(&id);
                if self.config.corrupt_uploads {
                    if let Some(b) = data.first_mut() {
                        *b ^= 0xff;
                    }
                }
                let Some(digest) = param("digest") else {
                    return Answer::error(400, "DIGEST_INVALID", "no digest");
                };
                if sha256_of(&data) != digest {
                    return Answer::error(
                        400,
                        "DIGEST_INVALID",
                        "provided digest did not match uploaded content",
                    );
                }
                self.blobs
                    .insert((repo.clone(), digest.clone()), Bytes::from(data));
                Answer::new(201)
                    .header("location", format!("/v2/{repo}/blobs/{digest}"))
                    .header("docker-content-digest", digest)
            }
            ("GET" | "HEAD", "/manifests/") => {
                let digest = if rest.contains(':') {
                    rest.clone()
                } else {
                    match self.tags.get(&(repo.clone(), rest.clone())) {
                        Some(d) => d.clone(),
                        None => return Answer::error(404, "MANIFEST_UNKNOWN", "manifest unknown"),
                    }
                };
                match self.manifests.get(&(repo.clone(), digest.clone())) {
                    Some((media_type, bytes)) => Answer::new(200)
                        .header("content-type", media_type.clone())
                        .header("docker-content-digest", digest)
                        .header("content-length", bytes.len().to_string())
                        .body(bytes.clone()),
                    None => Answer::error(404, "MANIFEST_UNKNOWN", "manifest unknown"),
                }
            }
            ("PUT", "/manifests/") => {
                let digest = sha256_of(&body);
                if rest.contains(':') && rest != digest {
                    return Answer::error(400, "DIGEST_INVALID", "manifest digest did not match");
                }
                let media_type = req.header("content-type").unwrap_or("").to_string();
                self.manifests
                    .insert((repo.clone(), digest.clone()), (media_type, body.clone()));
                if !rest.contains(':') {
                    self.tags
                        .insert((repo.clone(), rest.clone()), digest.clone());
                }
                let mut answer = Answer::new(201)
                    .header("location", format!("/v2/{repo}/manifests/{digest}"))
                    .header("docker-content-digest", digest);
                let subject = ImageManifest::from_json(&body).ok().and_then(|m| m.subject);
                if let (Some(subject), true) = (subject, self.config.referrers_api) {
                    answer = answer.header("oci-subject", subject.digest);
                }
                answer
            }
            ("DELETE", "/manifests/") => {
                if self
                    .manifests
                    .remove(&(repo.clone(), rest.clone()))
                    .is_none()
                {
                    return Answer::error(404, "MANIFEST_UNKNOWN", "manifest unknown");
                }
                self.tags.retain(|(r, _), d| !(*r == repo && *d == rest));
                Answer::new(202)
            }
            ("GET", "/referrers/") => {
                self.referrers(&repo, &rest, param("artifactType"), param("page"))
            }
            _ => Answer::new(405),
        }
    }

    fn serve_blob(&self, req: &Logged, repo: &str, digest: &str, ignore_range: bool) -> Answer {
        let Some(bytes) = self
            .blobs
            .get(&(repo.to_string(), digest.to_string()))
            .cloned()
        else {
            return Answer::error(404, "BLOB_UNKNOWN", "blob unknown to registry");
        };
        let base = Answer::new(200)
            .header("docker-content-digest", digest)
            .header("accept-ranges", "bytes");
        if req.method == "HEAD" {
            return base.header("content-length", bytes.len().to_string());
        }
        match req.header("range").filter(|_| !ignore_range) {
            Some(range) => match parse_range(range, bytes.len()) {
                Some((a, b)) => {
                    let mut answer = base.body(bytes.slice(a..=b));
                    answer.status = 206;
                    answer.header("content-range", format!("bytes {a}-{b}/{}", bytes.len()))
                }
                None => {
                    Answer::new(416).header("content-range", format!("bytes */{}", bytes.len()))
                }
            },
            None => base.body(bytes),
        }
    }

    fn location(&self, repo: &str, id: u64) -> String {
        let len = self.uploads.get(&id).map_or(0, |(_, d)| d.len());
        let path = format!("/v2/{repo}/blobs/uploads/{id}?_state=s{id}-{len}");
        if self.config.absolute_locations {
            format!("http://127.0.0.1:{}{path}", self.port)
        } else {
            path
        }
    }

    fn upload(&mut self, rest: &str) -> Option<(u64, &mut Vec<u8>)> {
        let id: u64 = rest.parse().ok()?;
        self.uploads.get_mut(&id).map(|(_, d)| (id, d))
    }

    fn referrers(
        &self,
        repo: &str,
        subject: &str,
        artifact_type: Option<String>,
        page: Option<String>,
    ) -> Answer {
        if !self.config.referrers_api {
            return Answer::new(404)
                .header("content-type", "text/plain; charset=utf-8")
                .body("404 page not found\n");
        }
        let mut found: Vec<Descriptor> = Vec::new();
        let mut keys: Vec<_> = self
            .manifests
            .keys()
            .filter(|(r, _)| r == repo)
            .cloned()
            .collect();
        keys.sort();
        for key in keys {
            let (media_type, bytes) = &self.manifests[&key];
            let Ok(m) = ImageManifest::from_json(bytes) else {
                continue;
            };
            if m.subject.as_ref().is_some_and(|s| s.digest == subject) {
                let artifact = m
                    .artifact_type
                    .clone()
                    .or(Some(m.config.media_type.clone()));
                found.push(Descriptor {
                    media_type: media_type.clone(),
                    digest: key.1.clone().into(),
                    size: bytes.len() as i64,
                    annotations: m.annotations.clone(),
                    artifact_type: artifact,
                    ..Descriptor::default()
                });
            }
        }
        if self.config.filters_applied {
            if let Some(t) = &artifact_type {
                found.retain(|d| d.artifact_type.as_deref() == Some(t.as_str()));
            }
        }
        let page: usize = page.and_then(|p| p.parse().ok()).unwrap_or(0);
        let mut answer =
            Answer::new(200).header("content-type", sochi_format::media_types::OCI_INDEX);
        if self.config.page_size > 0 {
            let start = page * self.config.page_size;
            let end = (start + self.config.page_size).min(found.len());
            if end < found.len() {
                let mut next = format!("/v2/{repo}/referrers/{subject}?page={}", page + 1);
                if let Some(t) = &artifact_type {
                    next.push_str(&format!(
                        "&artifactType={}",
                        t.replace('+', "%2B").replace('/', "%2F")
                    ));
                }
                answer = answer.header("link", format!("<{next}>; rel=\"next\""));
            }
            found = found
                .get(start..end)
                .map(|s| s.to_vec())
                .unwrap_or_default();
        }
        if self.config.filters_applied && artifact_type.is_some() {
            answer = answer.header("oci-filters-applied", "artifactType");
        }
        let index = ImageIndex {
            schema_version: 2,
            media_type: sochi_format::media_types::OCI_INDEX.to_string(),
            manifests: Some(found),
            ..ImageIndex::default()
        };
        answer.body(index.to_go_json())
    }

    fn token(&mut self, req: &Logged, query: &[(String, String)]) -> Answer {
        if let Auth::Bearer {
            credentials: Some((user, password)),
        } = &self.config.auth
        {
            let want = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            );
            if req.header("authorization") != Some(want.as_str()) {
                return Answer::error(401, "UNAUTHORIZED", "bad credentials for the token service");
            }
        }
        self.issue_token(query)
    }

    fn issue_token(&mut self, query: &[(String, String)]) -> Answer {
        self.tokens_issued += 1;
        let token = format!("token-{}", self.tokens_issued);
        let scopes: HashSet<String> = query
            .iter()
            .filter(|(k, _)| k == "scope")
            .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
            .collect();
        if !self.config.refuse_tokens {
            self.tokens.insert(token.clone(), scopes);
        }
        let field = if self.config.access_token_field {
            "access_token"
        } else {
            "token"
        };
        Answer::new(200)
            .header("content-type", "application/json")
            .body(format!(r#"{{"{field}":"{token}","expires_in":300}}"#))
    }

    fn check_auth(&self, req: &Logged, repo: &str) -> Option<Answer> {
        let action = match req.method.as_str() {
            "GET" | "HEAD" => "pull",
            "DELETE" => "delete",
            _ => "push",
        };
        match &self.config.auth {
            Auth::None => None,
            Auth::Basic { user, password } => {
                let want = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
                );
                (req.header("authorization") != Some(want.as_str())).then(|| {
                    Answer::error(401, "UNAUTHORIZED", "authentication required")
                        .header("www-authenticate", r#"Basic realm="fake registry""#)
                })
            }
            Auth::Bearer { .. } => {
                let granted = req
                    .header("authorization")
                    .and_then(|a| a.strip_prefix("Bearer "))
                    .and_then(|t| self.tokens.get(t))
                    .is_some_and(|scopes| {
                        scopes.iter().any(|s| {
                            s.strip_prefix(&format!("repository:{repo}:"))
                                .is_some_and(|actions| actions.split(',').any(|a| a == action))
                        })
                    });
                (!granted).then(|| {
                    let scope_actions = if action == "pull" { "pull".to_string() } else { format!("pull,{action}") };
                    Answer::error(401, "UNAUTHORIZED", "authentication required").header(
                        "www-authenticate",
                        format!(
                            r#"Bearer realm="http://127.0.0.1:{}/token",service="fake",scope="repository:{repo}:{scope_actions}""#,
                            self.port
                        ),
                    )
                })
            }
        }
    }
}
