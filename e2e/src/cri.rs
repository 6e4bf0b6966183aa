//! Kubernetes pods without a kubelet: containerd's CRI plugin driven the way
//! a kubelet drives it, through `sochi_cri::CriClient`.
//!
//! - [`Cri`]: a blocking CRI client (a private tokio runtime around
//!   `CriClient`) whose failures print the call, the status and the tail of
//!   containerd's log. [`crate::Containerd::cri`] makes one.
//! - [`RegistryHosts`]: a `registry.config_path` dir with one
//!   `<host:port>/hosts.toml` per test registry (`http://` servers for
//!   plain ones, the CA for TLS ones).
//! - [`push_pause_image`]: a pod sandbox image made here from the
//!   busybox-static binary (`busybox sleep 2147483647`), pushed to a
//!   registry.
//! - [`Pod`]: `RunPodSandbox` on the host network (no hostname: runc cannot
//!   set one without a UTS namespace), containers made from a
//!   [`ContainerSpec`] (`CreateContainer` + `StartContainer`), their log
//!   files read line by line, and a teardown on drop (`StopContainer`,
//!   `RemoveContainer`, `StopPodSandbox`, `RemovePodSandbox`), also while
//!   unwinding from a failed test.
//!
//! Declare a `Pod` after the [`crate::Containerd`] and the snapshotter it
//! runs on, so that it goes first.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sochi_cri::api;
use sochi_cri::{AuthConfig, CriClient};
use tempfile::TempDir;

use crate::layouts::{Entry, ImageLayout};
use crate::lazy::push_layout_exact;
use crate::process::tail;
use crate::registry::Registry;

/// How long containerd's CRI socket may take to answer after a (re)start.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The busybox of Debian's busybox-static (`scripts/e2e-deps.sh`).
const BUSYBOX: &str = "/bin/busybox";

/// The containerd namespace of everything CRI makes.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// A blocking CRI client for the tests.
#[derive(Debug)]
pub struct Cri {
    client: CriClient,
    /// containerd's log, printed when a call fails.
    log: Option<PathBuf>,
    // Last: the client's connection lives on it.
    runtime: tokio::runtime::Runtime,
}

impl Cri {
    /// Connects to the CRI runtime on `address` and waits (up to 30 s) until
    /// it answers `Version`. `log` is the runtime's log, for failures.
    #[track_caller]
    pub fn connect(address: &Path, log: Option<PathBuf>) -> Cri {
        let cri = Cri::connect_only(address, log);
        cri.wait_ready();
        cri
    }

