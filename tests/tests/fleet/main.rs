//! Whole-fleet tests: the real binaries, the real Redis. One test binary, a module per feature.

mod readme;
mod shutdown;
mod walking_skeleton;
