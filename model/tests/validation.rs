//! Each class of invalid input, with the exact error it must produce.

use edgenet_model::{parse_model, ModelError};
use serde_json::{json, Value};

const EXAMPLE: &str = include_str!("../../examples/cloud.json");

fn example() -> Value {
    serde_json::from_str(EXAMPLE).unwrap()
}

/// The error lines for `model`, which must be refused.
fn errors_of(model: &Value) -> Vec<String> {
    match parse_model(model.to_string().as_bytes()) {
        Ok(_) => panic!("model was accepted"),
        Err(error) => error.lines(),
    }
}

#[track_caller]
fn assert_refused(model: &Value, expected: &str) {
    let errors = errors_of(model);
    assert!(
        errors.iter().any(|line| line == expected),
        "expected {expected:?} among {errors:#?}"
    );
}

fn instance<'m>(model: &'m mut Value, id: &str) -> &'m mut Value {
    let instances = model["instances"].as_array_mut().unwrap();
    instances.iter_mut().find(|i| i["id"] == id).unwrap()
}

fn rule<'m>(model: &'m mut Value, group: &str, position: usize) -> &'m mut Value {
    let groups = model["security_groups"].as_array_mut().unwrap();
    let group = groups.iter_mut().find(|g| g["id"] == group).unwrap();
    &mut group["ingress"][position]
}

#[test]
fn the_example_is_valid() {
    parse_model(EXAMPLE.as_bytes()).unwrap();
}

#[test]
fn private_ip_outside_its_subnet() {
    let mut model = example();
    instance(&mut model, "i-0a1b2c3d")["private_ip"] = json!("10.9.0.33");
    assert_refused(
        &model,
        "instances[i-0a1b2c3d].private_ip: not inside subnet subnet-a 10.1.0.0/16",
    );
}

#[test]
fn bad_cidr_in_a_rule() {
    let mut model = example();
    rule(&mut model, "sg-web", 0)["cidr"] = json!("0.0.0.0/33");
    assert_refused(
        &model,
        "security_groups[sg-web].ingress[0].cidr: \"0.0.0.0/33\": prefix length out of range",
    );
}

#[test]
fn cidr_with_host_bits() {
    let mut model = example();
    model["subnets"][0]["cidr"] = json!("10.1.0.7/16");
    assert_refused(
        &model,
        "subnets[subnet-a].cidr: \"10.1.0.7/16\": host bits set (the network is 10.1.0.0/16)",
    );
}

#[test]
fn port_out_of_range() {
    let mut model = example();
    rule(&mut model, "sg-web", 0)["from_port"] = json!(70000);
    assert_refused(
        &model,
        "security_groups[sg-web].ingress[0].from_port: 70000 out of range 0..=65535",
    );
}

#[test]
fn port_range_backwards() {
    let mut model = example();
    let rule = rule(&mut model, "sg-admin", 1);
    rule["from_port"] = json!(162);
    rule["to_port"] = json!(161);
    assert_refused(
        &model,
        "security_groups[sg-admin].ingress[1].to_port: 161 is below from_port 162",
    );
}

#[test]
fn ports_on_icmp() {
    let mut model = example();
    rule(&mut model, "sg-web", 2)["from_port"] = json!(8);
    assert_refused(&model, "security_groups[sg-web].ingress[2].from_port: ports are only allowed with tcp or udp, not icmp");
}

#[test]
fn icmp_type_on_tcp() {
    let mut model = example();
    rule(&mut model, "sg-web", 0)["icmp_type"] = json!(8);
    assert_refused(
        &model,
        "security_groups[sg-web].ingress[0].icmp_type: only allowed with icmp, not tcp",
    );
}

#[test]
fn unknown_protocol() {
    let mut model = example();
    rule(&mut model, "sg-web", 0)["protocol"] = json!("tcpp");
    assert_refused(&model, "security_groups[sg-web].ingress[0].protocol: \"tcpp\" is not tcp, udp, icmp, all or a protocol number 0..=255");
}

#[test]
fn protocol_number_out_of_range() {
    let mut model = example();
    rule(&mut model, "sg-web", 3)["protocol"] = json!(256);
    assert_refused(&model, "security_groups[sg-web].ingress[3].protocol: \"256\" is not tcp, udp, icmp, all or a protocol number 0..=255");
}

#[test]
fn rule_with_two_sources() {
    let mut model = example();
    rule(&mut model, "sg-web", 0)["group"] = json!("sg-lb");
    assert_refused(&model, "security_groups[sg-web].ingress[0]: has both cidr and group; a rule has exactly one source");
}

#[test]
fn rule_with_no_source() {
    let mut model = example();
    rule(&mut model, "sg-web", 0)
        .as_object_mut()
        .unwrap()
        .remove("cidr");
    assert_refused(&model, "security_groups[sg-web].ingress[0]: has neither cidr nor group; a rule has exactly one source");
}

