//! What sochi does with images, between the `sochi` command and the
//! builder, registry client and store: the application layer.
//!
//! - [`ImageRef`] names an image: a registry reference or an OCI layout
//!   (`oci:PATH[:TAG]`); [`open_image`] opens it as an image source for
//!   the builder ([`OpenedImage`]), reading a registry through a
//!   [`Registry`] (client and runtime).
//! - [`create_indexes`] builds the v1 SOCI index of each platform, keeps it
//!   with its zTOCs in the local store, records the artifacts, and reuses
//!   zTOCs the store has; [`push_indexes`] publishes them;
//!   [`convert_image`] makes the SOCI-enabled (v2) image, from and to
//!   registries and layouts in any mix, reading each layer once.
//! - [`list_indexes`] and [`list_ztocs`] answer `index list` and `ztoc
//!   list`; [`build_ztoc_file`] is `ztoc build`; [`stored_layer_of`]
//!   finds the layer blob of a stored zTOC.
//!
//! Each returns a report for the caller to print; nothing here prints.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use convert::{convert_image, ConvertReport, ConvertRequest, ConvertedIndex};
pub use create::{create_indexes, now, CreateRequest, IndexReport, LayerReport, PrefetchReport};
pub use error::{Error, Result};
pub use image_ref::ImageRef;
pub use indexes::{list_indexes, IndexFilter, IndexRow};
pub use open::{open_image, OpenedImage, REGISTRY_THREADS};
pub use push::{push_indexes, ExistingIndex, PushReport, PushRequest};
pub use registry::{is_manifest, Registry, RegistrySource};
pub use ztocs::{
    build_ztoc_file, list_ztocs, stored_layer_of, ZtocBuildReport, ZtocFilter, ZtocRow,
};

mod convert;
mod create;
mod error;
mod image_ref;
mod indexes;
mod layout_source;
mod open;
mod push;
mod registry;
mod tee_source;
mod tee_upload;
mod ztocs;
