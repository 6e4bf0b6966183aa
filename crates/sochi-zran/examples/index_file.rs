//! Indexes a gzip file the way `soci create` does and reports the time.
//!
//! Usage: `cargo run --release -p sochi-zran --example index_file -- PATH [SPAN_SIZE]`
//! (span size defaults to 4 MiB). Compare with `time gzip -dc PATH > /dev/null`.

use std::fs::File;
use std::process::ExitCode;
use std::time::Instant;

use sha2::{Digest as _, Sha256};
use sochi_zran::CheckpointingReader;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: index_file PATH [SPAN_SIZE]");
        return ExitCode::from(2);
    };
    let span_size = match args.next().map(|s| s.parse::<u64>()) {
        None => 4 << 20,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("bad span size: {e}");
            return ExitCode::from(2);
        }
    };
    let start = Instant::now();
    let result = File::open(&path)
        .map_err(|source| sochi_zran::Error::Io { source })
        .and_then(|file| CheckpointingReader::new(file, span_size))
        .and_then(CheckpointingReader::finish);
    let seconds = start.elapsed().as_secs_f64();
    match result {
        Ok(index) => {
            println!(
                "{path}: {seconds:.3} s, {} checkpoints, {} -> {} bytes ({:.0} MB/s uncompressed)",
                index.checkpoint_count,
                index.compressed_size,
                index.uncompressed_size,
                index.uncompressed_size as f64 / seconds / 1e6,
            );
            // Fingerprints to compare runs (e.g. zlib builds) at a glance.
            let mut digests = Sha256::new();
            for digest in &index.span_digests {
                digests.update(digest.0);
            }
            println!(
                "zinfo sha256:{:x}, span digests sha256:{:x}",
                Sha256::digest(&index.zinfo),
                digests.finalize()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{path}: {e}");
            ExitCode::FAILURE
        }
    }
}
