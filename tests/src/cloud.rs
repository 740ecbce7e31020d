//! The tiny EDGE cloud of the end-to-end suite, in network namespaces:
//!
//! ```text
//!   cloud (edgenet-server :8773, metadata :8775)   internet (.200)
//!          \ eth0 .2                                /  eth0
//!           ------------- underlay bridge `ul` 192.168.100.0/24
//!          / eth0 .11                               \ eth0 .12
//!   nc-1: br0 (10.1.0.1 by edgenetd)        nc-2: br0 (10.2.0.1 by edgenetd)
//!     vn_i-web1  vn_i-lb1  vn_i-db1           vn_i-web2  vn_i-lb2  vn_i-db2
//!        |          |         |                  |          |         |
//!     instance netns, `eth0` with the model's MAC and private IP
//! ```
//! Addresses come from the model (`tests/fixtures/cloud.json`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use edgenet_auth::Credentials;
use serde_json::Value;

use crate::http::{self, Response};
use crate::kernel;
use crate::links;
use crate::model::{self, Instance};
use crate::names::test_prefix;
use crate::netns::Netns;
use crate::prereq;
use crate::probe::{self, Reply, Responder};
use crate::process::{tail, Daemon};

mod etcd;

pub const REGION: &str = "eucalyptus";
pub const ROLE_ARN: &str = "arn:aws:iam::000000000000:role/edgenet-node";
pub const ADMIN_ROLE_ARN: &str = "arn:aws:iam::000000000000:role/edgenet-admin";
pub const CLOUD_IP: &str = "192.168.100.2";
/// A second cloud address serving only as the STS endpoint, so a test can
/// cut STS off while the describe endpoint stays reachable.
pub const STS_IP: &str = "192.168.100.3";
pub const INTERNET_IP: &str = "192.168.100.200";
pub const SERVER_PORT: u16 = 8773;
/// Where the optional second server replica listens.
pub const REPLICA_PORT: u16 = 8774;
pub const METADATA_PORT: u16 = 8775;
/// Ports every instance answers on (greeting = its instance id).
pub const INSTANCE_PORTS: [u16; 6] = [22, 80, 2222, 5432, 7777, 9000];
pub const ADMIN_KEY_ID: &str = "AKIDADMINEXAMPLE01";
const ADMIN_SECRET: &str = "admin-secret-0000000000000000000000000000";

/// Node ids and their uplink addresses on the underlay.
pub const NODES: [(&str, &str); 2] = [("nc-1", "192.168.100.11"), ("nc-2", "192.168.100.12")];

/// Knobs a scenario may turn.
#[derive(Debug, Clone)]
pub struct CloudOptions {
    pub model: Value,
    /// `[credentials] duration_seconds` of the agents.
    pub sts_duration_seconds: u32,
    /// `wait_seconds` of the agents (the long-poll hold).
    pub wait_seconds: u32,
    /// `[dataplane] resync_seconds` of the agents.
    pub resync_seconds: u32,
    pub server_args: Vec<String>,
    pub start_agents: bool,
    /// Also run a second server (same model, keys and token key) on
    /// [`REPLICA_PORT`], listed second in the agents' endpoints.
    pub replica: bool,
    /// With N > 0: the model lives in an N-member etcd cluster in the cloud
    /// namespace, the servers run with `--etcd`, and `write_model` pushes.
    pub etcd_members: usize,
}

impl Default for CloudOptions {
    fn default() -> Self {
        CloudOptions {
            model: model::fixture().expect("tests/fixtures/cloud.json"),
            sts_duration_seconds: 900,
            wait_seconds: 20,
            resync_seconds: 5,
            server_args: Vec::new(),
            start_agents: true,
            replica: false,
            etcd_members: 0,
        }
    }
}

/// An instance: its namespace and what the model says about it.
#[derive(Debug)]
pub struct InstanceNs {
    pub ns: Netns,
    pub spec: Instance,
}

