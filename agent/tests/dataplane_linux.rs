//! The Linux dataplane against a real kernel, each test in network
//! namespaces it creates (and deletes) itself. Needs root; without it these
//! tests fail, they do not skip.
//!
//! Netlink sockets and `nft` belong to the namespace of the thread that
//! opens or spawns them, so each test body runs on a thread that `setns`-ed
//! into the test's namespace, with its own current-thread runtime.

use std::collections::BTreeMap;
use std::fs::File;
use std::future::Future;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgenet_agent::dataplane::linux::{LinuxConfig, LinuxDataplane};
use edgenet_agent::dataplane::{Dataplane, DataplaneError};
use edgenet_agent::diff::{diff, Change};
use edgenet_agent::ops::metrics::Metrics;
use edgenet_agent::reconcile::{ReconcileSettings, Reconciler};
use edgenet_agent::render::{render, RenderSettings};
use edgenet_agent::snapshot::{Feedback, Snapshot};
use edgenet_agent::state::{DriftKind, Family, KernelState, NftChain, NftRule, Stmt, TableId};
use edgenet_model::{Instance, NodeView};
use nix::sched::{setns, CloneFlags};
use tokio::sync::watch;

const VIEW: &str = include_str!("../src/dataplane/testdata/view-nc-1.json");

/// A network namespace that lives as long as the value.
struct NetNs {
    name: String,
}

