//! End-to-end tests against real services (see the `sochi-e2e` crate).
#![allow(clippy::unwrap_used)]

// The harness itself: registry, fault proxy, images, sochi runner.
mod harness;

// create / push / convert against the real registry, with faults.
mod registry;
