//! `FaultProxy`: an HTTP/1.1 reverse proxy on 127.0.0.1 in front of a plain
//! registry that forwards everything and injects the faults a test asks for
//! at run time: the registry down, error statuses (with `Retry-After`), a
//! connection cut in the middle of a body, a corrupted body. It logs every
//! request so a test can assert what a client called.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, RANGE, RETRY_AFTER};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

use crate::registry::Registry;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = BoxBody<Bytes, BoxError>;

/// How long a cut connection waits after the last byte it lets through, so
/// that those bytes reach the client before the close.
const CUT_FLUSH_DELAY: Duration = Duration::from_millis(100);

/// What the proxy did to one request instead of (or on top of) forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answered this status without forwarding (`fail_next`).
    Status(u16),
    /// Forwarded, then cut the connection after this many body bytes.
    ResetMidBody(u64),
    /// Forwarded with one body byte flipped.
    CorruptBody,
}

/// One request the proxy saw, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// `GET`, `HEAD`, `PUT`, …
    pub method: String,
    /// The path and query, e.g. `/v2/busybox/blobs/sha256:…`.
    pub path: String,
    /// The request's `Range` header, if any.
    pub range: Option<String>,
    /// The status the client got (502 when the registry was unreachable).
    pub status: u16,
    /// The fault injected into this request, if any.
    pub fault: Option<Fault>,
}

#[derive(Debug)]
struct StatusRule {
    path_contains: String,
    remaining: usize,
    status: u16,
    retry_after: Option<u64>,
}

#[derive(Debug)]
enum BodyAction {
    Cut { after_bytes: u64 },
    Corrupt,
}

#[derive(Debug)]
struct BodyRule {
    path_contains: String,
    action: BodyAction,
}

#[derive(Debug, Default)]
struct State {
    down: bool,
    /// `Some` when the proxy plays a registry with the OCI referrers API:
    /// subject digest → descriptors of the manifests that name it.
    referrers: Option<std::collections::HashMap<String, Vec<serde_json::Value>>>,
    status_rules: Vec<StatusRule>,
    body_rules: Vec<BodyRule>,
    log: Vec<RequestRecord>,
}

impl State {
    fn take_status_rule(&mut self, path: &str) -> Option<(u16, Option<u64>)> {
        let index = self
            .status_rules
            .iter()
            .position(|rule| rule.remaining > 0 && path.contains(&rule.path_contains))?;
        let rule = &mut self.status_rules[index];
        rule.remaining -= 1;
        let taken = (rule.status, rule.retry_after);
        if rule.remaining == 0 {
            self.status_rules.remove(index);
        }
        Some(taken)
    }

    fn take_body_rule(&mut self, path: &str) -> Option<BodyAction> {
        let index = self
            .body_rules
            .iter()
            .position(|rule| path.contains(&rule.path_contains))?;
        Some(self.body_rules.remove(index).action)
    }
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    state: Mutex<State>,
    /// Bumped by `down()`: open client connections close when it changes.
    down_generation: watch::Sender<u64>,
    refused: AtomicUsize,
}

impl Shared {
    fn record(&self, record: RequestRecord) {
        self.state.lock().log.push(record);
    }
}

