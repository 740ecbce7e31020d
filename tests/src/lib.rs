//! Network-namespace topology for the end-to-end suite.
//!
//! Building blocks ([`netns`], [`links`], [`process`], [`probe`]) and the
//! EDGE cloud built from them ([`cloud`]). Everything a test creates is
//! named from a per-test prefix that carries the test process's PID, is
//! removed on Drop, and is swept by a later run if the process was killed.

pub mod cloud;
pub mod http;
pub mod kernel;
pub mod links;
pub mod model;
pub mod names;
pub mod netns;
pub mod prereq;
pub mod probe;
pub mod process;

pub use cloud::{Cloud, CloudOptions};
pub use netns::Netns;
