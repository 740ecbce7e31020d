//! Fault scenarios: each asserts that traffic that should flow
//! keeps flowing while something breaks, and that edgenet recovers.
//! Needs root, `ip`/`nft`/`ping` (tests/setup.sh) and `cargo build --bins`.

use std::thread::sleep;
use std::time::Duration;

use edgenet_e2e::cloud::{
    allow, deny, metric_value, sock, Cloud, CloudOptions, Flow, REPLICA_PORT, SERVER_PORT, STS_IP,
};
use edgenet_e2e::netns::Netns;
use edgenet_e2e::{kernel, model, probe};

const CONVERGE: Duration = Duration::from_secs(20);

/// Flows that hold in the fixture, both ways: they must survive every fault.
const STEADY: [Flow; 6] = [
    allow("i-lb1", "i-web1", 80),
    allow("i-web2", "i-db1", 5432),
    allow("i-lb1", "i-db2", 9000),
    deny("i-lb1", "i-db1", 5432),
    deny("i-lb2", "i-db1", 9000),
    deny("i-db1", "i-web2", 80),
];

/// Deletes nc-1's model route (proto 159) behind the agent's back.
fn delete_model_route(nc1: &Netns) {
    let route = "10.200.0.0/16 via 192.168.100.2 proto 159 metric 100";
    let args: Vec<&str> = ["route", "del"]
        .into_iter()
        .chain(route.split(' '))
        .collect();
    nc1.ip(&args).unwrap();
}

/// The kernel state of both nodes, to prove a fault changed nothing.
fn both_nodes(cloud: &Cloud) -> [kernel::Snapshot; 2] {
    [
        cloud.snapshot("nc-1").unwrap(),
        cloud.snapshot("nc-2").unwrap(),
    ]
}

fn internet_reaches_web1(cloud: &Cloud) -> bool {
    let addr = sock("203.0.113.5", 22).unwrap();
    probe::tcp_connect(&cloud.internet, addr, Duration::from_secs(2)).is_ok_and(|g| g == "i-web1")
}

/// Opens tcp `port` on sg-admin (nc-1 only) and waits until nc-1 applied it.
fn open_port_on_db1(cloud: &mut Cloud, port: u16, timeout: Duration) {
    let mut changed = cloud.model.clone();
    model::add_rule(
        &mut changed,
        "sg-admin",
        model::tcp_rule(port, "10.0.0.0/8"),
    )
    .unwrap();
    cloud.write_model(changed).unwrap();
    cloud.wait_node_converged("nc-1", timeout).unwrap();
}

#[test]
fn server_killed_then_restarted_traffic_keeps_flowing() {
    let mut cloud = Cloud::start().unwrap();
    cloud.assert_flows(&STEADY);
    let before = both_nodes(&cloud);
    cloud.kill_server();
    sleep(Duration::from_secs(3));
    cloud.assert_flows(&STEADY);
    assert!(internet_reaches_web1(&cloud));
    let during = both_nodes(&cloud);
    assert!(
        during == before,
        "a node changed while the server was down (fail static)"
    );
    for node in ["nc-1", "nc-2"] {
        cloud.agent(node).unwrap().ensure_running().unwrap();
    }

    cloud.start_server().unwrap();
    // The agents come back on their own: a change reaches nc-1 (after at
    // most one backoff period, 30 s at the cap).
    open_port_on_db1(&mut cloud, 7777, Duration::from_secs(45));
    cloud.assert_flows(&[allow("i-lb1", "i-db1", 7777)]);
    cloud.assert_flows(&STEADY);
}