/// The whole topology. Fields drop in order: processes and responders
/// first, then namespaces, then the scratch directory.
pub struct Cloud {
    agents: BTreeMap<String, Daemon>,
    /// etcd members by number (with `etcd_members`).
    etcd: BTreeMap<usize, Daemon>,
    /// Servers by listening port.
    servers: BTreeMap<u16, Daemon>,
    responders: Vec<Responder>,
    pub instances: BTreeMap<String, InstanceNs>,
    pub nodes: BTreeMap<String, Netns>,
    pub cloud: Netns,
    pub internet: Netns,
    pub underlay: Netns,
    pub options: CloudOptions,
    /// The model as last written.
    pub model: Value,
    dir: tempfile::TempDir,
    edgenetd: PathBuf,
    server_bin: PathBuf,
}

impl Cloud {
    /// Builds the default topology, starts server and agents, waits for
    /// both nodes to converge.
    pub fn start() -> Result<Cloud> {
        Cloud::start_with(CloudOptions::default())
    }

    pub fn start_with(options: CloudOptions) -> Result<Cloud> {
        prereq::require_machine()?;
        let edgenetd = prereq::require_binary("edgenetd")?;
        let server_bin = prereq::require_binary("edgenet-server")?;
        let prefix = test_prefix();
        let instances = model::instances(&options.model)?;
        let underlay = Netns::create(&prefix, "ul")?;
        links::bridge(&underlay, "ul")?;
        let mut cloud = Cloud {
            agents: BTreeMap::new(),
            etcd: BTreeMap::new(),
            servers: BTreeMap::new(),
            responders: Vec::new(),
            instances: BTreeMap::new(),
            nodes: BTreeMap::new(),
            cloud: Netns::create(&prefix, "cl")?,
            internet: Netns::create(&prefix, "in")?,
            underlay,
            model: options.model.clone(),
            options,
            dir: tempfile::Builder::new().prefix("edgenet-e2e-").tempdir()?,
            edgenetd,
            server_bin,
        };
        cloud.wire_underlay()?;
        for (node, ip) in NODES {
            cloud.build_node(&prefix, node, ip)?;
        }
        cloud.route_between_nodes(&instances)?;
        for inst in instances {
            cloud.build_instance(&prefix, inst)?;
        }
        cloud.start_responders()?;
        cloud.write_files()?;
        if cloud.options.etcd_members > 0 {
            cloud.start_etcd_cluster()?;
            cloud.push_model_file()?;
        }
        cloud.start_server()?;
        if cloud.options.replica {
            cloud.start_server_on(REPLICA_PORT)?;
        }
        if cloud.options.start_agents {
            for (node, _) in NODES {
                cloud.start_agent(node)?;
            }
            cloud.wait_converged(Duration::from_secs(30))?;
        }
        Ok(cloud)
    }

    fn uplink(&self, ns: &Netns, port: &str) -> Result<()> {
        links::veth(ns, "eth0", &self.underlay, port)?;
        links::attach(&self.underlay, port, "ul")
    }

    fn wire_underlay(&self) -> Result<()> {
        self.uplink(&self.cloud, "u-cloud")?;
        links::address(&self.cloud, "eth0", &format!("{CLOUD_IP}/24"))?;
        links::address(&self.cloud, "eth0", &format!("{STS_IP}/24"))?;
        self.uplink(&self.internet, "u-inet")?;
        links::address(&self.internet, "eth0", &format!("{INTERNET_IP}/24"))?;
        // The public pool is on-link on the underlay: a node answers ARP
        // for the public IPs edgenetd put on its public_interface.
        for pool in self.public_pool()? {
            self.cloud.ip(&["route", "add", &pool, "dev", "eth0"])?;
            self.internet.ip(&["route", "add", &pool, "dev", "eth0"])?;
        }
        Ok(())
    }

    fn public_pool(&self) -> Result<Vec<String>> {
        Ok(self.model["public_ips"]
            .as_array()
            .context("public_ips")?
            .iter()
            .filter_map(|p| p.as_str().map(str::to_owned))
            .collect())
    }

    fn build_node(&mut self, prefix: &str, node: &str, ip: &str) -> Result<()> {
        let ns = Netns::create(prefix, node)?;
        self.uplink(&ns, &format!("u-{node}"))?;
        links::address(&ns, "eth0", &format!("{ip}/24"))?;
        links::bridge(&ns, "br0")?;
        self.nodes.insert(node.to_owned(), ns);
        Ok(())
    }

