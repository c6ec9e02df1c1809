//! runfleet's worker node as a library: the node runtime ([`node::WorkerNode`]), which runs
//! every job through the runner kinds it is given ([`runfleet_shared::kind::Kinds`]) and knows
//! nothing of what they do. The `runfleet-worker-node` binary wires it to Redis; the
//! orchestrator's embedded mode runs it in-process on the in-memory backend. [`http`] serves
//! the node's metrics and health, and both binaries' HTTP listeners.

pub mod beat;
pub mod http;
pub mod node;

pub use node::{NodeConfig, WorkerNode};
