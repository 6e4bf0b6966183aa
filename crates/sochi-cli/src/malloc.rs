//! glibc's malloc for the processes that serve layers (`sochi mount`,
//! `sochi snapshotter`): a fixed mmap threshold, set by running the program
//! again with `GLIBC_TUNABLES` before it has done anything.
//!
//! Why: glibc raises its mmap threshold to the size of the first large
//! block freed, up to 32 MiB. fuser frees a 16 MiB request buffer after
//! each mount's handshake, so from then on the 16 MiB zeroed buffer of each
//! FUSE thread comes from a heap, where calloc touches it whole, and freed
//! 4 MiB spans stay in the heaps. Measured in e2e/tests/many.rs (19 lazy
//! layers): 730 MiB resident with nothing read, 1.1 GiB at peak; with the
//! threshold fixed, 27 MiB and 180 MiB. A fixed threshold keeps such
//! blocks mapped on their own: untouched until used, returned when freed.
//! (mimalloc, tried instead, reuses the freed handshake buffer and zeroes
//! it: 700 MiB.) Setting it from within needs `mallopt`, an unsafe FFI call
//! this crate does not make; glibc reads the tunable once, at start.

use std::os::unix::process::CommandExt as _;

const TUNABLES: &str = "GLIBC_TUNABLES";

const MMAP_THRESHOLD: &str = "glibc.malloc.mmap_threshold";

/// Blocks this large or larger are mapped on their own: spans (4 MiB by
/// default) and FUSE request buffers, not FUSE read replies (up to 1 MiB),
/// which come and go with every read.
const THRESHOLD_BYTES: u32 = 2 << 20;

const ARENA_MAX: &str = "glibc.malloc.arena_max";

/// malloc heaps at most (glibc's default is 8 per core). Every thread
/// that allocates (FUSE threads, the read pool, background fetches) is
/// given a heap of its own while there are fewer; memory freed in a heap
/// stays there for its next allocations, so the fewer heaps, the less
/// sits idle in them.
const ARENAS: u32 = 4;

/// Runs this program again, same pid, arguments and environment, with the
/// mmap threshold fixed, unless it already runs so (or `GLIBC_TUNABLES`
/// sets a threshold of its own). Returns when it does not (also when the
/// exec fails: the process then runs untuned, and says so).
pub fn fix_mmap_threshold() {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    let current = std::env::var(TUNABLES).unwrap_or_default();
    if current.contains(MMAP_THRESHOLD) {
        return;
    }
    let Ok(program) = std::env::current_exe() else {
        return;
    };
    let mut setting = format!("{MMAP_THRESHOLD}={THRESHOLD_BYTES}");
    if !current.contains(ARENA_MAX) {
        setting.push_str(&format!(":{ARENA_MAX}={ARENAS}"));
    }
    let tunables = if current.is_empty() {
        setting
    } else {
        format!("{current}:{setting}")
    };
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(&program);
    if let Some(argv0) = args.next() {
        command.arg0(argv0);
    }
    let error = command.args(args).env(TUNABLES, tunables).exec();
    eprintln!(
        "sochi: could not run {} again with malloc's mmap threshold fixed ({error}); memory may grow past the span budget",
        program.display()
    );
}
