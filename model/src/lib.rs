//! The edgenet network model: types, validation, node views and state ids.

pub mod types;

pub use types::*;
pub mod addr;
pub mod backoff;
pub mod canonical;
pub mod change;
pub mod error;
pub mod index;
pub mod parse;
pub mod protocol;
pub mod synthetic;
pub mod v2;
pub mod validate;
pub mod view;

pub use canonical::StateId;
pub use change::{KindChange, ModelChange, RouteChange};
pub use error::{Entity, ModelError, ValidationError, ValidationErrors};
pub use index::{ModelIndex, ViewEntry};
pub use parse::{parse_document, parse_model, parse_view};
pub use view::{sanitize_view, view_for, SanitizedView};
