//! One external strategy's child process: spawned with an empty environment, in a process
//! group of its own, under rlimits, dying with the node; its stdout read a bounded line at a
//! time, its stderr copied (bounded) into the runner's logs; killed, group and all, when the
//! runner ends however it ends (drop included).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sys::signal::Signal;
use runfleet_shared::config::ExternalStrategySettings;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tracing::{info, warn};

/// Why reading a line failed.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// The child closed its stdout (it exited, most likely).
    #[error("the strategy closed its output (exited?)")]
    Closed,
    /// A line longer than `max_line_bytes`.
    #[error("the strategy wrote a line longer than {0} bytes")]
    TooLong(usize),
    /// Reading failed.
    #[error("reading the strategy's output failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A running child.
#[derive(Debug)]
pub struct StrategyProcess {
    child: Child,
    /// Its process group id (its own pid: it leads its group).
    pgid: Option<i32>,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    max_line: usize,
}

/// `command` as a path to an executable file: as given when it names a path, else found in the
/// node's `PATH` (the child's environment is empty, so it cannot be searched there).
pub fn resolve(command: &str) -> Result<PathBuf, String> {
    if command.contains('/') {
        let path = PathBuf::from(command);
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(format!("command {command:?} is not an executable file"))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(command))
        .find(|p| is_executable(p))
        .ok_or_else(|| format!("command {command:?} not found in PATH"))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl StrategyProcess {
    /// Starts the program of `settings` for runner `job`.
    pub fn spawn(settings: &ExternalStrategySettings, job: &str) -> Result<Self, String> {
        let program = resolve(&settings.command)?;
        let mut cmd = Command::new(&program);
        cmd.args(&settings.args)
            // Nothing of the node's environment (credentials keys, Redis URLs) reaches it.
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        if let Some(dir) = &settings.workdir {
            cmd.current_dir(dir);
        }
        if let Some(gid) = settings.gid {
            cmd.gid(gid);
        }
        if let Some(uid) = settings.uid {
            cmd.uid(uid);
        }
        let memory = settings.memory_limit_mb.saturating_mul(1024 * 1024);
        let cpu = settings.cpu_seconds;
        // SAFETY: the closure runs in the forked child before exec, where only
        // async-signal-safe calls are allowed: it makes four syscalls (setrlimit twice, prctl,
        // getppid) through nix's thin wrappers, allocates nothing on its success path, takes no
        // lock and touches no state of the parent.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(move || limit_child(memory, cpu));
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        let pgid = child.id().and_then(|id| i32::try_from(id).ok());
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err("the strategy's pipes were not set up".into());
        };
        tokio::spawn(copy_stderr(stderr, settings.stderr_bytes, job.to_owned()));
        info!(job, strategy = %settings.kind, pid = ?pgid, "external strategy started");
        Ok(Self {
            child,
            pgid,
            stdin,
            stdout: BufReader::new(stdout),
            max_line: settings.max_line_bytes,
        })
    }

    /// The child's pid (its process group's id), while it has one.
    pub fn pid(&self) -> Option<i32> {
        self.pgid
    }

    /// Writes one line (`line` has no newline of its own).
    pub async fn send(&mut self, line: &[u8]) -> std::io::Result<()> {
        self.stdin.write_all(line).await?;
        self.stdin.write_all(b"\n").await?;
        self.stdin.flush().await
    }

    /// Reads one line of at most `max_line_bytes`, without its newline. A longer line is an
    /// error as soon as the limit is passed: it is never buffered whole.
    pub async fn read_line(&mut self) -> Result<Vec<u8>, LineError> {
        let mut line = Vec::new();
        loop {
            let buf = self.stdout.fill_buf().await?;
            if buf.is_empty() {
                return Err(LineError::Closed);
            }
            let (take, done) = match buf.iter().position(|b| *b == b'\n') {
                Some(at) => (at, true),
                None => (buf.len(), false),
            };
            if line.len() + take > self.max_line {
                return Err(LineError::TooLong(self.max_line));
            }
            line.extend_from_slice(&buf[..take]);
            self.stdout.consume(take + usize::from(done));
            if done {
                return Ok(line);
            }
        }
    }

    /// How the child ended, if it has.
    pub fn exit_status(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(describe(status)),
            _ => None,
        }
    }

    /// Kills the whole process group (whatever the child started too) and reaps the child.
    pub async fn kill(&mut self) {
        self.kill_group();
        let _ = self.child.kill().await;
    }

    fn kill_group(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // The group outlives its leader when the leader forked: kill it whole. After the
            // leader is reaped its id may be reused, hence `take`: killed once, while ours.
            let _ = kill_process_group(pgid);
        }
    }
}

impl Drop for StrategyProcess {
    fn drop(&mut self) {
        // kill_on_drop kills the leader; the group goes too.
        self.kill_group();
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) if sig == Signal::SIGXCPU as i32 => {
            "killed by SIGXCPU (cpu_seconds used up)".into()
        }
        (None, Some(sig)) if sig == Signal::SIGKILL as i32 => "killed by SIGKILL".into(),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "ended".into(),
    }
}

/// Limits set in the child between fork and exec: address space, CPU time (SIGXCPU at the
/// soft limit, SIGKILL a second later should it be caught), and SIGKILL when the node's
/// thread that spawned it dies (a kill -9 of the node included; tokio's worker threads live as
/// long as the node's runtime). A parent already gone before the call fails the spawn. The
/// standard library runs this after it has switched to `uid`/`gid`: the kernel clears the
/// death signal on a change of credentials, so it must be set after, as it is.
fn limit_child(memory_bytes: u64, cpu_seconds: u64) -> std::io::Result<()> {
    use nix::sys::resource::{Resource, setrlimit};
    setrlimit(Resource::RLIMIT_AS, memory_bytes, memory_bytes)?;
    setrlimit(
        Resource::RLIMIT_CPU,
        cpu_seconds,
        cpu_seconds.saturating_add(1),
    )?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
    if nix::unistd::getppid() == nix::unistd::Pid::from_raw(1) {
        return Err(std::io::Error::other("the node is gone"));
    }
    Ok(())
}

fn kill_process_group(pgid: i32) -> nix::Result<()> {
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), Signal::SIGKILL)
}

/// Copies up to `budget` bytes of the child's stderr into the logs, a line at a time, with the
/// runner's job id; reads and drops the rest so the child never blocks on a full pipe.
async fn copy_stderr(stderr: tokio::process::ChildStderr, budget: usize, job: String) {
    let mut reader = BufReader::new(stderr);
    let mut left = budget;
    let mut chunk = vec![0_u8; 4096];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if left == 0 {
            continue;
        }
        let kept = n.min(left);
        left -= kept;
        pending.extend_from_slice(&chunk[..kept]);
        while let Some(at) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=at).collect();
            warn!(job = %job, line = %String::from_utf8_lossy(&line[..at]), "strategy stderr");
        }
        if left == 0 {
            if !pending.is_empty() {
                warn!(job = %job, line = %String::from_utf8_lossy(&pending), "strategy stderr");
                pending.clear();
            }
            warn!(job = %job, budget, "strategy stderr: limit reached, the rest is dropped");
        }
    }
    if !pending.is_empty() {
        warn!(job = %job, line = %String::from_utf8_lossy(&pending), "strategy stderr");
    }
}
