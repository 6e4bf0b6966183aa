//! `Registry`: a private docker-registry (distribution 2.8) per test, on a
//! port the kernel picks, with its storage in a `TempDir`; plain HTTP or TLS
//! with its own CA, optionally with htpasswd basic auth. Killed and waited
//! on drop.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::{pid_alive, tail};
use crate::tls::{write_tls_files, TlsFiles};

/// Where the registry binary is unless `SOCHI_DOCKER_REGISTRY` says
/// otherwise (Debian's `docker-registry` package).
const DEFAULT_REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// How long the registry may take to listen and answer `/v2/`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The htpasswd bcrypt cost: the registry checks the hash on every request,
/// and `htpasswd -B`'s default of 5 keeps that at about a millisecond.
const BCRYPT_COST: u32 = 5;

/// A user name and password for basic auth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl Credentials {
    pub fn new(user: &str, password: &str) -> Credentials {
        Credentials {
            user: user.to_string(),
            password: password.to_string(),
        }
    }

    /// `USER:PASS`, as `sochi --user` and `skopeo --creds` take them.
    pub fn user_pass(&self) -> String {
        format!("{}:{}", self.user, self.password)
    }
}

/// The address [`Registry::secure`] listens on: loopback, but not one of
/// the names (`localhost`, `127.0.0.1`, `[::1]`) that sochi, like docker,
/// always reaches over plain HTTP.
pub const TLS_LOOPBACK_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// Options of a [`Registry`]; `start()` runs it.
#[derive(Debug, Clone)]
pub struct RegistryBuilder {
    tls: bool,
    credentials: Option<Credentials>,
    listen_ip: Ipv4Addr,
    proxy: Option<String>,
}

impl Default for RegistryBuilder {
    fn default() -> RegistryBuilder {
        RegistryBuilder {
            tls: false,
            credentials: None,
            listen_ip: Ipv4Addr::LOCALHOST,
            proxy: None,
        }
    }
}

impl RegistryBuilder {
    /// Listen on this address (default 127.0.0.1; any of 127.0.0.0/8
    /// works on Linux). See [`TLS_LOOPBACK_IP`].
    pub fn listen_ip(mut self, ip: Ipv4Addr) -> RegistryBuilder {
        self.listen_ip = ip;
        self
    }

    /// Serve HTTPS with a certificate from a new CA (see
    /// [`Registry::ca_file`]) for the listen address, 127.0.0.1, 127.0.0.2,
    /// ::1 and localhost.
    pub fn tls(mut self, yes: bool) -> RegistryBuilder {
        self.tls = yes;
        self
    }

    /// Require basic auth with these credentials (an htpasswd file).
    pub fn htpasswd(mut self, user: &str, password: &str) -> RegistryBuilder {
        self.credentials = Some(Credentials::new(user, password));
        self
    }

    /// Run as a pull-through cache of `remote_url` (`proxy.remoteurl`,
    /// e.g. `http://127.0.0.1:41234`); the upstream must answer when the
    /// cache starts.
    pub fn proxy(mut self, remote_url: &str) -> RegistryBuilder {
        self.proxy = Some(remote_url.to_string());
        self
    }

    /// Starts the registry and waits until `/v2/` answers. Panics, with the
    /// registry's log, when the binary is missing or it does not come up.
    #[track_caller]
    pub fn start(self) -> Registry {
        Registry::start(self)
    }
}

/// A running docker-registry owned by one test. Dropping it (also while
/// unwinding from a panic) kills the process and waits for it; the storage
/// `TempDir` goes with it.
///
/// The process also gets SIGKILL when the thread that started it exits
/// (`setpriv --pdeathsig`), so a test binary that is killed leaves nothing
/// behind; keep each `Registry` in the test (thread) that started it.
///
/// The helpers that talk HTTP ([`Registry::get`], [`Registry::client`]) are
/// blocking: call them from plain `#[test]`s or `spawn_blocking`.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    addr: SocketAddr,
    tls: Option<TlsFiles>,
    credentials: Option<Credentials>,
    proxy: Option<String>,
    log: PathBuf,
    // Last: removed after the process is gone.
    dir: TempDir,
}