#[test]
fn unknown_group_in_a_rule() {
    let mut model = example();
    rule(&mut model, "sg-web", 1)["group"] = json!("sg-nope");
    assert_refused(
        &model,
        "security_groups[sg-web].ingress[1].group: unknown security group sg-nope",
    );
}

#[test]
fn unknown_group_on_an_instance() {
    let mut model = example();
    instance(&mut model, "i-0a1b2c40")["security_groups"] = json!(["sg-web", "sg-ghost"]);
    assert_refused(
        &model,
        "instances[i-0a1b2c40].security_groups[1]: unknown security group sg-ghost",
    );
}

#[test]
fn unknown_node_and_subnet() {
    let mut model = example();
    let target = instance(&mut model, "i-0a1b2c3d");
    target["node"] = json!("nc-9");
    target["subnet"] = json!("subnet-z");
    let errors = errors_of(&model);
    assert!(
        errors.contains(&"instances[i-0a1b2c3d].node: unknown node nc-9".to_string()),
        "{errors:?}"
    );
    assert!(
        errors.contains(&"instances[i-0a1b2c3d].subnet: unknown subnet subnet-z".to_string()),
        "{errors:?}"
    );
}

#[test]
fn duplicate_private_ip() {
    let mut model = example();
    instance(&mut model, "i-0a1b2c40")["private_ip"] = json!("10.1.0.33");
    assert_refused(&model, "instances[i-0a1b2c40].private_ip: 10.1.0.33 is also the private_ip of instances[i-0a1b2c3d]");
}

#[test]
fn duplicate_public_ip() {
    let mut model = example();
    instance(&mut model, "i-0a1b2c40")["public_ip"] = json!("203.0.113.5");
    assert_refused(&model, "instances[i-0a1b2c40].public_ip: 203.0.113.5 is also the public_ip of instances[i-0a1b2c3d]");
}

#[test]
fn duplicate_mac_in_another_case() {
    let mut model = example();
    instance(&mut model, "i-1b2c3d01")["mac"] = json!("D0:0D:0A:1B:2C:3D");
    assert_refused(
        &model,
        "instances[i-1b2c3d01].mac: D0:0D:0A:1B:2C:3D is also the mac of instances[i-0a1b2c3d]",
    );
}

#[test]
fn duplicate_instance_id() {
    let mut model = example();
    let copy = instance(&mut model, "i-0a1b2c3d").clone();
    let mut copy = copy;
    copy["private_ip"] = json!("10.1.0.99");
    copy["mac"] = json!("d0:0d:00:00:00:99");
    copy["interface"] = json!("vn_copy");
    copy.as_object_mut().unwrap().remove("public_ip");
    model["instances"].as_array_mut().unwrap().push(copy);
    assert_refused(&model, "instances[i-0a1b2c3d].id: duplicate instance id");
}

#[test]
fn duplicate_interface_on_one_node() {
    let mut model = example();
    instance(&mut model, "i-0a1b2c40")["interface"] = json!("vn_i-0a1b2c3d");
    assert_refused(&model, "instances[i-0a1b2c40].interface: vn_i-0a1b2c3d is also the interface of instances[i-0a1b2c3d] on node nc-1");
}

#[test]
fn same_interface_on_two_nodes_is_fine() {
    let mut model = example();
    instance(&mut model, "i-1b2c3d01")["interface"] = json!("vn_i-0a1b2c3d");
    parse_model(model.to_string().as_bytes()).unwrap();
}

#[test]
fn public_ip_outside_the_pool() {
    let mut model = example();
    instance(&mut model, "i-0a1b2c3d")["public_ip"] = json!("203.0.113.99");
    assert_refused(
        &model,
        "instances[i-0a1b2c3d].public_ip: 203.0.113.99 is not inside public_ips",
    );
}

#[test]
fn wrong_family_private_ip() {
    let mut model = example();
    instance(&mut model, "i-0a1b2c3d")["private_ip"] = json!("2001:db8::33");
    assert_refused(
        &model,
        "instances[i-0a1b2c3d].private_ip: IPv6 address in IPv4 subnet subnet-a 10.1.0.0/16",
    );
}

#[test]
fn wrong_family_route_gateway() {
    let mut model = example();
    model["routes"][0]["gateway"] = json!("fe80::1");
    assert_refused(
        &model,
        "routes[0].gateway: IPv6 gateway for an IPv4 destination",
    );
}

#[test]
fn wrong_family_metadata_target() {
    let mut model = example();
    model["metadata"]["target_ip"] = json!("2001:db8::11");
    assert_refused(
        &model,
        "metadata.target_ip: IPv6 address for an IPv4 metadata.ip",
    );
}

#[test]
fn route_needs_gateway_or_device() {
    let mut model = example();
    model["routes"][1]
        .as_object_mut()
        .unwrap()
        .remove("gateway");
    assert_refused(&model, "routes[1]: needs a gateway or a device");
}

