//! runfleet's worker node as a library: the node runtime ([`node::WorkerNode`]) and the
//! built-in trading runner ([`trading`]). The `runfleet-worker-node` binary wires it to Redis;
//! the orchestrator's embedded mode runs it in-process on the in-memory backend.

pub mod node;
pub mod trading;

pub use node::{NodeConfig, WorkerNode};