/// A fault-injecting reverse proxy owned by one test; stopped on drop.
///
/// It speaks plain HTTP/1.1 on both sides (clients use `--plain-http`) and
/// passes the `Host` header through, so the upload `Location`s the registry
/// builds point back at the proxy. Faults are matched by substring of the
/// request's path and query, first rule first. Methods that change faults
/// take effect for the next request.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// A proxy in front of `registry`, which must be plain HTTP.
    #[track_caller]
    pub fn start(registry: &Registry) -> FaultProxy {
        if registry.is_tls() {
            panic!("FaultProxy speaks plain HTTP to its upstream; start it in front of a plain Registry");
        }
        FaultProxy::to(registry.socket_addr())
    }

    /// A proxy in front of any plain HTTP/1.1 server at `upstream`.
    #[track_caller]
    pub fn to(upstream: SocketAddr) -> FaultProxy {
        let listener = match std::net::TcpListener::bind(("127.0.0.1", 0)) {
            Ok(listener) => listener,
            Err(err) => panic!("FaultProxy: binding 127.0.0.1:0: {err}"),
        };
        let addr = match listener.local_addr() {
            Ok(addr) => addr,
            Err(err) => panic!("FaultProxy: local_addr: {err}"),
        };
        if let Err(err) = listener.set_nonblocking(true) {
            panic!("FaultProxy: set_nonblocking: {err}");
        }
        let shared = Arc::new(Shared {
            upstream,
            state: Mutex::new(State::default()),
            down_generation: watch::Sender::new(0),
            refused: AtomicUsize::new(0),
        });
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(err) => panic!("FaultProxy: building the tokio runtime: {err}"),
        };
        let (shutdown, shutdown_rx) = oneshot::channel();
        let task_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("fault-proxy-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => accept_loop(listener, task_shared, shutdown_rx).await,
                        Err(err) => eprintln!("FaultProxy: registering the listener: {err}"),
                    }
                });
                // Dropping the runtime cancels every connection task.
                runtime.shutdown_timeout(Duration::from_secs(1));
            });
        let thread = match thread {
            Ok(thread) => thread,
            Err(err) => panic!("FaultProxy: spawning its thread: {err}"),
        };
        FaultProxy {
            addr,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:PORT`, the host to give clients instead of the registry's.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    pub fn socket_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ADDR/REPO[:TAG|@DIGEST]` through the proxy.
    pub fn reference(&self, repo_and_tag: &str) -> String {
        format!("{}/{repo_and_tag}", self.addr)
    }

    /// `http://ADDR` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The registry goes away: open connections are closed and new ones are
    /// reset (RST) right after accept, until [`FaultProxy::up`].
    pub fn down(&self) {
        self.shared.state.lock().down = true;
        self.shared
            .down_generation
            .send_modify(|generation| *generation += 1);
    }

    /// The registry is back.
    pub fn up(&self) {
        self.shared.state.lock().down = false;
    }

    /// The next `n` requests whose path contains `path_contains` (`""`
    /// matches all) get `status` and a registry-style JSON error body
    /// without being forwarded, with `Retry-After: secs` if given.
    pub fn fail_next(&self, n: usize, status: u16, path_contains: &str, retry_after: Option<u64>) {
        if n == 0 {
            return;
        }
        self.shared.state.lock().status_rules.push(StatusRule {
            path_contains: path_contains.to_string(),
            remaining: n,
            status,
            retry_after,
        });
    }

    /// The next successful response with a body to a request whose path
    /// contains `path_contains` is forwarded with its headers (the full
    /// `Content-Length`), then the connection is cut after `after_bytes`
    /// body bytes. Once.
    pub fn reset_mid_body(&self, path_contains: &str, after_bytes: u64) {
        self.shared.state.lock().body_rules.push(BodyRule {
            path_contains: path_contains.to_string(),
            action: BodyAction::Cut { after_bytes },
        });
    }

    /// The next successful response with a body to a request whose path
    /// contains `path_contains` comes with its middle byte flipped (same
    /// length, wrong digest). Once.
    pub fn corrupt_body(&self, path_contains: &str) {
        self.shared.state.lock().body_rules.push(BodyRule {
            path_contains: path_contains.to_string(),
            action: BodyAction::Corrupt,
        });
    }

    /// Drops every pending fault (not `down`).
    /// Makes the proxy answer the OCI referrers API
    /// (`GET /v2/<name>/referrers/<digest>`) from the manifests with a
    /// `subject` pushed through it, and confirm such pushes with
    /// `OCI-Subject`: a registry with the API, which Debian's distribution
    /// 2.8 is not.
    pub fn enable_referrers_api(&self) {
        self.shared.state.lock().referrers = Some(Default::default());
    }

    /// Forgets all faults (not the referrers API).
    pub fn clear_faults(&self) {
        let mut state = self.shared.state.lock();
        state.status_rules.clear();
        state.body_rules.clear();
    }

    /// Every request seen so far, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.state.lock().log.clone()
    }

    /// How many requests had a path containing `path_contains`.
    pub fn count(&self, path_contains: &str) -> usize {
        self.count_method("", path_contains)
    }

    /// How many `method` requests (`""`: any) had a path containing
    /// `path_contains`.
    pub fn count_method(&self, method: &str, path_contains: &str) -> usize {
        self.shared
            .state
            .lock()
            .log
            .iter()
            .filter(|r| (method.is_empty() || r.method == method) && r.path.contains(path_contains))
            .count()
    }

    /// Forgets the request log.
    pub fn clear_requests(&self) {
        self.shared.state.lock().log.clear();
    }

    /// Connections reset because the proxy was down.
    pub fn refused_connections(&self) -> usize {
        self.shared.refused.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: oneshot::Receiver<()>,
) {
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    eprintln!("FaultProxy: accept: {err}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        if shared.state.lock().down {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            // SO_LINGER 0: the close sends RST, as a dead server's host would.
            let _ = stream.set_zero_linger();
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(stream, Arc::clone(&shared)));
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let mut down = shared.down_generation.subscribe();
    down.mark_unchanged();
    let service_shared = Arc::clone(&shared);
    let service = service_fn(move |request| handle(request, Arc::clone(&service_shared)));
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = connection => {}
        // Dropping the connection closes the socket mid-whatever.
        _ = down.changed() => {}
    }
}

