//! # unicell
//!
//! A compute scheduler in the style of OpenStack Nova and Placement whose whole state lives
//! in one datastore behind one trait, [`store::Store`]. Claims are compare-and-set writes
//! made by the scheduler at the moment it selects a host; global queries such as the paged
//! list of every instance are one query against one store.
//!
//! * [`model`]: the domain types (providers, inventories, claims, hosts, flavors, instances).
//! * [`store`]: the storage contract, [`store::open`] by URL, the embedded
//!   [`store::memory`] backend and (feature `conformance`) the shared conformance suite.
//! * [`Error`]: the one semantic error enum every backend maps into.
//! * [`scheduler`], [`conductor`], [`compute`]: placement with claims at selection,
//!   caller-chosen alternates and reschedules over them.
//! * `sim` (feature `sim`): the simulation that runs the whole flow without hypervisors:
//!   a seeded cloud generator, the request mix, a driver for several schedulers and
//!   conductors, simulated computes and their heartbeats.
//! * `testkit` (feature `testkit`): throwaway Redis, Redis Cluster and Cassandra servers
//!   from installed binaries, for tests, benchmarks and evaluations.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

#[cfg(feature = "api")]
pub mod api;
pub mod compute;
pub mod conductor;
pub mod error;
pub mod model;
pub mod scheduler;
#[cfg(feature = "sim")]
pub mod sim;
pub mod store;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use error::{Error, Result};
