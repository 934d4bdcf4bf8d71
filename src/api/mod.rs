//! The HTTP APIs (feature `api`).

pub mod placement;