impl NetNs {
    fn new(tag: &str) -> NetNs {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("edgenet-t{}-{n}-{tag}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let ns = NetNs { name };
        ns.sh("ip link set lo up");
        ns
    }

    /// A node like the example view's: `eth0` (public), `br0` with one
    /// instance port so it has carrier.
    fn node(tag: &str) -> NetNs {
        let ns = NetNs::new(tag);
        ns.sh(
            "ip link add eth0 type veth peer name eth0-peer && ip link set eth0 up && ip link set eth0-peer up && \
             ip link add br0 type bridge && ip link set br0 up && \
             ip link add vn_i-0a1b2c3d type veth peer name vm0 && ip link set vn_i-0a1b2c3d master br0 && \
             ip link set vn_i-0a1b2c3d up && ip link set vm0 up",
        );
        ns
    }

    fn sh(&self, script: &str) -> String {
        run("ip", &["netns", "exec", &self.name, "sh", "-c", script])
    }

    fn try_sh(&self, script: &str) -> Result<String, String> {
        try_run("ip", &["netns", "exec", &self.name, "sh", "-c", script])
    }

    /// Run `body` inside the namespace on a thread of its own.
    fn run<T, F, Fut>(&self, body: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
    {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            setns(file, CloneFlags::CLONE_NEWNET).expect("setns (needs root)");
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(body())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn try_run(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

fn run(program: &str, args: &[&str]) -> String {
    try_run(program, args).unwrap_or_else(|e| panic!("{e} (these tests need root)"))
}

fn view() -> NodeView {
    serde_json::from_str(VIEW).expect("view parses")
}

fn desired() -> KernelState {
    let rendered = render(&view(), &RenderSettings::default());
    assert!(rendered.left_out.is_empty());
    rendered.desired
}

fn config() -> LinuxConfig {
    LinuxConfig::default()
}

/// Read, diff, apply; returns the number of changes made.
async fn converge(dp: &mut LinuxDataplane, want: &KernelState, id: &str) -> usize {
    let actual = dp.read().await.expect("read");
    let changes = diff(&actual, want);
    let report = dp.apply(&changes, want, id).await.expect("apply");
    assert!(report.deferred.is_empty(), "{:?}", report.deferred);
    changes.len()
}

/// Rule handles of our inet table, by chain, as `nft -a` shows them.
fn rule_handles(ns: &NetNs) -> BTreeMap<String, Vec<u64>> {
    let json = ns.sh("nft -j list table inet edgenet");
    let document: serde_json::Value = serde_json::from_str(&json).unwrap();
    let mut handles: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for item in document["nftables"].as_array().unwrap() {
        if let Some(rule) = item.get("rule") {
            handles
                .entry(rule["chain"].as_str().unwrap().to_string())
                .or_default()
                .push(rule["handle"].as_u64().unwrap());
        }
    }
    handles
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root: cargo test --features root-tests"
)]
fn apply_then_read_back_then_nothing_more_to_do() {
    let ns = NetNs::node("apply");
    let state = ns.run(|| async {
        let mut dp = LinuxDataplane::new(config()).unwrap();
        let want = desired();
        let made = converge(&mut dp, &want, "v1-first").await;
        assert!(made > 20, "only {made} changes");
        let back = dp.read().await.unwrap();
        let left = diff(&back, &want);
        assert!(
            left.is_empty(),
            "{}",
            left.render_text("nc-1", None, "v1-first")
        );
        assert_eq!(back.state_id.as_deref(), Some("v1-first"));
        // Idempotence: nothing to do, and nothing done.
        let counters = dp.counters();
        let before = (
            counters.netlink_ops.load(Ordering::Relaxed),
            counters.nft_transactions.load(Ordering::Relaxed),
        );
        let report = dp.apply(&left, &want, "v1-first").await.unwrap();
        assert_eq!((report.netlink_ops, report.nft_transactions), (0, 0));
        let after = (
            counters.netlink_ops.load(Ordering::Relaxed),
            counters.nft_transactions.load(Ordering::Relaxed),
        );
        assert_eq!(before, after);
        back
    });
    assert_eq!(state.routes.len(), 1);
    let routes = ns.sh("ip route show proto 159");
    assert!(routes.contains("10.2.0.0/16 via 10.1.0.254"), "{routes}");
    let eth0 = ns.sh("ip -4 addr show dev eth0");
    assert!(eth0.contains("203.0.113.5/32"), "{eth0}");
    let br0 = ns.sh("ip -4 addr show dev br0");
    assert!(br0.contains("10.1.0.1/16"), "{br0}");
    let ruleset = ns.sh("nft list table inet edgenet");
    for needle in [
        "chain sg_sg-web",
        "chain in_i-0a1b2c3d",
        "10.1.0.33 : jump in_i-0a1b2c3d",
        "203.0.113.5 : 10.1.0.33",
        "ip daddr vmap @instances",
        "dnat ip to ip daddr map @dnat4",
        "dnat ip to 10.111.5.11:8773",
        "comment \"edgenet-state:v1-first\"",
    ] {
        assert!(ruleset.contains(needle), "no {needle:?} in\n{ruleset}");
    }
    let bridge = ns.sh("nft list table bridge edgenet");
    for needle in [
        "\"vn_i-0a1b2c3d\" . d0:0d:0a:1b:2c:3d",
        "\"vn_i-0a1b2c3d\" . 10.1.0.33",
        "iifname @spoof_ports iifname . ether saddr != @port_macs drop",
    ] {
        assert!(bridge.contains(needle), "no {needle:?} in\n{bridge}");
    }
    assert_eq!(
        ns.sh("sysctl -n net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables"),
        "1\n1\n"
    );
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root: cargo test --features root-tests"
)]
fn foreign_routes_addresses_and_tables_survive() {
    let ns = NetNs::node("owner");
    ns.sh(
        "ip addr add 192.0.2.10/24 dev eth0 && \
         ip addr add 203.0.113.9/32 dev eth0 && \
         ip route add 10.9.0.0/16 via 192.0.2.1 proto static && \
         ip route add 10.8.0.0/16 via 192.0.2.1 proto 158 && \
         ip route add 10.7.0.0/16 via 192.0.2.1 proto 159 && \
         nft add table inet other && nft add chain inet other c && nft add rule inet other c accept && \
         nft add table ip edgenet && nft add chain ip edgenet keep",
    );
    ns.run(|| async {
        let mut dp = LinuxDataplane::new(config()).unwrap();
        let want = desired();
        let actual = dp.read().await.unwrap();
        let changes = diff(&actual, &want);
        let lines: Vec<String> = changes.changes.iter().map(Change::line).collect();
        // Ours but unwanted: the proto-159 route and the pool address go.
        assert!(
            lines.contains(&"- route 10.7.0.0/16 via 192.0.2.1 dev eth0 proto 159".to_string()),
            "{lines:?}"
        );
        assert!(lines.contains(&"- address 203.0.113.9/32 dev eth0".to_string()));
        assert!(!lines.iter().any(|l| l.contains("192.0.2.10")));
        dp.apply(&changes, &want, "v1-own").await.unwrap();
    });
    let routes = ns.sh("ip route show");
    assert!(
        routes.contains("10.9.0.0/16 via 192.0.2.1 dev eth0 proto static"),
        "{routes}"
    );
    assert!(
        routes.contains("10.8.0.0/16 via 192.0.2.1 dev eth0 proto 158"),
        "{routes}"
    );
    assert!(!routes.contains("10.7.0.0/16"), "{routes}");
    let eth0 = ns.sh("ip -4 addr show dev eth0");
    assert!(eth0.contains("192.0.2.10/24"), "{eth0}");
    assert!(!eth0.contains("203.0.113.9"), "{eth0}");
    let other = ns.sh("nft list table inet other");
    assert!(other.contains("accept"), "{other}");
    ns.sh("nft list chain ip edgenet keep");
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root: cargo test --features root-tests"
)]
fn drift_of_route_chain_and_table_is_repaired() {
    let ns = NetNs::node("drift");
    let name = ns.name.clone();
    ns.run(move || async move {
        let exec = |script: &str| run("ip", &["netns", "exec", &name, "sh", "-c", script]);
        let mut dp = LinuxDataplane::new(config()).unwrap();
        let mut events = dp.drift_events().expect("monitor");
        let want = desired();
        converge(&mut dp, &want, "v1-d").await;

        // A deleted route: the monitor says so at once.
        exec("ip route del 10.2.0.0/16");
        let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("a drift event in time")
            .expect("monitor alive");
        assert_eq!(event.what, DriftKind::Removed);
        assert!(
            event.object.starts_with("route 10.2.0.0/16"),
            "{}",
            event.object
        );
        assert_eq!(converge(&mut dp, &want, "v1-d").await, 1);

        // A flushed chain: the nftables monitor names it; found by the rule
        // hashes, rewritten alone.
        exec("nft flush chain inet edgenet sg_sg-web");
        let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("a drift event in time")
            .expect("monitor alive");
        assert_eq!(event.object, "nft rules of chain inet edgenet sg_sg-web");
        let actual = dp.read().await.unwrap();
        let changes = diff(&actual, &want);
        let lines: Vec<String> = changes.changes.iter().map(Change::line).collect();
        assert_eq!(
            lines,
            ["~ nft chain inet edgenet sg_sg-web: 0 rules -> 6 rules"]
        );
        dp.apply(&changes, &want, "v1-d").await.unwrap();

        // A deleted table: made again whole, state id included.
        exec("nft delete table inet edgenet");
        let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("a drift event in time")
            .expect("monitor alive");
        assert_eq!(event.object, "nft table inet edgenet");
        assert!(converge(&mut dp, &want, "v1-d").await > 20);
        let back = dp.read().await.unwrap();
        assert!(diff(&back, &want).is_empty());
        assert_eq!(back.state_id.as_deref(), Some("v1-d"));

        // Our own writes are no drift (their events have arrived by now).
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(events.try_recv().is_err());
    });
}

/// Polls `condition` (async, so the loop under test keeps running) until it
/// holds or `deadline` passes; says whether it held.
async fn holds_before(deadline: Instant, mut condition: impl FnMut() -> bool) -> bool {
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `nft flush ruleset` (what Debian's nftables.service runs on restart and
/// reload) takes our tables and their state id: the loop puts them back at
/// once, not at the next periodic resync, and counts it as drift.
#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root: cargo test --features root-tests"
)]
fn a_flushed_ruleset_is_repaired_at_once_and_counted() {
    let ns = NetNs::node("flush");
    let name = ns.name.clone();
    ns.run(move || async move {
        let exec = |script: &str| run("ip", &["netns", "exec", &name, "sh", "-c", script]);
        let dataplane = LinuxDataplane::new(config()).unwrap();
        let metrics = Metrics::new();
        let mut settings = ReconcileSettings::new("nc-1");
        settings.resync = Duration::from_secs(3600);
        let (reconciler, feedback) =
            Reconciler::new(settings, Box::new(dataplane), metrics.clone());
        let (snapshots, snapshot_rx) = watch::channel(None);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(reconciler.run(snapshot_rx, stop_rx));
        let snapshot = Snapshot::from_view("nc-1", "v1-flush".into(), &view());
        snapshots.send_replace(Some(Arc::new(snapshot)));
        let applied = |feedback: &watch::Receiver<Feedback>| {
            feedback.borrow().applied_state_id.as_deref() == Some("v1-flush")
        };
        let soon = Instant::now() + Duration::from_secs(10);
        assert!(
            holds_before(soon, || applied(&feedback)).await,
            "first apply"
        );
        // Our own writes settle without a repair.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(metrics.drift_repairs(), 0, "our own writes are no drift");

        exec("nft flush ruleset");
        let repaired = || {
            let tables = exec("nft list tables");
            tables.contains("inet edgenet")
                && tables.contains("bridge edgenet")
                && metrics.drift_repairs() == 1
        };
        let flushed = Instant::now();
        assert!(
            holds_before(flushed + Duration::from_secs(1), repaired).await,
            "repaired and counted within 1 s (repairs: {})",
            metrics.drift_repairs()
        );
        eprintln!("flushed ruleset repaired after {:?}", flushed.elapsed());
        let state = exec("nft list chain inet edgenet state");
        assert!(state.contains("v1-flush"), "{state}");
        // The repair's own write is no new drift: no loop.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(metrics.drift_repairs(), 1, "one repair, no loop");
        assert_eq!(
            metrics.render_passes().0,
            2,
            "the first apply and the repair"
        );
        stop.send_replace(true);
        task.await.unwrap().unwrap();
    });
}

/// An `nft` that hangs on every transaction (listings still work): while
/// it hangs the loop makes no progress, so the watchdog pings stop; the
/// call's timeout then kills it and fails the pass, retried as a full
/// resync, and the pings resume.
#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root: cargo test --features root-tests"
)]
fn a_hung_nft_times_out_and_withholds_the_watchdog_meanwhile() {
    use edgenet_agent::dataplane::linux::NftRunner;
    use edgenet_agent::ops::notify;
    let ns = NetNs::node("hung");
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("nft");
    std::fs::write(
        &wrapper,
        "#!/bin/sh\ncase \"$*\" in *-f*) exec sleep 10;; *) exec nft \"$@\";; esac\n",
    )
    .unwrap();
    run("chmod", &["+x", wrapper.to_str().unwrap()]);
    let socket_path = dir.path().join("notify.sock");
    // The notifications of this test process go to this socket.
    std::env::set_var("NOTIFY_SOCKET", &socket_path);
    ns.run(move || async move {
        let socket = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
        let config = LinuxConfig {
            nft: NftRunner {
                program: wrapper.to_str().unwrap().into(),
                prefix_args: Vec::new(),
            },
            nft_fast_path: false,
            monitor: false,
            call_timeout: Duration::from_millis(1500),
            ..config()
        };
        let mut settings = ReconcileSettings::new("nc-1");
        settings.resync = Duration::from_secs(3600);
        settings.heartbeat = Duration::from_millis(20);
        // The retry must not hang again while the test watches.
        settings.backoff_min = Duration::from_secs(30);
        settings.backoff_max = Duration::from_secs(30);
        let dataplane = LinuxDataplane::new(config).unwrap();
        let (reconciler, feedback) = Reconciler::new(settings, Box::new(dataplane), Metrics::new());
        let period = Duration::from_millis(50);
        tokio::spawn(notify::watchdog(period, reconciler.heartbeat(), period * 4));
        let (snapshots, snapshot_rx) = watch::channel(None);
        let (_stop, stop_rx) = watch::channel(false);
        tokio::spawn(reconciler.run(snapshot_rx, stop_rx));
        let mut pings = Pings {
            socket,
            buf: vec![0; 4096],
        };
        assert!(
            pings.ping_within(Duration::from_secs(2)).await,
            "pings while idle"
        );

        snapshots.send_replace(Some(Arc::new(Snapshot::from_view(
            "nc-1",
            "v1-hung".into(),
            &view(),
        ))));
        // Until the pass is stuck: the last pings of the fresh beat.
        tokio::time::sleep(Duration::from_millis(400)).await;
        pings.drain();
        let hung_since = Instant::now();
        let failed = || feedback.borrow().apply_error.clone();
        assert!(
            !pings.ping_within(Duration::from_millis(600)).await,
            "no ping while the nft transaction hangs"
        );
        assert!(failed().is_none(), "the timeout has not tripped yet");
        let deadline = Instant::now() + Duration::from_secs(5);
        assert!(
            holds_before(deadline, || failed().is_some()).await,
            "the timeout trips"
        );
        let error = failed().unwrap();
        assert!(
            error.contains("nft transaction timed out after 1.5"),
            "{error}"
        );
        eprintln!("hung nft cut after {:?}", hung_since.elapsed());
        assert!(
            pings.ping_within(Duration::from_secs(2)).await,
            "pings resume"
        );
    });
    std::env::remove_var("NOTIFY_SOCKET");
}