async fn handle(
    request: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<ProxyBody>, Infallible> {
    let method = request.method().clone();
    let path = request
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| request.uri().to_string());
    let range = request
        .headers()
        .get(RANGE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    let mut record = RequestRecord {
        method: method.to_string(),
        path: path.clone(),
        range,
        status: 0,
        fault: None,
    };

    let referrers_api = shared.state.lock().referrers.is_some();
    if referrers_api {
        if let Some(response) = referrers_api_get(&method, &path, &shared) {
            record.status = response.status().as_u16();
            shared.record(record);
            return Ok(response);
        }
    }

    let status_rule = shared.state.lock().take_status_rule(&path);
    if let Some((status, retry_after)) = status_rule {
        // Read the request body first so the client is not cut off in the
        // middle of an upload; it gets the status instead.
        let _ = request.into_body().collect().await;
        record.status = status;
        record.fault = Some(Fault::Status(status));
        shared.record(record);
        return Ok(injected_status(status, retry_after));
    }

    // A manifest with a subject, through a referrers-API registry: remember
    // it and say so with OCI-Subject.
    let mut subject = None;
    let forwarded = if referrers_api && method == Method::PUT && path.contains("/manifests/") {
        let (parts, body) = request.into_parts();
        let bytes = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        subject = referrer_of(&bytes);
        forward(
            Request::from_parts(parts, Full::new(bytes)),
            shared.upstream,
        )
        .await
    } else {
        forward(request, shared.upstream).await
    };
    let response = match forwarded {
        Ok(response) => response,
        Err(err) => {
            record.status = 502;
            shared.record(record);
            return Ok(plain_response(
                StatusCode::BAD_GATEWAY,
                format!("FaultProxy: upstream {}: {err}\n", shared.upstream),
            ));
        }
    };
    record.status = response.status().as_u16();
    let mut response = response;
    if let Some((subject_digest, descriptor)) = subject.filter(|_| response.status().is_success()) {
        if let Some(map) = shared.state.lock().referrers.as_mut() {
            map.entry(subject_digest.clone())
                .or_default()
                .push(descriptor);
        }
        if let Ok(value) = HeaderValue::from_str(&subject_digest) {
            response.headers_mut().insert("OCI-Subject", value);
        }
    }

    let has_body = method != Method::HEAD
        && response.status().is_success()
        && response.status() != StatusCode::NO_CONTENT
        && response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .is_none_or(|len| len != "0");
    let body_rule = if has_body {
        shared.state.lock().take_body_rule(&path)
    } else {
        None
    };
    let (parts, body) = response.into_parts();
    let response = match body_rule {
        None => Response::from_parts(parts, body.map_err(BoxError::from).boxed()),
        Some(BodyAction::Cut { after_bytes }) => {
            record.fault = Some(Fault::ResetMidBody(after_bytes));
            Response::from_parts(parts, CutBody::new(body, after_bytes).boxed())
        }
        Some(BodyAction::Corrupt) => {
            record.fault = Some(Fault::CorruptBody);
            let bytes = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(err) => {
                    record.status = 502;
                    shared.record(record);
                    return Ok(plain_response(
                        StatusCode::BAD_GATEWAY,
                        format!("FaultProxy: reading the upstream body: {err}\n"),
                    ));
                }
            };
            let mut bytes = bytes.to_vec();
            let middle = bytes.len() / 2;
            if let Some(byte) = bytes.get_mut(middle) {
                *byte ^= 0xff;
            }
            Response::from_parts(parts, full(bytes))
        }
    };
    shared.record(record);
    Ok(response)
}

/// Sends `request` to `upstream` on a new connection.
async fn forward<B>(
    mut request: Request<B>,
    upstream: SocketAddr,
) -> Result<Response<Incoming>, BoxError>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
    ] {
        request.headers_mut().remove(name);
    }
    let stream = TcpStream::connect(upstream).await?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, B>(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender.send_request(request).await?)
}