impl Registry {
    /// Options for a registry; see [`RegistryBuilder`].
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder::default()
    }

    /// A plain-HTTP registry without auth.
    #[track_caller]
    pub fn plain() -> Registry {
        Registry::builder().start()
    }

    /// A TLS registry (own CA) with basic auth as `sochi` / a random
    /// password, listening on [`TLS_LOOPBACK_IP`] (127.0.0.2) so that sochi
    /// talks HTTPS to it.
    #[track_caller]
    pub fn secure() -> Registry {
        let password = format!("pw-{:016x}", rand_u64());
        Registry::builder()
            .listen_ip(TLS_LOOPBACK_IP)
            .tls(true)
            .htpasswd("sochi", &password)
            .start()
    }

    #[track_caller]
    fn start(options: RegistryBuilder) -> Registry {
        let bin = registry_bin();
        if !bin.is_file() {
            panic!(
                "{} is missing: the e2e tests need a real registry (run scripts/e2e-deps.sh)",
                bin.display()
            );
        }
        let dir = match tempfile::Builder::new()
            .prefix("sochi-e2e-registry-")
            .tempdir()
        {
            Ok(dir) => dir,
            Err(err) => panic!("creating the registry's temp dir: {err}"),
        };
        let tls = options
            .tls
            .then(|| write_tls_files(&ensure_dir(dir.path().join("tls")), options.listen_ip));
        let htpasswd = options.credentials.as_ref().map(|creds| {
            let hash = match bcrypt::hash(&creds.password, BCRYPT_COST) {
                Ok(hash) => hash,
                Err(err) => panic!("bcrypt: {err}"),
            };
            let path = dir.path().join("htpasswd");
            write_file(&path, &format!("{}:{hash}\n", creds.user));
            path
        });
        let config = dir.path().join("config.yml");
        write_file(
            &config,
            &config_yaml(
                dir.path(),
                SocketAddr::from((options.listen_ip, 0)),
                tls.as_ref(),
                htpasswd.as_deref(),
                options.proxy.as_deref(),
            ),
        );

        let log = dir.path().join("registry.log");
        let log_file = match std::fs::File::create(&log) {
            Ok(file) => file,
            Err(err) => panic!("creating {}: {err}", log.display()),
        };
        let log_err = match log_file.try_clone() {
            Ok(file) => file,
            Err(err) => panic!("cloning the log file handle: {err}"),
        };
        let mut cmd = registry_command(&bin, &config);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(log_err));
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(err) => panic!("starting {}: {err}", bin.display()),
        };
        // From here on a panic drops `registry`, which kills the child.
        let mut registry = Registry {
            child,
            addr: SocketAddr::from((options.listen_ip, 0)),
            tls,
            credentials: options.credentials,
            proxy: options.proxy,
            log,
            dir,
        };
        registry.addr = registry.wait_listening();
        registry.wait_ready();
        registry
    }

    /// Waits for the registry's "listening on IP:PORT" log line (the
    /// config says port 0, so the kernel picked a free one).
    #[track_caller]
    fn wait_listening(&mut self) -> SocketAddr {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "docker-registry exited with {status} before listening; its log:\n{}",
                    tail(&self.log, 40)
                );
            }
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(addr) = parse_listening(&text) {
                return addr;
            }
            if Instant::now() > deadline {
                panic!(
                    "docker-registry did not log its address in {START_TIMEOUT:?}; its log:\n{}",
                    tail(&self.log, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `GET /v2/` until it answers 200 (401 with auth, since this asks
    /// without credentials).
    #[track_caller]
    fn wait_ready(&self) {
        let expected = if self.credentials.is_some() { 401 } else { 200 };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let last = match self.probe_v2() {
                Ok(status) if status == expected => return,
                Ok(status) => format!("status {status}"),
                Err(err) => err,
            };
            if Instant::now() > deadline {
                panic!(
                    "{} did not answer {expected} in {START_TIMEOUT:?} (last: {last}); its log:\n{}",
                    self.url("/v2/"),
                    tail(&self.log, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn probe_v2(&self) -> Result<u16, String> {
        let url = self.url("/v2/");
        let client = self.client();
        // The blocking client runs its own runtime: keep it on a plain
        // thread so this works from async tests too.
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    client
                        .get(&url)
                        .timeout(Duration::from_secs(5))
                        .send()
                        .map(|response| response.status().as_u16())
                        .map_err(|err| format!("{err:#}"))
                })
                .join()
                .unwrap_or_else(|_| Err("probe thread panicked".to_string()))
        })
    }

    /// `IP:PORT` (e.g. `127.0.0.1:41234`), the registry's host in image
    /// references.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    pub fn socket_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ADDR/REPO[:TAG|@DIGEST]`, e.g. `reference("busybox:latest")`.
    pub fn reference(&self, repo_and_tag: &str) -> String {
        format!("{}/{repo_and_tag}", self.addr)
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.is_tls() {
            "https"
        } else {
            "http"
        }
    }

    /// `SCHEME://ADDR` + `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme(), self.addr)
    }

    /// The CA certificate (PEM) to trust for a TLS registry.
    pub fn ca_file(&self) -> Option<&Path> {
        self.tls.as_ref().map(|tls| tls.ca.as_path())
    }

    /// A directory with only `ca.crt`, for skopeo's `--cert-dir`.
    pub fn cert_dir(&self) -> Option<&Path> {
        self.tls.as_ref().map(|tls| tls.cert_dir.as_path())
    }

    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the registry process runs.
    pub fn is_running(&self) -> bool {
        pid_alive(self.pid())
    }

    /// The registry's storage root (`rootdirectory`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Where the registry keeps blob `digest` (`sha256:…`): a test that
    /// corrupts it there gets those bytes served as they are.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.data_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(hex.get(..2).unwrap_or_default())
            .join(hex)
            .join("data")
    }

    /// The registry's log so far (its stdout and stderr, access log
    /// included).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The global `sochi` flags for this registry: `--plain-http`, or
    /// `--ca-file CA`; plus `--user USER:PASS` with auth. (sochi uses plain
    /// HTTP for 127.0.0.1 whatever the flags: give it TLS registries on
    /// [`TLS_LOOPBACK_IP`], as [`Registry::secure`] does.)
    pub fn sochi_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        match &self.tls {
            Some(tls) => {
                args.push("--ca-file".to_string());
                args.push(tls.ca.display().to_string());
            }
            None => args.push("--plain-http".to_string()),
        }
        if let Some(creds) = &self.credentials {
            args.push("--user".to_string());
            args.push(creds.user_pass());
        }
        args
    }

    /// skopeo's flags for this registry; `side` is `""` (inspect, delete),
    /// `"src-"` or `"dest-"` (copy): `--{side}tls-verify=false` or
    /// `--{side}cert-dir DIR`, plus `--{side}creds USER:PASS` with auth.
    pub fn skopeo_args(&self, side: &str) -> Vec<String> {
        let mut args = Vec::new();
        match &self.tls {
            Some(tls) => {
                args.push(format!("--{side}cert-dir"));
                args.push(tls.cert_dir.display().to_string());
            }
            None => args.push(format!("--{side}tls-verify=false")),
        }
        if let Some(creds) = &self.credentials {
            args.push(format!("--{side}creds"));
            args.push(creds.user_pass());
        }
        args
    }

    /// A blocking HTTP client that trusts this registry's CA. It sends no
    /// credentials by itself; [`Registry::get`] does.
    #[track_caller]
    pub fn client(&self) -> reqwest::blocking::Client {
        let mut builder = reqwest::blocking::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none());
        if let Some(tls) = &self.tls {
            let pem = match std::fs::read(&tls.ca) {
                Ok(pem) => pem,
                Err(err) => panic!("reading {}: {err}", tls.ca.display()),
            };
            let cert = match reqwest::Certificate::from_pem(&pem) {
                Ok(cert) => cert,
                Err(err) => panic!("parsing {}: {err}", tls.ca.display()),
            };
            builder = builder.add_root_certificate(cert);
        }
        match builder.build() {
            Ok(client) => client,
            Err(err) => panic!("building an HTTP client: {err}"),
        }
    }

    /// `GET path` with the registry's credentials (if any), e.g.
    /// `get("/v2/busybox/tags/list")`. Panics on a transport error.
    #[track_caller]
    pub fn get(&self, path: &str) -> reqwest::blocking::Response {
        let url = self.url(path);
        let mut request = self.client().get(&url);
        if let Some(creds) = &self.credentials {
            request = request.basic_auth(&creds.user, Some(&creds.password));
        }
        match request.send() {
            Ok(response) => response,
            Err(err) => panic!("GET {url}: {err:#}\nregistry log:\n{}", tail(&self.log, 20)),
        }
    }
}