    /// Connects to a CRI image service only (a kubelet's
    /// `--image-service-endpoint`: the sochi snapshotter's socket with
    /// `[cri_keychain]` on) and waits (up to 30 s) until it answers
    /// `ListImages`. `log` is the log printed when a call fails.
    #[track_caller]
    pub fn connect_image_service(address: &Path, log: Option<PathBuf>) -> Cri {
        let cri = Cri::connect_only(address, log);
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            match cri.block_on(cri.client.list_images()) {
                Ok(_) => return cri,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(err) => {
                    cri.ok(Err::<(), _>(err));
                }
            }
        }
    }

    #[track_caller]
    fn connect_only(address: &Path, log: Option<PathBuf>) -> Cri {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(err) => panic!("building a tokio runtime: {err}"),
        };
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let client = loop {
            match runtime.block_on(CriClient::connect(address)) {
                Ok(client) => break client,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(err) => panic!(
                    "{}{}",
                    error_chain(&err),
                    log_tail(log.as_deref(), "containerd")
                ),
            }
        };
        Cri {
            client,
            log,
            runtime,
        }
    }

    /// The async client, for calls this type does not wrap (run them with
    /// [`Cri::block_on`]).
    pub fn client(&self) -> &CriClient {
        &self.client
    }

    /// Runs `future` on this client's runtime.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// The value of a call, or a panic with the error chain and the tail
    /// of the runtime's log.
    #[track_caller]
    fn ok<T>(&self, result: sochi_cri::Result<T>) -> T {
        match result {
            Ok(value) => value,
            Err(err) => panic!(
                "{}{}",
                error_chain(&err),
                log_tail(self.log.as_deref(), "containerd")
            ),
        }
    }

    /// Waits (up to 30 s) until the runtime answers `Version` (after a
    /// restart the connection is made again).
    #[track_caller]
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            match self.block_on(self.client.version()) {
                Ok(_) => return,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(err) => {
                    self.ok(Err::<(), _>(err));
                }
            }
        }
    }

    /// `Version`.
    #[track_caller]
    pub fn version(&self) -> api::VersionResponse {
        self.ok(self.block_on(self.client.version()))
    }

    /// `PullImage`; the image reference the runtime answers (its ID).
    #[track_caller]
    pub fn pull_image(&self, image: &str, auth: Option<&AuthConfig>) -> String {
        self.ok(self.block_on(self.client.pull_image(image, auth)))
    }

    /// `ImageStatus`: the image, `None` when the runtime lacks it.
    #[track_caller]
    pub fn image_status(&self, image: &str) -> Option<api::Image> {
        self.ok(self.block_on(self.client.image_status(image)))
    }

    /// `ListImages`.
    #[track_caller]
    pub fn list_images(&self) -> Vec<api::Image> {
        self.ok(self.block_on(self.client.list_images()))
    }

    /// `RemoveImage`.
    #[track_caller]
    pub fn remove_image(&self, image: &str) {
        self.ok(self.block_on(self.client.remove_image(image)));
    }

    /// `ContainerStatus` of container `id`.
    #[track_caller]
    pub fn container_status(&self, id: &str) -> api::ContainerStatus {
        let response = self.ok(self.block_on(self.client.container_status(id, false)));
        match response.status {
            Some(status) => status,
            None => panic!("ContainerStatus of {id} has no status"),
        }
    }

    /// The host PID of container `id`'s process: containerd's verbose
    /// `ContainerStatus` holds a JSON document under `info` with `pid`.
    #[track_caller]
    pub fn container_pid(&self, id: &str) -> u32 {
        let response = self.ok(self.block_on(self.client.container_status(id, true)));
        let Some(info) = response.info.get("info") else {
            panic!("verbose ContainerStatus of {id} has no info: {response:?}");
        };
        let json: serde_json::Value = match serde_json::from_str(info) {
            Ok(json) => json,
            Err(err) => panic!("ContainerStatus info of {id} is no JSON ({err}): {info}"),
        };
        match json["pid"].as_u64().and_then(|pid| u32::try_from(pid).ok()) {
            Some(pid) if pid > 0 => pid,
            _ => panic!("ContainerStatus info of {id} has no pid: {info}"),
        }
    }

    fn log_tail(&self) -> String {
        log_tail(self.log.as_deref(), "containerd")
    }
}

/// `error` and its sources, one per line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str("\n  caused by: ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn log_tail(log: Option<&Path>, whose: &str) -> String {
    match log {
        Some(log) => format!("\n{whose} log:\n{}", tail(log, 40)),
        None => String::new(),
    }
}

// --- registries ------------------------------------------------------------------

/// A `registry.config_path` dir: `<host:port>/hosts.toml` for each test
/// registry, so that containerd pulls from it over plain HTTP (`http://`
/// server) or over TLS with the test CA. Removed on drop: keep it until
/// containerd is gone.
#[derive(Debug)]
pub struct RegistryHosts {
    dir: TempDir,
}

impl RegistryHosts {
    /// Hosts files for `registries`.
    #[track_caller]
    pub fn new(registries: &[&Registry]) -> RegistryHosts {
        let dir = match tempfile::Builder::new()
            .prefix("sochi-e2e-hosts-")
            .tempdir()
        {
            Ok(dir) => dir,
            Err(err) => panic!("creating a hosts dir: {err}"),
        };
        for registry in registries {
            let host_dir = dir.path().join(registry.addr());
            let server = format!("{}://{}", registry.scheme(), registry.addr());
            // The CA on the server too: a [host] entry is tried first, but
            // whoever falls back to the server must trust it as well.
            let ca = registry
                .ca_file()
                .map(|ca| format!("  ca = \"{}\"\n", ca.display()))
                .unwrap_or_default();
            let text = format!(
                "server = \"{server}\"\n{}\n[host.\"{server}\"]\n  capabilities = [\"pull\", \"resolve\"]\n{ca}",
                ca.trim_start()
            );
            if let Err(err) = std::fs::create_dir_all(&host_dir)
                .and_then(|()| std::fs::write(host_dir.join("hosts.toml"), text))
            {
                panic!("writing {}/hosts.toml: {err}", host_dir.display());
            }
        }
        RegistryHosts { dir }
    }

