//! Version 2 deltas: computed between two views, sent as JSON, applied and
//! checked by the id (docs/protocol.md, "Version 2").

use std::sync::Arc;

use edgenet_model::synthetic::{generate, Shape};
use edgenet_model::v2::*;
use edgenet_model::*;
use proptest::prelude::*;

const EXAMPLE: &str = include_str!("../../examples/cloud.json");

fn sectioned(model: &CloudModel, node: &str) -> SectionedView {
    SectionedView::from_view(&view_for(model, node).unwrap()).unwrap()
}

/// The delta as a client reads it off the wire.
fn over_the_wire(delta: &Delta) -> Delta {
    let text = serde_json::to_vec(delta).unwrap();
    serde_json::from_slice(&text).unwrap()
}

/// One change to the cloud, of the kinds a view can see.
#[derive(Debug, Clone)]
enum Edit {
    Launch { node: usize, groups: Vec<usize> },
    Terminate(usize),
    Regroup { instance: usize, groups: Vec<usize> },
    Readdress(usize),
    AddRule { group: usize, peer: usize },
    DropRule(usize),
    DeleteGroup(usize),
    AddRoute { node: Option<usize> },
    DropRoute,
    AddSubnet,
    MoveGateway(usize),
    ToggleMetadata,
    AddPublicIps,
    ToggleNodeGateway(usize),
}

fn edits() -> impl Strategy<Value = Edit> {
    let groups = || prop::collection::vec(0usize..16, 0..3);
    prop_oneof![
        3 => (0usize..16, groups()).prop_map(|(node, groups)| Edit::Launch { node, groups }),
        2 => (0usize..64).prop_map(Edit::Terminate),
        3 => (0usize..64, groups()).prop_map(|(instance, groups)| Edit::Regroup { instance, groups }),
        1 => (0usize..64).prop_map(Edit::Readdress),
        1 => (0usize..16, 0usize..16).prop_map(|(group, peer)| Edit::AddRule { group, peer }),
        1 => (0usize..16).prop_map(Edit::DropRule),
        1 => (0usize..16).prop_map(Edit::DeleteGroup),
        1 => prop::option::of(0usize..16).prop_map(|node| Edit::AddRoute { node }),
        1 => Just(Edit::DropRoute),
        1 => Just(Edit::AddSubnet),
        1 => (0usize..8).prop_map(Edit::MoveGateway),
        1 => Just(Edit::ToggleMetadata),
        1 => Just(Edit::AddPublicIps),
        1 => (0usize..16).prop_map(Edit::ToggleNodeGateway),
    ]
}

