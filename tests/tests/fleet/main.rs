//! Whole-fleet tests: the real binaries, the real Redis. One test binary, a module per feature.

mod any_client;
mod integrity;
mod observability;
mod rabbitmq;
mod readme;
mod reliability;
mod scale_down;
mod security;
mod shutdown;
mod trading;
mod walking_skeleton;
