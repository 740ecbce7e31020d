//! Tests of the full render against the example view and hostile ones.

use edgenet_model::Rule;

use super::*;
use crate::diff::diff;

fn example_view() -> NodeView {
    serde_json::from_str(include_str!("../dataplane/testdata/view-nc-1.json")).unwrap()
}

fn inet(state: &KernelState) -> &NftTable {
    state.table(Family::Inet).unwrap()
}

fn rule_texts(chain: &NftChain) -> Vec<String> {
    chain.rules.iter().map(|r| r.text()).collect()
}

#[test]
fn example_view_renders_as_dataplane_md_describes() {
    let rendered = render(&example_view(), &RenderSettings::default());
    assert!(rendered.left_out.is_empty(), "{:?}", rendered.left_out);
    let state = &rendered.desired;
    let table = inet(state);
    assert_eq!(
        rule_texts(&table.chains["sg_sg-web"]),
        [
            "meta nfproto ipv4 meta l4proto 6 tcp dport 22 accept",
            "ip saddr @grp_sg-lb meta l4proto 6 tcp dport 80 accept",
            "ip6 saddr @grp6_sg-lb meta l4proto 6 tcp dport 80 accept",
            "ip saddr 10.0.0.0/8 meta l4proto 1 icmp type 8 accept",
            "ip saddr @grp_sg-web accept",
            "ip6 saddr @grp6_sg-web accept",
        ]
    );
    assert_eq!(
        rule_texts(&table.chains["in_i-0a1b2c3d"]),
        ["jump sg_sg-web", "drop"]
    );
    assert_eq!(
        table.sets["instances"].elements["10.1.0.33"].as_deref(),
        Some("jump in_i-0a1b2c3d")
    );
    assert_eq!(
        table.sets["dnat4"].elements["203.0.113.5"].as_deref(),
        Some("10.1.0.33")
    );
    assert_eq!(
        table.sets["snat4"].elements["10.1.0.33"].as_deref(),
        Some("203.0.113.5")
    );
    assert!(table.sets["grp_sg-lb"].elements.contains_key("10.1.0.40"));
    assert_eq!(
        rule_texts(&table.chains["nat_prerouting"])[0],
        "ip daddr 169.254.169.254 meta l4proto 6 tcp dport 80 dnat ip to 10.111.5.11:8773"
    );
    let addresses: Vec<String> = state.addresses.iter().map(|a| a.to_string()).collect();
    assert_eq!(
        addresses,
        ["10.1.0.1/16 dev br0", "203.0.113.5/32 dev eth0"]
    );
    let (key, route) = state.routes.iter().next().unwrap();
    assert_eq!(
        route.describe(key),
        "10.2.0.0/16 via 10.1.0.254 metric 100 proto 159"
    );
    let bridge = state.table(Family::Bridge).unwrap();
    assert_eq!(
        rule_texts(&bridge.chains[BRIDGE_PREROUTING_CHAIN]),
        [
            "meta iifname @spoof_ports meta iifname . ether saddr != @port_macs drop",
            "meta iifname @spoof_ports meta iifname . arp saddr ether != @port_macs drop",
            "meta iifname @spoof_ports meta iifname . arp saddr ip != @port_ips4 drop",
            "meta iifname @spoof_ports ip saddr 0.0.0.0 udp dport 67 accept",
            "meta iifname @spoof_ports meta iifname . ip saddr != @port_ips4 drop",
            "meta iifname @spoof_ports meta iifname . ip6 saddr != @port_ips6 \
             ip6 saddr != fe80::/10 ip6 saddr != :: drop",
        ]
    );
    let members = |set: &str| -> Vec<&str> {
        bridge.sets[set]
            .elements
            .keys()
            .map(ElemText::as_str)
            .collect()
    };
    assert_eq!(members(SPOOF_PORTS_SET), ["vn_i-0a1b2c3d"]);
    assert_eq!(
        members(PORT_MACS_SET),
        ["vn_i-0a1b2c3d . d0:0d:0a:1b:2c:3d"]
    );
    assert_eq!(members(PORT_IPS4_SET), ["vn_i-0a1b2c3d . 10.1.0.33"]);
}

#[test]
fn render_is_deterministic_and_diffs_empty_against_itself() {
    let a = render(&example_view(), &RenderSettings::default()).desired;
    let b = render(&example_view(), &RenderSettings::default()).desired;
    assert_eq!(a, b);
    assert!(diff(&a, &b).is_empty());
}

