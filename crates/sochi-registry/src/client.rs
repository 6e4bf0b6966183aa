//! The client: its configuration, the request loop every call goes through
//! (authentication, retries, redirects), and manifests.
//!
//! The request loop ([`Client::execute`]):
//! - sends what the host is known to want (`Authorization`), else nothing;
//! - a `401` from the registry → [`Client::reauthenticate`] once, then the
//!   request again; a second `401` is [`Error::Unauthorized`];
//! - connection errors, `408`, `429`, `5xx` → wait (backoff or
//!   `Retry-After`) and try again, up to `max_retries` times;
//! - `3xx` on `GET`/`HEAD` → follow `Location` (blob GETs are redirected to
//!   object stores by ECR, S3-backed registries…), without the
//!   `Authorization` header when the host changes;
//! - anything else is handed back to the caller, who turns an unexpected
//!   status into [`Error::Status`] with [`status_error`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use parking_lot::Mutex;
use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE,
    LOCATION, RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{Method, Response, Url};
use sochi_format::{is_index_media_type, media_types, Descriptor, ImageIndex, Platform};

use crate::auth::{parse_challenges, AuthCache, Scope};
use crate::credentials::Keychain;
use crate::digest::{digest_like, sha256_of};
use crate::docker_config::DockerConfig;
use crate::error::{parse_error_body, Error, Result};
use crate::hosts::{HostsCache, HostsConfig, RegistryHost};
use crate::reference::{check_digest, Reference};
use crate::retry::{is_retryable_status, parse_retry_after, RetryPolicy};

/// Every manifest media type we read, for `Accept`.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.artifact.manifest.v1+json";
/// distribution's default limit on manifest size (4 MiB); bigger answers
/// are refused rather than buffered.
const MAX_MANIFEST_SIZE: u64 = 4 << 20;
/// How much of an error body is read to find the registry's message.
const MAX_ERROR_BODY: u64 = 64 << 10;
/// Error bodies are small: a server that sends nothing of one for this
/// long is not waited for.
const ERROR_BODY_STALL: Duration = Duration::from_secs(10);
/// Request bodies are handed to the connection in pieces of this size, so
/// that progress of an upload can be seen.
const UPLOAD_PIECE: usize = 64 << 10;
/// How long a mirror that did not answer is passed over.
const MIRROR_PAUSE: Duration = Duration::from_secs(10);
/// Redirects followed per request.
const MAX_REDIRECTS: u32 = 10;
/// Query parameters shown in URLs of errors and logs; the values of the
/// others (signatures of presigned URLs, upload `_state`) are redacted.
const SHOWN_QUERY_PARAMS: &[&str] = &["digest", "mount", "from", "artifactType", "n", "last", "ns"];

/// How a [`Client`] connects and authenticates.
#[derive(Clone)]
pub struct ClientConfig {
    /// Use `http://` for every registry. Loopback registries (`localhost`,
    /// `127.0.0.1`, `[::1]`, any port) use it without this.
    pub plain_http: bool,
    /// Accept any TLS certificate (self-signed, expired, wrong host).
    pub insecure: bool,
    /// A PEM file of CA certificates trusted besides the system's.
    pub ca_file: Option<PathBuf>,
    /// User and password for every registry; overrides the Docker config.
    pub user: Option<(String, String)>,
    /// The Docker config file; `None` = `$DOCKER_CONFIG/config.json`, else
    /// `~/.docker/config.json`. A missing file means no credentials.
    pub docker_config: Option<PathBuf>,
    /// Retries after a connection error, `408`, `429` or `5xx`; also the
    /// number of times a blob body is resumed.
    pub max_retries: u32,
    /// First backoff wait.
    pub min_retry_wait: Duration,
    /// Longest wait, for backoff and `Retry-After` alike.
    pub max_retry_wait: Duration,
    /// Time to open a connection (zero: no limit).
    pub connect_timeout: Duration,
    /// Longest time without a byte from the server, for headers and bodies
    /// (zero: no limit). A stalled blob body is resumed.
    pub stall_timeout: Duration,
    /// Blobs up to this size are uploaded in one `PUT`; bigger ones in
    /// `PATCH` chunks of this size.
    pub chunk_size: usize,
    /// `User-Agent` header.
    pub user_agent: String,
    /// Asked for credentials before the Docker config (after `user`): the
    /// snapshotter's store of what the kubelet sent with its pulls.
    pub keychain: Option<Arc<dyn Keychain>>,
    /// Mirrors and other hosts per registry (containerd's `hosts.toml`
    /// directory, sochi's mirror list); the default asks each registry
    /// itself.
    pub hosts: HostsConfig,
    /// Range requests for readers in flight at once to one registry (its
    /// mirrors included) at most; the others wait their turn (0: no
    /// bound). A node with many layers reading at once otherwise opens a
    /// connection per read.
    pub max_range_requests_per_host: usize,
    /// Range requests of background fetches in flight at once to one
    /// registry at most, counted apart so that they never hold up readers
    /// (0: no bound).
    pub max_background_requests_per_host: usize,
}

/// Default of [`ClientConfig::max_range_requests_per_host`].
pub const DEFAULT_RANGE_REQUESTS_PER_HOST: usize = 32;