    /// The physical network's routing: each subnet lives on one node; the
    /// cloud and the other node reach it through that node's uplink. These
    /// routes are protocol `static`: foreign to edgenetd.
    fn route_between_nodes(&self, instances: &[Instance]) -> Result<()> {
        let mut subnet_home: BTreeMap<String, String> = BTreeMap::new();
        // IPv6 subnets stay node-local here: the underlay is IPv4 only.
        for inst in instances.iter().filter(|i| !is_ipv6(&i.private_ip)) {
            let net = subnet_of(&inst.cidr)?;
            subnet_home.entry(net).or_insert_with(|| inst.node.clone());
        }
        for (net, home) in &subnet_home {
            let via = node_ip(home)?;
            self.cloud
                .ip(&["route", "add", net, "via", via, "proto", "static"])?;
            for (node, ns) in &self.nodes {
                if node != home {
                    ns.ip(&["route", "add", net, "via", via, "proto", "static"])?;
                }
            }
        }
        Ok(())
    }

    fn build_instance(&mut self, prefix: &str, spec: Instance) -> Result<()> {
        let node = self
            .nodes
            .get(&spec.node)
            .with_context(|| format!("instance {} on unknown node {}", spec.id, spec.node))?;
        let ns = Netns::create(prefix, &spec.id)?;
        links::veth(node, &spec.interface, &ns, "eth0")?;
        links::attach(node, &spec.interface, "br0")?;
        ns.ip(&["link", "set", "eth0", "down"])?;
        links::mac(&ns, "eth0", &spec.mac)?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        if is_ipv6(&spec.private_ip) {
            // No duplicate address detection: responders bind at once.
            ns.ip(&["addr", "add", &spec.cidr, "dev", "eth0", "nodad"])?;
            ns.ip(&["-6", "route", "add", "default", "via", &spec.gateway])?;
        } else {
            links::address(&ns, "eth0", &spec.cidr)?;
            ns.ip(&["route", "add", "default", "via", &spec.gateway])?;
        }
        self.instances
            .insert(spec.id.clone(), InstanceNs { ns, spec });
        Ok(())
    }

    fn start_responders(&mut self) -> Result<()> {
        for inst in self.instances.values() {
            for port in INSTANCE_PORTS {
                let addr = sock(&inst.spec.private_ip, port)?;
                let r = Responder::start(&inst.ns, addr, &inst.spec.id, Reply::Greeting)?;
                self.responders.push(r);
            }
        }
        let metadata = Responder::start(
            &self.cloud,
            sock(CLOUD_IP, METADATA_PORT)?,
            "metadata-ok",
            Reply::Http,
        )?;
        self.responders.push(metadata);
        Ok(())
    }

