//! The edgenet network model: types, validation, node views and state ids.

pub mod types;

pub use types::*;
