//! The domain model: Placement's providers, inventories and allocations, and Nova's cells,
//! hosts, flavors, server groups, request specs and instances, as typed Rust with serde.
//!
//! Constructors that take text (`ResourceClass::parse`, `Trait::new`, `FlavorId::new`) and
//! every `validate` method return [`Error::InvalidInput`](crate::Error::InvalidInput) naming
//! the offending field; nothing here panics on input.

mod catalog;
mod ids;
mod instance;
mod placement;
mod resources;
mod time;

pub use catalog::*;
pub use ids::*;
pub use instance::*;
pub use placement::*;
pub use resources::*;
pub use time::*;
