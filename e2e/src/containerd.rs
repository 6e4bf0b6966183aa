//! `Containerd`: a private containerd (Debian's 1.6) per test, with its
//! root, state and sockets in a `TempDir` and the config of
//! `scripts/containerd.sh` (proxy snapshotter `sochi` at `DIR/sochi.sock`;
//! CRI off, or on with [`ContainerdOptions::cri`]). On drop (also while
//! unwinding from a panic) it removes the tasks left running, kills this
//! containerd's shims and containerd itself, waits, and unmounts whatever
//! is still mounted under its dir before the dir goes.
//! [`Containerd::restart`] stops containerd alone (its shims and their
//! containers keep running, as on a node) and starts it again on the same
//! root and state.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::cri::Cri;
use crate::process::{describe_output, display_command, pid_alive, run_ok, tail, workspace_root};

/// Where containerd and ctr are unless `SOCHI_CONTAINERD_BIN` /
/// `SOCHI_CTR_BIN` say otherwise (Debian's `containerd` package).
const DEFAULT_CONTAINERD_BIN: &str = "/usr/bin/containerd";
const DEFAULT_CTR_BIN: &str = "/usr/bin/ctr";

/// How long containerd may take to answer `ctr version`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long containerd may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one `ctr` call may run before `timeout` ends it (a container
/// that never exits must not hang the test).
const CTR_TIMEOUT_SECS: u32 = 300;

/// How containerd is configured.
#[derive(Debug, Clone, Default)]
pub struct ContainerdOptions {
    /// The CRI plugin on, with these settings (`containerd.sh --cri`);
    /// `None`: off, as for `ctr` and `sochi pull`.
    pub cri: Option<CriOptions>,
}

impl ContainerdOptions {
    /// The CRI plugin on with `options`.
    pub fn cri(options: CriOptions) -> ContainerdOptions {
        ContainerdOptions { cri: Some(options) }
    }
}

/// The CRI plugin's settings (`scripts/containerd.sh config --cri`).
#[derive(Debug, Clone, Default)]
pub struct CriOptions {
    /// `sandbox_image`: the image of every pod's sandbox container
    /// (`--sandbox-image`); containerd's default when `None`.
    pub sandbox_image: Option<String>,
    /// `registry.config_path`: a dir of `<host:port>/hosts.toml`
    /// (`--registry-config-path`; [`crate::cri::RegistryHosts`] writes
    /// one). Keep it until containerd is dropped.
    pub registry_config_path: Option<PathBuf>,
}

/// A running containerd owned by one test. Keep it in the test (thread)
/// that started it: the process also gets SIGKILL when that thread exits
/// (`setpriv --pdeathsig`), so a killed test binary leaves no containerd.
#[derive(Debug)]
pub struct Containerd {
    child: Child,
    log: PathBuf,
    /// The CRI plugin is on.
    cri: bool,
    // Last: removed after the process is gone and its mounts are undone.
    dir: TempDir,
}

impl Containerd {
    /// Starts containerd (CRI off) and waits until `ctr version` answers.
    /// Panics, with containerd's log, when the binary is missing or it does
    /// not come up.
    #[track_caller]
    pub fn start() -> Containerd {
        Containerd::start_with(ContainerdOptions::default())
    }

    /// [`Containerd::start`] with `options`.
    #[track_caller]
    pub fn start_with(options: ContainerdOptions) -> Containerd {
        let bin = containerd_bin();
        if !bin.is_file() {
            panic!(
                "{} is missing: the e2e tests need a real containerd (run scripts/e2e-deps.sh)",
                bin.display()
            );
        }
        let dir = match tempfile::Builder::new()
            .prefix("sochi-e2e-containerd-")
            .tempdir()
        {
            Ok(dir) => dir,
            Err(err) => panic!("creating containerd's temp dir: {err}"),
        };
        // One config, written by the script that users run by hand too.
        let script = workspace_root().join("scripts/containerd.sh");
        let mut config_cmd = Command::new(&script);
        config_cmd.arg("config").arg(dir.path());
        if let Some(cri) = &options.cri {
            config_cmd.arg("--cri");
            if let Some(image) = &cri.sandbox_image {
                config_cmd.arg("--sandbox-image").arg(image);
            }
            if let Some(path) = &cri.registry_config_path {
                config_cmd.arg("--registry-config-path").arg(path);
            }
        }
        run_ok(&mut config_cmd);

        let log = dir.path().join("containerd.log");
        let child = spawn(&bin, &dir.path().join("config.toml"), &log);
        // From here on a panic drops `containerd`, which stops the child.
        let mut containerd = Containerd {
            child,
            log,
            cri: options.cri.is_some(),
            dir,
        };
        containerd.record_pid();
        containerd.wait_ready();
        containerd
    }