/// One request in the registry's access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub bytes: u64,
}

impl Registry {
    /// Every request answered so far, from the access log (the combined
    /// log format distribution writes to stdout).
    pub fn accesses(&self) -> Vec<Access> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().filter_map(parse_access).collect()
    }

    /// Kills the registry (its storage stays); see [`Registry::restart`].
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the registry again on the same address and storage, with a
    /// new password when one is given (distribution reads its htpasswd
    /// file once, at start).
    #[track_caller]
    pub fn restart(&mut self, password: Option<&str>) {
        self.stop();
        if let (Some(password), Some(creds)) = (password, self.credentials.as_mut()) {
            creds.password = password.to_string();
            let hash = match bcrypt::hash(password, BCRYPT_COST) {
                Ok(hash) => hash,
                Err(err) => panic!("bcrypt: {err}"),
            };
            write_file(
                &self.dir.path().join("htpasswd"),
                &format!("{}:{hash}\n", creds.user),
            );
        }
        let htpasswd = self
            .credentials
            .is_some()
            .then(|| self.dir.path().join("htpasswd"));
        let config = self.dir.path().join("config.yml");
        write_file(
            &config,
            &config_yaml(
                self.dir.path(),
                self.addr,
                self.tls.as_ref(),
                htpasswd.as_deref(),
                self.proxy.as_deref(),
            ),
        );
        let log_file = match std::fs::OpenOptions::new().append(true).open(&self.log) {
            Ok(file) => file,
            Err(err) => panic!("opening {}: {err}", self.log.display()),
        };
        let log_err = match log_file.try_clone() {
            Ok(file) => file,
            Err(err) => panic!("cloning the log file handle: {err}"),
        };
        let mut cmd = registry_command(&registry_bin(), &config);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(log_err));
        self.child = match cmd.spawn() {
            Ok(child) => child,
            Err(err) => panic!("restarting the registry: {err}"),
        };
        self.wait_ready();
    }
}

