//! `sochi snapshotter` for the end-to-end tests: the containerd remote
//! snapshotter owned by a guard, and read-only mounts of containerd
//! snapshots (`ctr snapshots view`).
//!
//! - [`Snapshotter`]: runs `sochi --root <tmp> snapshotter --address
//!   <socket> --config <tmp>/config.toml` with a private root, its metrics
//!   on a free loopback port and its log in a file (printed when a test
//!   fails). [`Snapshotter::kill9`] and [`Snapshotter::restart`] (same
//!   root, socket and port) test restarts; on drop (also while unwinding
//!   from a panic) it gets SIGINT, is waited for (bounded), then SIGKILL,
//!   and whatever is still mounted under its root is unmounted lazily.
//! - [`SnapshotView`]: `ctr snapshots --snapshotter S view --mounts KEY
//!   PARENT`, the printed mounts done read-only on a temp dir; on drop the
//!   mount is undone and the view removed.
//!
//! Declare a `Snapshotter` after the [`Containerd`] it serves and views
//! after both, so that views go first, then the snapshotter (its FUSE
//! layers are unmounted while nothing of containerd holds them), then
//! containerd.

use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::containerd::Containerd;
use crate::lazy::Metrics;
use crate::process::{display_command, pid_alive, tail};
use crate::sochi::sochi_bin;

/// How long the snapshotter may take to accept connections on its socket
/// (it mounts the layers it provided before a restart first).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long it may take to exit after SIGINT (it unmounts its layers).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How the snapshotter is configured.
#[derive(Debug, Clone)]
pub struct SnapshotterOptions {
    /// Background fetch on (`[background_fetch] disable = false`).
    pub background_fetch: bool,
    /// `[background_fetch] idle_msec`.
    pub background_idle_msec: u64,
    /// More TOML appended to the generated config.
    pub extra_config: String,
    /// Global sochi flags (before `snapshotter`), e.g. registry flags.
    pub global_args: Vec<String>,
    /// `--log-level`.
    pub log_level: String,
}

impl Default for SnapshotterOptions {
    fn default() -> Self {
        SnapshotterOptions {
            background_fetch: true,
            background_idle_msec: 500,
            extra_config: String::new(),
            global_args: Vec::new(),
            log_level: "info".to_string(),
        }
    }
}

/// A running `sochi snapshotter` owned by one test. Keep it in the test
/// (thread) that started it: it also gets SIGKILL when that thread exits
/// (`setpriv --pdeathsig`).
#[derive(Debug)]
pub struct Snapshotter {
    child: Option<Child>,
    address: PathBuf,
    metrics_address: String,
    config: PathBuf,
    log: PathBuf,
    options: SnapshotterOptions,
    starts: u32,
    // Last: removed after the process is gone and its mounts are undone.
    dir: TempDir,
}

impl Snapshotter {
    /// The snapshotter `containerd`'s proxy plugin `sochi` talks to, with
    /// default options.
    #[track_caller]
    pub fn for_containerd(containerd: &Containerd) -> Snapshotter {
        Snapshotter::start(
            &containerd.snapshotter_address(),
            SnapshotterOptions::default(),
        )
    }

    /// Starts `sochi snapshotter` on `address` and waits until the socket
    /// accepts connections. Panics, with its log, when it does not.
    #[track_caller]
    pub fn start(address: &Path, options: SnapshotterOptions) -> Snapshotter {
        let dir = match tempfile::Builder::new()
            .prefix("sochi-e2e-snapshotter-")
            .tempdir()
        {
            Ok(dir) => dir,
            Err(err) => panic!("creating the snapshotter's temp dir: {err}"),
        };
        for sub in ["root", "docker-config"] {
            if let Err(err) = std::fs::create_dir(dir.path().join(sub)) {
                panic!("creating {}: {err}", dir.path().join(sub).display());
            }
        }
        let metrics_address = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("config.toml");
        let text = format!(
            "metrics_address = \"{metrics_address}\"\n\n\
             [background_fetch]\n\
             disable = {}\n\
             idle_msec = {}\n\n\
             {}\n",
            !options.background_fetch, options.background_idle_msec, options.extra_config
        );
        if let Err(err) = std::fs::write(&config, text) {
            panic!("writing {}: {err}", config.display());
        }
        let mut snapshotter = Snapshotter {
            child: None,
            address: address.to_path_buf(),
            metrics_address,
            log: dir.path().join("snapshotter.log"),
            config,
            options,
            starts: 0,
            dir,
        };
        snapshotter.spawn();
        snapshotter
    }

