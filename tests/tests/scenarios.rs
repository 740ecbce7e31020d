//! Scenarios of the cloud, asserted with real packets between namespaces.
//! Each test builds its own cloud (see `src/cloud.rs`, fixture
//! `fixtures/cloud.json`), so they run in parallel.
//! Needs root, `ip`/`nft`/`ping` (tests/setup.sh) and `cargo build --bins`.

use std::time::Duration;

use edgenet_e2e::cloud::{allow, deny, sock, Cloud, CloudOptions, INTERNET_IP};
use edgenet_e2e::probe::ArrivalCounter;
use edgenet_e2e::{http, kernel, model, probe};

const CONVERGE: Duration = Duration::from_secs(20);

#[test]
fn security_groups_allow_and_deny_by_cidr_rule_on_one_node_and_across() {
    let cloud = Cloud::start().unwrap();
    cloud.assert_flows(&[
        // sg-db: tcp 9000 from 10.1.0.0/16 (subnet-a, on nc-1).
        allow("i-lb1", "i-db1", 9000), // same node, source inside
        deny("i-lb2", "i-db2", 9000),  // same node, source outside
        allow("i-lb1", "i-db2", 9000), // across nodes, inside
        deny("i-lb2", "i-db1", 9000),  // across nodes, outside
        // sg-web: tcp 22 from 0.0.0.0/0; nothing opens 7777.
        allow("i-db1", "i-web1", 22),
        allow("i-db2", "i-web1", 22),
        deny("i-lb1", "i-web1", 7777),
        deny("i-lb2", "i-web1", 7777),
    ]);
    // sg-web: icmp echo from 10.0.0.0/8; sg-db/sg-admin: no icmp at all.
    let lb1 = &cloud.instance("i-lb1").ns;
    let lb2 = &cloud.instance("i-lb2").ns;
    assert!(
        probe::ping(lb1, "10.1.0.11", 2).unwrap(),
        "lb1 -> web1 echo (same node) must pass"
    );
    assert!(
        probe::ping(lb2, "10.1.0.11", 2).unwrap(),
        "lb2 -> web1 echo (across) must pass"
    );
    assert!(
        !probe::ping(lb1, "10.1.0.13", 1).unwrap(),
        "lb1 -> db1 echo must be dropped"
    );
    assert!(
        !probe::ping(lb1, "10.2.0.13", 1).unwrap(),
        "lb1 -> db2 echo must be dropped"
    );
}

#[test]
fn security_groups_allow_and_deny_by_group_rule_on_one_node_and_across() {
    let cloud = Cloud::start().unwrap();
    cloud.assert_flows(&[
        // sg-db: tcp 5432 from group sg-web (web1, web2).
        allow("i-web1", "i-db1", 5432),
        deny("i-lb1", "i-db1", 5432),
        allow("i-web2", "i-db1", 5432),
        deny("i-lb2", "i-db1", 5432),
        // sg-web: tcp 80 from group sg-lb (lb1, lb2).
        allow("i-lb1", "i-web1", 80),
        deny("i-db1", "i-web1", 80),
        allow("i-lb1", "i-web2", 80),
        deny("i-db1", "i-web2", 80),
        allow("i-lb2", "i-web1", 80),
    ]);
}

#[test]
fn public_ip_dnat_from_internet_and_snat_of_instance_traffic() {
    let cloud = Cloud::start().unwrap();
    let nc1 = cloud.node("nc-1");
    assert!(
        kernel::has_address(nc1, "eth0", "203.0.113.5/32").unwrap(),
        "public IP on nc-1 eth0"
    );
    let timeout = Duration::from_secs(2);
    let internet = &cloud.internet;
    let dnat = |ip: &str, port| probe::tcp_connect(internet, sock(ip, port).unwrap(), timeout);
    assert_eq!(dnat("203.0.113.5", 22).unwrap(), "i-web1", "DNAT to web1");
    assert_eq!(dnat("203.0.113.6", 22).unwrap(), "i-web2", "DNAT to web2");
    assert!(
        dnat("203.0.113.5", 80).is_err(),
        "sg-web opens 80 to sg-lb only, not to the internet"
    );

    let responder = cloud.internet_responder(8080).unwrap();
    for (inst, public) in [("i-web1", "203.0.113.5"), ("i-web2", "203.0.113.6")] {
        let ns = &cloud.instance(inst).ns;
        let greeting = probe::tcp_connect(ns, responder.addr(), timeout).unwrap();
        assert_eq!(greeting, "internet");
        let seen = responder.peers().last().unwrap().ip().to_string();
        assert_eq!(
            seen, public,
            "{inst}'s traffic to the internet must leave with its public IP"
        );
    }
    assert_eq!(INTERNET_IP, responder.addr().ip().to_string());
}