    /// The dir (`CriOptions::registry_config_path`).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

// --- the sandbox image -------------------------------------------------------------

/// Builds a pod sandbox image from `/bin/busybox` (one layer: `bin/busybox`;
/// entrypoint `/bin/busybox sleep 2147483647`), pushes it to `registry` as
/// `sochi-e2e/pause:latest` with its digests as made, and returns the
/// reference. It has no SOCI index, so the sochi snapshotter hands its
/// layer back to containerd.
#[track_caller]
pub fn push_pause_image(registry: &Registry) -> String {
    let busybox = match std::fs::read(BUSYBOX) {
        Ok(bytes) => bytes,
        Err(err) => {
            panic!("reading {BUSYBOX}: {err} (install busybox-static: scripts/e2e-deps.sh)")
        }
    };
    let work = match tempfile::Builder::new()
        .prefix("sochi-e2e-pause-")
        .tempdir()
    {
        Ok(dir) => dir,
        Err(err) => panic!("creating a temp dir: {err}"),
    };
    let dir = work.path().join("pause");
    let mut layout = ImageLayout::new(&dir);
    layout.layer(
        &[
            Entry::dir("bin"),
            Entry::file("bin/busybox", &busybox).mode(0o755),
        ],
        true,
    );
    layout.entrypoint(&["/bin/busybox", "sleep", "2147483647"]);
    layout.finish();
    push_layout_exact(registry, &dir, "sochi-e2e/pause", "latest")
}

// --- pods ----------------------------------------------------------------------------

/// A container to start in a [`Pod`].
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    name: String,
    image: String,
    command: Vec<String>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

impl ContainerSpec {
    /// Container `name` of `image` (a reference or the ID `PullImage`
    /// answered) running the image's own entrypoint and command.
    pub fn new(name: &str, image: &str) -> ContainerSpec {
        ContainerSpec {
            name: name.to_string(),
            image: image.to_string(),
            command: Vec::new(),
            args: Vec::new(),
            envs: Vec::new(),
        }
    }

    /// Runs `command` instead of the image's entrypoint (Kubernetes
    /// `command`).
    pub fn command(mut self, command: &[&str]) -> ContainerSpec {
        self.command = command.iter().map(|s| s.to_string()).collect();
        self
    }

    /// With `args` instead of the image's command (Kubernetes `args`).
    pub fn args(mut self, args: &[&str]) -> ContainerSpec {
        self.args = args.iter().map(|s| s.to_string()).collect();
        self
    }

    /// With environment variable `key=value`.
    pub fn env(mut self, key: &str, value: &str) -> ContainerSpec {
        self.envs.push((key.to_string(), value.to_string()));
        self
    }
}

/// Host network, container PID namespace, pod IPC: what a kubelet sends
/// for a `hostNetwork: true` pod.
fn host_network() -> api::NamespaceOption {
    api::NamespaceOption {
        network: api::NamespaceMode::Node as i32,
        pid: api::NamespaceMode::Container as i32,
        ipc: api::NamespaceMode::Pod as i32,
        target_id: String::new(),
    }
}

/// A running pod sandbox and the containers started in it; all stopped and
/// removed on drop.
#[derive(Debug)]
pub struct Pod<'a> {
    cri: &'a Cri,
    id: String,
    config: api::PodSandboxConfig,
    /// (name, ID) of each container started, oldest first.
    containers: Vec<(String, String)>,
    torn_down: bool,
    // Last: the logs stay readable until everything is stopped.
    log_dir: TempDir,
}

