//! edgenetd, the node agent, as a library (the binary is `src/main.rs`).

pub mod dataplane;
pub mod desired;
pub mod diff;
pub mod render;