    #[track_caller]
    fn record_pid(&self) {
        if let Err(err) = std::fs::write(
            self.dir.path().join("containerd.pid"),
            format!("{}\n", self.pid()),
        ) {
            panic!("writing containerd.pid: {err}");
        }
    }

    /// Stops containerd alone with SIGTERM (SIGKILL after 30 s), as a node's
    /// service manager does, and starts it again with the same config, root
    /// and state; waits until it answers. Shims and the containers they run
    /// keep running meanwhile, and containerd takes them up again.
    #[track_caller]
    pub fn restart(&mut self) {
        let pid = self.pid();
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    eprintln!("containerd {pid} ignored SIGTERM for {STOP_TIMEOUT:?}: SIGKILL");
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
            }
        }
        self.child = spawn(&containerd_bin(), &self.config(), &self.log);
        self.record_pid();
        self.wait_ready();
    }

    #[track_caller]
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "containerd exited with {status} before answering; its log:\n{}",
                    tail(&self.log, 40)
                );
            }
            if self.address().exists() {
                let output = self.ctr_output(["version"]);
                if output.status.success() {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "containerd did not answer on {} in {START_TIMEOUT:?}; its log:\n{}",
                    self.address().display(),
                    tail(&self.log, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// containerd's gRPC socket (`sochi pull --address`, `ctr -a`).
    pub fn address(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// Where the proxy snapshotter `sochi` must listen
    /// (`sochi snapshotter --address`).
    pub fn snapshotter_address(&self) -> PathBuf {
        self.dir.path().join("sochi.sock")
    }

    /// The dir holding config, root, state, sockets and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// containerd's `root` (content store, snapshotters' data).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// containerd's `state` (tasks' bundles: a running container's root
    /// filesystem is mounted at
    /// `state/io.containerd.runtime.v2.task/<namespace>/<id>/rootfs`).
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Where the task of container `id` in `namespace` has its root
    /// filesystem mounted while it runs (containerd's runc shim mounts it
    /// there, in the host's mount namespace).
    pub fn task_rootfs(&self, namespace: &str, id: &str) -> PathBuf {
        self.state()
            .join("io.containerd.runtime.v2.task")
            .join(namespace)
            .join(id)
            .join("rootfs")
    }

    /// The config file containerd reads.
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// A CRI client on containerd's socket (which serves CRI when it was
    /// started with [`ContainerdOptions::cri`]); failures name containerd's
    /// log. Panics when CRI is off or the socket does not answer.
    #[track_caller]
    pub fn cri(&self) -> Cri {
        if !self.cri {
            panic!("this containerd runs without CRI: start it with ContainerdOptions::cri");
        }
        Cri::connect(&self.address(), Some(self.log.clone()))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the containerd process runs.
    pub fn is_running(&self) -> bool {
        pid_alive(self.pid())
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The command `timeout … ctr -a SOCKET ARGS…`, ready to run.
    pub fn ctr_command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("timeout");
        cmd.args(["--kill-after=10", &CTR_TIMEOUT_SECS.to_string()])
            .arg(ctr_bin())
            .arg("-a")
            .arg(self.address())
            .args(args)
            // Hermetic: ctr reads these too.
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .env_remove("CONTAINERD_SNAPSHOTTER")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `ctr -a SOCKET ARGS…` and returns its output whatever the
    /// exit status.
    #[track_caller]
    pub fn ctr_output<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.ctr_command(args);
        match cmd.output() {
            Ok(output) => output,
            Err(err) => panic!("cannot run {}: {err}", display_command(&cmd)),
        }
    }

    /// Runs `ctr -a SOCKET ARGS…`; panics with the command, its output and
    /// containerd's log unless it exits with 0. Returns stdout.
    #[track_caller]
    pub fn ctr<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.ctr_command(args);
        let output = match cmd.output() {
            Ok(output) => output,
            Err(err) => panic!("cannot run {}: {err}", display_command(&cmd)),
        };
        if !output.status.success() {
            panic!(
                "ctr failed{}containerd log:\n{}",
                describe_output(&cmd, &output),
                tail(&self.log, 40)
            );
        }
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `ctr run --rm --snapshotter SNAPSHOTTER IMAGE ID ARGS…`: a container
    /// run to its end; its stdout.
    #[track_caller]
    pub fn run_container(&self, snapshotter: &str, image: &str, id: &str, args: &[&str]) -> String {
        let mut command = vec!["run", "--rm", "--snapshotter", snapshotter, image, id];
        command.extend_from_slice(args);
        self.ctr(command)
    }

    /// `ctr run -d --snapshotter SNAPSHOTTER IMAGE ID /bin/sleep …`: a
    /// container that runs until it is killed (or this containerd is
    /// dropped, which deletes every task).
    #[track_caller]
    pub fn run_detached(&self, snapshotter: &str, image: &str, id: &str) {
        self.ctr([
            "run",
            "-d",
            "--snapshotter",
            snapshotter,
            image,
            id,
            "/bin/sleep",
            "2147483647",
        ]);
    }

    /// `sochi pull --json IMAGE` into this containerd through
    /// `snapshotter`: the pull report.
    #[track_caller]
    pub fn sochi_pull(
        &self,
        sochi: &crate::Sochi,
        snapshotter: &str,
        image: &str,
    ) -> serde_json::Value {
        let address = self.address();
        let Some(address) = address.to_str() else {
            panic!("containerd socket {} is not UTF-8", address.display());
        };
        sochi
            .run([
                "pull",
                "--address",
                address,
                "--snapshotter",
                snapshotter,
                "--json",
                image,
            ])
            .json()
    }

    /// Best effort: force-deletes every task (and so its container
    /// processes) in every namespace, so no shim or mount outlives the
    /// test.
    fn remove_tasks(&self) {
        let namespaces = self.ctr_output(["namespaces", "ls", "-q"]);
        for namespace in String::from_utf8_lossy(&namespaces.stdout).split_whitespace() {
            let tasks = self.ctr_output(["-n", namespace, "tasks", "ls", "-q"]);
            for task in String::from_utf8_lossy(&tasks.stdout).split_whitespace() {
                let _ = self.ctr_output(["-n", namespace, "tasks", "delete", "--force", task]);
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.is_running() {
            self.remove_tasks();
        }
        for shim in shims_of(&self.address()) {
            kill(shim);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        unmount_under(self.dir.path());
    }
}

fn containerd_bin() -> PathBuf {
    std::env::var_os("SOCHI_CONTAINERD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTAINERD_BIN))
}

fn ctr_bin() -> PathBuf {
    std::env::var_os("SOCHI_CTR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CTR_BIN))
}

/// `containerd --config CONFIG`, under `setpriv --pdeathsig KILL` when
/// util-linux's setpriv is there.
fn containerd_command(bin: &Path, config: &Path) -> Command {
    let mut cmd = crate::process::dying_with_parent(bin);
    cmd.arg("--config").arg(config);
    cmd
}

/// Starts `containerd --config CONFIG`, appending its output to `log`.
#[track_caller]
fn spawn(bin: &Path, config: &Path, log: &Path) -> Child {
    let log_file = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        Ok(file) => file,
        Err(err) => panic!("opening {}: {err}", log.display()),
    };
    let log_err = match log_file.try_clone() {
        Ok(file) => file,
        Err(err) => panic!("cloning the log file handle: {err}"),
    };
    let mut cmd = containerd_command(bin, config);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(log_file))
        .stderr(Stdio::from(log_err));
    match cmd.spawn() {
        Ok(child) => child,
        Err(err) => panic!("starting {}: {err}", display_command(&cmd)),
    }
}

/// PIDs of the shims serving the containerd at `address`: processes
/// whose program is a `containerd-shim*` and whose arguments hold
/// `-address ADDRESS`.
fn shims_of(address: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let address = address.as_os_str().as_encoded_bytes();
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            let is_shim = args.first().is_some_and(|program| {
                program
                    .rsplit(|&b| b == b'/')
                    .next()
                    .is_some_and(|name| name.starts_with(b"containerd-shim"))
            });
            is_shim
                && args
                    .windows(2)
                    .any(|pair| pair[0] == b"-address" && pair[1] == address)
        })
        .collect()
}

fn kill(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Unmounts, deepest first, every mount point under `dir` (lazily if it
/// is busy).
fn unmount_under(dir: &Path) {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = format!("{}/", dir.display());
    let mut points: Vec<&str> = table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| point.starts_with(&prefix))
        .collect();
    points.sort_unstable_by_key(|point| std::cmp::Reverse(point.len()));
    for point in points {
        crate::mounts::unmount(Path::new(point));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_shims_serve_a_socket_nobody_uses() {
        assert!(shims_of(Path::new("/nonexistent/containerd.sock")).is_empty());
    }
}