#[test]
fn invalid_model_is_refused_and_agents_keep_their_state() {
    let mut cloud = Cloud::start().unwrap();
    let before = both_nodes(&cloud);
    let path = cloud.model_path();

    // Not JSON at all, then JSON with a dangling reference.
    model::write_bytes_atomic(&path, b"{ \"schema\": 1, \"instances\": [").unwrap();
    let refused_once = probe::wait_until(Duration::from_secs(10), || {
        cloud
            .describe_node_status()
            .is_ok_and(|s| s["Model"]["InvalidCount"].as_u64() >= Some(1))
    });
    assert!(
        refused_once,
        "server status does not show the refusal: {:?}",
        cloud.describe_node_status()
    );
    let mut dangling = cloud.model.clone();
    dangling["instances"][0]["subnet"] = "subnet-nowhere".into();
    model::write_atomic(&path, &dangling).unwrap();
    let refused_twice = probe::wait_until(Duration::from_secs(10), || {
        cloud
            .describe_node_status()
            .is_ok_and(|s| s["Model"]["InvalidCount"].as_u64() >= Some(2))
    });
    let status = cloud.describe_node_status().unwrap();
    assert!(refused_twice, "second refusal not counted: {status}");
    let last_error = status["Model"]["LastError"].as_str().unwrap_or_default();
    assert!(
        last_error.contains("subnet"),
        "LastError must name the bad field: {status}"
    );
    let metrics = cloud.server_metrics().unwrap();
    let refused = metric_value(
        &metrics,
        "edgenet_server_model_reloads_total{result=\"refused\"}",
    );
    assert!(
        refused >= Some(2.0),
        "server metrics do not count the refusals:\n{metrics}"
    );

    sleep(Duration::from_secs(1));
    let after = both_nodes(&cloud);
    assert!(
        after == before,
        "a node changed after an invalid model was written"
    );
    cloud.assert_flows(&STEADY);
    assert!(internet_reaches_web1(&cloud));

    // A valid model again: accepted, error cleared, applied.
    open_port_on_db1(&mut cloud, 7777, CONVERGE);
    let status = cloud.describe_node_status().unwrap();
    assert!(
        status["Model"]["LastError"].is_null(),
        "error not cleared: {status}"
    );
    cloud.assert_flows(&[allow("i-lb1", "i-db1", 7777)]);
}

#[test]
fn agent_sigkilled_and_restarted_changes_nothing() {
    let mut cloud = Cloud::start().unwrap();
    let before = cloud.snapshot("nc-1").unwrap();
    cloud.agent("nc-1").unwrap().kill_hard();
    // The kernel keeps what was programmed: traffic is as before.
    cloud.assert_flows(&STEADY);
    assert!(internet_reaches_web1(&cloud));
    // What a restart would do, asked of the server's view: nothing.
    let (code, plan) = cloud.plan("nc-1").unwrap();
    assert_eq!(code, Some(0), "plan after a crash wants changes:\n{plan}");

    cloud.start_agent("nc-1").unwrap();
    cloud.wait_node_converged("nc-1", CONVERGE).unwrap();
    sleep(Duration::from_secs(1));
    let after = cloud.snapshot("nc-1").unwrap();
    assert!(
        after == before,
        "a restart with the same view must adopt, not rewrite (no duplicates, same handles):\n{}",
        before.describe_difference(&after)
    );
    cloud.assert_flows(&STEADY);
    // The restarted agent still follows changes.
    open_port_on_db1(&mut cloud, 7777, CONVERGE);
    cloud.assert_flows(&[allow("i-lb1", "i-db1", 7777)]);

    // Killed right after a change was written, likely mid-apply: the next
    // agent finishes the job without duplicating anything.
    let mut changed = cloud.model.clone();
    model::add_rule(&mut changed, "sg-admin", model::tcp_rule(80, "10.0.0.0/8")).unwrap();
    cloud.write_model(changed).unwrap();
    sleep(Duration::from_millis(30));
    cloud.agent("nc-1").unwrap().kill_hard();
    cloud.start_agent("nc-1").unwrap();
    cloud.wait_node_converged("nc-1", CONVERGE).unwrap();
    let snapshot = cloud.snapshot("nc-1").unwrap();
    let dups = kernel::duplicates(&snapshot);
    assert!(dups.is_empty(), "duplicates after a restart: {dups:?}");
    cloud.assert_flows(&[allow("i-lb1", "i-db1", 80), allow("i-lb1", "i-db1", 7777)]);
    cloud.assert_flows(&STEADY);
}

#[test]
fn deleted_nft_table_is_repaired() {
    let cloud = Cloud::start().unwrap();
    let nc1 = cloud.node("nc-1");
    nc1.nft(&["delete", "table", "inet", "edgenet"]).unwrap();
    // resync_seconds = 5 in the suite's config: repaired well within 15 s.
    let repaired = probe::wait_until(Duration::from_secs(15), || {
        !kernel::nft_table(nc1, "inet")
            .unwrap_or_default()
            .is_empty()
    });
    assert!(repaired, "table inet edgenet not recreated");
    cloud.wait_flows(&STEADY, Duration::from_secs(5));
    assert!(internet_reaches_web1(&cloud), "DNAT not repaired");
}

