//! Test helpers any crate of sochi may use as a dev-dependency, never a
//! normal one: an in-process fake OCI registry ([`FakeRegistry`]) for the
//! registry client's tests and for tests of what plans an image against a
//! registry. (End-to-end tests use the real registry: `sochi-e2e`.)

#![forbid(unsafe_code)]
#![allow(missing_docs, clippy::unwrap_used)]

pub use fake_registry::{Auth, Config, FakeRegistry, FaultAction, Logged};

mod fake_registry;
