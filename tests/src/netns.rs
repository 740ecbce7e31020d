//! A named network namespace that is deleted on Drop, and commands in it.

use std::fs::File;
use std::process::{Command, Output};
use std::thread;

use anyhow::{bail, Context, Result};
use nix::sched::{setns, CloneFlags};

/// A named network namespace (`ip netns add`), deleted on Drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `<prefix><role>` with loopback up.
    pub fn create(prefix: &str, role: &str) -> Result<Netns> {
        let name = format!("{prefix}{role}");
        run_checked(Command::new("ip").args(["netns", "add", &name]))
            .with_context(|| format!("creating network namespace {name}"))?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program args…` inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `program args…` here; fails with its stderr when it fails.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut cmd = self.command(program);
        cmd.args(args);
        run_checked(&mut cmd).with_context(|| format!("in netns {}", self.name))
    }

    /// Runs `program args…` here and returns its output whatever its status.
    pub fn exec_unchecked(&self, program: &str, args: &[&str]) -> Result<Output> {
        let mut cmd = self.command(program);
        cmd.args(args);
        cmd.output()
            .with_context(|| format!("running {program} in netns {}", self.name))
    }

    /// `ip -n <ns> args…`: cheaper than `ip netns exec` (no mount namespace).
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", &self.name]).args(args);
        run_checked(&mut cmd).with_context(|| format!("in netns {}", self.name))
    }

    /// `nft args…` in this namespace.
    pub fn nft(&self, args: &[&str]) -> Result<String> {
        self.exec("nft", args)
    }

    /// Sets a sysctl inside this namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-q", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets created
    /// there stay in this namespace, whatever thread uses them afterwards.
    pub fn run_in<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        let path = format!("/run/netns/{}", self.name);
        let handle = thread::spawn(move || -> Result<T> {
            let ns = File::open(&path).with_context(|| format!("opening {path}"))?;
            setns(&ns, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns {path}"))?;
            f()
        });
        match handle.join() {
            Ok(result) => result,
            Err(_) => bail!("thread in netns {} panicked", self.name),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes we spawned here are killed by their own guards first;
        // deleting the namespace also removes every interface inside it.
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// Runs a command, returning stdout, or an error with its stderr.
pub fn run_checked(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("spawning {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} {:?} failed ({}): {}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