    /// Starts a greeting responder in `internet` (for SNAT checks).
    pub fn internet_responder(&self, port: u16) -> Result<Responder> {
        Responder::start(
            &self.internet,
            sock(INTERNET_IP, port)?,
            "internet",
            Reply::Greeting,
        )
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn model_path(&self) -> PathBuf {
        self.dir().join("model.json")
    }

    fn write_files(&self) -> Result<()> {
        model::write_atomic(&self.model_path(), &self.model)?;
        write_secret(&self.dir().join("token-key"), &random_bytes(32)?)?;
        write_secret(
            &self.dir().join("server-credentials.toml"),
            server_credentials().as_bytes(),
        )?;
        for (node, _) in NODES {
            let (id, secret) = node_key(node);
            let ini =
                format!("[default]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\n");
            write_secret(
                &self.dir().join(format!("{node}.credentials")),
                ini.as_bytes(),
            )?;
            std::fs::write(self.agent_config_path(node), self.agent_config(node))?;
        }
        Ok(())
    }

    pub fn agent_config_path(&self, node: &str) -> PathBuf {
        self.dir().join(format!("{node}.toml"))
    }

    fn agent_config(&self, node: &str) -> String {
        let o = &self.options;
        let creds = self.dir().join(format!("{node}.credentials"));
        let mut s = String::new();
        let _ = writeln!(s, "node_id = \"{node}\"");
        let mut endpoints = format!("\"http://{CLOUD_IP}:{SERVER_PORT}/\"");
        if o.replica {
            endpoints.push_str(&format!(", \"http://{CLOUD_IP}:{REPLICA_PORT}/\""));
        }
        let _ = writeln!(s, "endpoints = [{endpoints}]");
        let _ = writeln!(
            s,
            "region = \"{REGION}\"\nwait_seconds = {}",
            o.wait_seconds
        );
        let _ = writeln!(s, "\n[credentials]\nsource = \"assume-role\"");
        let _ = writeln!(s, "long_term_file = \"{}\"", creds.display());
        let _ = writeln!(s, "profile = \"default\"\nrole_arn = \"{ROLE_ARN}\"");
        let _ = writeln!(s, "sts_endpoint = \"http://{STS_IP}:{SERVER_PORT}/\"");
        let _ = writeln!(s, "duration_seconds = {}", o.sts_duration_seconds);
        let _ = writeln!(s, "\n[dataplane]\nroute_protocol = 159");
        let _ = writeln!(
            s,
            "resync_seconds = {}\nmanage_sysctls = true",
            o.resync_seconds
        );
        let _ = writeln!(s, "\n[metrics]\nlisten = \"127.0.0.1:9469\"");
        s
    }

    /// Starts (or restarts) `edgenet-server` in the cloud namespace.
    pub fn start_server(&mut self) -> Result<()> {
        self.start_server_on(SERVER_PORT)
    }

    /// Starts (or restarts) a server listening on `port` (all addresses).
    pub fn start_server_on(&mut self, port: u16) -> Result<()> {
        let d = self.dir();
        let source = if self.options.etcd_members > 0 {
            ["--etcd".to_owned(), self.etcd_urls()]
        } else {
            [
                "--model".to_owned(),
                self.model_path().display().to_string(),
            ]
        };
        let mut args: Vec<String> = vec![
            source[0].clone(),
            source[1].clone(),
            "--listen".into(),
            format!("0.0.0.0:{port}"),
            "--credentials".into(),
            d.join("server-credentials.toml").display().to_string(),
            "--token-key".into(),
            d.join("token-key").display().to_string(),
            "--region".into(),
            REGION.into(),
        ];
        args.extend(self.options.server_args.iter().cloned());
        let log = d.join(server_log_name(port));
        let env = [
            ("RUST_LOG", "info"),
            ("EDGENET_LOG", "info"),
            ("NO_COLOR", "1"),
        ];
        let label = format!("edgenet-server :{port}");
        let server = Daemon::spawn(&self.cloud, &label, &self.server_bin, &args, &env, log)?;
        self.servers.insert(port, server);
        let addr = sock(CLOUD_IP, port)?;
        let up = probe::wait_until(Duration::from_secs(15), || {
            self.servers
                .get_mut(&port)
                .is_some_and(|s| s.ensure_running().is_ok())
                && probe::tcp_open(&self.cloud, addr, Duration::from_millis(200))
        });
        if !up {
            let server = self.servers.get_mut(&port).context("server")?;
            server.ensure_running()?;
            bail!(
                "{label} does not listen on {addr}; log:\n{}",
                tail(&server.log(), 40)
            );
        }
        Ok(())
    }

    /// SIGKILLs the server.
    pub fn kill_server(&mut self) {
        self.kill_server_on(SERVER_PORT);
    }

    /// SIGKILLs the server listening on `port`.
    pub fn kill_server_on(&mut self, port: u16) {
        if let Some(mut s) = self.servers.remove(&port) {
            s.kill_hard();
        }
    }

    /// Starts (or restarts) `edgenetd run` in `node`'s namespace.
    pub fn start_agent(&mut self, node: &str) -> Result<()> {
        let ns = self.nodes.get(node).context("unknown node")?;
        let args = vec![
            "run".to_owned(),
            "--config".to_owned(),
            self.agent_config_path(node).display().to_string(),
        ];
        let log = self.dir().join(format!("{node}.log"));
        let env = [
            ("EDGENET_LOG", "info"),
            ("RUST_LOG", "info"),
            ("NO_COLOR", "1"),
        ];
        let agent = Daemon::spawn(
            ns,
            &format!("edgenetd {node}"),
            &self.edgenetd,
            &args,
            &env,
            log,
        )?;
        self.agents.insert(node.to_owned(), agent);
        Ok(())
    }

    pub fn agent(&mut self, node: &str) -> Result<&mut Daemon> {
        self.agents
            .get_mut(node)
            .with_context(|| format!("no agent on {node}"))
    }

    /// The agent's log so far.
    pub fn agent_log(&self, node: &str) -> String {
        self.agents.get(node).map(Daemon::log).unwrap_or_default()
    }

    /// The log of the (first) server, across restarts.
    pub fn server_log(&self) -> String {
        self.server_log_on(SERVER_PORT)
    }

    pub fn server_log_on(&self, port: u16) -> String {
        std::fs::read_to_string(self.dir().join(server_log_name(port))).unwrap_or_default()
    }

    pub fn node(&self, node: &str) -> &Netns {
        &self.nodes[node]
    }

    pub fn instance(&self, id: &str) -> &InstanceNs {
        &self.instances[id]
    }

    /// `instance`'s private IP and `port`.
    pub fn addr_of(&self, instance: &str, port: u16) -> SocketAddr {
        sock(&self.instance(instance).spec.private_ip, port).expect("instance address")
    }

    /// True when `from` can open a TCP connection to `to:port` and the
    /// greeting proves it reached `to`.
    pub fn can_connect(&self, from: &str, to: &str, port: u16) -> bool {
        let addr = self.addr_of(to, port);
        match probe::tcp_connect(&self.instance(from).ns, addr, Duration::from_millis(1500)) {
            Ok(greeting) => greeting == to,
            Err(_) => false,
        }
    }

    /// Writes `model` as the new model file content.
    pub fn write_model(&mut self, model: Value) -> Result<()> {
        model::write_atomic(&self.model_path(), &model)?;
        self.model = model;
        if self.options.etcd_members > 0 {
            self.push_model_file()?;
        }
        Ok(())
    }

    /// The state id `node` should converge to for the current model.
    pub fn expected_state_id(&self, node: &str) -> Result<String> {
        let bytes = serde_json::to_vec(&self.model)?;
        let parsed = edgenet_model::parse_model(&bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
        let view = edgenet_model::view_for(&parsed, node).context("node not in model")?;
        Ok(view.state_id().as_str().to_owned())
    }

    /// The state id `node`'s agent reports as applied in its metrics.
    pub fn applied_state_id(&self, node: &str) -> Option<String> {
        let metrics = self.agent_metrics(node).ok()?;
        metric_label(&metrics, "edgenetd_applied_state_info", "state_id")
    }

    /// The state id `edgenetd status` reads back from `node`'s kernel.
    pub fn kernel_state_id(&self, node: &str) -> Option<String> {
        let config = self.agent_config_path(node).display().to_string();
        let edgenetd = self.edgenetd.to_string_lossy().into_owned();
        let args = ["status", "--config", &config, "--output", "json"];
        let out = self.node(node).exec_unchecked(&edgenetd, &args).ok()?;
        let status: Value = serde_json::from_slice(&out.stdout).ok()?;
        status["applied_state_id"].as_str().map(str::to_owned)
    }

    /// `edgenetd plan --config <node's>` in `node`: (exit code, output).
    /// Exit 0 means the kernel already matches the server's view.
    pub fn plan(&self, node: &str) -> Result<(Option<i32>, String)> {
        let config = self.agent_config_path(node).display().to_string();
        let edgenetd = self.edgenetd.to_string_lossy().into_owned();
        let out = self
            .node(node)
            .exec_unchecked(&edgenetd, &["plan", "--config", &config])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        Ok((out.status.code(), text))
    }

    /// Waits until every node has applied its view of the current model.
    pub fn wait_converged(&mut self, timeout: Duration) -> Result<()> {
        let nodes: Vec<String> = self.nodes.keys().cloned().collect();
        for node in nodes {
            self.wait_node_converged(&node, timeout)?;
        }
        Ok(())
    }

    pub fn wait_node_converged(&mut self, node: &str, timeout: Duration) -> Result<()> {
        let want = self.expected_state_id(node)?;
        let deadline = Instant::now() + timeout;
        let mut next_kernel_check = Instant::now() + Duration::from_millis(500);
        loop {
            if let Some(agent) = self.agents.get_mut(node) {
                agent.ensure_running()?;
            }
            if self.applied_state_id(node).as_deref() == Some(want.as_str()) {
                return Ok(());
            }
            // An agent that adopted the kernel's state at start-up applied
            // nothing, so its metrics may not name a state: ask the kernel
            // (now and then; it is a process run).
            if Instant::now() >= next_kernel_check {
                next_kernel_check = Instant::now() + Duration::from_millis(500);
                if self.kernel_state_id(node).as_deref() == Some(want.as_str()) {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "{node} did not apply {want} within {timeout:?} (applied: {:?}); agent log:\n{}",
                    self.applied_state_id(node),
                    tail(&self.agent_log(node), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET /metrics from `node`'s agent (listening on the node's loopback).
    pub fn agent_metrics(&self, node: &str) -> Result<String> {
        let r = http::get(
            self.node(node),
            sock("127.0.0.1", 9469)?,
            "/metrics",
            &[],
            Duration::from_secs(2),
        )?;
        Ok(r.body)
    }

    /// GET /metrics from the server.
    pub fn server_metrics(&self) -> Result<String> {
        self.server_metrics_on(SERVER_PORT)
    }

    /// GET /metrics from the server listening on `port`.
    pub fn server_metrics_on(&self, port: u16) -> Result<String> {
        let r = http::get(
            &self.cloud,
            sock(CLOUD_IP, port)?,
            "/metrics",
            &[],
            Duration::from_secs(2),
        )?;
        Ok(r.body)
    }

    /// `DescribeNodeStatus`, signed with the admin key.
    pub fn describe_node_status(&self) -> Result<Value> {
        let creds = Credentials::long_term(ADMIN_KEY_ID, ADMIN_SECRET);
        let params = [("Action", "DescribeNodeStatus"), ("Version", "2026-11-01")];
        let r: Response = http::signed_query(
            &self.cloud,
            sock(CLOUD_IP, SERVER_PORT)?,
            &params,
            &creds,
            REGION,
        )?;
        if r.status != 200 {
            bail!("DescribeNodeStatus: {} {}", r.status, r.body);
        }
        Ok(serde_json::from_str(&r.body)?)
    }

    /// A kernel snapshot of `node` (see [`kernel::Snapshot`]).
    pub fn snapshot(&self, node: &str) -> Result<kernel::Snapshot> {
        kernel::Snapshot::take(self.node(node))
    }

    /// Logs of every process, for failure messages.
    pub fn all_logs(&self) -> String {
        let mut out = String::new();
        for port in [SERVER_PORT, REPLICA_PORT] {
            let log = self.server_log_on(port);
            if !log.is_empty() {
                let _ = writeln!(out, "=== edgenet-server :{port}\n{}", tail(&log, 60));
            }
        }
        for (node, agent) in &self.agents {
            let _ = writeln!(out, "=== edgenetd {node}\n{}", tail(&agent.log(), 60));
        }
        out
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- logs of the failed test's processes ---\n{}",
                self.all_logs()
            );
        }
    }
}

/// The value of label `label` on the first sample of `family`.
pub fn metric_label(metrics: &str, family: &str, label: &str) -> Option<String> {
    let line = metrics
        .lines()
        .find(|l| l.starts_with(&format!("{family}{{")))?;
    let start = line.find(&format!("{label}=\""))? + label.len() + 2;
    let end = line[start..].find('"')? + start;
    Some(line[start..end].to_owned())
}

/// The value of the sample whose name and labels are exactly `series`.
pub fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(name, _)| *name == series)
        .and_then(|(_, v)| v.parse().ok())
}

pub fn sock(ip: &str, port: u16) -> Result<SocketAddr> {
    Ok(SocketAddr::new(
        ip.parse().with_context(|| format!("address {ip}"))?,
        port,
    ))
}

fn server_log_name(port: u16) -> String {
    if port == SERVER_PORT {
        "server.log".into()
    } else {
        format!("server-{port}.log")
    }
}

fn node_ip(node: &str) -> Result<&'static str> {
    NODES
        .iter()
        .find(|(n, _)| *n == node)
        .map(|(_, ip)| *ip)
        .with_context(|| format!("unknown node {node}"))
}

/// `10.1.0.0/16` from `10.1.0.11/16` (IPv4, as the fixture is).
fn is_ipv6(ip: &str) -> bool {
    ip.contains(':')
}

fn subnet_of(cidr: &str) -> Result<String> {
    let (ip, len) = cidr.split_once('/').context("cidr")?;
    let ip: std::net::Ipv4Addr = ip.parse()?;
    let len: u32 = len.parse()?;
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Ok(format!(
        "{}/{len}",
        std::net::Ipv4Addr::from(u32::from(ip) & mask)
    ))
}

/// The long-term key of `node`, bound to it in the server's credentials.
pub fn node_key(node: &str) -> (String, String) {
    let n = node.trim_start_matches("nc-");
    (
        format!("AKIDNC{n}EXAMPLE000{n}"),
        format!("node-{n}-secret-00000000000000000000000000"),
    )
}

fn server_credentials() -> String {
    let mut s = String::new();
    for (node, _) in NODES {
        let (id, secret) = node_key(node);
        let _ = writeln!(
            s,
            "[[keys]]\naccess_key_id = \"{id}\"\nsecret_access_key = \"{secret}\"\nnode = \"{node}\"\nroles = [\"{ROLE_ARN}\"]\n"
        );
    }
    let _ = writeln!(
        s,
        "[[keys]]\naccess_key_id = \"{ADMIN_KEY_ID}\"\nsecret_access_key = \"{ADMIN_SECRET}\"\nadmin = true\nroles = [\"{ADMIN_ROLE_ARN}\"]"
    );
    s
}

fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

fn random_bytes(n: usize) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_of_masks_the_host_bits() {
        assert_eq!(subnet_of("10.1.0.11/16").unwrap(), "10.1.0.0/16");
        assert_eq!(subnet_of("10.2.3.4/24").unwrap(), "10.2.3.0/24");
    }

