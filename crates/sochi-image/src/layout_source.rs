//! An OCI image layout as the builder's [`ImageSource`].

use std::io::Read;

use sochi_build::{ImageSource, SourceError};
use sochi_format::Descriptor;
use sochi_store::OciLayout;

/// Reads image blobs from an OCI layout directory.
pub struct LayoutSource(pub OciLayout);

impl ImageSource for LayoutSource {
    fn read_blob(&self, descriptor: &Descriptor) -> Result<Vec<u8>, SourceError> {
        Ok(self.0.read_descriptor(descriptor)?)
    }

    fn open_blob(&self, descriptor: &Descriptor) -> Result<Box<dyn Read + Send + '_>, SourceError> {
        let digest = descriptor.sha256()?;
        Ok(Box::new(self.0.open_blob(&digest)?))
    }

    fn has_blob(&self, descriptor: &Descriptor) -> bool {
        descriptor.sha256().is_ok_and(|d| self.0.contains(&d))
    }
}