struct Pings {
    socket: tokio::net::UnixDatagram,
    buf: Vec<u8>,
}

impl Pings {
    /// Whether a WATCHDOG=1 arrives within `within`.
    async fn ping_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let received = tokio::time::timeout_at(deadline, self.socket.recv(&mut self.buf)).await;
            match received {
                Ok(Ok(n)) if self.buf[..n].starts_with(b"WATCHDOG=1") => return true,
                Ok(_) => continue,
                Err(_elapsed) => return false,
            }
        }
    }

    fn drain(&mut self) {
        while self.socket.try_recv(&mut self.buf).is_ok() {}
    }
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root: cargo test --features root-tests"
)]
fn restart_on_a_set_up_kernel_changes_nothing() {
    let ns = NetNs::node("restart");
    ns.run(|| async {
        let mut dp = LinuxDataplane::new(config()).unwrap();
        converge(&mut dp, &desired(), "v1-same").await;
    });
    let handles_before = rule_handles(&ns);
    let (netlink_ops, transactions, state_id) = ns.run(|| async {
        // A new agent process: nothing cached.
        let mut dp = LinuxDataplane::new(config()).unwrap();
        let want = desired();
        let actual = dp.read().await.unwrap();
        let changes = diff(&actual, &want);
        assert!(
            changes.is_empty(),
            "{}",
            changes.render_text("nc-1", None, "v1-same")
        );
        dp.apply(&changes, &want, "v1-same").await.unwrap();
        let counters = dp.counters();
        (
            counters.netlink_ops.load(Ordering::Relaxed),
            counters.nft_transactions.load(Ordering::Relaxed),
            actual.state_id,
        )
    });
    assert_eq!(netlink_ops, 0);
    assert_eq!(transactions, 0);
    assert_eq!(state_id.as_deref(), Some("v1-same"));
    assert_eq!(rule_handles(&ns), handles_before);
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root: cargo test --features root-tests"
)]
fn refused_transaction_leaves_nothing_half_applied() {
    let ns = NetNs::node("refused");
    ns.run(|| async {
        let mut dp = LinuxDataplane::new(config()).unwrap();
        let want = desired();
        converge(&mut dp, &want, "v1-good").await;
        let before = dp.read().await.unwrap();

        // A next state with good changes and one the kernel refuses: a
        // chain name longer than NFT_CHAIN_MAXNAMELEN (256).
        let mut next = want.clone();
        let inet = next.tables.get_mut(&TableId::ours(Family::Inet)).unwrap();
        inet.sets
            .get_mut("grp_sg-lb")
            .unwrap()
            .elements
            .insert("10.1.0.41".into(), None);
        inet.chains.remove("sg_sg-web");
        let long = "x".repeat(300);
        inet.chains.insert(
            long.clone(),
            NftChain::regular(vec![NftRule::new(&long, 0, vec![Stmt::Accept])]),
        );
        let changes = diff(&before, &next);
        assert!(changes.len() >= 3);
        let error = dp
            .apply(&changes, &next, "v1-bad")
            .await
            .expect_err("the kernel refuses the long name");
        assert!(
            matches!(error, DataplaneError::NftTransaction { .. }),
            "{error}"
        );

        let after = dp.read().await.unwrap();
        assert_eq!(
            after.tables, before.tables,
            "nothing of the transaction stayed"
        );
        assert_eq!(after.state_id.as_deref(), Some("v1-good"));
    });
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root: cargo test --features root-tests"
)]
fn missing_bridge_is_deferred_and_the_rest_applied() {
    let ns = NetNs::new("nobridge");
    ns.sh("ip link add eth0 type veth peer name eth0-peer && ip link set eth0 up && ip link set eth0-peer up");
    let name = ns.name.clone();
    ns.run(move || async move {
        let mut dp = LinuxDataplane::new(config()).unwrap();
        let want = desired();
        let actual = dp.read().await.unwrap();
        let changes = diff(&actual, &want);
        let report = dp.apply(&changes, &want, "v1-nb").await.unwrap();
        let deferred: Vec<String> = report.deferred.iter().map(|d| d.change.line()).collect();
        // The bridge address, and the route whose gateway only it reaches.
        assert_eq!(deferred.len(), 2, "{deferred:?}");
        assert!(deferred.iter().any(|l| l.contains("10.1.0.1/16 dev br0")));
        let back = dp.read().await.unwrap();
        assert!(back.table(Family::Inet).is_some(), "nftables applied anyway");
        assert!(back.addresses.iter().any(|a| a.to_string() == "203.0.113.5/32 dev eth0"));

        // The bridge comes up; the next resync completes the state.
        run(
            "ip",
            &["netns", "exec", &name, "sh", "-c",
              "ip link add br0 type bridge && ip link set br0 up && \
               ip link add vn_i-0a1b2c3d type veth peer name vm0 && ip link set vn_i-0a1b2c3d master br0 && \
               ip link set vn_i-0a1b2c3d up && ip link set vm0 up"],
        );
        assert_eq!(converge(&mut dp, &want, "v1-nb").await, 2);
        assert!(diff(&dp.read().await.unwrap(), &want).is_empty());
    });
    let _ = ns.try_sh("true");
}