    #[test]
    fn metric_helpers_read_labels_and_values() {
        let m = "# TYPE x gauge\nedgenetd_applied_state_info{state_id=\"v1-ab\"} 1\nedgenetd_drift_repairs_total 3\n";
        assert_eq!(
            metric_label(m, "edgenetd_applied_state_info", "state_id").as_deref(),
            Some("v1-ab")
        );
        assert_eq!(metric_value(m, "edgenetd_drift_repairs_total"), Some(3.0));
    }

    #[test]
    fn node_keys_differ_per_node() {
        assert_ne!(node_key("nc-1"), node_key("nc-2"));
        assert!(node_key("nc-1").0.starts_with("AKID"));
    }
}

/// One expected TCP outcome: `from` connects to `to:port`, allowed or not.
#[derive(Debug, Clone, Copy)]
pub struct Flow {
    pub from: &'static str,
    pub to: &'static str,
    pub port: u16,
    pub allowed: bool,
}

/// `from -> to:port` must connect.
pub const fn allow(from: &'static str, to: &'static str, port: u16) -> Flow {
    Flow {
        from,
        to,
        port,
        allowed: true,
    }
}

/// `from -> to:port` must not connect.
pub const fn deny(from: &'static str, to: &'static str, port: u16) -> Flow {
    Flow {
        from,
        to,
        port,
        allowed: false,
    }
}