/// Default of [`ClientConfig::max_background_requests_per_host`].
pub const DEFAULT_BACKGROUND_REQUESTS_PER_HOST: usize = 4;

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            plain_http: false,
            insecure: false,
            ca_file: None,
            user: None,
            docker_config: None,
            max_retries: 5,
            min_retry_wait: Duration::from_millis(200),
            max_retry_wait: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(30),
            chunk_size: 16 << 20,
            user_agent: format!("sochi/{}", env!("CARGO_PKG_VERSION")),
            keychain: None,
            hosts: HostsConfig::default(),
            max_range_requests_per_host: DEFAULT_RANGE_REQUESTS_PER_HOST,
            max_background_requests_per_host: DEFAULT_BACKGROUND_REQUESTS_PER_HOST,
        }
    }
}

impl fmt::Debug for ClientConfig {
    /// Never prints the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("plain_http", &self.plain_http)
            .field("insecure", &self.insecure)
            .field("ca_file", &self.ca_file)
            .field("user", &self.user.as_ref().map(|(u, _)| (u, "<password>")))
            .field("docker_config", &self.docker_config)
            .field("max_retries", &self.max_retries)
            .field("min_retry_wait", &self.min_retry_wait)
            .field("max_retry_wait", &self.max_retry_wait)
            .field("connect_timeout", &self.connect_timeout)
            .field("stall_timeout", &self.stall_timeout)
            .field("chunk_size", &self.chunk_size)
            .field("user_agent", &self.user_agent)
            .field("keychain", &self.keychain)
            .field("hosts", &self.hosts)
            .field(
                "max_range_requests_per_host",
                &self.max_range_requests_per_host,
            )
            .field(
                "max_background_requests_per_host",
                &self.max_background_requests_per_host,
            )
            .finish()
    }
}

/// An OCI distribution client. Clones share the connection pool, the
/// token cache and what was learned about registries.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub http: reqwest::Client,
    pub config: ClientConfig,
    pub retry: RetryPolicy,
    pub auth: AuthCache,
    /// Read again when credentials are refused (a rotated password).
    pub docker: parking_lot::RwLock<Arc<DockerConfig>>,
    /// Whether `registry/repository` has the referrers API, once known.
    pub referrers: Mutex<HashMap<String, bool>>,
    /// Each registry's hosts, from `config.hosts`.
    pub hosts: HostsCache,
    /// HTTP clients for hosts with their own CAs or `skip_verify`.
    pub host_clients: Mutex<HashMap<(Vec<PathBuf>, bool), reqwest::Client>>,
    /// Mirrors that failed to answer, until when they are passed over.
    pub down: Mutex<HashMap<String, Instant>>,
    /// Requests per host, for metrics.
    pub host_stats: Mutex<BTreeMap<String, HostStats>>,
    /// Turns for range requests per registry, readers' and background
    /// fetches' apart (`true`: background).
    pub range_turns: Mutex<HashMap<(String, bool), Arc<tokio::sync::Semaphore>>>,
}

/// What a client sent to one registry host (a mirror or an origin).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostStats {
    /// Requests sent (each retry counts).
    pub requests: u64,
    /// Times a request went on to the next host after this one failed to
    /// answer or answered an error.
    pub failovers: u64,
}

/// What [`Client::put_manifest`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutManifest {
    /// The digest of the bytes pushed.
    pub digest: String,
    /// The registry answered `OCI-Subject`: it indexed the manifest's
    /// `subject` for the referrers API.
    pub subject_indexed: bool,
}

/// One request as [`Client::execute`] sends it (and sends again).
#[derive(Clone)]
pub(crate) struct RequestSpec {
    pub method: Method,
    pub url: Url,
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
    pub scope: Scope,
    pub follow_redirects: bool,
}

impl RequestSpec {
    pub fn new(method: Method, url: Url, scope: Scope) -> RequestSpec {
        let follow_redirects = method == Method::GET || method == Method::HEAD;
        RequestSpec {
            method,
            url,
            headers: HeaderMap::new(),
            body: None,
            scope,
            follow_redirects,
        }
    }

    pub fn header(mut self, name: HeaderName, value: &str) -> Result<RequestSpec> {
        let value = HeaderValue::from_str(value).map_err(|_| Error::InvalidArgument {
            what: "header value",
            detail: format!("{name}: {value:?} is not a valid header value"),
        })?;
        self.headers.insert(name, value);
        Ok(self)
    }

    pub fn body(mut self, body: Bytes) -> RequestSpec {
        self.body = Some(body);
        self
    }
}