/// Two instances on the node's bridge, each in a namespace of its own.
/// `i-0a1b2c3d` (sg-web: ICMP echo from 10/8) and `i-b` (no group).
fn view_with_second_instance() -> NodeView {
    view_with_copy_of_first(|b| {
        b.id = "i-b".into();
        b.interface = "vn_i-b".into();
        b.mac = "d0:0d:00:00:00:0b".into();
        b.private_ip = "10.1.0.40".into();
        b.public_ip = None;
        b.security_groups = None;
    })
}

/// The example view plus a copy of its instance, changed by `edit`.
fn view_with_copy_of_first(edit: impl FnOnce(&mut Instance)) -> NodeView {
    let mut view = view();
    let mut copy = view.instances[0].clone();
    edit(&mut copy);
    view.instances.push(copy);
    view
}

/// `vm` gets the far end of `port` (on br0) with `ip`/16 and `mac`.
fn attach_vm(node: &NetNs, port: &str, vm: &NetNs, ip: &str, mac: &str) {
    node.sh(&format!(
        "ip link add {port} type veth peer name vmif && ip link set vmif netns {vm} && \
         ip link set {port} master br0 && ip link set {port} up",
        vm = vm.name
    ));
    vm.sh(&format!(
        "ip link set vmif address {mac} && ip addr add {ip}/16 dev vmif && ip link set vmif up && \
         ip route add default via 10.1.0.1"
    ));
}

