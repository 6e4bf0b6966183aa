//! Processes and paths the harness shares: the workspace root, a command's
//! printable form, running a command with its context printed on failure,
//! and whether a PID is still alive.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest_dir.to_path_buf())
}

/// Cargo's target directory: `CARGO_TARGET_DIR` when set, else
/// `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// True when the process exists and is not a zombie. A guard that waited on
/// its child leaves no zombie, so after its drop this is false.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may hold
        // spaces and parentheses itself.
        Ok(stat) => match stat.rfind(')') {
            Some(end) => !matches!(stat[end + 1..].trim_start().chars().next(), Some('Z' | 'X')),
            None => true,
        },
        Err(_) => false,
    }
}

/// `program arg…` with arguments quoted where a shell would need it.
pub fn display_command(cmd: &Command) -> String {
    let mut out = String::new();
    for env in cmd.get_envs() {
        if let (key, Some(value)) = env {
            let _ = write!(
                out,
                "{}={} ",
                key.to_string_lossy(),
                shell_quote(&value.to_string_lossy())
            );
        }
    }
    out.push_str(&shell_quote(&cmd.get_program().to_string_lossy()));
    for arg in cmd.get_args() {
        out.push(' ');
        out.push_str(&shell_quote(&arg.to_string_lossy()));
    }
    out
}

fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The context a failed command prints: the command, its working
/// directory, exit status, stdout and stderr.
pub fn describe_output(cmd: &Command, output: &Output) -> String {
    let cwd = cmd
        .get_current_dir()
        .map(Path::to_path_buf)
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_default();
    format!(
        "\n\ncommand: {}\ncwd: {}\nstatus: {}\n\nstdout:\n{}\nstderr:\n{}\n",
        display_command(cmd),
        cwd.display(),
        output.status,
        indent(&String::from_utf8_lossy(&output.stdout)),
        indent(&String::from_utf8_lossy(&output.stderr)),
    )
}

fn indent(text: &str) -> String {
    if text.is_empty() {
        return "    (empty)\n".to_string();
    }
    let mut out = String::new();
    for line in text.lines() {
        out.push_str("    ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Runs `cmd` and panics with its context unless it exits with status 0.
/// A program that cannot be started is a failure too, never a skip.
#[track_caller]
pub fn run_ok(cmd: &mut Command) -> Output {
    let output = match cmd.output() {
        Ok(output) => output,
        Err(err) => panic!(
            "cannot run {}: {err} (missing? run scripts/e2e-deps.sh)",
            display_command(cmd)
        ),
    };
    if !output.status.success() {
        panic!("command failed{}", describe_output(cmd, &output));
    }
    output
}

/// The last `max_lines` lines of a file, for failure messages.
pub fn tail(path: &Path, max_lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(max_lines);
            lines[start..].join("\n")
        }
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}

/// A command running `bin` that the kernel kills when the thread that
/// started it dies (`setpriv --pdeathsig KILL`, when util-linux's setpriv
/// is there): a test binary killed before its destructors run leaves no
/// service behind.
pub fn dying_with_parent(bin: &Path) -> Command {
    let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .map(Path::new)
        .find(|path| path.is_file());
    match setpriv {
        Some(setpriv) => {
            let mut cmd = Command::new(setpriv);
            cmd.args(["--pdeathsig", "KILL", "--"]).arg(bin);
            cmd
        }
        None => Command::new(bin),
    }
}

/// The resident set of process `pid` in bytes (0 once it is gone).
pub fn rss(pid: u32) -> u64 {
    status_bytes(pid, "VmRSS:")
}

/// Resident anonymous memory of `pid`: the heap, stacks and buffers, not
/// the program's code paged in on first use (file-backed, shared, and most
/// of what a debug build's RSS grows by as new code paths run).
pub fn rss_anon(pid: u32) -> u64 {
    status_bytes(pid, "RssAnon:")
}

/// A `kB` field of `/proc/<pid>/status`, in bytes (0 if gone).
fn status_bytes(pid: u32, field: &str) -> u64 {
    if pid == 0 {
        return 0;
    }
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib << 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_leaves_plain_words_alone() {
        let mut cmd = Command::new("sochi");
        cmd.args(["--root", "/tmp/x y", "it's"]);
        assert_eq!(display_command(&cmd), r"sochi --root '/tmp/x y' 'it'\''s'");
    }

    #[test]
    fn own_pid_is_alive_and_a_missing_one_is_not() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(u32::MAX));
    }
}
