//! Shared helpers: a deterministic data generator, gzip writers, a plain
//! gunzip, a tiny zinfo parser and fixture loading.

use std::io::{Read as _, Write as _};

use sha2::{Digest as _, Sha256};
use sochi_format::CheckpointRef;
use sochi_zran::{CheckpointingReader, GzipLayerIndex};

/// Bytes in a checkpoint window.
pub const WINDOW: usize = 32768;

/// xorshift64*: deterministic pseudo-random numbers.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `len` bytes mixing what deflate treats differently: compressible text,
/// incompressible noise (stored blocks at low levels), long zero runs, and
/// copies of earlier data from up to 32 KiB back (matches that reach across
/// span starts into the checkpoint window).
pub fn synthetic(seed: u64, len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "layer",
        "span",
        "checkpoint",
        "window",
        "inflate",
        "gzip",
        "tar",
        "zran",
        "index",
        "snapshot",
        "registry",
        "the",
        "a",
        "of",
        "\n",
        "/usr/share/",
        "0000644",
        "root",
    ];
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(len + 1024);
    while out.len() < len {
        let chunk = 1 + rng.below(20_000) as usize;
        match rng.below(4) {
            0 => {
                while out.len() < len && chunk > 0 {
                    let word = WORDS[rng.below(WORDS.len() as u64) as usize];
                    out.extend_from_slice(word.as_bytes());
                    out.push(b' ');
                    if rng.below(chunk as u64 / 8 + 2) == 0 {
                        break;
                    }
                }
            }
            1 => out.extend((0..chunk).map(|_| rng.next() as u8)),
            2 => out.extend(std::iter::repeat_n(0u8, chunk)),
            _ => {
                if out.is_empty() {
                    continue;
                }
                let distance = 1 + rng.below(out.len().min(WINDOW) as u64) as usize;
                let start = out.len() - distance;
                for i in 0..chunk.min(4000) {
                    let byte = out[start + i % distance];
                    out.push(byte);
                }
            }
        }
    }
    out.truncate(len);
    out
}

/// One gzip member of `data` at `level` (0..=9).
pub fn gzip(data: &[u8], level: u32) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// Concatenated gzip members, one per part.
pub fn gzip_members(parts: &[&[u8]], level: u32) -> Vec<u8> {
    parts.iter().flat_map(|part| gzip(part, level)).collect()
}

/// Plain gunzip, following concatenated members.
pub fn gunzip(blob: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(blob)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// Indexes `blob` by draining it.
pub fn index(blob: &[u8], span_size: u64) -> sochi_zran::Result<GzipLayerIndex> {
    CheckpointingReader::new(blob, span_size)?.finish()
}

/// One checkpoint of a parsed zinfo.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub compressed_offset: u64,
    pub uncompressed_offset: u64,
    pub bits: u8,
    pub window: Vec<u8>,
}

impl Checkpoint {
    pub fn as_ref(&self) -> CheckpointRef<'_> {
        CheckpointRef {
            compressed_offset: self.compressed_offset,
            uncompressed_offset: self.uncompressed_offset,
            bits: self.bits,
            window: &self.window,
        }
    }

    /// `StartCompressed` of docs/format.md §2.4.
    pub fn start_compressed(&self) -> u64 {
        self.compressed_offset - u64::from(self.bits != 0)
    }
}

/// Parses a v2 gzip zinfo (docs/format.md §2.2) independently of sochi-format.
pub fn parse_zinfo(zinfo: &[u8]) -> (i64, Vec<Checkpoint>) {
    const RECORD: usize = 17 + WINDOW;
    let count = i32::from_le_bytes(zinfo[0..4].try_into().unwrap()) as usize;
    let span_size = i64::from_le_bytes(zinfo[4..12].try_into().unwrap());
    assert_eq!(zinfo.len(), 12 + RECORD * count, "v2 zinfo length");
    let checkpoints = zinfo[12..]
        .chunks_exact(RECORD)
        .map(|record| Checkpoint {
            compressed_offset: u64::from_le_bytes(record[0..8].try_into().unwrap()),
            uncompressed_offset: u64::from_le_bytes(record[8..16].try_into().unwrap()),
            bits: record[16],
            window: record[17..].to_vec(),
        })
        .collect();
    (span_size, checkpoints)
}

/// `[StartCompressed(i), EndCompressed(i))` and `[StartUncompressed(i),
/// EndUncompressed(i))` for every span, with the end of the blob and of the
/// stream closing the last one.
pub fn span_ranges(
    checkpoints: &[Checkpoint],
    compressed_size: u64,
    uncompressed_size: u64,
) -> Vec<((usize, usize), (usize, usize))> {
    (0..checkpoints.len())
        .map(|i| {
            let (end_c, end_u) = match checkpoints.get(i + 1) {
                Some(next) => (next.compressed_offset, next.uncompressed_offset),
                None => (compressed_size, uncompressed_size),
            };
            (
                (checkpoints[i].start_compressed() as usize, end_c as usize),
                (checkpoints[i].uncompressed_offset as usize, end_u as usize),
            )
        })
        .collect()
}

/// The 32 KiB before `out` in `plain`, zeros below 0 (docs/format.md §2.2).
pub fn expected_window(plain: &[u8], out: usize) -> Vec<u8> {
    let mut window = vec![0u8; WINDOW];
    let available = out.min(WINDOW);
    window[WINDOW - available..].copy_from_slice(&plain[out - available..out]);
    window
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The shared fixtures directory (read-only).
pub fn fixtures_dir() -> std::path::PathBuf {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures").into()
}

pub fn fixture(name: &str) -> Vec<u8> {
    let path = fixtures_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}
