//! edgenetd, the node agent, as a library (the binary is `src/main.rs`).
//!
//! The stages follow the flow of a view: [`source`] (model file or long
//! poll) → [`snapshot`] → [`render`] → [`diff`] → [`reconcile`] →
//! [`dataplane`] → kernel. [`commands`] are the command line's verbs and
//! [`ops`] what the daemon shows its operator (metrics, systemd, heap).

pub mod dataplane;
pub mod diff;
pub mod render;
pub mod snapshot;
pub mod source;
pub mod state;

pub mod reconcile;

pub mod cli;
pub mod commands;
pub mod config;
pub mod ops;
