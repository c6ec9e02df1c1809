//! Whole-fleet tests: the real binaries, the real Redis. One test binary, a module per feature.

mod admin_audit;
mod integrity;
mod rabbitmq;
mod rate_limits;
mod readme;
mod reliability;
mod security;
mod shutdown;
mod tls;
mod trading;
mod walking_skeleton;