    /// Starts the process and waits until it accepts connections.
    #[track_caller]
    fn spawn(&mut self) {
        self.starts += 1;
        let mut log = match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
        {
            Ok(file) => file,
            Err(err) => panic!("opening {}: {err}", self.log.display()),
        };
        {
            use std::io::Write as _;
            let _ = writeln!(log, "=== sochi-e2e: start #{} ===", self.starts);
        }
        let log_err = match log.try_clone() {
            Ok(file) => file,
            Err(err) => panic!("cloning the log file handle: {err}"),
        };
        let mut cmd = self.command();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(err) => panic!("starting {}: {err}", display_command(&cmd)),
        };
        self.child = Some(child);
        self.wait_ready(&cmd);
    }

    /// `setpriv --pdeathsig KILL -- sochi --root ROOT … snapshotter
    /// --address SOCKET --config CONFIG`.
    fn command(&self) -> Command {
        let mut cmd = crate::process::dying_with_parent(sochi_bin());
        cmd.arg("--root")
            .arg(self.root())
            .arg("--log-level")
            .arg(&self.options.log_level)
            .args(&self.options.global_args)
            .arg("snapshotter")
            .arg("--address")
            .arg(&self.address)
            .arg("--config")
            .arg(&self.config)
            .env_remove("SOCHI_ROOT")
            .env_remove("SOCHI_REGISTRY_USER")
            .env_remove("SOCHI_LOG")
            .env("DOCKER_CONFIG", self.dir.path().join("docker-config"));
        cmd
    }

    #[track_caller]
    fn wait_ready(&mut self, cmd: &Command) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    panic!(
                        "{} exited with {status} before accepting connections; its log:\n{}",
                        display_command(cmd),
                        tail(&self.log, 60)
                    );
                }
            }
            if UnixStream::connect(&self.address).is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not accept connections on {} in {START_TIMEOUT:?}; its log:\n{}",
                    display_command(cmd),
                    self.address.display(),
                    tail(&self.log, 60)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The socket it serves (containerd's `snapshotter_address()`).
    pub fn address(&self) -> &Path {
        &self.address
    }

    /// Its `--root`: snapshots, span caches, zTOCs.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// The config file it reads.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// `127.0.0.1:PORT` of its metrics (the same after a restart).
    pub fn metrics_address(&self) -> &str {
        &self.metrics_address
    }

    /// The PID of the running process, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process runs.
    pub fn is_running(&self) -> bool {
        self.pid().is_some_and(pid_alive)
    }

    /// Its log so far (every start, separated by `=== sochi-e2e: start #N`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// The metrics it serves now, parsed.
    #[track_caller]
    pub fn metrics(&self) -> Metrics {
        let url = format!("http://{}/metrics", self.metrics_address);
        let client = match reqwest::blocking::Client::builder().no_proxy().build() {
            Ok(client) => client,
            Err(err) => panic!("building an HTTP client: {err}"),
        };
        let response = match client.get(&url).timeout(Duration::from_secs(10)).send() {
            Ok(response) => response,
            Err(err) => panic!(
                "GET {url}: {err:#}\nsnapshotter log:\n{}",
                self.log_tail(40)
            ),
        };
        let status = response.status();
        let text = match response.text() {
            Ok(text) => text,
            Err(err) => panic!("reading {url}: {err:#}"),
        };
        if !status.is_success() {
            panic!("GET {url}: {status}\n{text}");
        }
        Metrics::parse(&text)
    }

    /// `sochi_snapshotter_layers_total{outcome=OUTCOME}` (0 when missing).
    #[track_caller]
    pub fn layers_total(&self, outcome: &str) -> u64 {
        self.metrics()
            .value("sochi_snapshotter_layers_total", &[("outcome", outcome)])
            .map_or(0, |value| value as u64)
    }

    /// SIGKILL, and waits for the process: its FUSE mounts stay, dead.
    #[track_caller]
    pub fn kill9(&mut self) {
        let Some(mut child) = self.child.take() else {
            panic!("kill9: the snapshotter is not running");
        };
        let _ = child.kill();
        if let Err(err) = child.wait() {
            panic!("waiting for the killed snapshotter: {err}");
        }
    }

    /// SIGINT, and waits up to `timeout` for it to exit; `None` if it did
    /// not (it then still runs).
    pub fn interrupt(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        signal(child.id(), "INT");
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    return Some(status);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => return None,
            }
        }
    }

    /// Starts it again with the same root, socket, config and metrics port
    /// (after [`Snapshotter::kill9`] or [`Snapshotter::interrupt`]) and
    /// waits until it accepts connections.
    #[track_caller]
    pub fn restart(&mut self) {
        if self.is_running() {
            panic!("restart: the snapshotter still runs; kill9() or interrupt() it first");
        }
        self.child = None;
        self.spawn();
    }

    /// Mount points under its root (FUSE layers), deepest first.
    pub fn mounts(&self) -> Vec<PathBuf> {
        mounts_under(&self.root())
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "sochi snapshotter ({}): log tail:\n{}",
                self.address.display(),
                self.log_tail(80)
            );
        }
        if self.child.is_some() && self.interrupt(STOP_TIMEOUT).is_none() {
            if let Some(mut child) = self.child.take() {
                eprintln!(
                    "sochi snapshotter {} ignored SIGINT for {STOP_TIMEOUT:?}: SIGKILL",
                    child.id()
                );
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // The FUSE keeper first: while it holds the layers' connections
        // with no daemon serving them, anything touching those mounts
        // (`umount` does a statfs) waits for an answer.
        stop_keeper(&self.root());
        unmount_under(&self.root());
    }
}

