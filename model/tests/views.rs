//! Node views and state ids: the properties docs/model.md promises.

use std::sync::Arc;

use edgenet_model::synthetic::{generate, Shape};
use edgenet_model::*;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::Value;

const EXAMPLE: &str = include_str!("../../examples/cloud.json");

fn shapes() -> impl Strategy<Value = Shape> {
    (1usize..6, 0usize..60, 1usize..8, any::<u64>()).prop_map(|(nodes, instances, groups, seed)| {
        Shape {
            nodes,
            instances,
            groups,
            seed,
        }
    })
}

fn ids(model: &CloudModel) -> Vec<(String, StateId)> {
    let index = ModelIndex::build(Arc::new(model.clone()));
    let mut ids: Vec<_> = model
        .nodes
        .iter()
        .map(|n| (n.id.clone(), index.state_id(&n.id).unwrap().clone()))
        .collect();
    ids.sort();
    ids
}

fn shuffled(model: &CloudModel, seed: u64) -> CloudModel {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model = model.clone();
    model.instances.shuffle(&mut rng);
    model.nodes.shuffle(&mut rng);
    model.subnets.shuffle(&mut rng);
    model.security_groups.shuffle(&mut rng);
    model.public_ips.shuffle(&mut rng);
    for instance in &mut model.instances {
        if let Some(groups) = instance.security_groups.as_mut() {
            groups.shuffle(&mut rng);
        }
    }
    // Routes are distinct in a valid model, so any order is a reordering.
    model.routes.shuffle(&mut rng);
    model
}

