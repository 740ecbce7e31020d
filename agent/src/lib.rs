//! edgenetd, the node agent, as a library (the binary is `src/main.rs`).

pub mod dataplane;
pub mod desired;
pub mod diff;
pub mod incremental;
pub mod render;

// The control loop around them.
pub mod cli;
pub mod config;
pub mod dryrun;
pub mod heap;
pub mod metrics;
pub mod notify;
pub mod poller;
pub mod reconcile;
pub mod source;