/// The pid of the FUSE keeper of the snapshotter on `root`, if one runs.
pub fn keeper_pid(root: &Path) -> Option<u32> {
    let pid_file = root.join("fuse-keeper.sock.pid");
    let pid: u32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

/// SIGKILLs the FUSE keeper, and waits (bounded) until it is gone: the
/// connections it held end with it.
fn stop_keeper(root: &Path) {
    let Some(pid) = keeper_pid(root) else {
        return;
    };
    signal(pid, "KILL");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    // Gone, or a zombie whose parent (the stopped snapshotter) is gone too.
    let running = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit(") ")
                .next()
                .is_some_and(|rest| !rest.starts_with('Z'))
        })
    };
    while running(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `ctr snapshots --snapshotter S view --mounts KEY PARENT` mounted
/// read-only on a temp dir. Dropped first (declare it last): unmounts,
/// then removes the view.
#[derive(Debug)]
pub struct SnapshotView<'a> {
    containerd: &'a Containerd,
    snapshotter: String,
    key: String,
    mounts: serde_json::Value,
    target: PathBuf,
    mounted: bool,
    // Last: removed once nothing is mounted in it.
    _dir: TempDir,
}

impl<'a> SnapshotView<'a> {
    /// A view of committed snapshot `parent` (a chain ID) of `snapshotter`,
    /// mounted read-only.
    #[track_caller]
    pub fn new(containerd: &'a Containerd, snapshotter: &str, parent: &str) -> SnapshotView<'a> {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = format!("sochi-e2e-view-{}-{n}", std::process::id());
        let dir = match tempfile::Builder::new().prefix("sochi-e2e-view-").tempdir() {
            Ok(dir) => dir,
            Err(err) => panic!("creating a view dir: {err}"),
        };
        let target = dir.path().join("rootfs");
        if let Err(err) = std::fs::create_dir(&target) {
            panic!("creating {}: {err}", target.display());
        }
        let out = containerd.ctr([
            "snapshots",
            "--snapshotter",
            snapshotter,
            "view",
            "--mounts",
            &key,
            parent,
        ]);
        let mounts: serde_json::Value = match serde_json::from_str(&out) {
            Ok(mounts) => mounts,
            Err(err) => panic!("ctr snapshots view --mounts printed no JSON ({err}):\n{out}"),
        };
        let mut view = SnapshotView {
            containerd,
            snapshotter: snapshotter.to_string(),
            key,
            mounts,
            target,
            mounted: false,
            _dir: dir,
        };
        view.mount();
        view
    }

    #[track_caller]
    fn mount(&mut self) {
        let Some(list) = self.mounts.as_array() else {
            panic!("mounts are not a list: {}", self.mounts);
        };
        let [one] = list.as_slice() else {
            panic!("expected one mount, got {}", self.mounts);
        };
        let field = |name: &str| {
            one.as_object().and_then(|object| {
                object
                    .iter()
                    .find(|(key, _)| key.eq_ignore_ascii_case(name))
                    .map(|(_, value)| value.clone())
            })
        };
        let kind = field("type")
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let source = field("source")
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let mut options: Vec<String> = field("options")
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|o| o.as_str().map(str::to_string))
            .filter(|o| o != "rw")
            .collect();
        if !options.iter().any(|o| o == "ro") {
            options.push("ro".to_string());
        }
        let mut cmd = Command::new("mount");
        cmd.arg("-t")
            .arg(&kind)
            .arg("-o")
            .arg(options.join(","))
            .arg(&source)
            .arg(&self.target);
        let output = match cmd.output() {
            Ok(output) => output,
            Err(err) => panic!("cannot run {}: {err}", display_command(&cmd)),
        };
        if !output.status.success() {
            panic!(
                "{} failed: {}{}",
                display_command(&cmd),
                String::from_utf8_lossy(&output.stderr),
                String::from_utf8_lossy(&output.stdout)
            );
        }
        self.mounted = true;
    }