/// An independent RFC 8785 writer, to check the fragments' key order.
fn jcs(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
            let body: Vec<String> = entries
                .into_iter()
                .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), jcs(v)))
                .collect();
            format!("{{{}}}", body.join(","))
        }
        Value::Array(items) => format!("[{}]", items.iter().map(jcs).collect::<Vec<_>>().join(",")),
        scalar => scalar.to_string(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn reordering_the_model_keeps_every_id(shape in shapes(), seed in any::<u64>()) {
        let model = generate(shape);
        prop_assert_eq!(ids(&model), ids(&shuffled(&model, seed)));
    }

    #[test]
    fn index_fragments_equal_the_projected_view_in_jcs(shape in shapes()) {
        let model = generate(shape);
        let index = ModelIndex::build(Arc::new(model.clone()));
        for node in &model.nodes {
            let view = view_for(&model, &node.id).unwrap();
            let from_index = index.view_json(&node.id).unwrap();
            prop_assert_eq!(&from_index, &view.canonical_json());
            let value: Value = serde_json::from_slice(&from_index).unwrap();
            prop_assert_eq!(String::from_utf8(from_index.clone()).unwrap(), jcs(&value));
            prop_assert_eq!(index.state_id(&node.id).unwrap(), &view.state_id());
            // A view read back from the wire hashes to the same id.
            let read_back: NodeView = serde_json::from_slice(&from_index).unwrap();
            prop_assert_eq!(read_back.state_id(), view.state_id());
        }
    }

    #[test]
    fn an_unrelated_instance_on_another_node_does_not_change_the_id(shape in shapes(), pick in any::<prop::sample::Index>()) {
        let mut model = generate(Shape { nodes: shape.nodes.max(2), ..shape });
        let observer = model.nodes[0].id.clone();
        let view = view_for(&model, &observer).unwrap();
        let referenced: Vec<&String> = view.group_members.keys().chain(view.security_groups.iter().map(|g| &g.id)).collect();
        let candidates: Vec<usize> = (0..model.instances.len())
            .filter(|i| model.instances[*i].node != observer)
            .filter(|i| model.instances[*i].security_groups().iter().all(|g| !referenced.contains(&g)))
            .collect();
        prop_assume!(!candidates.is_empty());
        let before = ids(&model);
        let target = candidates[pick.index(candidates.len())];
        model.instances[target].mac = "d0:0d:ff:ff:ff:fe".into();
        model.instances[target].private_ip = bump_ip(&model.instances[target].private_ip);
        model.validate().unwrap();
        let after = ids(&model);
        let of = |ids: &[(String, StateId)]| ids.iter().find(|(n, _)| *n == observer).unwrap().1.clone();
        prop_assert_eq!(of(&before), of(&after));
    }

    #[test]
    fn a_new_member_of_a_referenced_group_changes_the_id(shape in shapes()) {
        let mut model = generate(Shape { nodes: shape.nodes.max(2), instances: shape.instances.max(1), ..shape });
        let observer = model.instances[0].node.clone();
        let view = view_for(&model, &observer).unwrap();
        let Some(group) = view.group_members.keys().next().cloned() else {
            return Err(TestCaseError::reject("no group rule in view"));
        };
        let before = ids(&model);
        let newcomer = Instance {
            id: "i-newcomer".into(),
            interface: "vn_newcomer".into(),
            mac: "d0:0d:ff:ff:ff:fd".into(),
            node: model.nodes.last().unwrap().id.clone(),
            private_ip: "10.0.255.250".into(),
            public_ip: None,
            security_groups: Some(vec![group]),
            subnet: "subnet-0".into(),
        };
        model.instances.push(newcomer);
        model.validate().unwrap();
        let after = ids(&model);
        let of = |ids: &[(String, StateId)]| ids.iter().find(|(n, _)| *n == observer).unwrap().1.clone();
        prop_assert_ne!(of(&before), of(&after));
    }

    #[test]
    fn an_incremental_update_equals_a_full_build(shape in shapes(), edit in 0u8..6, pick in any::<prop::sample::Index>()) {
        let model = generate(shape);
        let before = ModelIndex::build(Arc::new(model.clone()));
        let mut edited = model.clone();
        apply_edit(&mut edited, edit, pick);
        prop_assume!(edited.validate().is_ok());
        let (updated, changed) = before.update(Arc::new(edited.clone()));
        let full = ModelIndex::build(Arc::new(edited.clone()));
        let mut expected_changed = Vec::new();
        for node in &edited.nodes {
            prop_assert_eq!(updated.state_id(&node.id), full.state_id(&node.id), "node {}", node.id);
            if before.state_id(&node.id) != full.state_id(&node.id) {
                expected_changed.push(node.id.clone());
            }
        }
        for node in &model.nodes {
            if full.state_id(&node.id).is_none() {
                expected_changed.push(node.id.clone());
            }
        }
        expected_changed.sort();
        prop_assert_eq!(changed, expected_changed);
    }
}