#[test]
fn deleted_route_is_repaired() {
    let cloud = Cloud::start().unwrap();
    let nc1 = cloud.node("nc-1");
    let ours = |ns| kernel::routes(ns, &["proto", "159"]).unwrap();
    let before = ours(nc1);
    delete_model_route(nc1);
    let repaired = probe::wait_until(Duration::from_secs(15), || ours(nc1) == before);
    assert!(repaired, "route not restored: {:?}", ours(nc1));
    cloud.assert_flows(&STEADY);
}

/// True when the log shows an authentication error reaching the poll loop.
fn auth_errors(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            ["ExpiredToken", "AuthFailure", "InvalidClientTokenId"]
                .iter()
                .any(|c| l.contains(c))
        })
        .collect()
}

#[test]
fn short_lived_credentials_expire_and_polls_go_on() {
    let mut cloud = Cloud::start_with(CloudOptions {
        sts_duration_seconds: 8,
        wait_seconds: 3,
        server_args: vec!["--allow-short-sts-durations".into()],
        ..Default::default()
    })
    .unwrap();
    // Two and a half lifetimes, with a change after each.
    for (round, port) in [(1, 7777), (2, 80)] {
        sleep(Duration::from_secs(10));
        open_port_on_db1(&mut cloud, port, CONVERGE);
        cloud.assert_flows(&[allow("i-lb1", "i-db1", port)]);
        let log = cloud.agent_log("nc-1");
        let errors = auth_errors(&log);
        assert!(
            errors.is_empty(),
            "round {round}: auth errors reached the loop:\n{}",
            errors.join("\n")
        );
    }
    // The credentials were really renewed: the server issued several per node.
    let issued = |node: &str| {
        let session = format!("session={node} duration=8");
        cloud
            .server_log()
            .lines()
            .filter(|l| l.contains(&session))
            .count()
    };
    assert!(
        issued("nc-1") >= 3,
        "nc-1 did not renew its credentials:\n{}",
        cloud.server_log()
    );
    // Every poll of both agents was answered (a view or 304): none failed.
    for node in ["nc-1", "nc-2"] {
        let metrics = cloud.agent_metrics(node).unwrap();
        let failed: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("edgenetd_polls_total{"))
            .filter(|l| !l.contains("outcome=\"view\"") && !l.contains("outcome=\"not_modified\""))
            .collect();
        assert!(failed.is_empty(), "{node}: failed polls: {failed:?}");
    }
    let nc2_log = cloud.agent_log("nc-2");
    let errors = auth_errors(&nc2_log);
    assert!(
        errors.is_empty(),
        "nc-2: auth errors reached the loop:\n{}",
        errors.join("\n")
    );
    cloud.assert_flows(&STEADY);
}

#[test]
fn sts_unreachable_agent_fails_static_then_recovers() {
    let mut cloud = Cloud::start_with(CloudOptions {
        sts_duration_seconds: 6,
        wait_seconds: 2,
        server_args: vec!["--allow-short-sts-durations".into()],
        ..Default::default()
    })
    .unwrap();
    let before = both_nodes(&cloud);
    // Cut STS only (its own address); the describe endpoint stays up.
    let block = format!(
        "add table inet e2eblock; add chain inet e2eblock in {{ type filter hook input priority -10; }}; \
         add rule inet e2eblock in ip daddr {STS_IP} tcp dport {SERVER_PORT} drop"
    );
    cloud.cloud.nft(&[&block]).unwrap();
    // Long enough for the credentials to expire and refreshes to fail.
    sleep(Duration::from_secs(12));
    cloud.assert_flows(&STEADY);
    assert!(internet_reaches_web1(&cloud));
    let during = both_nodes(&cloud);
    assert!(
        during == before,
        "a node changed while STS was unreachable (must stay fail static)"
    );
    for node in ["nc-1", "nc-2"] {
        cloud.agent(node).unwrap().ensure_running().unwrap();
    }

    cloud
        .cloud
        .nft(&["delete", "table", "inet", "e2eblock"])
        .unwrap();
    open_port_on_db1(&mut cloud, 7777, Duration::from_secs(45));
    cloud.assert_flows(&[allow("i-lb1", "i-db1", 7777)]);
    cloud.assert_flows(&STEADY);
}

