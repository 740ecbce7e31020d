//! Long-running processes inside a namespace, killed on Drop.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::netns::Netns;

/// A process started with `ip netns exec` (which execs it, so the child's
/// PID is the program's own), its stdout and stderr going to `log`.
#[derive(Debug)]
pub struct Daemon {
    label: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// Starts `program args…` in `ns`, with `env` added to the environment.
    pub fn spawn(
        ns: &Netns,
        label: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log: PathBuf,
    ) -> Result<Daemon> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening log {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = ns.command(&program.to_string_lossy());
        cmd.args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {label}: {}", program.display()))?;
        Ok(Daemon {
            label: label.to_owned(),
            child: Some(child),
            log,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails (with the log) if the process has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} was stopped", self.label);
        };
        if let Some(status) = child.try_wait()? {
            bail!(
                "{} exited early ({status}); its log:\n{}",
                self.label,
                tail(&self.log(), 60)
            );
        }
        Ok(())
    }

    /// Sends `signal` without waiting.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        let pid = self.pid().context("process already reaped")?;
        kill(Pid::from_raw(pid as i32), signal).context("kill")?;
        Ok(())
    }

    /// SIGKILL and reap: the crash the agent must survive.
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