/// The descriptor of a pushed manifest that has a `subject`, keyed by the
/// subject's digest.
fn referrer_of(bytes: &[u8]) -> Option<(String, serde_json::Value)> {
    use sha2::Digest as _;
    let manifest: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let subject = manifest
        .get("subject")?
        .get("digest")?
        .as_str()?
        .to_string();
    let artifact_type = manifest
        .get("artifactType")
        .or_else(|| manifest.get("config").and_then(|c| c.get("mediaType")))
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    let mut descriptor = serde_json::json!({
        "mediaType": manifest.get("mediaType").cloned().unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".into()),
        "digest": format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes))),
        "size": bytes.len(),
        "artifactType": artifact_type,
    });
    if let Some(annotations) = manifest.get("annotations") {
        descriptor["annotations"] = annotations.clone();
    }
    Some((subject, descriptor))
}

/// Answers `GET /v2/<name>/referrers/<digest>[?artifactType=…]` when the
/// referrers API is on.
fn referrers_api_get(method: &Method, path: &str, shared: &Shared) -> Option<Response<ProxyBody>> {
    if method != Method::GET {
        return None;
    }
    let (route, query) = path.split_once('?').unwrap_or((path, ""));
    let (_, digest) = route.split_once("/referrers/")?;
    let wanted = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("artifactType="))
        .map(|t| {
            t.replace("%2F", "/")
                .replace("%2B", "+")
                .replace("%2f", "/")
                .replace("%2b", "+")
        });
    let state = shared.state.lock();
    let all = state
        .referrers
        .as_ref()?
        .get(digest)
        .cloned()
        .unwrap_or_default();
    let manifests: Vec<_> = all
        .into_iter()
        .filter(|d| wanted.as_deref().is_none_or(|t| d["artifactType"] == t))
        .collect();
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    let mut response = Response::new(full(body.to_string().into_bytes()));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.oci.image.index.v1+json"),
    );
    if wanted.is_some() {
        response.headers_mut().insert(
            "OCI-Filters-Applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Some(response)
}

fn injected_status(status: u16, retry_after: Option<u64>) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let code = match status.as_u16() {
        401 => "UNAUTHORIZED",
        403 => "DENIED",
        404 => "NAME_UNKNOWN",
        429 => "TOOMANYREQUESTS",
        _ => "UNAVAILABLE",
    };
    let body = format!(
        "{{\"errors\":[{{\"code\":\"{code}\",\"message\":\"injected by FaultProxy\",\"detail\":null}}]}}\n"
    );
    let mut response = Response::new(full(body.into_bytes()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

fn plain_response(status: StatusCode, text: String) -> Response<ProxyBody> {
    let mut response = Response::new(full(text.into_bytes()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

fn full(bytes: Vec<u8>) -> ProxyBody {
    Full::new(Bytes::from(bytes))
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// A body that passes the first `remaining` bytes of `inner`, waits a
/// moment for them to reach the client, then fails, which makes hyper drop
/// the connection short of the announced `Content-Length`.
struct CutBody {
    inner: Incoming,
    remaining: u64,
    after_bytes: u64,
    state: CutState,
}

enum CutState {
    Passing,
    Flushing(Pin<Box<tokio::time::Sleep>>),
    Done,
}

impl CutBody {
    fn new(inner: Incoming, after_bytes: u64) -> CutBody {
        CutBody {
            inner,
            remaining: after_bytes,
            after_bytes,
            state: CutState::Passing,
        }
    }
}

impl Body for CutBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                CutState::Passing if this.remaining == 0 => {
                    this.state = CutState::Flushing(Box::pin(tokio::time::sleep(CUT_FLUSH_DELAY)));
                }
                CutState::Passing => {
                    let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                        None => return Poll::Ready(None),
                        Some(Err(err)) => return Poll::Ready(Some(Err(err.into()))),
                        Some(Ok(frame)) => frame,
                    };
                    let frame = match frame.into_data() {
                        Ok(mut data) => {
                            let keep = usize::try_from(this.remaining)
                                .unwrap_or(usize::MAX)
                                .min(data.len());
                            data.truncate(keep);
                            this.remaining -= keep as u64;
                            Frame::data(data)
                        }
                        Err(frame) => frame,
                    };
                    return Poll::Ready(Some(Ok(frame)));
                }
                CutState::Flushing(sleep) => {
                    ready!(sleep.as_mut().poll(cx));
                    this.state = CutState::Done;
                    let message = format!(
                        "FaultProxy: connection cut after {} body bytes",
                        this.after_bytes
                    );
                    return Poll::Ready(Some(Err(message.into())));
                }
                CutState::Done => return Poll::Ready(None),
            }
        }
    }
}
