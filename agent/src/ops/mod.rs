//! What the daemon shows and owes its operator: metrics, systemd
//! notifications, and the heap it gives back after each full pass.

pub mod heap;
pub mod metrics;
pub mod notify;
