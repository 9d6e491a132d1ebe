//! A long-running child process inside a namespace (the agent, typically) with its output
//! in a log file: start it, wait for a line in the log, stop it with SIGTERM or SIGKILL.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Child, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::Netns;

pub struct LoggedProcess {
    child: Option<Child>,
    log: PathBuf,
    /// Length of the log when `wait_for` last returned: lines before it do not count again.
    seen: usize,
}

impl LoggedProcess {
    /// Starts `program args` inside `ns` with `env`, stdout discarded, stderr appended to `log`.
    pub fn spawn<S: AsRef<OsStr>>(
        ns: &Netns,
        program: &Path,
        args: &[S],
        env: &[(&str, &str)],
        log: &Path,
    ) -> Result<Self> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let seen = usize::try_from(log_file.metadata()?.len()).unwrap_or(0);
        let mut cmd = ns.command(program);
        cmd.args(args).stdout(Stdio::null()).stderr(log_file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Self {
            child: Some(child),
            log: log.to_path_buf(),
            seen,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The whole log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails if the process has exited, with its status and log.
    pub fn check_running(&mut self) -> Result<()> {
        let child = self.child.as_mut().context("the process was stopped")?;
        if let Some(status) = child.try_wait()? {
            bail!(
                "{} exited with {status}:\n{}",
                self.log.display(),
                self.log_text()
            );
        }
        Ok(())
    }

    /// Waits until a log line written since the last call contains `needle`; returns it.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let started = Instant::now();
        loop {
            let text = self.log_text();
            let fresh = text.get(self.seen..).unwrap_or("");
            if let Some(line) = fresh.lines().find(|l| l.contains(needle)) {
                let end = fresh
                    .find(line)
                    .map_or(text.len(), |at| self.seen + at + line.len());
                self.seen = end;
                return Ok(line.to_owned());
            }
            self.check_running()?;
            if started.elapsed() > timeout {
                bail!(
                    "no {needle:?} in {} after {timeout:?}:\n{text}",
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM, then waits up to `timeout` for the exit status (SIGKILL after that).
    pub fn terminate(mut self, timeout: Duration) -> Result<ExitStatus> {
        let mut child = self.child.take().context("the process was stopped")?;
        let pid = i32::try_from(child.id()).context("pid out of range")?;
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if started.elapsed() > timeout {
                let _ = child.kill();
                bail!(
                    "{} did not stop within {timeout:?} of SIGTERM",
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL (`kill -9`: no chance to clean up), then waits for the exit status.
    pub fn kill(mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().context("the process was stopped")?;
        child.kill().context("sending SIGKILL")?;
        child.wait().context("waiting for the killed process")
    }
}

impl Drop for LoggedProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The CPU time of process `pid` and of its waited-for children (user and system, seconds),
/// from `/proc/PID/stat`; `None` for a process that is gone.
pub fn cpu_seconds(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at ") ": utime, stime,
    // cutime, cstime are the 14th to 17th fields of the line.
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let ticks = |at: usize| fields.get(at)?.parse::<f64>().ok();
    // SAFETY: sysconf has no preconditions.
    let per_second = f64::from(u32::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?);
    Some((
        (ticks(11)? + ticks(12)?) / per_second,
        (ticks(13)? + ticks(14)?) / per_second,
    ))
}