#[test]
fn metadata_address_reaches_the_responder() {
    let cloud = Cloud::start().unwrap();
    // With and without a public IP, on both nodes.
    for inst in ["i-web1", "i-db1", "i-web2", "i-lb2"] {
        let ns = &cloud.instance(inst).ns;
        let addr = sock("169.254.169.254", 80).unwrap();
        let r = http::get(ns, addr, "/latest/meta-data/", &[], Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("{inst}: metadata: {e:#}"));
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "metadata-ok\n"),
            "{inst}"
        );
    }
}

#[test]
fn anti_spoofing_drops_spoofed_source_ip_and_spoofed_source_mac() {
    let cloud = Cloud::start().unwrap();
    let lb1 = &cloud.instance("i-lb1").ns;
    let web1 = &cloud.instance("i-web1").ns;
    // Control: lb1 may ping web1 (sg-web: echo from 10.0.0.0/8).
    assert!(
        probe::ping(lb1, "10.1.0.11", 2).unwrap(),
        "control ping lb1 -> web1"
    );

    // Spoofed source IP: lb1 claims 10.1.0.99 (inside the SG's CIDR, so
    // only anti-spoofing can stop it).
    let spoofed_ip_arrivals = ArrivalCounter::install(web1, "spoofed_ip", "10.1.0.99").unwrap();
    lb1.ip(&["addr", "add", "10.1.0.99/16", "dev", "eth0"])
        .unwrap();
    assert!(!probe::ping_from(lb1, Some("10.1.0.99"), "10.1.0.11", 1).unwrap());
    let src = "10.1.0.99".parse().unwrap();
    let tcp = probe::tcp_connect_from(
        lb1,
        src,
        cloud.addr_of("i-web1", 22),
        Duration::from_secs(1),
    );
    assert!(
        tcp.is_err(),
        "TCP from a spoofed source IP must not connect"
    );
    assert_eq!(
        spoofed_ip_arrivals.packets().unwrap(),
        0,
        "packets from the spoofed IP reached web1"
    );
    lb1.ip(&["addr", "del", "10.1.0.99/16", "dev", "eth0"])
        .unwrap();

    // Spoofed source MAC: lb1's own IP, another MAC.
    let real_mac = cloud.instance("i-lb1").spec.mac.clone();
    lb1.ip(&["link", "set", "eth0", "address", "d0:0d:01:00:00:99"])
        .unwrap();
    let own_ip_arrivals = ArrivalCounter::install(web1, "spoofed_mac", "10.1.0.12").unwrap();
    assert!(
        !probe::ping(lb1, "10.1.0.11", 1).unwrap(),
        "ping from a spoofed MAC must be dropped"
    );
    let arrived = own_ip_arrivals.packets().unwrap();
    lb1.ip(&["link", "set", "eth0", "address", &real_mac])
        .unwrap();
    assert_eq!(arrived, 0, "frames from the spoofed MAC reached web1");
    // And back with its own MAC it works again: the MAC was the reason.
    assert!(probe::wait_until(Duration::from_secs(5), || probe::ping(
        lb1,
        "10.1.0.11",
        1
    )
    .unwrap()));
}

/// How many views the agent has received (polls answered 200): a node
/// whose view did not change must not be woken with one.
fn views_received(cloud: &Cloud, node: &str) -> f64 {
    let metrics = cloud.agent_metrics(node).unwrap();
    let series = "edgenetd_polls_total{outcome=\"view\"}";
    edgenet_e2e::cloud::metric_value(&metrics, series)
        .unwrap_or_else(|| panic!("{node}: no {series} in metrics:\n{metrics}"))
}

