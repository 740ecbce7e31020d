//! Live heap of the agent's steps for one 10,000-instance view, with a
//! counting global allocator: what each step holds when it is done, and
//! the highest the heap got during it. RSS follows the peak (glibc keeps
//! freed pages), so the peaks are what `apply-rss.sh` and
//! `bench/agent-rss-idle.sh` see; this tells which step makes them.
//!
//!   cargo bench -p edgenet-agent --bench memory
//!
//! The steps are the daemon's first apply on an empty kernel (view, render,
//! diff, the nft transaction, the cached actual state), without the kernel.

use edgenet_agent::dataplane::linux::nft::build_transaction;
use edgenet_agent::diff::diff;
use edgenet_agent::reconcile::forget_rule_statements;
use edgenet_agent::render::render_snapshot;
use edgenet_agent::render::RenderSettings;
use edgenet_agent::snapshot::Snapshot;
use edgenet_agent::state::KernelState;
use edgenet_model::synthetic::{generate, Shape};
use edgenet_model::view_for;
use peak_alloc::PeakAlloc;

// Counts live bytes and their peak (the crate keeps the `unsafe` of a
// global allocator out of this code).
#[global_allocator]
static ALLOCATOR: PeakAlloc = PeakAlloc;

const INSTANCES: usize = 10_000;

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Runs `step`, printing the live heap after it and its peak during it.
fn step<T>(name: &str, f: impl FnOnce() -> T) -> T {
    let before = ALLOCATOR.current_usage();
    ALLOCATOR.reset_peak_usage();
    let value = f();
    let after = ALLOCATOR.current_usage();
    let peak = ALLOCATOR.peak_usage();
    println!(
        "  {name:<34} live {:>6.1} MiB ({:>+6.1})  peak {:>6.1} MiB",
        mib(after),
        mib(after) - mib(before),
        mib(peak)
    );
    value
}

/// What each part of a state costs: the live heap a copy of it adds.
fn breakdown(state: &KernelState) {
    let size = |copy: &dyn Fn() -> Box<dyn std::any::Any>| {
        let before = ALLOCATOR.current_usage();
        let value = copy();
        let size = ALLOCATOR.current_usage() - before;
        drop(value);
        mib(size)
    };
    let sets = size(&|| {
        let sets: Vec<_> = state.tables.values().map(|t| t.sets.clone()).collect();
        Box::new(sets)
    });
    let chains = size(&|| {
        let chains: Vec<_> = state.tables.values().map(|t| t.chains.clone()).collect();
        Box::new(chains)
    });
    let addresses = size(&|| Box::new(state.addresses.clone()));
    let routes = size(&|| Box::new(state.routes.clone()));
    println!(
        "    of which sets and elements {sets:.1} MiB, chains {chains:.1} MiB, \
         addresses {addresses:.1} MiB, routes {routes:.1} MiB"
    );
}

fn main() {
    let model = generate(Shape::one_node(INSTANCES));
    let start = ALLOCATOR.current_usage();
    println!(
        "agent memory, {INSTANCES} instances (live heap; the model itself: {:.1} MiB)",
        mib(start)
    );
    let snapshot = step("view (as received, sanitized)", || {
        let view = view_for(&model, "nc-1").expect("node exists");
        let id = view.state_id().as_str().to_string();
        Snapshot::from_view("nc-1", id, &view)
    });
    drop(model);
    let settings = RenderSettings::default();
    let rendered = step("render (desired state)", || {
        render_snapshot(&snapshot, &settings).expect("view is usable")
    });
    let desired = rendered.desired;
    let empty = KernelState::default();
    let changes = step("diff against an empty kernel", || diff(&empty, &desired));
    let none = |_: &_, _: &str| None;
    step("nft transaction built", || {
        let nft: Vec<_> = changes.nft_changes().collect();
        let batch = build_transaction(&nft, &desired, &none, Some("v1-x"));
        batch.commands()
    });
    // As the reconcile loop does: the desired state becomes the actual one.
    step("change set dropped", || drop(changes));
    let actual = step("desired kept as the actual state", || {
        let mut actual = desired;
        forget_rule_statements(&mut actual);
        actual
    });
    breakdown(&actual);
    // The model was dropped after the view was made: what is live now is
    // what the agent holds.
    println!(
        "  held between applies: {:.1} MiB (view and actual state)",
        mib(ALLOCATOR.current_usage())
    );
    drop((snapshot, actual));
}