#[test]
fn bad_entities_are_left_out_and_reported_the_rest_renders() {
    let mut view = example_view();
    let mut bad = view.instances[0].clone();
    bad.id = "i-bad".into();
    bad.private_ip = "10.1.0.34".into();
    bad.public_ip = Some("192.0.2.1".into()); // outside the pool
    bad.interface = "vn_i-bad".into();
    bad.mac = "d0:0d:00:00:00:01".into();
    view.instances.push(bad);
    let mut unparsable = view.instances[0].clone();
    unparsable.id = "i-junk".into();
    unparsable.private_ip = "10.1.0.999".into();
    view.instances.push(unparsable);
    view.security_groups[0]
        .ingress
        .as_mut()
        .unwrap()
        .push(Rule {
            cidr: Some("10.0.0.0/8".into()),
            from_port: Some(70000),
            group: None,
            icmp_code: None,
            icmp_type: None,
            protocol: edgenet_model::Protocol::Name("tcp".into()),
            to_port: None,
        });
    view.routes[0].gateway = Some("not-an-ip".into());
    let rendered = render(&view, &RenderSettings::default());
    assert_eq!(
        rendered.left_out,
        [
            "instances[i-bad].public_ip: not inside public_ips: 192.0.2.1",
            "instances[i-junk].private_ip: not an IP address: \"10.1.0.999\"",
            "security_groups[sg-web].ingress[4].from_port: out of range (rule left out)",
            "routes[10.2.0.0/16].gateway: not an address of the destination's family: \"not-an-ip\"",
        ]
    );
    let table = inet(&rendered.desired);
    // Fail closed: the bad instance's IP is mapped to drop.
    assert_eq!(
        table.sets["instances"].elements["10.1.0.34"].as_deref(),
        Some(DROP_VALUE)
    );
    assert!(!table.chains.contains_key("in_i-bad"));
    // The good instance is unaffected.
    assert!(table.chains.contains_key("in_i-0a1b2c3d"));
    assert_eq!(table.chains["sg_sg-web"].rules.len(), 6);
    assert!(rendered.desired.routes.is_empty());
}

#[test]
fn instances_removed_before_render_fail_closed() {
    let view = example_view();
    let mut sanitized = view.clone();
    let removed = vec![sanitized.instances.pop().unwrap()];
    let mut state = render(&sanitized, &RenderSettings::default()).desired;
    let mut other = removed[0].clone();
    other.private_ip = "not an ip".into();
    fail_closed_for(&mut state, &[removed[0].clone(), other]);
    assert_eq!(
        inet(&state).sets["instances"].elements["10.1.0.33"].as_deref(),
        Some(DROP_VALUE)
    );
    // An instance still in the view keeps its jump.
    let mut full = render(&view, &RenderSettings::default()).desired;
    fail_closed_for(&mut full, &removed);
    assert_eq!(
        inet(&full).sets["instances"].elements["10.1.0.33"].as_deref(),
        Some("jump in_i-0a1b2c3d")
    );
}

#[test]
fn hostile_strings_never_reach_the_kernel() {
    let mut view = example_view();
    view.instances[0].interface = "eth0\" ; flush ruleset".into();
    view.instances[0].security_groups = Some(vec!["sg web".into()]);
    view.node.public_interface = "a/b".into();
    let rendered = render(&view, &RenderSettings::default());
    assert_eq!(rendered.left_out.len(), 2, "{:?}", rendered.left_out);
    let table = inet(&rendered.desired);
    assert_eq!(
        table.sets["instances"].elements["10.1.0.33"].as_deref(),
        Some(DROP_VALUE)
    );
}

#[test]
fn ipv6_instances_use_the_v6_maps() {
    let mut view = example_view();
    view.subnets.push(edgenet_model::Subnet {
        id: "subnet-6".into(),
        cidr: "2001:db8:1::/64".into(),
        gateway: Some("2001:db8:1::1".into()),
    });
    view.public_ips.push("2001:db8:ff::/120".into());
    let mut six = view.instances[0].clone();
    six.id = "i-six".into();
    six.subnet = "subnet-6".into();
    six.private_ip = "2001:db8:1::10".into();
    six.public_ip = Some("2001:db8:ff::5".into());
    six.interface = "vn_i-six".into();
    six.mac = "d0:0d:00:00:00:06".into();
    view.instances.push(six);
    let rendered = render(&view, &RenderSettings::default());
    assert!(rendered.left_out.is_empty(), "{:?}", rendered.left_out);
    let table = inet(&rendered.desired);
    assert_eq!(
        table.sets["instances6"].elements["2001:db8:1::10"].as_deref(),
        Some("jump in_i-six")
    );
    assert!(table.sets["dnat6"].elements.contains_key("2001:db8:ff::5"));
    assert!(rendered
        .desired
        .addresses
        .iter()
        .any(|a| a.to_string() == "2001:db8:ff::5/128 dev eth0"));
}

/// Render reads MACs by the model's rule, and writes them in the form the
/// kernel lists them in, so that a listed set compares equal.
#[test]
fn macs_are_read_by_the_models_rule_and_written_as_the_kernel_prints_them() {
    let mut view = example_view();
    view.instances[0].mac = "D0:0D:0A:1B:2C:3D".into();
    let rendered = render(&view, &RenderSettings::default());
    assert!(rendered.left_out.is_empty(), "{:?}", rendered.left_out);
    let bridge = rendered.desired.table(Family::Bridge).unwrap();
    assert!(bridge.sets[PORT_MACS_SET]
        .elements
        .contains_key("vn_i-0a1b2c3d . d0:0d:0a:1b:2c:3d"));
    assert_eq!(rendered.usage.macs, HashSet::from([0xd00d_0a1b_2c3d_u64]));

    view.instances[0].mac = "d0:+d:0a:1b:2c:3d".into();
    let rendered = render(&view, &RenderSettings::default());
    assert_eq!(
        rendered.left_out,
        ["instances[i-0a1b2c3d].mac: not a unicast MAC address: \"d0:+d:0a:1b:2c:3d\""]
    );
    assert_eq!(
        inet(&rendered.desired).sets["instances"].elements["10.1.0.33"].as_deref(),
        Some(DROP_VALUE)
    );
}