#[test]
fn live_change_opens_and_closes_a_port_on_the_changed_node_only() {
    let mut cloud = Cloud::start().unwrap();
    let closed = [deny("i-lb1", "i-db1", 7777), deny("i-lb2", "i-db1", 7777)];
    cloud.assert_flows(&closed);
    let nc2_before = cloud.snapshot("nc-2").unwrap();
    let nc2_views = views_received(&cloud, "nc-2");
    let nc1_views = views_received(&cloud, "nc-1");
    let nc2_state = cloud.applied_state_id("nc-2");
    let nc1_before = cloud.snapshot("nc-1").unwrap();

    // sg-admin is used on nc-1 only (i-db1).
    let rule = model::tcp_rule(7777, "10.0.0.0/8");
    let mut changed = cloud.model.clone();
    model::add_rule(&mut changed, "sg-admin", rule.clone()).unwrap();
    cloud.write_model(changed).unwrap();
    cloud.wait_node_converged("nc-1", CONVERGE).unwrap();
    cloud.assert_flows(&[allow("i-lb1", "i-db1", 7777), allow("i-lb2", "i-db1", 7777)]);
    assert_ne!(
        cloud.snapshot("nc-1").unwrap(),
        nc1_before,
        "nc-1 must have changed"
    );

    let mut reverted = cloud.model.clone();
    model::remove_rule(&mut reverted, "sg-admin", &rule).unwrap();
    cloud.write_model(reverted).unwrap();
    cloud.wait_node_converged("nc-1", CONVERGE).unwrap();
    cloud.assert_flows(&closed);

    // nc-2's view never changed: it applied nothing, touched nothing.
    let nc2_after = cloud.snapshot("nc-2").unwrap();
    assert!(
        nc2_after == nc2_before,
        "nc-2 changed:\n{}",
        nc2_before.describe_difference(&nc2_after)
    );
    assert_eq!(
        views_received(&cloud, "nc-2"),
        nc2_views,
        "nc-2 was sent a view"
    );
    let nc1_views_after = views_received(&cloud, "nc-1");
    assert!(
        nc1_views_after >= nc1_views + 2.0,
        "nc-1 must be sent both changes"
    );
    assert_eq!(cloud.applied_state_id("nc-2"), nc2_state);

    // The agents' feedback reached the server: both nodes converged.
    let converged = probe::wait_until(Duration::from_secs(10), || {
        cloud.describe_node_status().is_ok_and(|s| {
            s["Nodes"].as_array().is_some_and(|nodes| {
                nodes.len() == 2 && nodes.iter().all(|n| n["Converged"] == true)
            })
        })
    });
    assert!(
        converged,
        "server status: {:?}",
        cloud.describe_node_status()
    );
}

fn has_route(routes: &[serde_json::Value], dst: &str, gateway: &str, metric: u64) -> bool {
    routes.iter().any(|r| {
        r["dst"] == dst && r["gateway"] == gateway && r["metric"].as_u64().unwrap_or(0) == metric
    })
}

#[test]
fn model_routes_carry_protocol_159_and_foreign_routes_stay() {
    let mut cloud = Cloud::start_with(CloudOptions {
        start_agents: false,
        ..Default::default()
    })
    .unwrap();
    let nc1 = cloud.node("nc-1");
    // Foreign routes, one with the same destination as a model route.
    nc1.ip(&[
        "route",
        "add",
        "10.200.0.0/16",
        "via",
        INTERNET_IP,
        "metric",
        "300",
        "proto",
        "static",
    ])
    .unwrap();
    nc1.ip(&[
        "route",
        "add",
        "10.250.0.0/16",
        "via",
        INTERNET_IP,
        "proto",
        "boot",
    ])
    .unwrap();
    let foreign_before = nc1.ip(&["route", "show", "proto", "static"]).unwrap()
        + &nc1.ip(&["route", "show", "proto", "boot"]).unwrap();
    cloud.start_agent("nc-1").unwrap();
    cloud.start_agent("nc-2").unwrap();
    cloud.wait_converged(CONVERGE).unwrap();

    let nc1 = cloud.node("nc-1");
    let ours = kernel::routes(nc1, &["proto", "159"]).unwrap();
    assert!(
        has_route(&ours, "10.200.0.0/16", "192.168.100.2", 100),
        "nc-1 routes: {ours:?}"
    );
    assert!(
        has_route(&ours, "10.111.0.0/16", "192.168.100.2", 50),
        "nc-1 routes: {ours:?}"
    );
    assert_eq!(ours.len(), 2, "nc-1 proto 159 routes: {ours:?}");
    let nc2_ours = kernel::routes(cloud.node("nc-2"), &["proto", "159"]).unwrap();
    assert!(
        has_route(&nc2_ours, "10.111.0.0/16", "192.168.100.2", 50),
        "nc-2 routes: {nc2_ours:?}"
    );
    assert_eq!(
        nc2_ours.len(),
        1,
        "nc-2 has only the all-nodes route: {nc2_ours:?}"
    );
    let foreign = |ns: &edgenet_e2e::Netns| {
        ns.ip(&["route", "show", "proto", "static"]).unwrap()
            + &ns.ip(&["route", "show", "proto", "boot"]).unwrap()
    };
    assert_eq!(foreign(nc1), foreign_before, "foreign routes changed");
    assert!(
        kernel::has_address(nc1, "br0", "10.1.0.1/16").unwrap(),
        "gateway on nc-1 br0"
    );
    assert!(
        kernel::has_address(cloud.node("nc-2"), "br0", "10.2.0.1/16").unwrap(),
        "gateway on nc-2 br0"
    );

    // Removing the model route removes ours only.
    let mut changed = cloud.model.clone();
    changed["routes"]
        .as_array_mut()
        .unwrap()
        .retain(|r| r["destination"] != "10.200.0.0/16");
    cloud.write_model(changed).unwrap();
    cloud.wait_node_converged("nc-1", CONVERGE).unwrap();
    let nc1 = cloud.node("nc-1");
    let ours = kernel::routes(nc1, &["proto", "159"]).unwrap();
    assert!(
        !has_route(&ours, "10.200.0.0/16", "192.168.100.2", 100),
        "model route must go: {ours:?}"
    );
    assert_eq!(foreign(nc1), foreign_before, "foreign routes changed");
}

