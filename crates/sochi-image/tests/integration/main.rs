//! sochi-image against the in-process fake registry (`sochi-testkit`) and
//! the reference's fixture image.

#![allow(clippy::unwrap_used)]

// create → push and convert with prefetch artifacts, round trip.
mod prefetch;
