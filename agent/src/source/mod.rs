//! Where views come from. Both sources, the model file ([`file`]) and the
//! long-poll client ([`poller`]), publish [`Snapshot`](crate::snapshot::Snapshot)s
//! into one `watch` channel; the [`supervisor`] runs the one the
//! configuration names and restarts it on SIGHUP.

pub mod file;
pub mod poller;
pub mod supervisor;

pub use file::{snapshot_from_model_file, LocalSource, SourceError, DEBOUNCE};