#[test]
fn route_for_unknown_node() {
    let mut model = example();
    model["routes"][0]["node"] = json!("nc-42");
    assert_refused(&model, "routes[0].node: unknown node nc-42");
}

#[test]
fn multicast_mac() {
    let mut model = example();
    instance(&mut model, "i-0a1b2c3d")["mac"] = json!("01:00:5e:00:00:01");
    assert_refused(&model, "instances[i-0a1b2c3d].mac: \"01:00:5e:00:00:01\": not a unicast MAC address (multicast bit set)");
}

#[test]
fn bad_id_characters() {
    let mut model = example();
    model["nodes"][2]["id"] = json!("nc 3");
    assert_refused(
        &model,
        "nodes[nc 3].id: \"nc 3\" must be 1 to 64 of A-Z a-z 0-9 . _ -",
    );
}

#[test]
fn interface_name_too_long() {
    let mut model = example();
    model["nodes"][0]["bridge"] = json!("a-very-long-bridge");
    assert_refused(
        &model,
        r#"nodes[nc-1].bridge: "a-very-long-bridge" is not a Linux interface name (1 to 15 visible ASCII characters, none of / : " \, not . or ..)"#,
    );
}

#[test]
fn interface_name_that_would_break_out_of_an_nft_string() {
    let mut model = example();
    instance(&mut model, "i-0a1b2c3d")["interface"] = json!("vn\";flush");
    assert_refused(
        &model,
        r#"instances[i-0a1b2c3d].interface: "vn\";flush" is not a Linux interface name (1 to 15 visible ASCII characters, none of / : " \, not . or ..)"#,
    );
}

#[test]
fn overlapping_subnets() {
    let mut model = example();
    model["subnets"][1]["cidr"] = json!("10.0.0.0/8");
    model["subnets"][1]["gateway"] = json!("10.0.0.1");
    assert_refused(
        &model,
        "subnets[subnet-b].cidr: 10.0.0.0/8 overlaps subnet subnet-a 10.1.0.0/16",
    );
}

#[test]
fn gateway_outside_its_subnet() {
    let mut model = example();
    model["subnets"][0]["gateway"] = json!("10.3.0.1");
    assert_refused(
        &model,
        "subnets[subnet-a].gateway: 10.3.0.1 is not inside 10.1.0.0/16",
    );
}

#[test]
fn unsupported_schema() {
    let mut model = example();
    model["schema"] = json!(2);
    assert_refused(&model, "schema: unsupported schema 2, expected 1");
}

#[test]
fn metadata_port_zero() {
    let mut model = example();
    model["metadata"]["port"] = json!(0);
    assert_refused(&model, "metadata.port: 0 out of range 1..=65535");
}

#[test]
fn every_error_is_collected_not_just_the_first() {
    let mut model = example();
    instance(&mut model, "i-0a1b2c3d")["private_ip"] = json!("10.9.0.33");
    rule(&mut model, "sg-web", 0)["from_port"] = json!(-1);
    model["routes"][0]["node"] = json!("nc-42");
    assert_eq!(errors_of(&model).len(), 3, "{:#?}", errors_of(&model));
}

#[test]
fn unknown_field_is_named_with_the_entity_id() {
    let mut model = example();
    instance(&mut model, "i-0a1b2c3d")["colour"] = json!("blue");
    let error = parse_model(model.to_string().as_bytes()).unwrap_err();
    let ModelError::Parse { path, message } = &error else {
        panic!("expected a parse error, got {error}");
    };
    assert_eq!(path, "instances[i-0a1b2c3d].colour");
    assert!(message.starts_with("unknown field `colour`"), "{message}");
}

#[test]
fn explicit_null_metadata_is_refused() {
    let mut model = example();
    model["metadata"] = Value::Null;
    let error = parse_model(model.to_string().as_bytes()).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("metadata: invalid type: null"),
        "{error}"
    );
}

#[test]
fn wrong_json_type_names_the_field() {
    let mut model = example();
    rule(&mut model, "sg-web", 0)["from_port"] = json!("22");
    let error = parse_model(model.to_string().as_bytes()).unwrap_err();
    assert!(
        error.to_string().starts_with(
            "security_groups[sg-web].ingress[0].from_port: invalid type: string \"22\""
        ),
        "{error}"
    );
}

#[test]
fn truncated_json_is_a_parse_error() {
    let error = parse_model(&EXAMPLE.as_bytes()[..EXAMPLE.len() / 2]).unwrap_err();
    assert!(matches!(error, ModelError::Parse { .. }), "{error}");
}

#[test]
fn trailing_garbage_is_refused() {
    let text = format!("{EXAMPLE} {{}}");
    let error = parse_model(text.as_bytes()).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("document: trailing characters"),
        "{error}"
    );
}