impl<'a> Pod<'a> {
    /// `RunPodSandbox` of pod `name` on the host network (no hostname), its
    /// logs under a temp dir.
    #[track_caller]
    pub fn run(cri: &'a Cri, name: &str) -> Pod<'a> {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log_dir = match tempfile::Builder::new().prefix("sochi-e2e-pod-").tempdir() {
            Ok(dir) => dir,
            Err(err) => panic!("creating a pod log dir: {err}"),
        };
        let config = api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: name.to_string(),
                uid: format!("sochi-e2e-{}-{n}", std::process::id()),
                namespace: "sochi-e2e".to_string(),
                attempt: 0,
            }),
            log_directory: log_dir.path().display().to_string(),
            linux: Some(api::LinuxPodSandboxConfig {
                security_context: Some(api::LinuxSandboxSecurityContext {
                    namespace_options: Some(host_network()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = cri.ok(cri.block_on(cri.client.run_pod_sandbox(config.clone())));
        Pod {
            cri,
            id,
            config,
            containers: Vec::new(),
            torn_down: false,
            log_dir,
        }
    }

    /// The sandbox ID.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The sandbox's `log_directory`.
    pub fn log_dir(&self) -> &Path {
        self.log_dir.path()
    }

    /// `CreateContainer` + `StartContainer` of `spec` (log file
    /// `<name>.log` in the pod's log dir); returns the container's ID.
    #[track_caller]
    pub fn start(&mut self, spec: &ContainerSpec) -> String {
        let config = api::ContainerConfig {
            metadata: Some(api::ContainerMetadata {
                name: spec.name.clone(),
                attempt: 0,
            }),
            image: Some(api::ImageSpec {
                image: spec.image.clone(),
                ..Default::default()
            }),
            command: spec.command.clone(),
            args: spec.args.clone(),
            envs: spec
                .envs
                .iter()
                .map(|(key, value)| api::KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
            log_path: format!("{}.log", spec.name),
            linux: Some(api::LinuxContainerConfig {
                resources: None,
                security_context: Some(api::LinuxContainerSecurityContext {
                    namespace_options: Some(host_network()),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        let client = &self.cri.client;
        let id = self.cri.ok(self.cri.block_on(client.create_container(
            &self.id,
            config,
            self.config.clone(),
        )));
        self.containers.push((spec.name.clone(), id.clone()));
        self.cri.ok(self.cri.block_on(client.start_container(&id)));
        id
    }

    /// The log file of container `name`.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.log_dir.path().join(format!("{name}.log"))
    }

    /// The lines container `name` wrote so far (stdout and stderr), without
    /// the CRI log prefix (`<time> <stream> <tag> `).
    pub fn log(&self, name: &str) -> Vec<String> {
        let text = std::fs::read_to_string(self.log_path(name)).unwrap_or_default();
        text.lines()
            .map(|line| line.splitn(4, ' ').nth(3).unwrap_or_default().to_string())
            .collect()
    }

    fn id_of(&self, name: &str) -> &str {
        self.containers
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, id)| id.as_str())
    }

    /// Waits until container `name` has written a line containing `needle`
    /// and returns it. Panics after `timeout`, or as soon as the container
    /// exited without it, with its log, its status and containerd's log.
    #[track_caller]
    pub fn wait_for_log(&self, name: &str, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.log(name).into_iter().find(|l| l.contains(needle)) {
                return line;
            }
            let status = self.cri.container_status(self.id_of(name));
            let exited = status.state == api::ContainerState::ContainerExited as i32;
            if exited || Instant::now() > deadline {
                // Its last words may have come with the exit.
                if let Some(line) = self.log(name).into_iter().find(|l| l.contains(needle)) {
                    return line;
                }
                panic!(
                    "container {name} {} without writing {needle:?}\nstatus: {status:?}\nlog:\n{}{}",
                    if exited { "exited" } else { "ran for the timeout" },
                    self.log(name).join("\n"),
                    self.cri.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until container `name` has exited; its status.
    #[track_caller]
    pub fn wait_exited(&self, name: &str, timeout: Duration) -> api::ContainerStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.cri.container_status(self.id_of(name));
            if status.state == api::ContainerState::ContainerExited as i32 {
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "container {name} still runs after {timeout:?}: {status:?}\nlog:\n{}",
                    self.log(name).join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops and removes every container, then the sandbox, as a kubelet
    /// deleting the pod does; panics with the calls that failed.
    #[track_caller]
    pub fn stop(mut self) {
        let failures = self.teardown();
        if !failures.is_empty() {
            panic!(
                "tearing down pod {}:\n  {}{}",
                self.id,
                failures.join("\n  "),
                self.cri.log_tail()
            );
        }
    }

    /// Every teardown call, whatever fails; the failures.
    fn teardown(&mut self) -> Vec<String> {
        if self.torn_down {
            return Vec::new();
        }
        self.torn_down = true;
        let client = &self.cri.client;
        let mut failures = Vec::new();
        let mut check = |what: String, result: sochi_cri::Result<()>| {
            if let Err(err) = result {
                failures.push(format!("{what}: {}", error_chain(&err)));
            }
        };
        for (name, id) in self.containers.iter().rev() {
            check(
                format!("StopContainer {name}"),
                self.cri.block_on(client.stop_container(id, Duration::ZERO)),
            );
            check(
                format!("RemoveContainer {name}"),
                self.cri.block_on(client.remove_container(id)),
            );
        }
        check(
            "StopPodSandbox".to_string(),
            self.cri.block_on(client.stop_pod_sandbox(&self.id)),
        );
        check(
            "RemovePodSandbox".to_string(),
            self.cri.block_on(client.remove_pod_sandbox(&self.id)),
        );
        failures
    }
}

impl Drop for Pod<'_> {
    fn drop(&mut self) {
        let failures = self.teardown();
        if !failures.is_empty() {
            eprintln!(
                "sochi-e2e: tearing down pod {}:\n  {}",
                self.id,
                failures.join("\n  ")
            );
        }
    }
}
