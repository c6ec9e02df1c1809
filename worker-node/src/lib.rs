//! runfleet's worker node as a library: the node runtime ([`node::WorkerNode`]) and the
//! built-in trading runner ([`trading`]). The `runfleet-worker-node` binary wires it to Redis;
//! the orchestrator's embedded mode runs it in-process on the in-memory backend. [`http`]
//! serves the node's metrics and health, and both binaries' HTTP listeners.

pub mod beat;
pub mod http;
pub mod lease;
pub mod node;
pub mod trading;

pub use node::{NodeConfig, WorkerNode};
