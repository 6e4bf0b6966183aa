//! Reading files of a layer through a zTOC (`find_entry`, `extract_file`,
//! what `sochi ztoc get-file` does) when the zTOC and the layer are
//! arbitrary: no panic, no allocation driven by the zTOC's numbers alone,
//! and a success means exactly the entry's size in bytes.
//!
//! Input: a 4-byte little-endian length `n`, then `n` bytes of zTOC (cut to
//! what is there), then the layer blob.

#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use sochi_build::{extract_file, find_entry};
use sochi_format::{EntryType, Ztoc};

/// Entries tried per input.
const MAX_ENTRIES: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Some((length, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let split = (u32::from_le_bytes(*length) as usize).min(rest.len());
    let (ztoc_bytes, layer) = rest.split_at(split);
    let Ok(ztoc) = Ztoc::from_bytes(ztoc_bytes) else {
        return;
    };
    for entry in ztoc.toc.iter().take(MAX_ENTRIES) {
        // Through the name, following links, as get-file does.
        let name = String::from_utf8_lossy(&entry.name);
        let _ = find_entry(&ztoc, &name);

        if entry.entry_type != EntryType::Regular {
            let mut out = Vec::new();
            assert!(extract_file(&ztoc, &mut Cursor::new(layer), entry, &mut out).is_err());
            continue;
        }
        let mut out = Vec::new();
        if let Ok(written) = extract_file(&ztoc, &mut Cursor::new(layer), entry, &mut out) {
            assert_eq!(written, out.len() as u64);
            assert_eq!(
                written, entry.uncompressed_size as u64,
                "extract_file succeeded with {written} bytes of a {}-byte file",
                entry.uncompressed_size
            );
        }
    }
});
