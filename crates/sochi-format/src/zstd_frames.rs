//! The frames of a zstd stream, found from their headers without
//! decompressing (RFC 8878 §3.1): where each frame starts and ends, and
//! whether it is a skippable frame. A multi-frame zstd layer (`pzstd`,
//! zstd:chunked, a seekable writer) can be read from any frame start;
//! this is the map an index of such a layer is built from.
//!
//! Everything is bounds-checked: a header or block that runs past the
//! input is an error naming the frame and the offset, never a panic.

use crate::error::{Error, Result};

/// The magic number of a zstd frame, little-endian.
pub const ZSTD_MAGIC: u32 = 0xFD2F_B528;
/// Skippable frames have magics `0x184D2A50..=0x184D2A5F`.
const SKIPPABLE_MASK: u32 = 0xFFFF_FFF0;
const SKIPPABLE_MAGIC: u32 = 0x184D_2A50;
/// The largest block a frame may hold (RFC 8878 §3.1.1.2.4).
const MAX_BLOCK_SIZE: u64 = 128 << 10;

/// One frame of a zstd stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZstdFrame {
    /// Where the frame starts in the stream.
    pub offset: u64,
    /// Its length, headers and checksum included.
    pub len: u64,
    /// A skippable frame (user data, no content).
    pub skippable: bool,
    /// The content size its header declares, if it does.
    pub content_size: Option<u64>,
}

/// The frames of `stream`, in order. The frames must cover the stream
/// exactly: trailing bytes that are not a frame are an error.
pub fn zstd_frames(stream: &[u8]) -> Result<Vec<ZstdFrame>> {
    let mut frames = Vec::new();
    let mut offset = 0usize;
    while offset < stream.len() {
        let frame = frame_at(stream, offset, frames.len())?;
        offset = offset
            .checked_add(usize::try_from(frame.len).map_err(|_| too_long(frames.len()))?)
            .ok_or_else(|| too_long(frames.len()))?;
        frames.push(frame);
    }
    Ok(frames)
}

fn too_long(index: usize) -> Error {
    Error::Invalid {
        what: "zstd frame",
        detail: format!("frame {index} is longer than the stream"),
    }
}

/// The frame starting at `offset` (frame number `index`, for errors).
fn frame_at(stream: &[u8], offset: usize, index: usize) -> Result<ZstdFrame> {
    let invalid = |detail: String| Error::Invalid {
        what: "zstd frame",
        detail: format!("frame {index} at offset {offset}: {detail}"),
    };
    let bytes = &stream[offset..];
    let magic = le(bytes, 0, 4).ok_or_else(|| invalid("truncated magic".into()))? as u32;
    if magic & SKIPPABLE_MASK == SKIPPABLE_MAGIC {
        let size = le(bytes, 4, 4).ok_or_else(|| invalid("truncated skippable frame".into()))?;
        let len = 8 + size;
        if len > bytes.len() as u64 {
            return Err(invalid(format!(
                "skippable frame of {len} bytes, {} left",
                bytes.len()
            )));
        }
        return Ok(ZstdFrame {
            offset: offset as u64,
            len,
            skippable: true,
            content_size: None,
        });
    }
    if magic != ZSTD_MAGIC {
        return Err(invalid(format!("magic {magic:#010x} is not zstd's")));
    }
    let descriptor = *bytes
        .get(4)
        .ok_or_else(|| invalid("truncated frame header".into()))?;
    let fcs_flag = descriptor >> 6;
    let single_segment = descriptor & 0x20 != 0;
    if descriptor & 0x08 != 0 {
        return Err(invalid("reserved bit set in the frame header".into()));
    }
    let has_checksum = descriptor & 0x04 != 0;
    let dict_id_len = [0usize, 1, 2, 4][usize::from(descriptor & 0x03)];
    let fcs_len = match (fcs_flag, single_segment) {
        (0, false) => 0,
        (0, true) => 1,
        (1, _) => 2,
        (2, _) => 4,
        _ => 8,
    };
    let mut at = 5 + usize::from(!single_segment) + dict_id_len;
    let content_size = if fcs_len == 0 {
        None
    } else {
        let value =
            le(bytes, at, fcs_len).ok_or_else(|| invalid("truncated frame header".into()))?;
        Some(if fcs_len == 2 { value + 256 } else { value })
    };
    at += fcs_len;
    loop {
        let header = le(bytes, at, 3)
            .ok_or_else(|| invalid(format!("truncated block header at {}", offset + at)))?;
        let last = header & 1 != 0;
        let block_type = (header >> 1) & 3;
        let size = header >> 3;
        let payload = match block_type {
            0 | 2 if size > MAX_BLOCK_SIZE => {
                return Err(invalid(format!("block of {size} bytes at {}", offset + at)));
            }
            0 | 2 => size,
            1 => 1,
            _ => return Err(invalid(format!("reserved block type at {}", offset + at))),
        };
        at = at
            .checked_add(3)
            .and_then(|at| at.checked_add(usize::try_from(payload).ok()?))
            .filter(|&end| end <= bytes.len())
            .ok_or_else(|| {
                invalid(format!(
                    "block runs past the end of the stream ({} bytes)",
                    stream.len()
                ))
            })?;
        if last {
            break;
        }
    }
    if has_checksum {
        at += 4;
        if at > bytes.len() {
            return Err(invalid("truncated content checksum".into()));
        }
    }
    Ok(ZstdFrame {
        offset: offset as u64,
        len: at as u64,
        skippable: false,
        content_size,
    })
}

