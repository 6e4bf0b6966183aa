//! `Sochi`: runs the built `sochi` binary with a private `--root` and
//! `DOCKER_CONFIG`, capturing its output, and on an unexpected exit status
//! panics with the command, working directory, stdout and stderr (like
//! ripgrep's `assert_exit_code`).

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;
use std::time::SystemTime;

use base64::Engine as _;
use tempfile::TempDir;

use crate::process::{describe_output, display_command, run_ok, target_dir, workspace_root};
use crate::registry::Registry;

/// One `sochi` setup owned by a test: the binary, a private store
/// (`--root`), a private `DOCKER_CONFIG`, global flags and environment.
#[derive(Debug)]
pub struct Sochi {
    bin: PathBuf,
    root: TempDir,
    docker_config: TempDir,
    global_args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
}

/// What one `sochi` run printed.
#[derive(Debug, Clone)]
pub struct SochiOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// The command line, for messages.
    pub command: String,
}

impl SochiOutput {
    /// The exit code (`None` when killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// stdout as one JSON value.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        match serde_json::from_str(&self.stdout) {
            Ok(value) => value,
            Err(err) => panic!(
                "stdout of {} is not JSON: {err}\nstdout:\n{}",
                self.command, self.stdout
            ),
        }
    }

    /// stdout as one JSON value per non-empty line.
    #[track_caller]
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| match serde_json::from_str(line) {
                Ok(value) => value,
                Err(err) => panic!(
                    "a stdout line of {} is not JSON: {err}\nline: {line}",
                    self.command
                ),
            })
            .collect()
    }
}

impl Sochi {
    /// `sochi` with a new empty store and docker config.
    #[track_caller]
    pub fn new() -> Sochi {
        Sochi {
            bin: sochi_bin().to_path_buf(),
            root: temp_dir("sochi-e2e-root-"),
            docker_config: temp_dir("sochi-e2e-docker-config-"),
            global_args: Vec::new(),
            envs: Vec::new(),
            cwd: None,
        }
    }

    /// `sochi` with the global flags for `registry`
    /// ([`Registry::sochi_args`]: `--plain-http` or `--ca-file`, `--user`).
    #[track_caller]
    pub fn for_registry(registry: &Registry) -> Sochi {
        Sochi::new().global_args(registry.sochi_args())
    }

    /// Adds global flags, passed before the subcommand of every run.
    pub fn global_args<I, S>(mut self, args: I) -> Sochi
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.global_args
            .extend(args.into_iter().map(|arg| arg.as_ref().to_os_string()));
        self
    }

    /// Sets an environment variable for every run.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Sochi {
        self.envs
            .push((key.as_ref().to_os_string(), value.as_ref().to_os_string()));
        self
    }

    /// Runs in `dir` (default: the test's working directory).
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Sochi {
        self.cwd = Some(dir.into());
        self
    }

    /// Runs `bin` instead of the built `sochi` (a copy under another name).
    pub fn with_bin(mut self, bin: impl Into<PathBuf>) -> Sochi {
        self.bin = bin.into();
        self
    }

    /// The binary it runs.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The store (`--root`).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The `DOCKER_CONFIG` directory (holds `config.json` after `login`).
    pub fn docker_config(&self) -> &Path {
        self.docker_config.path()
    }

    /// Writes `registry`'s credentials into `DOCKER_CONFIG/config.json`
    /// (`auths.<addr>.auth`), as `docker login` would; adds to what is
    /// there.
    #[track_caller]
    pub fn login(&self, registry: &Registry) {
        let Some(creds) = registry.credentials() else {
            panic!("login: the registry at {} has no auth", registry.addr());
        };
        self.login_as(&registry.addr(), &creds.user, &creds.password);
    }

    /// Writes credentials for `host` (e.g. a proxy's address) into
    /// `DOCKER_CONFIG/config.json`.
    #[track_caller]
    pub fn login_as(&self, host: &str, user: &str, password: &str) {
        let path = self.docker_config().join("config.json");
        let mut config = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .filter(serde_json::Value::is_object)
            .unwrap_or_else(|| serde_json::json!({}));
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        if let Some(object) = config.as_object_mut() {
            let auths = object
                .entry("auths")
                .or_insert_with(|| serde_json::json!({}));
            if let Some(auths) = auths.as_object_mut() {
                auths.insert(host.to_string(), serde_json::json!({ "auth": auth }));
            }
        }
        let text = serde_json::to_string_pretty(&config).unwrap_or_default();
        if let Err(err) = std::fs::write(&path, text) {
            panic!("writing {}: {err}", path.display());
        }
    }

    /// The command `sochi --root ROOT GLOBAL_ARGS… ARGS…` with
    /// `DOCKER_CONFIG` set, ready to run.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--root").arg(self.root.path());
        cmd.args(&self.global_args);
        cmd.args(args);
        // Hermetic: no store, credentials or registry flags from the
        // environment of whoever runs the tests.
        cmd.env_remove("SOCHI_ROOT");
        cmd.env_remove("SOCHI_REGISTRY_USER");
        cmd.env("DOCKER_CONFIG", self.docker_config.path());
        for (key, value) in &self.envs {
            cmd.env(key, value);
        }
        if let Some(cwd) = &self.cwd {
            cmd.current_dir(cwd);
        }
        cmd
    }

    /// Runs and returns the output whatever the exit status.
    #[track_caller]
    pub fn output<I, S>(&self, args: I) -> SochiOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(args);
        match cmd.output() {
            Ok(output) => SochiOutput {
                status: output.status,
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
                command: display_command(&cmd),
            },
            Err(err) => panic!("cannot run {}: {err}", display_command(&cmd)),
        }
    }

    /// Runs and panics with the context unless the exit status is 0.
    #[track_caller]
    pub fn run<I, S>(&self, args: I) -> SochiOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run_code(args, 0)
    }

    /// Runs and panics with the context unless it fails (non-zero exit).
    #[track_caller]
    pub fn run_fail<I, S>(&self, args: I) -> SochiOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(args);
        let (output, sochi_output) = self.exec(&mut cmd);
        if output.status.success() || output.status.code().is_none() {
            panic!(
                "expected sochi to fail, it exited with {}{}",
                output.status,
                self.context(&cmd, &output)
            );
        }
        sochi_output
    }

    /// Runs and panics with the context unless the exit code is `code`.
    #[track_caller]
    pub fn run_code<I, S>(&self, args: I, code: i32) -> SochiOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(args);
        let (output, sochi_output) = self.exec(&mut cmd);
        if output.status.code() != Some(code) {
            panic!(
                "expected exit code {code}, got {}{}",
                output.status,
                self.context(&cmd, &output)
            );
        }
        sochi_output
    }

    #[track_caller]
    fn exec(&self, cmd: &mut Command) -> (std::process::Output, SochiOutput) {
        let output = match cmd.output() {
            Ok(output) => output,
            Err(err) => panic!("cannot run {}: {err}", display_command(cmd)),
        };
        let sochi_output = SochiOutput {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            command: display_command(cmd),
        };
        (output, sochi_output)
    }

    fn context(&self, cmd: &Command, output: &std::process::Output) -> String {
        let mut listing = String::new();
        for entry in walk(self.root.path(), 3) {
            listing.push_str("    ");
            listing.push_str(&entry);
            listing.push('\n');
        }
        format!(
            "{}root ({}):\n{}",
            describe_output(cmd, output),
            self.root.path().display(),
            if listing.is_empty() {
                "    (empty)\n".to_string()
            } else {
                listing
            }
        )
    }
}