impl Cloud {
    /// Probes every flow at once (a denied one costs a connect timeout) and
    /// returns those whose outcome was not the expected one.
    pub fn mismatched_flows(&self, flows: &[Flow]) -> Vec<String> {
        std::thread::scope(|scope| {
            let probes: Vec<_> = flows
                .iter()
                .map(|f| scope.spawn(move || (f, self.can_connect(f.from, f.to, f.port))))
                .collect();
            probes
                .into_iter()
                .filter_map(|p| p.join().ok())
                .filter(|(f, got)| *got != f.allowed)
                .map(|(f, got)| {
                    let what = if got {
                        "connected but must be denied"
                    } else {
                        "denied but must connect"
                    };
                    format!("{} -> {}:{}: {what}", f.from, f.to, f.port)
                })
                .collect()
        })
    }

    /// Panics (with the mismatches) unless every flow is as expected.
    pub fn assert_flows(&self, flows: &[Flow]) {
        let bad = self.mismatched_flows(flows);
        assert!(
            bad.is_empty(),
            "unexpected connectivity:\n  {}",
            bad.join("\n  ")
        );
    }

    /// Waits until every flow is as expected (after a change), or panics.
    pub fn wait_flows(&self, flows: &[Flow], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let bad = self.mismatched_flows(flows);
            if bad.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "connectivity not as expected after {timeout:?}:\n  {}",
                bad.join("\n  ")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
