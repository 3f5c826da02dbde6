//! The clusterform model shared by every crate: addresses, values, resources, provider
//! schemas, the dependency graph, plans and the diff. Pure data and pure functions: no
//! tokio, no storage, no network.

pub mod address;
pub mod diff;
pub mod graph;
pub mod output;
pub mod plan;
pub mod resource;
pub mod schema;

pub use address::{Address, AddressError};
pub use graph::{GraphError, ResourceGraph};
pub use output::OutputDecl;
pub use plan::{Action, Change, EtcdPlan, MemberStep, Plan, StepKind, Summary, UpdatePolicy};
pub use resource::{Attrs, Resource, ResourceState, Value};
pub use schema::{AttrSchema, AttrType, KindSchema, ProviderSchema};
