//! Integration tests of runfleet-lifecycle, through its public API only. Timer logic runs on
//! paused tokio time, so the tests are deterministic and take no real time.

mod common;
mod events;
mod group;
mod service;
mod ticker;
