//! The incremental pass held to the full render and diff, over random changes.

use super::*;
use crate::reconcile::forget_rule_statements;
use crate::render::render_snapshot;
use edgenet_model::{Protocol, Route, Rule, SecurityGroup};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const GROUPS: [&str; 4] = ["sg-a", "sg-b", "sg-c", "sg-d"];

fn rule(group: Option<&str>, cidr: Option<&str>, protocol: &str) -> Rule {
    Rule {
        cidr: cidr.map(str::to_string),
        from_port: None,
        group: group.map(str::to_string),
        icmp_code: None,
        icmp_type: None,
        protocol: Protocol::Name(protocol.into()),
        to_port: None,
    }
}

/// A view of a few dozen instances over two IPv4 subnets and one IPv6
/// one, with groups that reference each other and one bad rule.
fn base_view() -> NodeView {
    let mut view: NodeView =
        serde_json::from_str(include_str!("../../dataplane/testdata/view-nc-1.json")).unwrap();
    view.public_ips = vec!["100.64.0.0/16".into(), "2001:db8:1::/64".into()];
    view.subnets = serde_json::from_str(
        r#"[{"id": "s4a", "cidr": "10.1.0.0/16", "gateway": "10.1.0.1"},
            {"id": "s4b", "cidr": "10.2.0.0/16", "gateway": "10.2.0.1"},
            {"id": "s6", "cidr": "fd00:1::/64", "gateway": "fd00:1::1"}]"#,
    )
    .unwrap();
    view.security_groups = vec![
        SecurityGroup {
            id: "sg-a".into(),
            ingress: Some(vec![
                rule(Some("sg-b"), None, "tcp"),
                rule(None, None, "bogus"),
            ]),
        },
        SecurityGroup {
            id: "sg-b".into(),
            ingress: Some(vec![rule(None, Some("0.0.0.0/0"), "icmp")]),
        },
        SecurityGroup {
            id: "sg-c".into(),
            ingress: Some(vec![rule(Some("sg-c"), None, "all")]),
        },
        SecurityGroup {
            id: "sg-d".into(),
            ingress: Some(vec![rule(Some("sg-a"), None, "udp")]),
        },
    ];
    view.instances.clear();
    view.group_members.clear();
    let mut rng = StdRng::seed_from_u64(1);
    for n in 0..30 {
        add_instance(&mut view, &mut rng, n);
    }
    view
}

fn add_instance(view: &mut NodeView, rng: &mut StdRng, n: u32) {
    let subnet = ["s4a", "s4b", "s6"][rng.gen_range(0..3)];
    // Every address from `n`, so only `mutate` makes duplicates.
    let (high, low) = (n >> 7, (n & 0x7f) + 2);
    let private_ip = match subnet {
        "s4a" => format!("10.1.{high}.{low}"),
        "s4b" => format!("10.2.{high}.{low}"),
        _ => format!("fd00:1::{:x}", 0x10 + n),
    };
    let public_ip = rng.gen_bool(0.6).then(|| match subnet {
        "s6" => format!("2001:db8:1::{:x}", 0x10 + n),
        _ => format!("100.64.{high}.{low}"),
    });
    let mut groups: Vec<String> = GROUPS
        .iter()
        .filter(|_| rng.gen_bool(0.4))
        .map(|g| g.to_string())
        .collect();
    groups.sort();
    for group in &groups {
        view.group_members
            .entry(group.clone())
            .or_default()
            .push(private_ip.clone());
    }
    view.instances.push(Instance {
        id: format!("i-{n:04}"),
        interface: format!("vn{n}"),
        mac: format!("d0:0d:00:00:{:02x}:{:02x}", n >> 8, n & 0xff),
        node: "nc-1".into(),
        private_ip,
        public_ip,
        security_groups: Some(groups),
        subnet: subnet.into(),
    });
}

/// One random change of the kind a cloud makes, now and then one that
/// collides with another instance or touches a global part. A collision
/// returns the instance as it was, to be put back at the next step.
fn mutate(view: &mut NodeView, rng: &mut StdRng, next_id: &mut u32) -> Option<Instance> {
    let count = view.instances.len();
    let pick = |rng: &mut StdRng| rng.gen_range(0..count.max(1));
    match rng.gen_range(0..10) {
        0..=2 => {
            add_instance(view, rng, *next_id);
            *next_id += 1;
        }
        3 | 4 if count > 1 => {
            view.instances.remove(pick(rng));
        }
        5 if count > 0 => {
            let i = pick(rng);
            let groups = view.instances[i]
                .security_groups
                .get_or_insert_with(Vec::new);
            let group = GROUPS[rng.gen_range(0..GROUPS.len())].to_string();
            match groups.iter().position(|g| *g == group) {
                Some(at) => {
                    groups.remove(at);
                }
                None => {
                    groups.push(group);
                    groups.sort();
                }
            }
        }
        6 if count > 1 => {
            // A duplicate: the full render leaves one of the two out.
            let (a, b) = (pick(rng), pick(rng));
            let was = view.instances[a].clone();
            match rng.gen_range(0..3) {
                0 => view.instances[a].mac = view.instances[b].mac.clone(),
                1 => view.instances[a].interface = view.instances[b].interface.clone(),
                _ => view.instances[a].public_ip = view.instances[b].public_ip.clone(),
            }
            return Some(was);
        }
        7 => {
            let group = GROUPS[rng.gen_range(0..GROUPS.len())].to_string();
            let members = view.group_members.entry(group).or_default();
            if members.is_empty() || rng.gen_bool(0.5) {
                let member = format!("10.9.0.{}", rng.gen_range(1..250));
                if !members.contains(&member) {
                    members.push(member);
                }
            } else {
                members.remove(rng.gen_range(0..members.len()));
            }
        }
        8 => {
            let route: Route = serde_json::from_str(&format!(
                r#"{{"node": "nc-1", "destination": "10.{}.0.0/16", "gateway": "10.1.0.254"}}"#,
                rng.gen_range(20..30)
            ))
            .unwrap();
            view.routes = vec![route];
        }
        _ if count > 0 => {
            let i = pick(rng);
            view.instances[i].public_ip = None;
        }
        _ => {}
    }
    None
}