#[test]
fn flushed_chain_and_deleted_bridge_table_are_repaired() {
    let cloud = Cloud::start().unwrap();
    let nc1 = cloud.node("nc-1");
    let lb1 = &cloud.instance("i-lb1").ns;
    // An emptied SG chain: the nf_tables monitor sees the flush and the
    // rules come back at once (within a second, not at the next resync).
    nc1.nft(&["flush", "chain", "inet", "edgenet", "sg_sg-db"])
        .unwrap();
    let refilled = probe::wait_until(Duration::from_secs(2), || {
        kernel::nft_chain(nc1, "sg_sg-db")
            .unwrap_or_default()
            .contains("accept")
    });
    assert!(refilled, "chain sg_sg-db not refilled within 2 s");
    cloud.wait_flows(&[allow("i-lb1", "i-db1", 9000)], Duration::from_secs(5));

    // No anti-spoofing table: it is recreated at once, and a spoofed
    // source is dropped again.
    lb1.ip(&["addr", "add", "10.1.0.98/16", "dev", "eth0"])
        .unwrap();
    nc1.nft(&["delete", "table", "bridge", "edgenet"]).unwrap();
    let repaired = probe::wait_until(Duration::from_secs(2), || {
        !kernel::nft_table(nc1, "bridge")
            .unwrap_or_default()
            .is_empty()
    });
    assert!(repaired, "table bridge edgenet not recreated within 2 s");
    sleep(Duration::from_millis(200));
    assert!(
        !probe::ping_from(lb1, Some("10.1.0.98"), "10.1.0.11", 1).unwrap(),
        "anti-spoofing not repaired"
    );
    cloud.assert_flows(&STEADY);
}

/// The MAC web1 has in its neighbour table for the gateway.
fn web1_gateway_mac(cloud: &Cloud) -> String {
    let out = cloud
        .instance("i-web1")
        .ns
        .ip(&["neigh", "show", "10.1.0.1"])
        .unwrap();
    out.split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .unwrap_or_default()
        .to_owned()
}

/// lb1 claims the gateway address and announces it (gratuitous ARP,
/// `arp_notify`): the classic ARP poisoning of its neighbours.
fn lb1_announces_the_gateway(cloud: &Cloud) {
    let lb1 = &cloud.instance("i-lb1").ns;
    lb1.sysctl("net.ipv4.conf.eth0.arp_notify", "1").unwrap();
    let _ = lb1.ip(&["addr", "add", "10.1.0.1/32", "dev", "eth0"]);
    // Setting the MAC (to the same value) is an address change: with
    // arp_notify the kernel announces every address of the interface.
    let mac = &cloud.instance("i-lb1").spec.mac;
    lb1.ip(&["link", "set", "eth0", "address", mac]).unwrap();
    sleep(Duration::from_millis(300));
}

/// web1 learns the gateway afresh, and waits out the ARP lock time so that
/// a later announcement could override the entry.
fn web1_learns_the_gateway(cloud: &Cloud) -> String {
    let web1 = &cloud.instance("i-web1").ns;
    web1.ip(&["neigh", "flush", "dev", "eth0"]).unwrap();
    assert!(probe::ping(web1, "10.1.0.1", 2).unwrap(), "web1 -> gateway");
    sleep(Duration::from_millis(1200));
    web1_gateway_mac(cloud)
}

#[test]
fn arp_announcing_another_address_is_dropped() {
    let options = CloudOptions {
        start_agents: false,
        ..Default::default()
    };
    let mut cloud = Cloud::start_with(options).unwrap();
    let lb1_mac = cloud.instance("i-lb1").spec.mac.clone();
    let nc1 = cloud.node("nc-1");
    // Before edgenetd runs, the harness stands in for the gateway address.
    nc1.ip(&["addr", "add", "10.1.0.1/16", "dev", "br0"])
        .unwrap();

    // Control, unprotected: the announcement poisons web1's gateway entry.
    let gateway_mac = web1_learns_the_gateway(&cloud);
    assert_ne!(gateway_mac, lb1_mac);
    lb1_announces_the_gateway(&cloud);
    assert_eq!(
        web1_gateway_mac(&cloud),
        lb1_mac,
        "control: unprotected, the poisoning should work"
    );

    // With edgenetd's bridge table in place: dropped.
    cloud.start_agent("nc-1").unwrap();
    cloud.start_agent("nc-2").unwrap();
    cloud.wait_converged(CONVERGE).unwrap();
    // lb1 also answers web1's ARP requests for 10.1.0.1 now: dropped too.
    assert_eq!(
        web1_learns_the_gateway(&cloud),
        gateway_mac,
        "lb1's ARP reply for the gateway got through"
    );
    lb1_announces_the_gateway(&cloud);
    assert_eq!(
        web1_gateway_mac(&cloud),
        gateway_mac,
        "lb1's gratuitous ARP for the gateway got through"
    );
}