impl Default for Sochi {
    fn default() -> Sochi {
        Sochi::new()
    }
}

/// The `sochi` binary: `SOCHI_BIN` (relative paths from the workspace
/// root), else the newer of `target/release/sochi` and `target/debug/sochi`,
/// else one built now with `cargo build --bin sochi` (cargo does not hold
/// its build lock while tests run). A binary found in `target/` is used as
/// it is, even if older than the sources: set `SOCHI_BIN` (as
/// `scripts/test.sh` does) or build first.
pub fn sochi_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(find_or_build_sochi)
}

#[track_caller]
fn find_or_build_sochi() -> PathBuf {
    if let Some(bin) = std::env::var_os("SOCHI_BIN").filter(|bin| !bin.is_empty()) {
        let bin = PathBuf::from(bin);
        let bin = if bin.is_absolute() {
            bin
        } else {
            workspace_root().join(bin)
        };
        if !bin.is_file() {
            panic!("SOCHI_BIN={} does not exist", bin.display());
        }
        return bin;
    }
    let target = target_dir();
    let newest = ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join("sochi"))
        .filter_map(|bin| {
            let modified = std::fs::metadata(&bin).and_then(|m| m.modified()).ok()?;
            Some((modified, bin))
        })
        .max_by_key(|(modified, _): &(SystemTime, PathBuf)| *modified);
    if let Some((_, bin)) = newest {
        return bin;
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    eprintln!(
        "sochi-e2e: no sochi binary in {}; building it",
        target.display()
    );
    run_ok(
        Command::new(cargo)
            .current_dir(workspace_root())
            .args(["build", "--bin", "sochi", "--target-dir"])
            .arg(&target),
    );
    target.join("debug").join("sochi")
}

#[track_caller]
fn temp_dir(prefix: &str) -> TempDir {
    match tempfile::Builder::new().prefix(prefix).tempdir() {
        Ok(dir) => dir,
        Err(err) => panic!("creating a temp dir: {err}"),
    }
}

/// Relative paths under `dir`, `depth` levels deep, sorted; for failure
/// messages.
fn walk(dir: &Path, depth: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0)];
    while let Some((path, level)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            let child = entry.path();
            let rel = child
                .strip_prefix(dir)
                .unwrap_or(&child)
                .display()
                .to_string();
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            out.push(if is_dir { format!("{rel}/") } else { rel });
            if is_dir && level + 1 < depth {
                stack.push((child, level + 1));
            }
        }
    }
    out.sort();
    out
}
