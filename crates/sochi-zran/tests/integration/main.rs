//! Integration tests of sochi-zran (one target, STYLE.md "Tests").

#![allow(clippy::unwrap_used)]

// Checkpoints, span digests and zinfo bytes against the reference fixtures.
mod conformance;
// Spans inflated from checkpoints against a plain gunzip.
mod differential;
// Truncated, corrupt and trailing input; corrupt checkpoints.
mod bad_input;
// Data generators, gzip helpers, zinfo parsing, fixture paths.
mod testutil;