#[test]
fn group_membership_change_reaches_the_other_node() {
    let mut cloud = Cloud::start().unwrap();
    // sg-web (web2, on nc-2) opens 80 to members of sg-lb only.
    cloud.assert_flows(&[deny("i-db1", "i-web2", 80), allow("i-lb1", "i-web2", 80)]);
    let nc2_before = cloud.snapshot("nc-2").unwrap();

    // db1 (on nc-1) joins sg-lb: nc-2's view changes through group_members.
    let mut changed = cloud.model.clone();
    let db1 = changed["instances"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|i| i["id"] == "i-db1")
        .unwrap();
    db1["security_groups"]
        .as_array_mut()
        .unwrap()
        .push("sg-lb".into());
    cloud.write_model(changed).unwrap();
    cloud.wait_converged(CONVERGE).unwrap();
    cloud.assert_flows(&[allow("i-db1", "i-web2", 80), allow("i-db1", "i-web1", 80)]);
    // Only a set element changed on nc-2: its rules were not rewritten
    // (but for the rule that records the applied state id).
    let nc2_after = cloud.snapshot("nc-2").unwrap();
    assert_ne!(
        nc2_after.nft_inet, nc2_before.nft_inet,
        "nc-2's sg-lb set must have grown"
    );
    let chains = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| l.contains("# handle") && !l.contains("edgenet-state:"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        chains(&nc2_after.nft_inet),
        chains(&nc2_before.nft_inet),
        "nc-2 rewrote rules for a member change"
    );
}

#[test]
fn status_reads_the_applied_state_back_from_the_kernel() {
    let cloud = Cloud::start().unwrap();
    for node in ["nc-1", "nc-2"] {
        let config = cloud.agent_config_path(node).display().to_string();
        let edgenetd = edgenet_e2e::prereq::require_binary("edgenetd").unwrap();
        let out = cloud
            .node(node)
            .exec_unchecked(
                &edgenetd.to_string_lossy(),
                &["status", "--config", &config, "--output", "json"],
            )
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{node}: status not in sync: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(status["node"], node);
        assert_eq!(
            status["applied_state_id"],
            cloud.expected_state_id(node).unwrap().as_str()
        );
        assert_eq!(status["drift"], serde_json::json!([]), "{node}: {status}");
        // Ours: the public IPs (host routes on eth0) and the gateways on
        // br0; not the underlay address nor any link-local one.
        let global = |dev: &str| {
            let args = ["-o", "addr", "show", "dev", dev, "scope", "global"];
            cloud.node(node).exec("ip", &args).unwrap()
        };
        let public = global("eth0")
            .lines()
            .filter(|l| l.contains("/32 ") || l.contains("/128 "))
            .count();
        let gateways = global("br0").lines().count();
        assert!(public + gateways > 0);
        assert_eq!(
            status["objects"]["address"],
            public + gateways,
            "{node}: {status}"
        );
    }
}