    /// Where the view is mounted.
    pub fn path(&self) -> &Path {
        &self.target
    }

    /// The view's key in containerd.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The mounts containerd gave for it (JSON as `ctr` printed them).
    pub fn mounts(&self) -> &serde_json::Value {
        &self.mounts
    }
}

impl Drop for SnapshotView<'_> {
    fn drop(&mut self) {
        if self.mounted {
            unmount_under(&self.target);
        }
        let _ = self.containerd.ctr_output([
            "snapshots",
            "--snapshotter",
            &self.snapshotter,
            "rm",
            &self.key,
        ]);
    }
}

/// A TCP port free on 127.0.0.1 now.
#[track_caller]
fn free_port() -> u16 {
    let listener = match TcpListener::bind(("127.0.0.1", 0)) {
        Ok(listener) => listener,
        Err(err) => panic!("binding 127.0.0.1:0: {err}"),
    };
    match listener.local_addr() {
        Ok(addr) => addr.port(),
        Err(err) => panic!("local_addr: {err}"),
    }
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mut points = crate::lazy::mounts_under(dir);
    points.sort_unstable_by_key(|point| std::cmp::Reverse(point.as_os_str().len()));
    points.dedup();
    points
}

/// Unmounts, deepest first, every mount point at or below `dir`; lazily
/// when it is busy (or a dead FUSE mount).
fn unmount_under(dir: &Path) {
    // A path may be mounted more than once; a few rounds take all.
    for _ in 0..4 {
        let points = mounts_under(dir);
        if points.is_empty() {
            return;
        }
        for point in points {
            crate::mounts::unmount(&point);
        }
    }
}