fn bump_ip(ip: &str) -> String {
    let mut parts: Vec<u32> = ip.split('.').map(|p| p.parse().unwrap()).collect();
    parts[2] = 250;
    parts
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

fn apply_edit(model: &mut CloudModel, edit: u8, pick: prop::sample::Index) {
    let instance_count = model.instances.len();
    match edit {
        0 if instance_count > 0 => {
            let i = pick.index(instance_count);
            model.instances[i].private_ip = bump_ip(&model.instances[i].private_ip);
        }
        1 if instance_count > 0 => {
            model.instances.remove(pick.index(instance_count));
        }
        2 if instance_count > 0 => {
            let i = pick.index(instance_count);
            let last = model.security_groups.last().unwrap().id.clone();
            model.instances[i].security_groups = Some(vec![last]);
        }
        3 => {
            let g = pick.index(model.security_groups.len());
            if let Some(rules) = model.security_groups[g].ingress.as_mut() {
                rules.pop();
            }
        }
        4 => model.routes.pop().map(drop).unwrap_or_default(),
        _ => model.public_ips.push("192.0.2.0/24".into()),
    }
}

#[test]
fn example_views_hold_what_their_node_needs() {
    let model = parse_model(EXAMPLE.as_bytes()).unwrap();
    let view = view_for(&model, "nc-1").unwrap();
    let instance_ids: Vec<&str> = view.instances.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(
        instance_ids,
        [
            "i-0a1b2c3d",
            "i-0a1b2c40",
            "i-0a1b2c41",
            "i-0a1b2c42",
            "i-0a1b2c43"
        ]
    );
    let group_ids: Vec<&str> = view.security_groups.iter().map(|g| g.id.as_str()).collect();
    assert_eq!(group_ids, ["sg-admin", "sg-db", "sg-lb", "sg-web"]);
    assert_eq!(
        view.group_members["sg-lb"],
        ["10.1.0.40", "10.1.0.52", "10.2.0.30"]
    );
    assert_eq!(
        view.group_members["sg-web"],
        ["10.1.0.33", "10.1.0.34", "10.1.0.51", "10.2.0.21"]
    );
    assert_eq!(view.public_ips, ["198.51.100.7", "203.0.113.0/28"]);
    assert_eq!(view.routes.len(), 2);
    let nc3 = view_for(&model, "nc-3").unwrap();
    assert_eq!(
        nc3.routes.len(),
        1,
        "nc-1's own route is not in nc-3's view"
    );
    assert!(view_for(&model, "nc-9").is_none());
}

#[test]
fn absent_optional_fields_stay_absent_in_the_canonical_form() {
    let model = parse_model(EXAMPLE.as_bytes()).unwrap();
    let text = String::from_utf8(view_for(&model, "nc-3").unwrap().canonical_json()).unwrap();
    assert!(!text.contains("null"), "{text}");
    assert!(text.starts_with("{\"group_members\":{"), "{text}");
    assert!(
        text.contains("\"security_groups\":[]"),
        "an empty list stays present: {text}"
    );
}

#[test]
fn sanitize_leaves_out_only_the_bad_entities() {
    let model = parse_model(EXAMPLE.as_bytes()).unwrap();
    let mut view = view_for(&model, "nc-1").unwrap();
    view.instances[0].private_ip = "10.1.0.999".into();
    view.security_groups[0].ingress.as_mut().unwrap()[0].from_port = Some(99999);
    view.routes[0].gateway = Some("nonsense".into());
    let sanitized = sanitize_view(&view);
    let clean = sanitized.view.unwrap();
    let lines: Vec<String> = sanitized.left_out.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "security_groups[sg-admin].ingress[0].from_port: 99999 out of range 0..=65535",
            "instances[i-0a1b2c3d].private_ip: \"10.1.0.999\" is not an IP address",
            "routes[0].gateway: \"nonsense\" is not an IP address",
        ]
    );
    assert_eq!(clean.instances.len(), view.instances.len() - 1);
    assert_eq!(
        clean.security_groups[0].ingress().len(),
        view.security_groups[0].ingress().len() - 1
    );
    assert_eq!(clean.routes.len(), view.routes.len() - 1);
    assert!(sanitize_view(&clean).left_out.is_empty());
}

#[test]
fn sanitize_cascades_from_a_bad_subnet_to_its_instances() {
    let model = parse_model(EXAMPLE.as_bytes()).unwrap();
    let mut view = view_for(&model, "nc-1").unwrap();
    view.subnets[1].cidr = "10.2.0.0/99".into();
    let sanitized = sanitize_view(&view);
    let clean = sanitized.view.unwrap();
    assert!(clean.instances.iter().all(|i| i.subnet == "subnet-a"));
    assert_eq!(clean.instances.len(), 3);
}

#[test]
fn a_view_with_a_wrong_schema_is_unusable() {
    let model = parse_model(EXAMPLE.as_bytes()).unwrap();
    let mut view = view_for(&model, "nc-1").unwrap();
    view.schema = 7;
    let sanitized = sanitize_view(&view);
    assert!(sanitized.view.is_none());
    assert_eq!(
        sanitized.left_out[0].to_string(),
        "schema: unsupported schema 7, expected 1"
    );
}
