//! Whole-fleet tests: the real binaries, the real Redis. One test binary, a module per feature.

mod admin_audit;
mod any_client;
mod batch;
mod cli;
mod cluster;
mod dashboard;
mod external;
mod integrity;
mod observability;
mod partition;
#[cfg(feature = "rabbitmq")]
mod rabbitmq;
mod rate_limits;
mod readme;
mod reliability;
mod scale_down;
mod security;
mod sharded;
mod shutdown;
mod tls;
mod trading;
mod walking_skeleton;
