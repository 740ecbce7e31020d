//! The index updated from an entity-level change equals a full build, and
//! reports exactly the nodes whose id changed.

use std::sync::Arc;

use edgenet_model::synthetic::{generate, Shape};
use edgenet_model::*;
use proptest::prelude::*;

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

/// One edit of each kind a controller makes.
fn edit(model: &mut CloudModel, kind: u8, pick: prop::sample::Index) {
    let instances = model.instances.len();
    match kind {
        0 if instances > 0 => {
            let i = pick.index(instances);
            model.instances[i].private_ip = "10.0.250.250".into();
        }
        1 if instances > 0 => {
            model.instances.remove(pick.index(instances));
        }
        2 if instances > 0 => {
            let i = pick.index(instances);
            let last = model.security_groups.last().unwrap().id.clone();
            model.instances[i].security_groups = Some(vec![last]);
        }
        3 => {
            let g = pick.index(model.security_groups.len());
            if let Some(rules) = model.security_groups[g].ingress.as_mut() {
                rules.pop();
            }
        }
        4 => drop(model.routes.pop()),
        5 => {
            let n = pick.index(model.nodes.len());
            model.nodes[n].bridge = "br-other".into();
        }
        6 if model.nodes.len() > 1 => {
            let gone = model.nodes.remove(pick.index(model.nodes.len())).id;
            model.instances.retain(|i| i.node != gone);
            model
                .routes
                .retain(|r| r.node.as_deref() != Some(gone.as_str()));
        }
        7 if instances > 0 => {
            let mut launched = model.instances[pick.index(instances)].clone();
            launched.id = "i-launched".into();
            launched.mac = "02:ee:ee:ee:ee:ee".into();
            launched.private_ip = "10.0.251.251".into();
            launched.public_ip = None;
            model.instances.push(launched);
        }
        _ => model.public_ips.push("192.0.2.0/24".into()),
    }
}

proptest! {
    #[test]
    fn an_index_applied_from_a_change_equals_a_full_build(
        shape in shapes(), kind in 0u8..9, pick in any::<prop::sample::Index>()
    ) {
        let model = generate(shape);
        let before = ModelIndex::build(Arc::new(model.clone()));
        let mut edited = model.clone();
        edit(&mut edited, kind, pick);
        prop_assume!(edited.validate().is_ok());
        let change = ModelChange::between(&model, &edited);
        let mut applied = model.clone();
        change.apply_to(&mut applied);
        prop_assert_eq!(&applied, &edited);

        let (next, changed) = before.apply(Arc::new(edited.clone()), &change);
        let full = ModelIndex::build(Arc::new(edited.clone()));
        let mut expected = Vec::new();
        for node in &edited.nodes {
            prop_assert_eq!(next.state_id(&node.id), full.state_id(&node.id), "node {}", node.id);
            prop_assert_eq!(next.view_json(&node.id), full.view_json(&node.id));
            if before.state_id(&node.id) != full.state_id(&node.id) {
                expected.push(node.id.clone());
            }
        }
        for node in &model.nodes {
            if full.state_id(&node.id).is_none() {
                expected.push(node.id.clone());
            }
        }
        expected.sort();
        prop_assert_eq!(next.len(), full.len());
        prop_assert_eq!(changed, expected);
    }
}