/// Applies `edit`; `serial` keeps new entities' ids and addresses distinct.
fn apply_edit(model: &mut CloudModel, edit: &Edit, serial: usize) {
    let group_ids = |model: &CloudModel, picks: &[usize]| -> Option<Vec<String>> {
        let mut ids: Vec<String> = picks
            .iter()
            .filter_map(|p| {
                model
                    .security_groups
                    .get(p % model.security_groups.len().max(1))
            })
            .map(|g| g.id.clone())
            .collect();
        ids.sort();
        ids.dedup();
        Some(ids)
    };
    let instances = model.instances.len();
    let node_id = |model: &CloudModel, n: usize| model.nodes[n % model.nodes.len()].id.clone();
    match edit {
        Edit::Launch { node, groups } => {
            let instance = Instance {
                id: format!("i-new{serial:04}"),
                interface: format!("vn_new{serial:04}"),
                mac: format!("d0:0e:00:00:{:02x}:{:02x}", serial >> 8, serial & 255),
                node: node_id(model, *node),
                private_ip: format!("10.0.240.{}", serial % 250 + 2),
                public_ip: None,
                security_groups: group_ids(model, groups),
                subnet: "subnet-0".into(),
            };
            model.instances.push(instance);
        }
        Edit::Terminate(i) if instances > 0 => {
            model.instances.remove(i % instances);
        }
        Edit::Regroup { instance, groups } if instances > 0 => {
            model.instances[instance % instances].security_groups = group_ids(model, groups);
        }
        Edit::Readdress(i) if instances > 0 => {
            model.instances[i % instances].private_ip = format!("10.0.241.{}", serial % 250 + 2);
        }
        Edit::AddRule { group, peer } if !model.security_groups.is_empty() => {
            let peer = model.security_groups[peer % model.security_groups.len()]
                .id
                .clone();
            let count = model.security_groups.len();
            let rules = model.security_groups[group % count]
                .ingress
                .get_or_insert_with(Vec::new);
            rules.push(Rule {
                cidr: None,
                from_port: Some(9000 + serial as i64 % 100),
                group: Some(peer),
                icmp_code: None,
                icmp_type: None,
                protocol: Protocol::Name("tcp".into()),
                to_port: None,
            });
        }
        Edit::DropRule(group) if !model.security_groups.is_empty() => {
            let count = model.security_groups.len();
            if let Some(rules) = model.security_groups[group % count].ingress.as_mut() {
                rules.pop();
            }
        }
        Edit::DeleteGroup(group) if model.security_groups.len() > 1 => {
            let count = model.security_groups.len();
            let gone = model.security_groups.remove(group % count).id;
            for instance in &mut model.instances {
                if let Some(groups) = instance.security_groups.as_mut() {
                    groups.retain(|g| *g != gone);
                }
            }
        }
        Edit::AddRoute { node } => model.routes.push(Route {
            destination: format!("172.{}.0.0/16", 16 + serial % 16),
            device: None,
            gateway: Some("10.0.0.254".into()),
            metric: Some(serial as i64),
            node: node.map(|n| node_id(model, n)),
        }),
        Edit::DropRoute => drop(model.routes.pop()),
        Edit::AddSubnet => model.subnets.push(Subnet {
            cidr: format!("10.{}.0.0/16", 100 + serial % 100),
            gateway: None,
            id: format!("subnet-new{serial}"),
        }),
        Edit::MoveGateway(s) => {
            let count = model.subnets.len();
            model.subnets[s % count].gateway = Some(format!("10.{}.0.254", s % count));
        }
        Edit::ToggleMetadata => {
            model.metadata = match model.metadata.take() {
                Some(_) => None,
                None => Some(Metadata {
                    ip: "169.254.169.254".into(),
                    port: 80,
                    target_ip: "10.255.255.12".into(),
                    target_port: 8773 + serial as i64 % 3,
                }),
            }
        }
        Edit::AddPublicIps => model.public_ips.push(format!("192.0.2.{}", serial % 250)),
        Edit::ToggleNodeGateway(n) => {
            let count = model.nodes.len();
            let node = &mut model.nodes[n % count];
            node.gateway_on_bridge = Some(!node.gateway_on_bridge());
        }
        _ => {}
    }
}

