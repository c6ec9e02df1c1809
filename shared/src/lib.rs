//! runfleet's shared library: the job model, the job queue and its backends, the fleet's state
//! store (Redis schema and scripts, and the in-memory store of the embedded mode), layered
//! configuration, telemetry set-up, credentials sealing, lease deadlines, the runner lifecycle
//! library, and the seam runner kinds plug into ([`kind`]). It knows nothing of trading: that
//! is one runner kind, in `runfleet-trading`.
//!
//! The orchestrator and worker-node binaries are thin layers over this crate.

pub mod api;
pub mod backend;
pub mod backoff;
pub mod config;
pub mod crypto;
pub mod dispatch;
pub mod http;
pub mod ids;
pub mod job;
pub mod keys;
pub mod kind;
pub mod lease;
pub mod observability;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod policy;
pub mod queue;
pub mod redis_pool;
pub mod shard;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod tier;
pub mod validate;
pub mod wake;

pub use runfleet_lifecycle as lifecycle;