fn pings(vm: &NetNs, target: &str) -> bool {
    vm.try_sh(&format!("ping -c 1 -W 1 {target}")).is_ok()
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root: cargo test --features root-tests"
)]
fn security_groups_and_anti_spoofing_hold_for_bridged_traffic() {
    let node = NetNs::new("traffic");
    node.sh("ip link add eth0 type veth peer name eth0-peer && ip link set eth0 up && ip link set eth0-peer up && \
             ip link add br0 type bridge && ip link set br0 up");
    let vm_a = NetNs::new("vm-a");
    let vm_b = NetNs::new("vm-b");
    attach_vm(
        &node,
        "vn_i-0a1b2c3d",
        &vm_a,
        "10.1.0.33",
        "d0:0d:0a:1b:2c:3d",
    );
    attach_vm(&node, "vn_i-b", &vm_b, "10.1.0.40", "d0:0d:00:00:00:0b");
    // Before edgenet: the bridge lets everything through.
    assert!(pings(&vm_a, "10.1.0.40"));
    assert!(pings(&vm_b, "10.1.0.33"));

    node.run(|| async {
        let mut dp = LinuxDataplane::new(config()).unwrap();
        let rendered = render(&view_with_second_instance(), &RenderSettings::default());
        assert!(rendered.left_out.is_empty(), "{:?}", rendered.left_out);
        let actual = dp.read().await.unwrap();
        let changes = diff(&actual, &rendered.desired);
        dp.apply(&changes, &rendered.desired, "v1-traffic")
            .await
            .unwrap();
    });
    // sg-web lets ICMP echo in from 10/8; i-b has no group: nothing gets in.
    assert!(pings(&vm_b, "10.1.0.33"), "sg-web allows echo from 10/8");
    assert!(!pings(&vm_a, "10.1.0.40"), "i-b has no group: dropped");
    // The node's own traffic to an instance is not ours to filter? It is
    // instance-bound, but not forwarded: the forward chain does not see it.
    assert!(pings(&node, "10.1.0.40"));

    // i-b pretends to be someone else: the bridge drops its frames.
    vm_b.sh("ip addr flush dev vmif && ip addr add 10.1.0.99/16 dev vmif");
    assert!(
        !pings(&vm_b, "10.1.0.33"),
        "spoofed source dropped at the port"
    );
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root: cargo test --features root-tests"
)]
fn missing_privileges_give_one_clear_error() {
    let ns = NetNs::node("noperm");
    ns.run(|| async {
        // nft run as nobody, without capabilities: what a non-root agent meets.
        let config = LinuxConfig {
            nft: edgenet_agent::dataplane::linux::NftRunner {
                program: "setpriv".into(),
                prefix_args: ["--reuid=65534", "--regid=65534", "--clear-groups", "nft"]
                    .map(String::from)
                    .to_vec(),
            },
            ..config()
        };
        let mut dp = LinuxDataplane::new(config).unwrap();
        let error = dp.read().await.expect_err("nobody may not list tables");
        assert!(
            matches!(error, DataplaneError::PermissionDenied { .. }),
            "{error:?}"
        );
        assert!(!error.is_retryable());
        let text = error.to_string();
        assert!(text.starts_with("missing privileges:"), "{text}");
        assert!(!text.contains('\n'), "one line: {text}");
    });
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root: cargo test --features root-tests"
)]
fn upgrade_from_per_port_chains_applies_in_one_transaction() {
    // The layout of earlier versions: a verdict map of ports jumping to a
    // chain per port, referenced from the base chain.
    let ns = NetNs::node("upgrade");
    ns.sh("nft -f - <<'EOF'
table bridge edgenet {
  map ports { type ifname : verdict; elements = { \"vn_i-0a1b2c3d\" : jump port_i-0a1b2c3d }; }
  chain port_i-0a1b2c3d { ether saddr != d0:0d:0a:1b:2c:3d drop; }
  chain prerouting { type filter hook prerouting priority -200; policy accept; iifname vmap @ports; }
}
EOF");
    ns.run(|| async {
        let mut dp = LinuxDataplane::new(config()).unwrap();
        let want = desired();
        converge(&mut dp, &want, "v1-up").await;
        let back = dp.read().await.unwrap();
        assert!(diff(&back, &want).is_empty());
        let bridge = back.table(Family::Bridge).unwrap();
        assert!(!bridge.sets.contains_key("ports"));
        assert!(!bridge.chains.contains_key("port_i-0a1b2c3d"));
    });
}

/// The example view plus `i-c` (sg-web, a public IP, a port on br0).
fn view_with_instance_c() -> NodeView {
    view_with_copy_of_first(|c| {
        c.id = "i-c".into();
        c.interface = "vn_i-c".into();
        c.mac = "d0:0d:00:00:00:0c".into();
        c.private_ip = "10.1.0.51".into();
        c.public_ip = Some("203.0.113.6".into());
    })
}

/// How `nft` lists what adding `i-c` writes, object by object.
fn instance_c_listing(ns: &NetNs) -> Vec<String> {
    [
        "list chain inet edgenet in_i-c",
        "list chain inet edgenet state",
        "get element inet edgenet instances { 10.1.0.51 }",
        "get element inet edgenet dnat4 { 203.0.113.6 }",
        "get element inet edgenet snat4 { 10.1.0.51 }",
        "get element bridge edgenet spoof_ports { \"vn_i-c\" }",
        "get element bridge edgenet port_macs { \"vn_i-c\" . d0:0d:00:00:00:0c }",
        "get element bridge edgenet port_ips4 { \"vn_i-c\" . 10.1.0.51 }",
    ]
    .iter()
    .map(|command| ns.sh(&format!("nft {command}")))
    .collect()
}

/// Add `i-c` to the converged example view; returns what the kernel then
/// holds and how many transactions went through the fast path.
async fn add_instance_c(fast_path: bool) -> (KernelState, u64) {
    let config = LinuxConfig {
        nft_fast_path: fast_path,
        ..config()
    };
    let mut dp = LinuxDataplane::new(config).unwrap();
    converge(&mut dp, &desired(), "v1-base").await;
    let counters = dp.counters();
    let transactions = counters.nft_transactions.load(Ordering::Relaxed);
    let with_c = render(&view_with_instance_c(), &RenderSettings::default()).desired;
    converge(&mut dp, &with_c, "v1-with-c").await;
    assert_eq!(
        counters.nft_transactions.load(Ordering::Relaxed),
        transactions + 1,
        "one transaction"
    );
    let back = dp.read().await.unwrap();
    let left = diff(&back, &with_c);
    assert!(left.is_empty(), "{}", left.render_text("nc-1", None, "v1"));
    (back, counters.nft_fast_batches.load(Ordering::Relaxed))
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root: cargo test --features root-tests"
)]
fn an_instance_added_through_the_fast_path_reads_back_as_nft_writes_it() {
    let fast = NetNs::node("fast");
    let slow = NetNs::node("slow");
    let (fast_state, fast_batches) = fast.run(|| add_instance_c(true));
    let (slow_state, slow_batches) = slow.run(|| add_instance_c(false));
    assert_eq!((fast_batches, slow_batches), (1, 0));
    // nftables only: the link-local addresses of the two namespaces differ.
    let nft_only = |state: &KernelState| KernelState {
        tables: state.tables.clone(),
        ..KernelState::default()
    };
    let (slow_nft, fast_nft) = (nft_only(&slow_state), nft_only(&fast_state));
    let apart = diff(&slow_nft, &fast_nft);
    assert!(
        apart.is_empty(),
        "{}",
        apart.render_text("nc-1", None, "v1")
    );
    let listing = instance_c_listing(&fast);
    assert_eq!(listing, instance_c_listing(&slow));
    assert!(
        listing[0].contains("jump sg_sg-web comment \"edgenet:"),
        "{}",
        listing[0]
    );
    assert!(
        listing[1].contains("edgenet-state:v1-with-c"),
        "{}",
        listing[1]
    );

    // And out again, the same way.
    fast.run(|| async {
        let mut dp = LinuxDataplane::new(config()).unwrap();
        converge(&mut dp, &desired(), "v1-base").await;
        assert_eq!(dp.counters().nft_fast_batches.load(Ordering::Relaxed), 1);
        assert!(diff(&dp.read().await.unwrap(), &desired()).is_empty());
    });
    assert!(fast.try_sh("nft list chain inet edgenet in_i-c").is_err());
}

/// docs/dataplane.md: routes of another protocol are never changed or
/// deleted. An administrator's route on the key of a route of the view
/// (destination, table, metric) is neither replaced by ours nor deleted
/// when the view drops it; the conflict is reported and the rest applied.
#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root: cargo test --features root-tests"
)]
fn a_route_held_by_another_protocol_is_never_replaced_or_deleted() {
    let ns = NetNs::node("conflict");
    ns.sh("ip route add 10.2.0.0/16 dev eth0 proto static metric 100");
    ns.run(|| async {
        let mut dp = LinuxDataplane::new(config()).unwrap();
        let want = desired();
        let actual = dp.read().await.unwrap();
        let report = dp
            .apply(&diff(&actual, &want), &want, "v1-conflict")
            .await
            .unwrap();
        assert_eq!(report.route_conflicts.len(), 1, "{:?}", report.deferred);
        let conflict = &report.route_conflicts[0];
        assert!(
            conflict.contains("10.2.0.0/16") && conflict.contains("static (4)"),
            "{conflict}"
        );
        assert_eq!(report.deferred.len(), 1, "{:?}", report.deferred);
        let back = dp.read().await.unwrap();
        assert!(back.table(Family::Inet).is_some(), "the rest was applied");
        assert!(back.routes.is_empty(), "{:?}", back.routes);

        // The view drops the route: with the kernel read, nothing to remove.
        let mut without = want.clone();
        without.routes.clear();
        let changes = diff(&back, &without);
        let lines: Vec<String> = changes.changes.iter().map(Change::line).collect();
        assert!(!lines.iter().any(|l| l.contains("route")), "{lines:?}");
        // Even a stale state that takes the route for ours removes nothing
        // of another protocol: the delete names ours.
        let report = dp
            .apply(&diff(&want, &without), &without, "v1-gone")
            .await
            .unwrap();
        assert!(report.deferred.is_empty(), "{:?}", report.deferred);
    });
    let routes = ns.sh("ip route show 10.2.0.0/16");
    assert!(
        routes.contains("10.2.0.0/16 dev eth0 proto static") && routes.contains("metric 100"),
        "{routes}"
    );
    assert!(!routes.contains("proto 159"), "{routes}");
}