/// `"GET /v2/x HTTP/1.1" 200 1234` in a combined-log-format line.
fn parse_access(line: &str) -> Option<Access> {
    let start = line.find('"')? + 1;
    let request_end = start + line[start..].find('"')?;
    let mut request = line[start..request_end].split(' ');
    let method = request.next()?.to_string();
    let path = request.next()?.to_string();
    if !request.next()?.starts_with("HTTP/") {
        return None;
    }
    let mut rest = line[request_end + 1..].split_whitespace();
    let status = rest.next()?.parse().ok()?;
    let bytes = rest.next()?.parse().unwrap_or(0);
    Some(Access {
        method,
        path,
        status,
        bytes,
    })
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn registry_bin() -> PathBuf {
    std::env::var_os("SOCHI_DOCKER_REGISTRY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_REGISTRY_BIN))
}

/// `docker-registry serve CONFIG`, under `setpriv --pdeathsig KILL` when
/// util-linux's setpriv is there (the registry dies with the test thread
/// even if the test binary is killed and no destructor runs).
fn registry_command(bin: &Path, config: &Path) -> Command {
    let mut cmd = crate::process::dying_with_parent(bin);
    cmd.arg("serve").arg(config);
    cmd
}

fn config_yaml(
    dir: &Path,
    listen: SocketAddr,
    tls: Option<&TlsFiles>,
    htpasswd: Option<&Path>,
    proxy: Option<&str>,
) -> String {
    let mut yaml = format!(
        "version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: {data}
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {listen}
  secret: sochi-e2e-{secret:016x}
",
        data = dir.join("data").display(),
        secret = rand_u64(),
    );
    if let Some(tls) = tls {
        yaml.push_str(&format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            tls.cert.display(),
            tls.key.display()
        ));
    }
    if let Some(htpasswd) = htpasswd {
        yaml.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: sochi-e2e\n    path: {}\n",
            htpasswd.display()
        ));
    }
    if let Some(remote) = proxy {
        yaml.push_str(&format!("proxy:\n  remoteurl: {remote}\n"));
    }
    yaml
}

/// The address in distribution's "listening on IP:PORT[, tls]".
fn parse_listening(log: &str) -> Option<SocketAddr> {
    log.lines().find_map(|line| {
        let rest = &line[line.find("listening on ")? + "listening on ".len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
            .unwrap_or(rest.len());
        rest[..end]
            .parse::<SocketAddr>()
            .ok()
            .filter(|addr| addr.port() != 0)
    })
}

fn ensure_dir(path: PathBuf) -> PathBuf {
    if let Err(err) = std::fs::create_dir_all(&path) {
        panic!("creating {}: {err}", path.display());
    }
    path
}

fn write_file(path: &Path, contents: &str) {
    if let Err(err) = std::fs::write(path, contents) {
        panic!("writing {}: {err}", path.display());
    }
}

/// Randomness for passwords and the HTTP secret; not for cryptography.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_line_gives_the_address() {
        let log = "time=\"x\" level=info msg=\"redis not configured\"\n\
                   time=\"x\" level=info msg=\"listening on 127.0.0.1:34527, tls\" go.version=go1.19.8\n";
        assert_eq!(
            parse_listening(log),
            Some(SocketAddr::from(([127, 0, 0, 1], 34527)))
        );
        assert_eq!(parse_listening("listening on 127.0.0.1:0x"), None);
    }

    #[test]
    fn user_pass_joins_with_a_colon() {
        let creds = Credentials::new("u", "p:w");
        assert_eq!(creds.user_pass(), "u:p:w");
    }
}
