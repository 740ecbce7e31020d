//! Agent-side cost of one snapshot with 10,000 instances on the node:
//! sanitize (validate the view as received), render, and diff against an
//! empty kernel, against the same state, and against the previous state
//! after a one-instance change. Figures go to `bench/README.md` ("agent"):
//!
//!   taskset -c 1 cargo bench -p edgenet-agent --bench render_diff

use std::time::{Duration, Instant};

use edgenet_agent::diff::diff;
use edgenet_agent::render::{render, RenderSettings};
use edgenet_agent::snapshot::Snapshot;
use edgenet_agent::state::KernelState;
use edgenet_model::synthetic::{generate, Shape};
use edgenet_model::view_for;

const INSTANCES: usize = 10_000;
const RUNS: usize = 9;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time<T>(mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut samples = Vec::new();
    let mut last = None;
    for _ in 0..RUNS {
        let started = Instant::now();
        let value = f();
        samples.push(started.elapsed());
        last = Some(value);
    }
    (median(samples), last.unwrap())
}

fn main() {
    let model = generate(Shape::one_node(INSTANCES));
    let view = view_for(&model, "nc-1").unwrap();
    let id = view.state_id().as_str().to_string();
    let settings = RenderSettings::default();

    let (sanitize, snapshot) = time(|| Snapshot::from_view("nc-1", id.clone(), &view));
    let view = snapshot.view.clone().unwrap();
    assert_eq!(view.instances.len(), INSTANCES);
    let (render_time, rendered) = time(|| render(&view, &settings));
    let desired = rendered.desired;
    let empty = KernelState::default();
    let (from_empty, changes) = time(|| diff(&empty, &desired));
    let (same, none) = time(|| diff(&desired, &desired));
    assert!(none.is_empty());

    let mut changed_model = model.clone();
    changed_model.instances.remove(0);
    let changed_view = view_for(&changed_model, "nc-1").unwrap();
    let (incremental, one_less) = time(|| {
        let next = render(&changed_view, &settings).desired;
        diff(&desired, &next).len()
    });
    println!("agent render+diff, {INSTANCES} instances on the node (median of {RUNS}):");
    println!("  sanitize view          {sanitize:>10.1?}");
    println!("  render                 {render_time:>10.1?}");
    println!(
        "  diff vs empty          {from_empty:>10.1?}  ({} changes)",
        changes.len()
    );
    println!("  diff vs same           {same:>10.1?}");
    println!(
        "  render+diff, -1 inst.  {incremental:>10.1?}  ({} changes)",
        one_less
    );
    println!(
        "  render + diff vs empty {:>10.1?}",
        render_time + from_empty
    );
}