fn normalized(mut state: KernelState) -> KernelState {
    state.ownership = Default::default();
    state.state_id = None;
    forget_rule_statements(&mut state);
    state
}

fn lines(changes: &ChangeSet) -> Vec<String> {
    changes.sorted().iter().map(|c| c.line()).collect()
}

#[test]
fn a_pass_says_why_it_renders_in_full() {
    let settings = RenderSettings::default();
    let mut view = base_view();
    for instance in &mut view.instances {
        if let Some(groups) = instance.security_groups.as_mut() {
            groups.retain(|g| g != "sg-d");
        }
    }
    let first = Arc::new(Snapshot::from_view("nc-1", "v0".into(), &view));
    let rendered = render_snapshot(&first, &settings).unwrap();
    let baseline = Baseline::after_full_render(first, rendered.usage).unwrap();
    let plan_for = |view: &NodeView| {
        let next = Snapshot::from_view("nc-1", "v1".into(), view);
        plan(&baseline, &next, &settings, &rendered.desired).map(|_| ())
    };

    let mut rerouted = view.clone();
    rerouted.routes.clear();
    assert_eq!(plan_for(&rerouted), Err(InFull::GlobalPartsChanged));

    let mut unordered = view.clone();
    unordered.instances.swap(0, 1);
    assert_eq!(plan_for(&unordered), Err(InFull::InstancesNotInIdOrder));

    // The first instance in sg-d, a group no instance used before.
    let mut launched = view.clone();
    launched.instances.push(Instance {
        security_groups: Some(vec!["sg-d".into()]),
        ..launched.instances[0].clone()
    });
    let last = launched.instances.last_mut().unwrap();
    (last.id, last.interface, last.mac) =
        ("i-9999".into(), "vn9999".into(), "d0:0d:00:00:99:99".into());
    (last.subnet, last.private_ip) = ("s4a".into(), "10.1.99.99".into());
    last.public_ip = None;
    let first_user = plan_for(&launched);
    assert_eq!(first_user, Err(InFull::SharedObjectGainsOrLosesUsers));

    launched.instances.last_mut().unwrap().security_groups = None;
    assert_eq!(plan_for(&launched), Ok(()));
}

#[test]
fn incremental_passes_give_what_the_full_render_and_diff_give() {
    let settings = RenderSettings::default();
    let mut rng = StdRng::seed_from_u64(7);
    let mut view = base_view();
    let first = Arc::new(Snapshot::from_view("nc-1", "v0".into(), &view));
    let rendered = render_snapshot(&first, &settings).unwrap();
    let mut actual = normalized(rendered.desired);
    let mut baseline = Baseline::after_full_render(first, rendered.usage);
    let (mut next_id, mut incremental, steps) = (1000, 0, 400);
    let mut collided: Option<Instance> = None;
    for step in 1..=steps {
        match collided.take() {
            Some(was) => match view.instances.iter_mut().find(|i| i.id == was.id) {
                Some(instance) => *instance = was,
                None => view.instances.push(was),
            },
            None => collided = mutate(&mut view, &mut rng, &mut next_id),
        }
        view.instances.sort_by(|a, b| a.id.cmp(&b.id));
        let next = Arc::new(Snapshot::from_view("nc-1", format!("v{step}"), &view));
        let full = render_snapshot(&next, &settings).unwrap();
        let expected = lines(&diff(&actual, &full.desired));
        let planned = baseline
            .as_ref()
            .and_then(|b| plan(b, &next, &settings, &actual).ok());
        let fits = planned
            .as_ref()
            .and_then(|f| f.changes(&actual))
            .map(|changes| {
                assert_eq!(lines(&changes), expected, "step {step}: change lines");
                let mut after = actual.clone();
                changes.apply_to(&mut after, &[]);
                after
            });
        baseline = match (fits, planned) {
            (Some(after), Some(fragments)) => {
                incremental += 1;
                assert_eq!(
                    normalized(after),
                    normalized(full.desired.clone()),
                    "step {step}: state after the incremental changes"
                );
                let advanced = baseline.take().unwrap().advance(next.clone(), fragments);
                assert_eq!(advanced.usage, full.usage, "step {step}: usage counts");
                Some(advanced)
            }
            _ => Baseline::after_full_render(next, full.usage),
        };
        actual = normalized(full.desired);
    }
    // Most changes are the instance-only kind; if the pass declined
    // them all, this test would prove nothing.
    assert!(
        incremental * 2 > steps,
        "only {incremental} of {steps} passes were incremental"
    );
}