impl Client {
    /// A client with `config`. Reads the CA file and the Docker config now
    /// (credential helpers run later, once per registry).
    pub fn new(config: ClientConfig) -> Result<Client> {
        let http = http_client(&config, &[], false)?;
        let docker = DockerConfig::load(config.docker_config.as_deref())?;
        let retry = RetryPolicy::new(
            config.max_retries,
            config.min_retry_wait,
            config.max_retry_wait,
        );
        let hosts = HostsCache::new(config.hosts.clone());
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                config,
                retry,
                auth: AuthCache::default(),
                docker: parking_lot::RwLock::new(Arc::new(docker)),
                referrers: Mutex::new(HashMap::new()),
                hosts,
                host_clients: Mutex::new(HashMap::new()),
                down: Mutex::new(HashMap::new()),
                host_stats: Mutex::new(BTreeMap::new()),
                range_turns: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Requests sent to each registry host so far (`host[:port]`), with
    /// failures and failovers: what the metrics endpoint shows.
    pub fn host_stats(&self) -> BTreeMap<String, HostStats> {
        self.inner.host_stats.lock().clone()
    }

    /// Waits for a turn to send range requests to `repo`'s registry (see
    /// [`ClientConfig::max_range_requests_per_host`]); `None`: no bound.
    pub(crate) async fn range_turn(
        &self,
        repo: &Reference,
        background: bool,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let config = &self.inner.config;
        let bound = if background {
            config.max_background_requests_per_host
        } else {
            config.max_range_requests_per_host
        };
        if bound == 0 {
            return None;
        }
        let turns = Arc::clone(
            self.inner
                .range_turns
                .lock()
                .entry((repo.registry.clone(), background))
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(bound))),
        );
        // The semaphore is never closed, so this only fails if it were.
        turns.acquire_owned().await.ok()
    }

    /// `http` with `plain_http`, and for loopback registries unless a CA
    /// file says the user expects TLS there; else `https`.
    fn scheme(&self, repo: &Reference) -> &'static str {
        let config = &self.inner.config;
        if config.plain_http || (repo.is_loopback() && config.ca_file.is_none()) {
            "http"
        } else {
            "https"
        }
    }

    /// `<scheme>://<host>/v2/<repository>/<tail>`.
    pub(crate) fn url(&self, repo: &Reference, tail: &str) -> Result<Url> {
        let text = format!(
            "{}://{}/v2/{}/{tail}",
            self.scheme(repo),
            repo.api_host(),
            repo.repository
        );
        Url::parse(&text).map_err(|e| Error::InvalidArgument {
            what: "reference",
            detail: format!("{repo} does not make a valid url ({e})"),
        })
    }

    /// `<scheme>://<host>/v2`: where requests go without a hosts
    /// configuration.
    fn origin_base(&self, repo: &Reference) -> Result<Url> {
        let text = format!("{}://{}/v2", self.scheme(repo), repo.api_host());
        Url::parse(&text).map_err(|e| Error::InvalidArgument {
            what: "reference",
            detail: format!("{repo} does not make a valid url ({e})"),
        })
    }

    /// Sends `spec` to `repo`'s registry: to its mirrors first, if it has
    /// any (see the hosts module), then to the registry itself, with
    /// authentication, retries and redirects as the module doc says.
    /// Returns the final response, whatever its status.
    pub(crate) async fn execute(&self, repo: &Reference, spec: RequestSpec) -> Result<Response> {
        let origin = self.origin_base(repo)?;
        let hosts = self.inner.hosts.hosts(repo, &origin)?;
        let read = spec.method == Method::GET || spec.method == Method::HEAD;
        let resolve = read && is_by_tag(&spec.url);
        let candidates: Vec<&RegistryHost> = hosts
            .iter()
            .filter(|h| {
                !h.mirror
                    || (read
                        && if resolve {
                            h.capabilities.resolve
                        } else {
                            h.capabilities.pull
                        })
            })
            .collect();
        let last = candidates.len().saturating_sub(1);
        for (i, host) in candidates.iter().enumerate() {
            let is_last = i == last;
            let authority = host.authority();
            if !is_last && self.is_down(&authority) {
                continue;
            }
            let (target, url) = self.on_host(repo, host, &spec.url)?;
            let http = self.http_for(host)?;
            let attempt = RequestSpec {
                url,
                ..spec.clone()
            };
            let retries = if is_last {
                self.inner.retry.max_retries
            } else {
                0
            };
            let result = self
                .execute_on(&target, &http, &attempt, retries, &authority)
                .await;
            if is_last {
                return result;
            }
            let missing = matches!(&result, Ok(response) if response.status().as_u16() == 404);
            let failure = match result {
                Ok(response) if response.status().as_u16() < 400 => {
                    self.inner.down.lock().remove(&authority);
                    return Ok(response);
                }
                Ok(response) => format!("answered {}", response.status().as_u16()),
                Err(e) => {
                    if is_network(&e) {
                        self.inner
                            .down
                            .lock()
                            .insert(authority.clone(), Instant::now() + MIRROR_PAUSE);
                    }
                    sochi_format::error_chain(&e)
                }
            };
            {
                let mut stats = self.inner.host_stats.lock();
                stats.entry(authority.clone()).or_default().failovers += 1;
            }
            // A mirror that lacks something (404) is what mirrors do, not
            // a failure worth a warning.
            if missing {
                tracing::info!(
                    registry = %repo.registry,
                    host = %authority,
                    method = %spec.method,
                    url = %redact_url(&attempt.url),
                    "not on this registry host; trying the next one"
                );
            } else {
                tracing::warn!(
                    registry = %repo.registry,
                    host = %authority,
                    method = %spec.method,
                    url = %redact_url(&attempt.url),
                    failure,
                    "registry host failed; trying the next one"
                );
            }
        }
        // Not reached: the origin is always a candidate.
        Err(Error::InvalidArgument {
            what: "registry hosts",
            detail: format!("no host to ask for {}", repo.registry),
        })
    }

    /// Whether the mirror at `authority` failed lately and is passed over.
    fn is_down(&self, authority: &str) -> bool {
        let mut down = self.inner.down.lock();
        match down.get(authority) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                down.remove(authority);
                false
            }
            None => false,
        }
    }

    /// The reference a request to `host` is authenticated as (a mirror is
    /// its own registry: its own credentials and tokens, never the
    /// origin's), and `url` moved onto `host`. Mirrors get `ns=<registry>`,
    /// as containerd sends it, so one mirror can serve many registries.
    fn on_host(
        &self,
        repo: &Reference,
        host: &RegistryHost,
        url: &Url,
    ) -> Result<(Reference, Url)> {
        let suffix = url.path().strip_prefix("/v2").unwrap_or(url.path());
        let mut moved = host.base.clone();
        moved.set_path(&format!("{}{suffix}", host.base.path()));
        moved.set_query(url.query());
        if !host.mirror {
            return Ok((repo.clone(), moved));
        }
        moved.query_pairs_mut().append_pair("ns", &repo.registry);
        let target = Reference {
            registry: host.authority(),
            ..repo.clone()
        };
        Ok((target, moved))
    }

    /// The HTTP client for `host`: the shared one, or one with the host's
    /// own CAs or `skip_verify`.
    fn http_for(&self, host: &RegistryHost) -> Result<reqwest::Client> {
        if host.ca.is_empty() && !host.skip_verify {
            return Ok(self.inner.http.clone());
        }
        let key = (host.ca.clone(), host.skip_verify);
        if let Some(client) = self.inner.host_clients.lock().get(&key) {
            return Ok(client.clone());
        }
        let client = http_client(&self.inner.config, &host.ca, host.skip_verify)?;
        self.inner.host_clients.lock().insert(key, client.clone());
        Ok(client)
    }

    /// Sends `spec` to one host, with up to `max_retries` retries.
    async fn execute_on(
        &self,
        repo: &Reference,
        http: &reqwest::Client,
        spec: &RequestSpec,
        max_retries: u32,
        authority: &str,
    ) -> Result<Response> {
        let retry = self.inner.retry;
        let mut url = spec.url.clone();
        let mut attempt = 0u32;
        let mut reauthenticated = false;
        let mut redirects = 0u32;
        loop {
            let on_registry = same_origin(&url, &spec.url);
            let mut request = http
                .request(spec.method.clone(), url.clone())
                .headers(spec.headers.clone());
            let mut sent_credentials = false;
            if on_registry {
                if let Some(authorization) = self.authorization(repo, &spec.scope).await? {
                    request = request.header(AUTHORIZATION, authorization);
                    sent_credentials = true;
                }
            }
            let progress = Arc::new(Progress::new());
            if let Some(body) = &spec.body {
                request = request
                    .header(CONTENT_LENGTH, body.len())
                    .body(progress_body(body.clone(), progress.clone()));
            }
            tracing::debug!(method = %spec.method, url = %redact_url(&url), attempt, "registry request");
            self.inner
                .host_stats
                .lock()
                .entry(authority.to_string())
                .or_default()
                .requests += 1;
            let sent = self.send_watched(request, &progress, &url).await;
            let response = match sent {
                Ok(r) => r,
                Err(e) if attempt < max_retries && is_network(&e) => {
                    let wait = retry.backoff(attempt);
                    tracing::debug!(url = %redact_url(&url), error = %e, ?wait, "retrying after a connection error");
                    attempt += 1;
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let status = response.status().as_u16();
            if status == 401 && on_registry {
                let challenges: Vec<_> = response
                    .headers()
                    .get_all(WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(parse_challenges)
                    .collect();
                let detail = error_detail(response).await;
                if reauthenticated {
                    let detail = format!(
                        "{} {} was refused again after renewing the credentials ({detail})",
                        spec.method,
                        redact_url(&url)
                    );
                    return Err(self.refused_again(repo, detail).await);
                }
                self.reauthenticate(repo, &spec.scope, &challenges, &detail, sent_credentials)
                    .await?;
                reauthenticated = true;
                continue;
            }
            if is_retryable_status(status) && attempt < max_retries {
                let retry_after = header_str(&response, RETRY_AFTER)
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
                let wait = retry.wait(attempt, retry_after);
                tracing::debug!(url = %redact_url(&url), status, ?wait, "retrying after a retryable status");
                drop(response);
                attempt += 1;
                tokio::time::sleep(wait).await;
                continue;
            }
            if spec.follow_redirects && matches!(status, 301 | 302 | 303 | 307 | 308) {
                if let Some(location) = header_str(&response, LOCATION) {
                    redirects += 1;
                    if redirects > MAX_REDIRECTS {
                        return Err(Error::Malformed {
                            what: "redirects",
                            url: redact_url(&spec.url),
                            detail: format!("more than {MAX_REDIRECTS}"),
                        });
                    }
                    url = url.join(location).map_err(|e| Error::Malformed {
                        what: "Location header",
                        url: redact_url(&url),
                        detail: format!("{location:?} is not a url: {e}"),
                    })?;
                    continue;
                }
            }
            return Ok(response);
        }
    }

    /// The configured stall timeout (zero: none).
    pub(crate) fn stall(&self) -> Duration {
        self.inner.config.stall_timeout
    }

    /// Sends `request`, failing with [`Error::Stalled`] when neither a piece
    /// of its body goes out nor the response headers come in for the stall
    /// timeout.
    async fn send_watched(
        &self,
        request: reqwest::RequestBuilder,
        progress: &Progress,
        url: &Url,
    ) -> Result<Response> {
        let stall = self.stall();
        let send = request.send();
        if stall.is_zero() {
            return send.await.map_err(|e| network_error(url, e));
        }
        tokio::pin!(send);
        loop {
            let Some(deadline) = progress.last().checked_add(stall) else {
                // A stall timeout too long to add to a clock: no watch.
                return send.await.map_err(|e| network_error(url, e));
            };
            tokio::select! {
                sent = &mut send => return sent.map_err(|e| network_error(url, e)),
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if deadline >= progress.last().checked_add(stall).unwrap_or(deadline) {
                        return Err(Error::Stalled { url: redact_url(url), after: stall });
                    }
                }
            }
        }
    }

    /// The next piece of a response body, or [`Error::Stalled`] if none
    /// comes for the stall timeout.
    pub(crate) async fn next_chunk(
        &self,
        response: &mut Response,
        url: &Url,
    ) -> Result<Option<Bytes>> {
        next_chunk(response, url, self.stall()).await
    }

    /// Sends a request that needs no registry authentication (the token
    /// service), with the same retries.
    pub(crate) async fn send_plain(
        &self,
        url: &Url,
        make: Box<dyn Fn() -> reqwest::RequestBuilder + Send + Sync + '_>,
    ) -> Result<Response> {
        let retry = self.inner.retry;
        let mut attempt = 0u32;
        loop {
            let progress = Progress::new();
            match self.send_watched(make(), &progress, url).await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    if !is_retryable_status(status) || attempt >= retry.max_retries {
                        return Ok(response);
                    }
                    let retry_after = header_str(&response, RETRY_AFTER)
                        .and_then(|v| parse_retry_after(v, SystemTime::now()));
                    tokio::time::sleep(retry.wait(attempt, retry_after)).await;
                }
                Err(e) if attempt < retry.max_retries && is_network(&e) => {
                    tokio::time::sleep(retry.backoff(attempt)).await;
                }
                Err(e) => return Err(e),
            }
            attempt += 1;
        }
    }

    /// Fetches a manifest or index by tag or digest.
    ///
    /// By digest, the bytes must hash to it; by tag, they must hash to the
    /// `Docker-Content-Digest` the registry announces, if it does. The
    /// descriptor's media type is the `Content-Type`, or the document's
    /// `mediaType` when the registry sends a generic one; its digest is the
    /// one asked for, else the bytes' sha256.
    pub async fn get_manifest(&self, r: &Reference) -> Result<(Descriptor, Vec<u8>)> {
        let url = self.url(r, &format!("manifests/{}", r.reference()))?;
        let mut attempt = 0u32;
        loop {
            let spec = RequestSpec::new(Method::GET, url.clone(), Scope::pull(&r.repository))
                .header(ACCEPT, MANIFEST_ACCEPT)?;
            let response = self.execute(r, spec).await?;
            if !response.status().is_success() {
                return Err(status_error(&Method::GET, response).await);
            }
            let content_type = header_str(&response, CONTENT_TYPE).map(str::to_string);
            let announced = header_str(&response, "docker-content-digest").map(str::to_string);
            match read_limited(response, MAX_MANIFEST_SIZE, "manifest", &url, self.stall()).await {
                Ok(bytes) => {
                    let descriptor = manifest_descriptor(
                        r,
                        &url,
                        content_type.as_deref(),
                        announced.as_deref(),
                        &bytes,
                    )?;
                    return Ok((descriptor, bytes));
                }
                Err(e) if is_network(&e) && attempt < self.inner.retry.max_retries => {
                    tokio::time::sleep(self.inner.retry.backoff(attempt)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The descriptor of a manifest without its body (`HEAD`); `None` when
    /// the registry does not have it. Falls back to a `GET` when the
    /// registry leaves out `Docker-Content-Digest` or the media type.
    pub async fn head_manifest(&self, r: &Reference) -> Result<Option<Descriptor>> {
        let url = self.url(r, &format!("manifests/{}", r.reference()))?;
        let spec = RequestSpec::new(Method::HEAD, url.clone(), Scope::pull(&r.repository))
            .header(ACCEPT, MANIFEST_ACCEPT)?;
        let response = self.execute(r, spec).await?;
        let status = response.status().as_u16();
        if status == 404 {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(status_error(&Method::HEAD, response).await);
        }
        let media_type = header_str(&response, CONTENT_TYPE)
            .map(media_type_of)
            .filter(|t| !is_generic_type(t))
            .map(str::to_string);
        let digest = header_str(&response, "docker-content-digest").map(str::to_string);
        // HEAD has no body: the size is the Content-Length header itself.
        let size = header_str(&response, CONTENT_LENGTH).and_then(|v| v.trim().parse::<i64>().ok());
        match (media_type, digest, size) {
            (Some(media_type), Some(digest), Some(size)) if check_digest(&digest).is_ok() => {
                if let Some(want) = &r.digest {
                    if *want != digest {
                        return Err(Error::DigestMismatch {
                            what: "manifest (Docker-Content-Digest)",
                            url: redact_url(&url),
                            expected: want.clone(),
                            actual: digest,
                        });
                    }
                }
                Ok(Some(Descriptor {
                    media_type,
                    digest: digest.into(),
                    size,
                    ..Descriptor::default()
                }))
            }
            _ => Ok(Some(self.get_manifest(r).await?.0)),
        }
    }

    /// Pushes a manifest or index: exactly `bytes`, with `media_type` as
    /// `Content-Type`, under `r`'s digest if it has one, else its tag.
    pub async fn put_manifest(
        &self,
        r: &Reference,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<PutManifest> {
        if media_type.is_empty() {
            return Err(Error::InvalidArgument {
                what: "media type",
                detail: "a manifest needs a media type".into(),
            });
        }
        let digest = match &r.digest {
            Some(want) => {
                let actual = digest_like(want, bytes);
                if actual != *want {
                    return Err(Error::InvalidArgument {
                        what: "manifest",
                        detail: format!("pushing to digest {want} bytes whose digest is {actual}"),
                    });
                }
                actual
            }
            None => sha256_of(bytes),
        };
        let url = self.url(r, &format!("manifests/{}", r.reference()))?;
        let spec = RequestSpec::new(Method::PUT, url.clone(), Scope::push(&r.repository))
            .header(CONTENT_TYPE, media_type)?
            .body(Bytes::copy_from_slice(bytes));
        let response = self.execute(r, spec).await?;
        if !response.status().is_success() {
            return Err(status_error(&Method::PUT, response).await);
        }
        if let Some(announced) = header_str(&response, "docker-content-digest") {
            if check_digest(announced).is_ok() && digest_like(announced, bytes) != announced {
                return Err(Error::DigestMismatch {
                    what: "pushed manifest (Docker-Content-Digest)",
                    url: redact_url(&url),
                    expected: digest,
                    actual: announced.to_string(),
                });
            }
        }
        let subject_indexed = response.headers().contains_key("oci-subject");
        tracing::debug!(reference = %r, %digest, subject_indexed, "pushed manifest");
        Ok(PutManifest {
            digest,
            subject_indexed,
        })
    }

    /// Deletes a manifest by digest (the registry must allow deletes).
    pub async fn delete_manifest(&self, r: &Reference) -> Result<()> {
        let Some(digest) = &r.digest else {
            return Err(Error::InvalidArgument {
                what: "reference",
                detail: format!("deleting {r} needs a digest"),
            });
        };
        let url = self.url(r, &format!("manifests/{digest}"))?;
        let spec = RequestSpec::new(Method::DELETE, url, Scope::delete(&r.repository));
        let response = self.execute(r, spec).await?;
        if !response.status().is_success() {
            return Err(status_error(&Method::DELETE, response).await);
        }
        Ok(())
    }

    /// Fetches `r`; if it is an index, the manifest of the first entry
    /// matching `platform` (its descriptor carries the index's `platform`).
    /// A plain manifest is returned as it is.
    pub async fn resolve_platform(
        &self,
        r: &Reference,
        platform: &Platform,
    ) -> Result<(Descriptor, Vec<u8>)> {
        let (descriptor, bytes) = self.get_manifest(r).await?;
        if !is_index_media_type(&descriptor.media_type) {
            return Ok((descriptor, bytes));
        }
        let url = self.url(r, &format!("manifests/{}", r.reference()))?;
        let index = ImageIndex::from_json(&bytes).map_err(|source| Error::Format {
            url: redact_url(&url),
            source,
        })?;
        let chosen = index
            .manifests()
            .iter()
            // A SOCI-enabled image lists its SOCI index with the same
            // platform, after the image (docs/format.md §4.6): never pick an artifact.
            .filter(|m| m.artifact_type.as_deref().is_none_or(str::is_empty))
            .find(|m| m.platform.as_ref().is_some_and(|p| platform.matches(p)));
        let Some(chosen) = chosen else {
            let available: Vec<String> = index
                .manifests()
                .iter()
                .filter_map(|m| m.platform.as_ref().map(Platform::to_spec_string))
                .collect();
            return Err(Error::PlatformNotFound {
                reference: r.to_string(),
                platform: platform.to_spec_string(),
                available: available.join(", "),
            });
        };
        let (mut found, bytes) = self.get_manifest(&r.with_digest(&chosen.digest)).await?;
        if found.size != chosen.size {
            return Err(Error::SizeMismatch {
                what: "platform manifest",
                url: redact_url(&url),
                expected: u64::try_from(chosen.size).unwrap_or(0),
                actual: bytes.len() as u64,
            });
        }
        found.platform = chosen.platform.clone();
        Ok((found, bytes))
    }
}

/// The descriptor of manifest `bytes` fetched for `r`, verified.
/// Whether `url` asks for a manifest by tag (resolving), which goes only to
/// hosts that may `resolve`; by digest it is a pull.
fn is_by_tag(url: &Url) -> bool {
    let mut segments = url.path().rsplit('/');
    let reference = segments.next().unwrap_or("");
    segments.next() == Some("manifests") && !reference.contains(':')
}

/// An HTTP client with `config`'s settings, trusting `extra_ca` besides
/// the config's CA file, and any certificate with `skip_verify`.
fn http_client(
    config: &ClientConfig,
    extra_ca: &[PathBuf],
    skip_verify: bool,
) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(config.user_agent.clone());
    if !config.connect_timeout.is_zero() {
        builder = builder.connect_timeout(config.connect_timeout);
    }
    // No `read_timeout`: reqwest applies it to the whole wait for the
    // response headers, upload included, so a big PUT on a slow link
    // would time out while bytes still flow. Stalls are watched here
    // instead: see `send_watched` and `next_chunk`.
    if config.insecure || skip_verify {
        builder = builder.tls_danger_accept_invalid_certs(true);
    }
    for path in config.ca_file.iter().chain(extra_ca) {
        let pem = std::fs::read(path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| Error::Config {
            path: path.clone(),
            detail: format!("not a PEM certificate bundle: {e}"),
        })?;
        if certs.is_empty() {
            return Err(Error::Config {
                path: path.clone(),
                detail: "no certificate in the file".into(),
            });
        }
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().map_err(|source| Error::Client { source })
}

fn manifest_descriptor(
    r: &Reference,
    url: &Url,
    content_type: Option<&str>,
    announced: Option<&str>,
    bytes: &[u8],
) -> Result<Descriptor> {
    let digest = if let Some(want) = &r.digest {
        let actual = digest_like(want, bytes);
        if actual != *want {
            return Err(Error::DigestMismatch {
                what: "manifest",
                url: redact_url(url),
                expected: want.clone(),
                actual,
            });
        }
        want.clone()
    } else {
        if let Some(announced) = announced.filter(|a| check_digest(a).is_ok()) {
            let actual = digest_like(announced, bytes);
            if actual != announced {
                return Err(Error::DigestMismatch {
                    what: "manifest (Docker-Content-Digest)",
                    url: redact_url(url),
                    expected: announced.to_string(),
                    actual,
                });
            }
        }
        sha256_of(bytes)
    };
    let media_type = content_type
        .map(media_type_of)
        .filter(|t| !is_generic_type(t))
        .map(str::to_string)
        .unwrap_or_else(|| media_type_of_document(bytes));
    Ok(Descriptor {
        media_type,
        digest: digest.into(),
        size: bytes.len() as i64,
        ..Descriptor::default()
    })
}

/// `type/subtype` of a `Content-Type`, without parameters.
fn media_type_of(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

/// Types some registries send for manifests that say nothing.
fn is_generic_type(media_type: &str) -> bool {
    matches!(
        media_type,
        "" | "application/json" | "text/plain" | "application/octet-stream"
    )
}

/// The `mediaType` a manifest names, else a guess from its fields.
fn media_type_of_document(bytes: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    if let Some(t) = value.get("mediaType").and_then(|t| t.as_str()) {
        return t.to_string();
    }
    if value.get("manifests").is_some() {
        media_types::OCI_INDEX.to_string()
    } else {
        media_types::OCI_MANIFEST.to_string()
    }
}

pub(crate) fn header_str(
    response: &Response,
    name: impl reqwest::header::AsHeaderName,
) -> Option<&str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// A URL fit for errors and logs: no user info, and only the values of
/// [`SHOWN_QUERY_PARAMS`].
pub(crate) fn redact_url(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if SHOWN_QUERY_PARAMS.contains(&k.as_ref()) {
                    v.into_owned()
                } else {
                    "redacted".to_string()
                };
                (k.into_owned(), v)
            })
            .collect();
        shown.query_pairs_mut().clear().extend_pairs(pairs);
    }
    shown.to_string()
}

/// [`Error::Timeout`] or [`Error::Connection`] for a failed request.
pub(crate) fn network_error(url: &Url, source: reqwest::Error) -> Error {
    let url = redact_url(url);
    // reqwest's message would repeat the URL unredacted.
    let source = source.without_url();
    if source.is_timeout() {
        Error::Timeout { url, source }
    } else {
        Error::Connection { url, source }
    }
}

/// Whether an error is the network's (worth reading again).
pub(crate) fn is_network(e: &Error) -> bool {
    match e {
        Error::Connection { source, .. } => !source.is_builder(),
        Error::Timeout { .. } | Error::Stalled { .. } => true,
        _ => false,
    }
}

/// When the last piece of a request body went out (or the request
/// started).
pub(crate) struct Progress {
    start: Instant,
    /// Nanoseconds from `start` to the last piece.
    last: AtomicU64,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(nanos, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }
}

/// `body` as a stream of [`UPLOAD_PIECE`] slices that records when each
/// one is taken by the connection.
fn progress_body(body: Bytes, progress: Arc<Progress>) -> reqwest::Body {
    let len = body.len();
    let pieces = (0..len).step_by(UPLOAD_PIECE).map(move |start| {
        progress.touch();
        Ok::<_, std::io::Error>(body.slice(start..(start + UPLOAD_PIECE).min(len)))
    });
    reqwest::Body::wrap_stream(futures_util::stream::iter(pieces))
}

/// The next piece of a response body, or [`Error::Stalled`] after `stall`
/// without one (zero: wait for ever).
pub(crate) async fn next_chunk(
    response: &mut Response,
    url: &Url,
    stall: Duration,
) -> Result<Option<Bytes>> {
    if stall.is_zero() {
        return response.chunk().await.map_err(|e| network_error(url, e));
    }
    match tokio::time::timeout(stall, response.chunk()).await {
        Ok(chunk) => chunk.map_err(|e| network_error(url, e)),
        Err(_) => Err(Error::Stalled {
            url: redact_url(url),
            after: stall,
        }),
    }
}

/// The whole body, refusing more than `limit` bytes.
pub(crate) async fn read_limited(
    mut response: Response,
    limit: u64,
    what: &'static str,
    url: &Url,
    stall: Duration,
) -> Result<Vec<u8>> {
    let too_large = |size: u64| Error::TooLarge {
        what,
        url: redact_url(url),
        size,
        limit,
    };
    let announced =
        header_str(&response, CONTENT_LENGTH).and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(size) = announced.filter(|&s| s > limit) {
        return Err(too_large(size));
    }
    let mut out = Vec::with_capacity(announced.unwrap_or(0).min(limit) as usize);
    while let Some(chunk) = next_chunk(&mut response, url, stall).await? {
        if (out.len() + chunk.len()) as u64 > limit {
            return Err(too_large((out.len() + chunk.len()) as u64));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The registry's message for an error answer: the first OCI error's
/// `code: message`, else the start of the body.
async fn error_detail(response: Response) -> String {
    let url = response.url().clone();
    let body = read_limited(
        response,
        MAX_ERROR_BODY,
        "error body",
        &url,
        ERROR_BODY_STALL,
    )
    .await
    .unwrap_or_default();
    match parse_error_body(&body) {
        Some(e) => format!("{}: {}", e.code, e.message),
        None if body.is_empty() => "no detail".to_string(),
        None => String::from_utf8_lossy(&body)
            .trim()
            .chars()
            .take(200)
            .collect(),
    }
}

/// [`Error::Status`] for an unexpected answer, with the registry's error
/// code and message from the body.
pub(crate) async fn status_error(method: &Method, response: Response) -> Error {
    let url = response.url().clone();
    let status = response.status().as_u16();
    let body = read_limited(
        response,
        MAX_ERROR_BODY,
        "error body",
        &url,
        ERROR_BODY_STALL,
    )
    .await
    .unwrap_or_default();
    let (code, message) = match parse_error_body(&body) {
        Some(e) => (Some(e.code).filter(|c| !c.is_empty()), Some(e.message)),
        None => {
            let text: String = String::from_utf8_lossy(&body)
                .trim()
                .chars()
                .take(200)
                .collect();
            (None, Some(text).filter(|t| !t.is_empty()))
        }
    };
    Error::Status {
        method: method.to_string(),
        url: redact_url(&url),
        status,
        code,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        let url = Url::parse(
            "https://user:pw@s3.example/b?X-Amz-Signature=abc&digest=sha256%3A12&_state=s",
        )
        .unwrap();
        let shown = redact_url(&url);
        assert_eq!(
            shown,
            "https://s3.example/b?X-Amz-Signature=redacted&digest=sha256%3A12&_state=redacted"
        );
        assert_eq!(
            redact_url(&Url::parse("http://a/v2/x").unwrap()),
            "http://a/v2/x"
        );
    }

    #[test]
    fn scheme_follows_loopback_and_plain_http() {
        let dir = tempfile::tempdir().unwrap();
        let config = ClientConfig {
            docker_config: Some(dir.path().join("config.json")),
            ..ClientConfig::default()
        };
        let client = Client::new(config.clone()).unwrap();
        let url = |c: &Client, r: &str| {
            c.url(&Reference::parse(r).unwrap(), "x")
                .unwrap()
                .to_string()
        };
        assert_eq!(
            url(&client, "busybox"),
            "https://registry-1.docker.io/v2/library/busybox/x"
        );
        assert_eq!(url(&client, "[::1]:5000/a"), "http://[::1]:5000/v2/a/x");
        assert_eq!(url(&client, "localhost/a"), "http://localhost/v2/a/x");
        assert_eq!(
            url(&client, "r.example:5000/a/b"),
            "https://r.example:5000/v2/a/b/x"
        );
        let plain = Client::new(ClientConfig {
            plain_http: true,
            ..config
        })
        .unwrap();
        assert_eq!(url(&plain, "r.example/a"), "http://r.example/v2/a/x");
    }

    #[test]
    fn bad_ca_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate").unwrap();
        let config = ClientConfig {
            docker_config: Some(dir.path().join("config.json")),
            ca_file: Some(ca.clone()),
            ..ClientConfig::default()
        };
        let e = Client::new(config.clone()).err().unwrap().to_string();
        assert!(e.contains("ca.pem"), "{e}");
        let missing = ClientConfig {
            ca_file: Some(dir.path().join("none.pem")),
            ..config
        };
        let e = Client::new(missing).err().unwrap().to_string();
        assert!(e.starts_with("reading ") && e.contains("none.pem"), "{e}");
    }

    #[test]
    fn media_types_from_headers_and_documents() {
        assert_eq!(
            media_type_of("application/vnd.oci.image.index.v1+json; charset=utf-8"),
            media_types::OCI_INDEX
        );
        assert_eq!(
            media_type_of_document(br#"{"manifests":[]}"#),
            media_types::OCI_INDEX
        );
        assert_eq!(
            media_type_of_document(
                br#"{"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#
            ),
            media_types::DOCKER_MANIFEST
        );
        assert_eq!(media_type_of_document(b"{"), media_types::OCI_MANIFEST);
    }
}