fn shapes() -> impl Strategy<Value = Shape> {
    (1usize..5, 0usize..40, 1usize..7, any::<u64>()).prop_map(|(nodes, instances, groups, seed)| {
        Shape {
            nodes,
            instances,
            groups,
            seed,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Round after round of mixed changes, every node's delta, read back
    /// from its JSON and applied to the view held, gives exactly the target
    /// view and its id.
    #[test]
    fn delta_then_apply_gives_the_target_view(
        shape in shapes(),
        rounds in prop::collection::vec(prop::collection::vec(edits(), 1..6), 1..4),
    ) {
        let mut model = generate(shape);
        let mut held: Vec<SectionedView> =
            model.nodes.iter().map(|n| sectioned(&model, &n.id)).collect();
        let mut serial = 0;
        for round in &rounds {
            for edit in round {
                serial += 1;
                apply_edit(&mut model, edit, serial);
            }
            let mut diffs = MemberDiffs::default();
            for (node, base) in model.nodes.iter().zip(held.iter_mut()) {
                let view = view_for(&model, &node.id).unwrap();
                let target = SectionedView::from_view(&view).unwrap();
                let delta = Delta::between_with(base, &target, &mut diffs);
                prop_assert_eq!(delta.is_empty(), base.state_id() == target.state_id());
                let received = over_the_wire(&delta);
                prop_assert_eq!(&received, &delta);
                let applied = base.apply(&received, target.state_id()).unwrap();
                prop_assert_eq!(applied.state_id(), target.state_id());
                prop_assert_eq!(applied.canonical_json(), view.canonical_json());
                prop_assert_eq!(&applied, &target);
                *base = applied;
            }
        }
    }
}

fn example() -> CloudModel {
    parse_model(EXAMPLE.as_bytes()).unwrap()
}

/// Launches an instance on nc-3 into sg-web, a group nc-1's and nc-2's
/// rules name.
fn launch_into_sg_web(model: &mut CloudModel) {
    let mut newcomer = model.instances[0].clone();
    newcomer.id = "i-newcomer".into();
    newcomer.node = "nc-3".into();
    newcomer.interface = "vn_newcomer".into();
    newcomer.mac = "d0:0d:ff:ff:ff:01".into();
    newcomer.private_ip = "10.1.0.99".into();
    newcomer.public_ip = None;
    newcomer.security_groups = Some(vec!["sg-web".into()]);
    model.instances.push(newcomer);
    model.validate().unwrap();
}

/// nc-1's view before and after the launch.
fn nc1_around_a_launch() -> (SectionedView, SectionedView) {
    let mut model = example();
    let before = sectioned(&model, "nc-1");
    launch_into_sg_web(&mut model);
    (before, sectioned(&model, "nc-1"))
}

#[test]
fn a_launch_elsewhere_is_one_member_added() {
    let (before, after) = nc1_around_a_launch();
    let delta = Delta::between(&before, &after);
    assert!(delta.set.is_empty() && delta.remove.is_empty(), "{delta:?}");
    let text = String::from_utf8(serde_json::to_vec(&delta).unwrap()).unwrap();
    assert_eq!(
        text,
        r#"{"members":{"sg-web":{"add":["10.1.0.99"],"remove":[]}},"remove":[],"set":{}}"#
    );
}

#[test]
fn a_tampered_member_address_is_refused_by_the_hash_check() {
    let (before, after) = nc1_around_a_launch();
    let text =
        String::from_utf8(serde_json::to_vec(&Delta::between(&before, &after)).unwrap()).unwrap();
    let tampered: Delta = serde_json::from_str(&text.replace("10.1.0.99", "10.1.0.98")).unwrap();
    let error = before.apply(&tampered, after.state_id()).unwrap_err();
    assert!(
        matches!(&error, DeltaError::IdMismatch { expected, .. } if expected == after.state_id()),
        "{error}"
    );
    // The honest delta still applies to the view held: nothing was kept.
    let honest: Delta = serde_json::from_str(&text).unwrap();
    assert_eq!(before.apply(&honest, after.state_id()).unwrap(), after);
}

#[test]
fn a_tampered_address_in_a_whole_section_is_refused_by_the_hash_check() {
    let model = example();
    let mut moved = model.clone();
    moved.instances[0].private_ip = "10.1.0.35".into();
    let (before, after) = (sectioned(&model, "nc-1"), sectioned(&moved, "nc-1"));
    let delta = Delta::between(&before, &after);
    assert!(delta.set.contains_key(&SectionName::Instances));
    let text = String::from_utf8(serde_json::to_vec(&delta).unwrap()).unwrap();
    assert!(text.contains("\"10.1.0.35\""), "{text}");
    let tampered: Delta =
        serde_json::from_str(&text.replacen("10.1.0.35", "10.1.0.36", 1)).unwrap();
    assert!(matches!(
        before.apply(&tampered, after.state_id()),
        Err(DeltaError::IdMismatch { .. })
    ));
}

#[test]
fn views_that_share_a_list_share_its_change() {
    let mut model = example();
    let before: Vec<SectionedView> = ["nc-1", "nc-2"].map(|n| sectioned(&model, n)).into();
    launch_into_sg_web(&mut model);
    let mut diffs = MemberDiffs::default();
    let deltas: Vec<Delta> = before
        .iter()
        .map(|base| Delta::between_with(base, &sectioned(&model, &base.node().id), &mut diffs))
        .collect();
    let group = GroupId::from("sg-web");
    assert!(Arc::ptr_eq(
        &deltas[0].members[&group],
        &deltas[1].members[&group]
    ));
}

#[test]
fn a_whole_new_list_goes_in_set() {
    let mut model = example();
    let before = sectioned(&model, "nc-1");
    for instance in &mut model.instances {
        if instance.security_groups().contains(&"sg-lb".to_string()) {
            instance.private_ip = instance.private_ip.replace("10.", "10.1");
        }
    }
    let after = sectioned(&model, "nc-1");
    let delta = Delta::between(&before, &after);
    assert!(delta.set.contains_key(&SectionName::group_members("sg-lb")));
    assert!(delta.members.is_empty());
}

fn members_delta(group: &str, add: &[&str], remove: &[&str]) -> Delta {
    let change = MembersChange {
        add: add.iter().map(|a| a.to_string()).collect(),
        remove: remove.iter().map(|a| a.to_string()).collect(),
    };
    Delta {
        members: [(GroupId::from(group), Arc::new(change))]
            .into_iter()
            .collect(),
        ..Delta::default()
    }
}

#[test]
fn deltas_that_do_not_fit_the_base_are_refused_by_name() {
    let base = sectioned(&example(), "nc-1");
    let id = base.state_id().clone();
    let section = |name: &SectionName| base.get(name).unwrap().clone();
    let set = |entries: Vec<(SectionName, Section)>| Delta {
        set: entries.into_iter().collect(),
        ..Delta::default()
    };
    let remove = |names: Vec<SectionName>| Delta {
        remove: names,
        ..Delta::default()
    };
    let set_and_remove = Delta {
        remove: vec![SectionName::Metadata],
        ..set(vec![(
            SectionName::Metadata,
            section(&SectionName::Metadata),
        )])
    };
    let web = SectionName::group_members("sg-web");
    let members_and_set = Delta {
        set: [(web.clone(), section(&web))].into_iter().collect(),
        ..members_delta("sg-web", &["10.1.0.99"], &[])
    };
    let admin = section(&SectionName::security_group("sg-admin"));
    let cases = [
        (set_and_remove, "delta: section metadata is named twice"),
        (remove(vec![SectionName::Metadata, SectionName::Metadata]), "delta: section metadata is named twice"),
        (members_and_set, "delta: section group_members/sg-web is named twice"),
        (remove(vec![SectionName::security_group("sg-none")]), "delta: removes section security_groups/sg-none, which the base does not have"),
        (remove(vec![SectionName::Instances]), "delta: removes section instances, which every view has"),
        (members_delta("sg-none", &["10.1.0.99"], &[]), "delta: members of group sg-none, whose list the base does not have"),
        (members_delta("sg-web", &[], &["10.9.9.9"]), "delta: group_members/sg-web: removes 10.9.9.9, which is not a member"),
        (members_delta("sg-web", &["10.1.0.33"], &[]), "delta: group_members/sg-web: adds 10.1.0.33, which is already a member"),
        (members_delta("sg-web", &["10.1.0.99", "10.1.0.99"], &[]), "delta: group_members/sg-web: 10.1.0.99 is named twice"),
        (members_delta("sg-web", &["10.1.0.33"], &["10.1.0.33"]), "delta: group_members/sg-web: 10.1.0.33 is named twice"),
        (set(vec![(SectionName::security_group("sg-web"), admin)]), "delta: section security_groups/sg-web holds a value of another kind (or another group's id)"),
    ];
    for (delta, message) in cases {
        assert_eq!(base.apply(&delta, &id).unwrap_err().to_string(), message);
    }
}

#[test]
fn a_delta_against_another_base_is_refused() {
    let (before, after) = nc1_around_a_launch();
    let answer = DeltaAnswer {
        state_id: after.state_id().clone(),
        node_id: "nc-1".into(),
        base_state_id: after.state_id().clone(),
        delta: Delta::between(&before, &after),
    };
    assert!(matches!(
        before.apply_answer(&answer),
        Err(DeltaError::BaseMismatch { .. })
    ));
    let answer = DeltaAnswer {
        base_state_id: before.state_id().clone(),
        ..answer
    };
    let text = serde_json::to_string(&answer).unwrap();
    let read: DeltaAnswer = serde_json::from_str(&text).unwrap();
    assert_eq!(before.apply_answer(&read).unwrap(), after);
}

#[test]
fn bad_delta_json_is_refused_with_the_reason() {
    let cases = [
        (
            r#"{"set":{"node":{"bridge":"br0","id":"nc-1","public_interface":"eth0"},"node":{"bridge":"br1","id":"nc-1","public_interface":"eth0"}}}"#,
            "set: section node is named twice",
        ),
        (
            r#"{"members":{"sg-a":{"add":[]},"sg-a":{"add":[]}}}"#,
            "members: group sg-a is named twice",
        ),
        (
            r#"{"members":{"":{"add":[]}}}"#,
            "members: an empty group id",
        ),
        (r#"{"set":{"nodes":[]}}"#, "unknown section name \"nodes\""),
        (
            r#"{"set":{"security_groups/":{"id":""}}}"#,
            "unknown section name \"security_groups/\"",
        ),
        (
            r#"{"set":{"security_groups/sg-a":{"id":"sg-b"}}}"#,
            "set: section security_groups/sg-a holds another group's id",
        ),
        (r#"{"set":{"schema":"1"}}"#, "invalid type"),
        (r#"{"set":{},"extra":1}"#, "unknown field `extra`"),
        (r#"{"set":{},"set":{}}"#, "duplicate field `set`"),
    ];
    for (text, reason) in cases {
        let error = serde_json::from_str::<Delta>(text).unwrap_err().to_string();
        assert!(error.contains(reason), "{text}: {error}");
    }
    let answer = r#"{"StateId":"v2-zz","NodeId":"nc-1","BaseStateId":"v2-00000000000000000000000000000000","Delta":{}}"#;
    let error = serde_json::from_str::<DeltaAnswer>(answer)
        .unwrap_err()
        .to_string();
    assert!(error.contains("is not v1- or v2-"), "{error}");
}

#[test]
fn a_view_that_lists_a_group_twice_has_no_sectioned_form() {
    let mut view = view_for(&example(), "nc-1").unwrap();
    view.security_groups.push(view.security_groups[0].clone());
    assert_eq!(
        SectionedView::from_view(&view).unwrap_err().to_string(),
        "section security_groups/sg-admin is named twice"
    );
}

#[test]
fn sections_that_are_not_a_view_are_refused() {
    let view = view_for(&example(), "nc-1").unwrap();
    let without_node = cut_view(view.clone())
        .into_iter()
        .filter(|(name, _)| *name != SectionName::Node);
    assert_eq!(
        SectionedView::from_sections(without_node)
            .unwrap_err()
            .to_string(),
        "section node is missing; every view has it"
    );
    let misnamed = cut_view(view)
        .into_iter()
        .map(|(name, section)| match name {
            SectionName::Routes => (SectionName::Subnets, section),
            SectionName::Subnets => (SectionName::Routes, section),
            other => (other, section),
        });
    assert_eq!(
        SectionedView::from_sections(misnamed)
            .unwrap_err()
            .to_string(),
        "section routes holds a value of another kind (or another group's id)"
    );
}

#[test]
fn replacing_a_section_gives_the_view_a_full_cut_gives() {
    let (before, after) = nc1_around_a_launch();
    let web = SectionName::group_members("sg-web");
    let changed = after.get(&web).unwrap().clone();
    let replaced = before.replacing([(web.clone(), Some(changed))]).unwrap();
    assert_eq!(replaced.state_id(), after.state_id());
    assert!(replaced
        .get(&SectionName::Instances)
        .unwrap()
        .ptr_eq(before.get(&SectionName::Instances).unwrap()));
    let node = before.get(&SectionName::Node).unwrap().clone();
    assert_eq!(
        before
            .replacing([(web, Some(node))])
            .unwrap_err()
            .to_string(),
        "section group_members/sg-web holds a value of another kind (or another group's id)"
    );
    assert_eq!(
        before
            .replacing([(SectionName::Routes, None)])
            .unwrap_err()
            .to_string(),
        "section routes is missing; every view has it"
    );
    let without_metadata = before.replacing([(SectionName::Metadata, None)]).unwrap();
    let mut view = before.to_view();
    view.metadata = None;
    assert_eq!(without_metadata, SectionedView::from_view(&view).unwrap());
}
