//! What a layer's extended attributes may be: one policy for every path
//! that turns a layer into files (the lazy layer tree and the local unpack),
//! so that an image is served lazily only if it would also unpack.
//!
//! Xattrs travel in PAX records named `SCHILY.xattr.<name>` (Go's
//! `archive/tar`, containerd's `archive/tar.go`). Two kinds are refused,
//! each because the kernel or containerd would refuse them too:
//!
//! - `trusted.overlay.*`: overlayfs acts on these in a lower directory
//!   (opaque directories, redirects, origins, metacopy), so a layer that
//!   carries them could rewrite the merged tree below it. Only a layer's
//!   whiteouts may speak to overlayfs: opaque directories come from
//!   `.wh..wh..opq`, never from an xattr in the tar. containerd applies a
//!   layer through an overlay mount, where setting them fails with EPERM.
//! - a `security.capability` that is not a well-formed v2 or v3 value
//!   (`struct vfs_ns_cap_data` in `linux/capability.h`): the kernel's
//!   `cap_convert_nscap` refuses it with EINVAL, so containerd's unpack
//!   fails on it. Served lazily, it would reach the kernel only through
//!   overlayfs copy-up, after the layer was in use.

/// The PAX record prefix that carries an xattr.
pub const PAX_XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";

/// The namespace overlayfs keeps its own state in.
const OVERLAY_PREFIX: &[u8] = b"trusted.overlay.";

/// The file capability xattr.
const CAPABILITY: &[u8] = b"security.capability";

/// `VFS_CAP_REVISION_MASK` in `linux/capability.h`: the revision is the top
/// byte of `magic_etc`.
const REVISION_MASK: u32 = 0xff00_0000;
/// `VFS_CAP_REVISION_2`, whose value is `XATTR_CAPS_SZ_2` = 20 bytes.
const REVISION_2: u32 = 0x0200_0000;
/// `VFS_CAP_REVISION_3`, whose value is `XATTR_CAPS_SZ_3` = 24 bytes (v2
/// plus the namespace's root uid).
const REVISION_3: u32 = 0x0300_0000;

/// Why an xattr of a layer entry is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XattrRefusal {
    /// A `trusted.overlay.*` xattr: overlayfs state may not come from an
    /// image.
    #[error("overlayfs xattrs may not come from a layer (opaque directories are `.wh..wh..opq` entries)")]
    OverlayNamespace,
    /// A `security.capability` value the kernel would refuse.
    #[error(
        "not a v2 (20 bytes, revision 0x02) or v3 (24 bytes, revision 0x03) file capability: \
         {len} bytes{}",
        .revision.map(|r| format!(", revision {:#04x}", r >> 24)).unwrap_or_default()
    )]
    MalformedCapability {
        /// Length of the value.
        len: usize,
        /// The revision in its first four bytes (little-endian `magic_etc`),
        /// when it has four bytes.
        revision: Option<u32>,
    },
}

/// Checks one xattr of a layer entry against the policy above.
///
/// # Errors
///
/// [`XattrRefusal`] when the layer must be refused because of it.
pub fn check_xattr(name: &[u8], value: &[u8]) -> Result<(), XattrRefusal> {
    if name.starts_with(OVERLAY_PREFIX) {
        return Err(XattrRefusal::OverlayNamespace);
    }
    if name == CAPABILITY {
        let revision = value
            .get(..4)
            .and_then(|magic| <[u8; 4]>::try_from(magic).ok())
            .map(|magic| u32::from_le_bytes(magic) & REVISION_MASK);
        let well_formed = matches!(
            (value.len(), revision),
            (20, Some(REVISION_2)) | (24, Some(REVISION_3))
        );
        if !well_formed {
            return Err(XattrRefusal::MalformedCapability {
                len: value.len(),
                revision,
            });
        }
    }
    Ok(())
}

/// The xattrs among an entry's PAX records: `(name, value)` of every
/// `SCHILY.xattr.<name>` record with a non-empty name.
pub fn entry_xattrs<'a>(
    pax_records: &'a [(Vec<u8>, Vec<u8>)],
) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
    pax_records.iter().filter_map(|(key, value)| {
        key.strip_prefix(PAX_XATTR_PREFIX)
            .filter(|name| !name.is_empty())
            .map(|name| (name, value.as_slice()))
    })
}

/// The first xattr among `pax_records` the policy refuses, with its name.
pub fn first_refused_xattr(pax_records: &[(Vec<u8>, Vec<u8>)]) -> Option<(&[u8], XattrRefusal)> {
    entry_xattrs(pax_records).find_map(|(name, value)| {
        check_xattr(name, value)
            .err()
            .map(|refusal| (name, refusal))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capability(revision: u32, len: usize) -> Vec<u8> {
        let mut value = vec![0; len];
        let magic = (revision | 1).to_le_bytes();
        value[..4.min(len)].copy_from_slice(&magic[..4.min(len)]);
        value
    }

    #[test]
    fn well_formed_capabilities_pass() {
        assert_eq!(check_xattr(CAPABILITY, &capability(REVISION_2, 20)), Ok(()));
        assert_eq!(check_xattr(CAPABILITY, &capability(REVISION_3, 24)), Ok(()));
    }

    #[test]
    fn malformed_capabilities_are_refused() {
        for (value, len, revision) in [
            (capability(REVISION_2, 24), 24, Some(REVISION_2)),
            (capability(REVISION_3, 20), 20, Some(REVISION_3)),
            (capability(0x0100_0000, 12), 12, Some(0x0100_0000)),
            (
                b"bogus".to_vec(),
                5,
                Some(u32::from_le_bytes(*b"bogu") & REVISION_MASK),
            ),
            (vec![2], 1, None),
            (Vec::new(), 0, None),
        ] {
            assert_eq!(
                check_xattr(CAPABILITY, &value),
                Err(XattrRefusal::MalformedCapability { len, revision }),
                "{value:?}"
            );
        }
        let message = check_xattr(CAPABILITY, &capability(0x0100_0000, 12))
            .unwrap_err()
            .to_string();
        assert!(message.contains("12 bytes, revision 0x01"), "{message}");
    }

    #[test]
    fn overlay_xattrs_are_refused_and_others_pass() {
        for name in [&b"trusted.overlay.opaque"[..], b"trusted.overlay.redirect"] {
            assert_eq!(check_xattr(name, b"y"), Err(XattrRefusal::OverlayNamespace));
        }
        for name in [&b"user.color"[..], b"trusted.other", b"security.selinux"] {
            assert_eq!(check_xattr(name, b"anything"), Ok(()));
        }
    }

    #[test]
    fn only_schily_records_are_xattrs() {
        let records = vec![
            (b"SCHILY.xattr.user.a".to_vec(), b"1".to_vec()),
            (b"SCHILY.xattr.".to_vec(), b"empty name".to_vec()),
            (b"mtime".to_vec(), b"1.5".to_vec()),
            (
                b"SCHILY.xattr.trusted.overlay.origin".to_vec(),
                b"x".to_vec(),
            ),
        ];
        let names: Vec<&[u8]> = entry_xattrs(&records).map(|(n, _)| n).collect();
        assert_eq!(names, [&b"user.a"[..], b"trusted.overlay.origin"]);
        assert_eq!(
            first_refused_xattr(&records),
            Some((
                &b"trusted.overlay.origin"[..],
                XattrRefusal::OverlayNamespace
            ))
        );
    }
}
