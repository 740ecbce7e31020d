//! The cloud's model in etcd: members in the cloud namespace on its
//! loopback, the servers started with `--etcd`, and model writes made with
//! `edgenet-server model push` (docs/store.md).

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};

use super::Cloud;
use crate::probe;
use crate::process::{tail, Daemon};

/// Client port of member `m` (peer port: one more).
fn client_port(member: usize) -> u16 {
    2379 + 10 * member as u16
}

impl Cloud {
    /// `--etcd`'s value: every member's client URL.
    pub fn etcd_urls(&self) -> String {
        let urls: Vec<String> = (0..self.options.etcd_members)
            .map(|m| format!("http://127.0.0.1:{}", client_port(m)))
            .collect();
        urls.join(",")
    }

    fn initial_cluster(&self) -> String {
        let members: Vec<String> = (0..self.options.etcd_members)
            .map(|m| format!("m{m}=http://127.0.0.1:{}", client_port(m) + 1))
            .collect();
        members.join(",")
    }

    /// Starts every member as a new cluster and waits for a leader.
    pub(super) fn start_etcd_cluster(&mut self) -> Result<()> {
        for member in 0..self.options.etcd_members {
            self.spawn_etcd(member, "new")?;
        }
        self.wait_etcd()
    }

    fn spawn_etcd(&mut self, member: usize, state: &str) -> Result<()> {
        let client = format!("http://127.0.0.1:{}", client_port(member));
        let peer = format!("http://127.0.0.1:{}", client_port(member) + 1);
        let data = self.dir().join(format!("etcd-m{member}"));
        let args: Vec<String> = [
            "--name",
            &format!("m{member}"),
            "--data-dir",
            &data.display().to_string(),
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &self.initial_cluster(),
            "--initial-cluster-state",
            state,
            "--log-level",
            "warn",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let log = self.dir().join(format!("etcd-m{member}.log"));
        let label = format!("etcd m{member}");
        let daemon = Daemon::spawn(
            &self.cloud,
            &label,
            Path::new("/usr/bin/etcd"),
            &args,
            &[],
            log,
        )?;
        self.etcd.insert(member, daemon);
        Ok(())
    }

    /// Waits until the cluster answers a read (which needs a leader):
    /// `model pull` succeeds, or says that nothing is committed yet.
    fn wait_etcd(&self) -> Result<()> {
        let urls = self.etcd_urls();
        let bin = self.server_bin.display().to_string();
        let up = probe::wait_until(Duration::from_secs(30), || {
            let args = ["model", "pull", "--etcd", urls.as_str()];
            self.cloud.exec_unchecked(&bin, &args).is_ok_and(|out| {
                out.status.success()
                    || String::from_utf8_lossy(&out.stderr).contains("nothing is committed")
            })
        });
        if !up {
            let logs: Vec<String> = self.etcd.values().map(|d| tail(&d.log(), 20)).collect();
            bail!("etcd did not come up:\n{}", logs.join("\n"));
        }
        Ok(())
    }

    /// SIGKILLs member `member` (its data stays).
    pub fn kill_etcd(&mut self, member: usize) {
        if let Some(mut daemon) = self.etcd.remove(&member) {
            daemon.kill_hard();
        }
    }

    /// Starts a killed member again on its data; waits for the cluster.
    pub fn restart_etcd(&mut self, member: usize) -> Result<()> {
        self.spawn_etcd(member, "existing")?;
        self.wait_etcd()
    }

    /// `edgenet-server model push` of the model file, from the cloud namespace.
    pub(super) fn push_model_file(&self) -> Result<()> {
        let bin = self.server_bin.display().to_string();
        let model = self.model_path().display().to_string();
        let urls = self.etcd_urls();
        let args = ["model", "push", "--etcd", urls.as_str(), model.as_str()];
        // While etcd has no quorum the push fails: retry, bounded.
        let mut last = String::new();
        for _ in 0..20 {
            let out = self.cloud.exec_unchecked(&bin, &args)?;
            if out.status.success() {
                return Ok(());
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            std::thread::sleep(Duration::from_millis(500));
        }
        bail!("model push failed: {last}")
    }
}

impl Cloud {
    /// Every node's current state id as the server on `port` gives it.
    pub fn current_ids_on(&self, port: u16) -> Result<Vec<(String, String)>> {
        let creds = edgenet_auth::Credentials::long_term(super::ADMIN_KEY_ID, super::ADMIN_SECRET);
        let params = [("Action", "DescribeNodeStatus"), ("Version", "2026-11-01")];
        let addr = super::sock(super::CLOUD_IP, port)?;
        let r = crate::http::signed_query(&self.cloud, addr, &params, &creds, super::REGION)?;
        if r.status != 200 {
            bail!("DescribeNodeStatus on :{port}: {} {}", r.status, r.body);
        }
        let status: serde_json::Value = serde_json::from_str(&r.body)?;
        let nodes = status["Nodes"].as_array().cloned().unwrap_or_default();
        Ok(nodes
            .iter()
            .map(|n| {
                let id = |k: &str| n[k].as_str().unwrap_or_default().to_owned();
                (id("NodeId"), id("CurrentStateId"))
            })
            .collect())
    }
}

impl Cloud {
    /// The `/healthz` status of the server on `port`.
    pub fn healthz_on(&self, port: u16) -> Result<u16> {
        let addr = super::sock(super::CLOUD_IP, port)?;
        let r = crate::http::get(&self.cloud, addr, "/healthz", &[], Duration::from_secs(2))?;
        Ok(r.status)
    }
}
