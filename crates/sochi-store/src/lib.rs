//! sochi's local store: an OCI image layout at `<root>/content` holding SOCI
//! indexes and zTOCs, plus the artifacts database that says what each is.
//!
//! [`OciLayout`] is also how sochi reads and writes `oci:PATH[:TAG]` images.
//!
//! ```no_run
//! use sochi_store::Store;
//! let store = Store::open("/var/lib/sochi".as_ref())?;
//! for entry in store.artifacts().list()? {
//!     println!("{} {:?}", entry.digest, entry.kind);
//! }
//! # Ok::<(), sochi_store::Error>(())
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub use artifacts::{ArtifactEntry, ArtifactKind, ArtifactsDb};
pub use error::{Error, Result};
pub use layout::{write_atomic, OciLayout, StagedLayout, REF_NAME};
pub use store::Store;

mod artifacts;
mod error;
mod layout;
mod store;
