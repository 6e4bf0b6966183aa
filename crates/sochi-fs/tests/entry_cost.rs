//! What a mounted layer holds in memory per TOC entry: the parsed zTOC, the
//! layer tree built from it and the first-read check's table, counted by a
//! counting allocator on a synthetic zTOC of 200,000 entries shaped like a
//! Debian layer (paths of about 45 bytes, `root` owner names).
//!
//! docs/lazy-mounts.md quotes these figures; this test prints them
//! (`cargo test -p sochi-fs --test entry_cost -- --nocapture`) and fails
//! only if one grows well past what was measured, so that a change that
//! doubles a node's memory per file is noticed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use sochi_format::{EntryType, FileMetadata, Ztoc};
use sochi_fs::LayerTree;
use sochi_spans::HeaderCheck;

/// Live heap bytes, as the program asked for them (the allocator's own
/// overhead, 8-16 bytes per block in glibc, comes on top).
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counter is only arithmetic on the sizes asked for.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same layout, as the caller promised for us.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded as given.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const ENTRIES: usize = 200_000;
const FILES_PER_DIR: usize = 40;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn metadata(name: String, entry_type: EntryType, offset: i64, size: i64) -> FileMetadata {
    FileMetadata {
        name: name.into_bytes(),
        entry_type,
        uncompressed_offset: offset,
        uncompressed_size: size,
        linkname: Vec::new(),
        mode: if entry_type == EntryType::Directory {
            0o755
        } else {
            0o644
        },
        uid: 0,
        gid: 0,
        uname: b"root".to_vec(),
        gname: b"root".to_vec(),
        mod_time: "2024-05-01T12:00:00Z".into(),
        devmajor: 0,
        devminor: 0,
        pax_records: Vec::new(),
    }
}

/// The bytes of a zTOC with `ENTRIES` entries (directories of
/// `FILES_PER_DIR` small files), one span.
fn synthetic_ztoc() -> Vec<u8> {
    let mut toc = Vec::with_capacity(ENTRIES);
    let mut offset = 512i64;
    let mut dir = 0usize;
    while toc.len() < ENTRIES {
        let path = format!("usr/share/doc/package-{dir:05}");
        toc.push(metadata(
            format!("{path}/"),
            EntryType::Directory,
            offset,
            0,
        ));
        offset += 512;
        for file in 0..FILES_PER_DIR.min(ENTRIES - toc.len()) {
            toc.push(metadata(
                format!("{path}/changelog-{file:04}.txt"),
                EntryType::Regular,
                offset,
                700,
            ));
            offset += 512 + 1024;
        }
        dir += 1;
    }
    // The checkpoints and span digests of a reference-made zTOC of an
    // uncompressed tar (fixtures/): this table's offsets need not match
    // them, only parse.
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/plain.tar.65536.ztoc"
    );
    let bytes = std::fs::read(fixture).expect("read the fixture zTOC");
    let mut ztoc = Ztoc::from_bytes(&bytes).expect("parse the fixture zTOC");
    ztoc.toc = toc;
    ztoc.uncompressed_archive_size = ztoc.uncompressed_archive_size.max(offset + 1024);
    ztoc.to_bytes()
}

#[test]
fn memory_per_toc_entry() {
    let bytes = synthetic_ztoc();
    let serialized = bytes.len();

    let before = live();
    let ztoc = Ztoc::from_bytes(&bytes).expect("parse the synthetic zTOC");
    let parsed = live() - before;
    drop(bytes);

    let before = live();
    let tree = LayerTree::build(&ztoc).expect("build the layer tree");
    let tree_bytes = live() - before;

    let before = live();
    let check = HeaderCheck::new(&ztoc).expect("header offsets");
    let check_bytes = live() - before;

    let per = |bytes: isize| bytes as f64 / ENTRIES as f64;
    println!(
        "per TOC entry, {ENTRIES} entries: zTOC serialized {:.0} B, parsed zTOC {:.0} B, layer tree {:.0} B (its own estimate {:.0} B), first-read check {:.1} B; held by a mounted layer {:.0} B",
        serialized as f64 / ENTRIES as f64,
        per(parsed),
        per(tree_bytes),
        tree.heap_bytes() as f64 / ENTRIES as f64,
        per(check_bytes),
        per(parsed + tree_bytes + check_bytes),
    );
    // Measured: parsed 274 B, tree 91 B, check 8.1 B. Fail only on a
    // large regression (the bound is not a target).
    assert!(
        per(tree_bytes) < 140.0,
        "layer tree {} B per entry",
        per(tree_bytes)
    );
    assert!(
        per(parsed) < 400.0,
        "parsed zTOC {} B per entry",
        per(parsed)
    );
    drop((tree, check));
}