/// `len` bytes little-endian at `at`, if there.
fn le(bytes: &[u8], at: usize, len: usize) -> Option<u64> {
    let slice = bytes.get(at..at.checked_add(len)?)?;
    Some(
        slice
            .iter()
            .rev()
            .fold(0u64, |value, &byte| (value << 8) | u64::from(byte)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame holding `content` in one raw block, with the content size
    /// in a 1-byte field (single segment) and no checksum.
    fn raw_frame(content: &[u8]) -> Vec<u8> {
        assert!(content.len() < 256);
        let mut frame = ZSTD_MAGIC.to_le_bytes().to_vec();
        frame.push(0x20); // single segment, 1-byte content size
        frame.push(content.len() as u8);
        let header = ((content.len() as u32) << 3) | 1; // raw, last
        frame.extend_from_slice(&header.to_le_bytes()[..3]);
        frame.extend_from_slice(content);
        frame
    }

    fn skippable(data: &[u8]) -> Vec<u8> {
        let mut frame = (SKIPPABLE_MAGIC + 3).to_le_bytes().to_vec();
        frame.extend_from_slice(&(data.len() as u32).to_le_bytes());
        frame.extend_from_slice(data);
        frame
    }

    #[test]
    fn frames_and_skippable_frames_are_found_in_order() {
        let (a, b) = (raw_frame(b"hello"), raw_frame(b"world!"));
        let s = skippable(b"toc");
        let stream = [a.clone(), s.clone(), b.clone()].concat();
        let frames = zstd_frames(&stream).unwrap();
        assert_eq!(
            frames,
            [
                ZstdFrame {
                    offset: 0,
                    len: a.len() as u64,
                    skippable: false,
                    content_size: Some(5)
                },
                ZstdFrame {
                    offset: a.len() as u64,
                    len: s.len() as u64,
                    skippable: true,
                    content_size: None
                },
                ZstdFrame {
                    offset: (a.len() + s.len()) as u64,
                    len: b.len() as u64,
                    skippable: false,
                    content_size: Some(6)
                },
            ]
        );
    }

    #[test]
    fn truncated_or_foreign_input_is_an_error_naming_the_frame() {
        let frame = raw_frame(b"hello");
        for cut in 1..frame.len() {
            let stream = [frame.clone(), frame[..cut].to_vec()].concat();
            let error = zstd_frames(&stream).unwrap_err().to_string();
            assert!(error.contains("frame 1 at offset"), "{cut}: {error}");
        }
        let error = zstd_frames(b"\x1f\x8b\x08\x00gzip")
            .unwrap_err()
            .to_string();
        assert!(error.contains("is not zstd's"), "{error}");
        assert_eq!(zstd_frames(b"").unwrap(), []);
    }

    /// What the `zstd` command writes: two frames, one with a content
    /// checksum and compressed blocks, one without a checksum.
    #[test]
    fn frames_the_zstd_command_wrote() {
        const CLI_FRAMES: &str = concat!(
            "28b52ffd0458f50b00c69b4e23208fd3062037b161b20647ccec26e500601fe07e2f843ff384c57f4ec02584",
            "084806064e00410041000c8381d0a26e27e18ba58f2fbad9c754da86235fa5998d3822373ca001f0769ae429",
            "dac6953218182038aaf4f003822f05d7cdc64871e58888381a0fc81b0f08c384e490050847c4e1f08988c31f",
            "6f341b3d67bda5c9975684a4b5ecd814573e6fe9f499bd6a98d1ae43d93761ac38b63449ee96ec4cef53b4eb",
            "db67d89d1063f49647dd89b1c271a5c06878174c0b2b7b1d47efb6d07999b745a3f056ceec1bd3a49cd1e93d",
            "d36b8a9769069f059199df5b42bef29948923fc7a8888ec4af143e13e890256ac1b0b2cf73efd5b77c679d47",
            "96da9172d0b70504a0e36639fa55fc794e21b61e9fd430c5d66cb5743b6eddf589e15fa0d347a77dfbd03296",
            "76fa74953b52aebfad186a930dd991efcf051800034b8029625098591d48aeee00d76d0024f035b6d984bd33",
            "c78403c270be263f5a0ea14146c49217b1ca35bb481db9d65953702dd6dc00749c020128d9036d3eb2b90428",
            "b52ffd00589d0000687365636f6e64206672616d65200100b0cc2f",
        );
        let stream = hex::decode(CLI_FRAMES).unwrap();
        let frames = zstd_frames(&stream).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!((frames[0].offset, frames[0].len), (0, 395));
        // Read from a pipe, the command does not know the sizes.
        assert_eq!(frames[0].content_size, None);
        assert_eq!((frames[1].offset, frames[1].len), (395, 28));
        assert_eq!(frames[1].content_size, None);
        assert!(!frames.iter().any(|f| f.skippable));
    }
}