#[test]
fn public_ip_moves_to_an_instance_on_the_other_node() {
    let mut cloud = Cloud::start().unwrap();
    let internet = &cloud.internet;
    let timeout = Duration::from_secs(2);
    let reach = |port| probe::tcp_connect(internet, sock("203.0.113.5", port).unwrap(), timeout);
    assert_eq!(reach(22).unwrap(), "i-web1");

    // 203.0.113.5 goes from i-web1 (nc-1) to i-lb2 (nc-2).
    let mut changed = cloud.model.clone();
    for inst in changed["instances"].as_array_mut().unwrap() {
        if inst["id"] == "i-web1" {
            inst.as_object_mut().unwrap().remove("public_ip");
        } else if inst["id"] == "i-lb2" {
            inst["public_ip"] = "203.0.113.5".into();
        }
    }
    cloud.write_model(changed).unwrap();
    cloud.wait_converged(CONVERGE).unwrap();
    assert!(!kernel::has_address(cloud.node("nc-1"), "eth0", "203.0.113.5/32").unwrap());
    assert!(kernel::has_address(cloud.node("nc-2"), "eth0", "203.0.113.5/32").unwrap());
    // Only instances changed: each node rendered just those (the packets
    // below check what that pass wrote).
    for node in ["nc-1", "nc-2"] {
        let metrics = cloud.agent_metrics(node).unwrap();
        let series = "edgenetd_render_passes_total{render=\"incremental\"}";
        let passes = edgenet_e2e::cloud::metric_value(&metrics, series);
        assert!(
            passes.is_some_and(|n| n >= 1.0),
            "{node}: {series}:\n{metrics}"
        );
    }
    let internet = &cloud.internet;
    // The internet's ARP entry still names nc-1's MAC: edgenetd sends no
    // gratuitous ARP for a moved address (docs/dataplane.md asks for none), so
    // a router re-resolves only once its entry goes stale. Forget it now
    // rather than wait for that.
    internet.ip(&["neigh", "flush", "dev", "eth0"]).unwrap();
    let reach = |port| probe::tcp_connect(internet, sock("203.0.113.5", port).unwrap(), timeout);
    assert_eq!(reach(80).unwrap(), "i-lb2", "sg-lb opens 80 to everyone");
    assert!(reach(22).is_err(), "sg-lb does not open 22");
    // And lb2 now leaves with it.
    let responder = cloud.internet_responder(8080).unwrap();
    probe::tcp_connect(&cloud.instance("i-lb2").ns, responder.addr(), timeout).unwrap();
    assert_eq!(
        responder.peers().last().unwrap().ip().to_string(),
        "203.0.113.5"
    );
}

/// The fixture plus an IPv6 subnet on nc-1 with three instances.
fn dual_stack_model() -> serde_json::Value {
    let mut m = model::fixture().unwrap();
    let subnet =
        serde_json::json!({"id": "subnet-v6", "cidr": "fd00:1::/64", "gateway": "fd00:1::1"});
    m["subnets"].as_array_mut().unwrap().push(subnet);
    for (id, ip, mac, group) in [
        ("i-v6web", "fd00:1::11", "d0:0d:06:00:00:11", "sg-web"),
        ("i-v6lb", "fd00:1::12", "d0:0d:06:00:00:12", "sg-lb"),
        ("i-v6db", "fd00:1::13", "d0:0d:06:00:00:13", "sg-db"),
    ] {
        let inst = serde_json::json!({
            "id": id, "node": "nc-1", "subnet": "subnet-v6", "interface": format!("vn_{id}"),
            "mac": mac, "private_ip": ip, "security_groups": [group]
        });
        m["instances"].as_array_mut().unwrap().push(inst);
    }
    // An IPv6 CIDR rule next to sg-db's IPv4 one.
    model::add_rule(&mut m, "sg-db", model::tcp_rule(9000, "fd00:1::/64")).unwrap();
    m
}

#[test]
fn ipv6_instances_get_security_groups_by_group_and_cidr_rule() {
    let cloud = Cloud::start_with(CloudOptions {
        model: dual_stack_model(),
        ..Default::default()
    })
    .unwrap();
    cloud.assert_flows(&[
        // sg-web: tcp 80 from group sg-lb (its IPv6 member i-v6lb).
        allow("i-v6lb", "i-v6web", 80),
        deny("i-v6db", "i-v6web", 80),
        // sg-db: tcp 9000 from fd00:1::/64.
        allow("i-v6lb", "i-v6db", 9000),
        allow("i-v6web", "i-v6db", 9000),
        // Nothing opens 7777.
        deny("i-v6lb", "i-v6web", 7777),
    ]);
    // The IPv4 side is unaffected.
    cloud.assert_flows(&[allow("i-lb1", "i-web1", 80), deny("i-lb1", "i-db1", 5432)]);
}