/// The conflict reaches the operator: the `ApplyError` fed back to the
/// server names the route and its owner, and the metric counts it.
#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root: cargo test --features root-tests"
)]
fn a_route_conflict_is_fed_back_and_counted() {
    use edgenet_agent::ops::metrics::Metrics;
    use edgenet_agent::reconcile::{ReconcileSettings, Reconciler};
    use edgenet_agent::snapshot::Snapshot;

    let ns = NetNs::node("conflict-report");
    ns.sh("ip route add 10.2.0.0/16 dev eth0 proto static metric 100");
    ns.run(|| async {
        let dataplane = LinuxDataplane::new(config()).unwrap();
        let metrics = Metrics::new();
        let mut settings = ReconcileSettings::new("nc-1");
        settings.once = true;
        let (reconciler, feedback) =
            Reconciler::new(settings, Box::new(dataplane), metrics.clone());
        let view = view();
        let snapshot = Snapshot::from_view("nc-1", view.state_id().to_string(), &view);
        let (snapshots, snapshot_rx) = tokio::sync::watch::channel(None);
        snapshots.send_replace(Some(Arc::new(snapshot)));
        let (_stop, stop_rx) = tokio::sync::watch::channel(false);
        reconciler.run(snapshot_rx, stop_rx).await.unwrap();
        let error = feedback.borrow().apply_error.clone().unwrap_or_default();
        assert!(
            error.contains("10.2.0.0/16") && error.contains("static (4)"),
            "ApplyError: {error:?}"
        );
        let text = metrics.render();
        assert!(text.contains("edgenetd_route_conflicts_total 1"), "{text}");
    });
    let routes = ns.sh("ip route show 10.2.0.0/16");
    assert!(routes.contains("proto static"), "{routes}");
}