#[test]
fn drift_while_the_agent_was_down_is_repaired_after_restart() {
    let mut cloud = Cloud::start().unwrap();
    let before = cloud.snapshot("nc-1").unwrap();
    cloud.agent("nc-1").unwrap().kill_hard();
    let nc1 = cloud.node("nc-1");
    nc1.nft(&["delete", "table", "bridge", "edgenet"]).unwrap();
    delete_model_route(nc1);
    cloud.start_agent("nc-1").unwrap();
    let nc1 = cloud.node("nc-1");
    let repaired = probe::wait_until(Duration::from_secs(15), || {
        let now = kernel::Snapshot::take(nc1).unwrap();
        now.routes == before.routes && !now.nft_bridge.is_empty()
    });
    let now = cloud.snapshot("nc-1").unwrap();
    assert!(
        repaired,
        "not repaired after restart:\n{}",
        before.describe_difference(&now)
    );
    cloud.assert_flows(&STEADY);
}

#[test]
fn agents_fail_over_to_a_replica_that_shares_the_token_key() {
    let mut cloud = Cloud::start_with(CloudOptions {
        replica: true,
        ..Default::default()
    })
    .unwrap();
    cloud.kill_server();
    // The first endpoint is gone; its sealed session tokens still open at
    // the replica (shared --token-key), so no new AssumeRole is needed.
    open_port_on_db1(&mut cloud, 7777, Duration::from_secs(45));
    cloud.assert_flows(&[allow("i-lb1", "i-db1", 7777)]);
    cloud.assert_flows(&STEADY);
    let metrics = cloud.server_metrics_on(REPLICA_PORT).unwrap();
    let views = metric_value(&metrics, "edgenet_server_answers_total{kind=\"200\"}");
    assert!(views >= Some(1.0), "the replica sent no view:\n{metrics}");
    let replica_log = cloud.server_log_on(REPLICA_PORT);
    assert!(
        !replica_log.contains("issued temporary credentials"),
        "the replica had to issue credentials (STS lives on the first server only)"
    );
}

#[test]
fn sigterm_stops_the_agent_and_leaves_the_kernel_as_it_is() {
    let mut cloud = Cloud::start().unwrap();
    let before = cloud.snapshot("nc-1").unwrap();
    let agent = cloud.agent("nc-1").unwrap();
    agent.signal(nix::sys::signal::Signal::SIGTERM).unwrap();
    let exited = probe::wait_until(Duration::from_secs(10), || agent.ensure_running().is_err());
    assert!(exited, "edgenetd did not stop on SIGTERM");
    let after = cloud.snapshot("nc-1").unwrap();
    assert!(
        after == before,
        "stopping changed the kernel:\n{}",
        before.describe_difference(&after)
    );
    cloud.assert_flows(&STEADY);
    assert!(internet_reaches_web1(&cloud));
}

#[test]
fn a_node_with_another_nodes_key_gets_nothing() {
    let mut cloud = Cloud::start_with(CloudOptions {
        start_agents: false,
        ..Default::default()
    })
    .unwrap();
    // nc-2 is given nc-1's long-term key (a copied or stolen file).
    let stolen = cloud.dir().join("nc-1.credentials");
    std::fs::copy(&stolen, cloud.dir().join("nc-2.credentials")).unwrap();
    cloud.start_agent("nc-1").unwrap();
    cloud.start_agent("nc-2").unwrap();
    cloud.wait_node_converged("nc-1", CONVERGE).unwrap();
    sleep(Duration::from_secs(3));
    // The key is bound to nc-1: AssumeRole as nc-2 is refused, nothing is
    // applied on nc-2, and the agent keeps running (fail static).
    cloud.agent("nc-2").unwrap().ensure_running().unwrap();
    let nc2 = cloud.snapshot("nc-2").unwrap();
    assert!(
        nc2.nft_inet.is_empty() && nc2.routes.is_empty(),
        "nc-2 applied a view it may not read"
    );
    let log = cloud.agent_log("nc-2");
    assert!(
        log.contains("AccessDenied"),
        "nc-2's log does not show the refusal:\n{log}"
    );
    cloud.assert_flows(&[allow("i-lb1", "i-web1", 80), deny("i-lb1", "i-db1", 5432)]);
}
