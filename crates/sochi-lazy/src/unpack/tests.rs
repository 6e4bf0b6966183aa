//! Unpack tests on layers made here with the `tar` crate (raw names, so
//! the hostile ones its `set_path` refuses can be written too).

use super::*;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use tar::{Builder, EntryType, Header};

/// Appends one entry, writing name and link bytes raw so tests can build
/// the hostile names `Header::set_path` refuses.
/// Whether this process may do what only root may (chown to others,
/// device nodes, `trusted.*` and capability xattrs); a test that needs it
/// says so and skips without it (unpacking runs as root in sochi).
fn needs_root(what: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return false;
    }
    eprintln!("skipped without root: {what}");
    true
}

fn add(b: &mut Builder<Vec<u8>>, kind: EntryType, name: &str, link: &str, data: &[u8]) {
    add_with(b, kind, name, link, data, |_| {});
}

fn add_with(
    b: &mut Builder<Vec<u8>>,
    kind: EntryType,
    name: &str,
    link: &str,
    data: &[u8],
    edit: impl FnOnce(&mut Header),
) {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
    h.set_size(data.len() as u64);
    h.set_mtime(1_000_000);
    // The test's own ids: chown to them works without root too.
    h.set_uid(rustix::process::geteuid().as_raw().into());
    h.set_gid(rustix::process::getegid().as_raw().into());
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    edit(&mut h);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

/// A layer of empty entries: (type, name, link name).
fn layer(entries: &[(EntryType, &str, &str)]) -> Vec<u8> {
    let mut b = Builder::new(Vec::new());
    for &(kind, name, link) in entries {
        add(&mut b, kind, name, link, b"");
    }
    b.into_inner().unwrap()
}

fn unpack(tar: &[u8]) -> (tempfile::TempDir, Result<UnpackStats, UnpackError>) {
    let dir = tempfile::tempdir().unwrap();
    let result = unpack_layer(
        tar,
        LayerCompression::Uncompressed,
        dir.path(),
        ExpectedDigests::default(),
    );
    (dir, result)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn refusal(result: Result<UnpackStats, UnpackError>) -> Refusal {
    match result {
        Err(UnpackError::Refused { reason, .. }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn gzip_layer_unpacks_every_kind_of_entry() {
    if needs_root("owners, a device node and the opaque xattr") {
        return;
    }
    let mut b = Builder::new(Vec::new());
    add(&mut b, EntryType::Directory, "./", "", b"");
    add_with(&mut b, EntryType::Directory, "etc/", "", b"", |h| {
        h.set_mode(0o1750)
    });
    b.append_pax_extensions([
        ("SCHILY.xattr.user.color", &b"blue"[..]),
        ("mtime", b"1234.5"),
    ])
    .unwrap();
    add_with(&mut b, EntryType::Regular, "/etc/app", "", b"#!bin", |h| {
        h.set_mode(0o4755);
        h.set_uid(1000);
        h.set_gid(2000);
    });
    add_with(&mut b, EntryType::Symlink, "./etc/link", "app", b"", |h| {
        h.set_uid(7);
        h.set_mtime(1500);
    });
    add(&mut b, EntryType::Link, "etc/hard", "etc/app", b"");
    add(&mut b, EntryType::Fifo, "run/fifo", "", b"");
    add_with(&mut b, EntryType::Char, "dev/null", "", b"", |h| {
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
    });
    add_with(&mut b, EntryType::Regular, "etc/.wh.gone", "", b"", |h| {
        h.set_uid(5)
    });
    add(&mut b, EntryType::Regular, "opq/.wh..wh..opq", "", b"");
    let layer = gzip(&b.into_inner().unwrap());

    let dir = tempfile::tempdir().unwrap();
    let stats = unpack_layer(
        &layer[..],
        LayerCompression::Gzip,
        dir.path(),
        ExpectedDigests::default(),
    )
    .unwrap();
    assert_eq!(
        stats,
        UnpackStats {
            entries: 9,
            bytes: 5,
            whiteouts: 1,
            opaque_dirs: 1
        }
    );
    let root = dir.path();
    let etc = fs::symlink_metadata(root.join("etc")).unwrap();
    assert_eq!((etc.mode() & 0o7777, etc.mtime()), (0o1750, 1_000_000));
    let app = fs::symlink_metadata(root.join("etc/app")).unwrap();
    assert_eq!(
        (app.mode() & 0o7777, app.uid(), app.gid()),
        (0o4755, 1000, 2000)
    );
    assert_eq!(
        (app.mtime(), app.mtime_nsec(), app.nlink()),
        (1234, 500_000_000, 2)
    );
    assert_eq!(
        xattr::get(root.join("etc/app"), "user.color")
            .unwrap()
            .unwrap(),
        b"blue"
    );
    assert_eq!(fs::read(root.join("etc/hard")).unwrap(), b"#!bin");
    let link = fs::symlink_metadata(root.join("etc/link")).unwrap();
    assert!(link.file_type().is_symlink());
    assert_eq!((link.uid(), link.mtime()), (7, 1500));
    assert_eq!(
        fs::read_link(root.join("etc/link")).unwrap(),
        Path::new("app")
    );
    assert!(fs::symlink_metadata(root.join("run/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    let null = fs::symlink_metadata(root.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), makedev(1, 3));
    let gone = fs::symlink_metadata(root.join("etc/gone")).unwrap();
    assert!(gone.file_type().is_char_device());
    assert_eq!((gone.rdev(), gone.mode() & 0o7777, gone.uid()), (0, 0, 5));
    assert!(!root.join("etc/.wh.gone").exists());
    let opaque = xattr::get(root.join("opq"), "trusted.overlay.opaque").unwrap();
    assert_eq!(opaque.as_deref(), Some(&b"y"[..]));
    let opq = fs::symlink_metadata(root.join("opq")).unwrap();
    assert_eq!(
        (
            opq.mode() & 0o7777,
            fs::read_dir(root.join("opq")).unwrap().count()
        ),
        (0o755, 0)
    );
}

#[test]
fn later_entries_replace_earlier_ones() {
    let mut b = Builder::new(Vec::new());
    add(&mut b, EntryType::Directory, "a/", "", b"");
    add(&mut b, EntryType::Regular, "a/f", "", b"old");
    add(&mut b, EntryType::Regular, "a", "", b"file now");
    add(&mut b, EntryType::Regular, "b", "", b"old");
    add(&mut b, EntryType::Symlink, "b", "a", b"");
    add_with(&mut b, EntryType::Directory, "c", "", b"", |h| {
        h.set_mode(0o700)
    });
    add(&mut b, EntryType::Regular, "c/keep", "", b"");
    add_with(&mut b, EntryType::Directory, "c", "", b"", |h| {
        h.set_mode(0o711)
    });
    let (dir, result) = unpack(&b.into_inner().unwrap());
    result.unwrap();
    assert_eq!(fs::read(dir.path().join("a")).unwrap(), b"file now");
    assert_eq!(fs::read_link(dir.path().join("b")).unwrap(), Path::new("a"));
    assert!(dir.path().join("c/keep").exists());
    let c = fs::metadata(dir.path().join("c")).unwrap();
    assert_eq!(c.mode() & 0o7777, 0o711);
}

#[test]
fn dot_dot_names_are_refused() {
    // A name nothing else in the temp dir's parent has, so that its
    // absence there shows the escape was refused.
    let escape = format!("sochi-unpack-escape-{}", std::process::id());
    for name in [
        format!("../{escape}"),
        format!("a/../../{escape}"),
        format!("/../{escape}"),
    ] {
        let (dir, result) = unpack(&layer(&[(EntryType::Regular, &name, "")]));
        assert_eq!(refusal(result), Refusal::EscapesDestination, "{name}");
        assert!(!dir.path().parent().unwrap().join(&escape).exists());
    }
    let (dir, result) = unpack(&layer(&[(EntryType::Regular, "a/../b", "")]));
    result.unwrap();
    assert!(dir.path().join("b").exists());
}

#[test]
fn writing_through_an_earlier_symlink_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().to_str().unwrap();
    for (kind, name) in [
        (EntryType::Regular, "a/passwd"),
        (EntryType::Directory, "a/sub/"),
        (EntryType::Regular, "a/.wh.passwd"),
        (EntryType::Regular, "a/.wh..wh..opq"),
    ] {
        let tar = layer(&[(EntryType::Symlink, "a", target), (kind, name, "")]);
        let reason = refusal(unpack(&tar).1);
        assert_eq!(reason, Refusal::ThroughSymlink("a".into()), "{name}");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0, "{name}");
        assert_eq!(xattr::list(outside.path()).unwrap().count(), 0, "{name}");
    }
    // A later entry at the symlink's own path replaces the link, not its target.
    let victim = outside.path().join("victim");
    fs::write(&victim, b"safe").unwrap();
    let (kind, target) = (EntryType::Symlink, victim.to_str().unwrap());
    let (dir, result) = unpack(&layer(&[
        (kind, "v", target),
        (EntryType::Regular, "v", ""),
    ]));
    result.unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"safe");
    assert!(fs::symlink_metadata(dir.path().join("v"))
        .unwrap()
        .is_file());
}

#[test]
fn hardlinks_must_stay_inside_the_layer() {
    let outside = tempfile::NamedTempFile::new().unwrap();
    let outside = outside.path().to_str().unwrap();
    let climb = format!("../../../../../../..{outside}");
    let absolute = Refusal::LinkTargetMissing(outside.trim_start_matches('/').into());
    for (link, expected) in [
        (climb.as_str(), Refusal::LinkEscapes),
        (outside, absolute),
        ("s/f", Refusal::ThroughSymlink("s".into())),
        ("d", Refusal::LinkTargetMissing("d".into())),
    ] {
        let tar = layer(&[
            (EntryType::Symlink, "s", "/tmp"),
            (EntryType::Directory, "d", ""),
            (EntryType::Link, "h", link),
        ]);
        assert_eq!(refusal(unpack(&tar).1), expected, "{link}");
    }
}

#[test]
fn bad_whiteouts_are_refused() {
    for name in ["a/.wh.", ".wh.."] {
        let reason = refusal(unpack(&layer(&[(EntryType::Regular, name, "")])).1);
        assert!(matches!(reason, Refusal::BadWhiteout(_)), "{name}");
    }
}

/// The same entry types `create` refuses (docs/format.md §3.5), with the same words:
/// the entry's name and offset, not "numeric field was not a number".
#[test]
fn entry_types_no_layer_may_hold_are_refused_naming_entry_and_offset() {
    for (typeflag, words) in [
        (b'Z', "entry type"),
        (b'S', "gnu sparse file"),
        (b'7', "contiguous file"),
    ] {
        let mut b = Builder::new(Vec::new());
        add(&mut b, EntryType::Regular, "first", "", b"1");
        add(&mut b, EntryType::new(typeflag), "odd/entry", "", b"");
        let (_dir, result) = unpack(&b.into_inner().unwrap());
        let Err(
            error @ UnpackError::Tar {
                source: TarError::Unsupported { offset: 1024, .. },
                ..
            },
        ) = result
        else {
            panic!("{result:?}")
        };
        let message = sochi_format::error_chain(&error);
        assert!(
            message.contains(words) && message.contains("\"odd/entry\""),
            "{message}"
        );
        assert!(message.contains("offset 1024"), "{message}");
    }
}

#[test]
fn corrupt_gzip_is_an_error_at_a_compressed_offset() {
    let mut b = Builder::new(Vec::new());
    add(&mut b, EntryType::Regular, "f", "", &[7; 10_000]);
    let tar = b.into_inner().unwrap();
    let mut layer = gzip(&tar);
    let middle = layer.len() / 2;
    layer[middle] ^= 0xff;
    // Only the trailer is wrong: caught because the stream is drained.
    let mut bad_crc = gzip(&tar);
    let crc = bad_crc.len() - 8;
    bad_crc[crc] ^= 1;
    let mut bad_length = gzip(&tar);
    let length = bad_length.len() - 4;
    bad_length[length] ^= 1;
    for (blob, words) in [
        (&layer[..], "compressed offset"),
        (&bad_crc[..], "incorrect data check"),
        (&bad_length[..], "incorrect length check"),
        (b"\x1f\x8b\x08garbage", "compressed offset"),
        (b"plainly not gzip", "compressed offset 0"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let result = unpack_layer(
            blob,
            LayerCompression::Gzip,
            dir.path(),
            ExpectedDigests::default(),
        );
        let Err(error @ UnpackError::Gzip { .. }) = result else {
            panic!("{result:?}")
        };
        let message = sochi_format::error_chain(&error);
        assert!(message.contains(words), "{message}");
        assert!(message.contains("uncompressed offset"), "{message}");
    }
}

#[test]
fn truncated_tar_is_an_error() {
    let mut b = Builder::new(Vec::new());
    add(&mut b, EntryType::Regular, "first", "", b"1");
    add(&mut b, EntryType::Regular, "big", "", &[1; 4000]);
    let tar = b.into_inner().unwrap();
    let (_dir, result) = unpack(&tar[..1024 + 512 + 1000]);
    assert!(
        matches!(
            result,
            Err(UnpackError::Tar {
                source: TarError::Corrupt { .. },
                ..
            })
        ),
        "{result:?}"
    );
    let (_dir, result) = unpack(&tar[..1024 + 100]);
    let Err(
        error @ UnpackError::Tar {
            source: TarError::Corrupt { .. },
            ..
        },
    ) = result
    else {
        panic!("{result:?}")
    };
    let message = sochi_format::error_chain(&error);
    assert!(message.contains("inside a header block"), "{message}");
}

/// A zstd layer as zstd:chunked writers make them: several frames, then a
/// skippable frame (where zstd:chunked keeps its table of contents).
fn zstd_frames(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        out.extend(zstd::encode_all(*part, 3).unwrap());
    }
    // Skippable frame: magic 0x184D2A50 (little-endian), size, payload
    // (RFC 8878 §3.1.2).
    out.extend([0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4]);
    out
}

/// A tar of a few files, one big enough to cross zstd's buffers.
fn files_tar() -> Vec<u8> {
    let big: Vec<u8> = (0..700_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut b = Builder::new(Vec::new());
    add(&mut b, EntryType::Directory, "etc/", "", b"");
    add(&mut b, EntryType::Regular, "etc/hostname", "", b"zstd\n");
    add(&mut b, EntryType::Regular, "big", "", &big);
    add(&mut b, EntryType::Symlink, "link", "big", b"");
    b.into_inner().unwrap()
}

#[test]
fn zstd_layer_of_several_frames_unpacks_with_both_digests_checked() {
    let tar = files_tar();
    let (first, second) = tar.split_at(300_000);
    let layer = zstd_frames(&[first, second]);
    let expected = ExpectedDigests {
        compressed: Some(&sha256(&layer)),
        diff_id: Some(&sha256(&tar)),
    };
    let dir = tempfile::tempdir().unwrap();
    let stats = unpack_layer(&layer[..], LayerCompression::Zstd, dir.path(), expected).unwrap();
    assert_eq!((stats.entries, stats.bytes), (4, 700_005));
    assert_eq!(
        fs::read(dir.path().join("etc/hostname")).unwrap(),
        b"zstd\n"
    );
    let big = fs::read(dir.path().join("big")).unwrap();
    assert_eq!(big.len(), 700_000);
    assert_eq!(big.get(699_999), Some(&((699_999u32 * 7 % 251) as u8)));
    assert_eq!(
        fs::read_link(dir.path().join("link")).unwrap(),
        Path::new("big")
    );
}

/// `data` as one zstd frame, with its content checksum or without.
fn zstd_frame(data: &[u8], checksum: bool) -> Vec<u8> {
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    encoder.include_checksum(checksum).unwrap();
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// Flips 64 bytes in the middle of `layer`, inside compressed data.
fn corrupt_middle(layer: &mut [u8]) {
    let middle = layer.len() / 2;
    for byte in layer.iter_mut().skip(middle).take(64) {
        *byte ^= 0x5a;
    }
}

#[test]
fn corrupt_zstd_is_an_error_naming_where() {
    let tar = files_tar();
    let mut layer = zstd_frame(&tar, true);
    corrupt_middle(&mut layer);
    let dir = tempfile::tempdir().unwrap();
    let result = unpack_layer(
        &layer[..],
        LayerCompression::Zstd,
        dir.path(),
        ExpectedDigests::default(),
    );
    let Err(error @ UnpackError::Zstd { .. }) = result else {
        panic!("{result:?}")
    };
    let message = sochi_format::error_chain(&error);
    assert!(
        message.contains("zstd: ") && message.contains("compressed bytes read"),
        "{message}"
    );
}

/// A frame without a content checksum (the zstd library's default) may
/// decode corrupt data to wrong bytes: the diff_id is what catches it.
#[test]
fn corrupt_zstd_without_checksum_fails_the_diff_id() {
    let tar = files_tar();
    let mut layer = zstd_frame(&tar, false);
    corrupt_middle(&mut layer);
    let expected = ExpectedDigests {
        compressed: None,
        diff_id: Some(&sha256(&tar)),
    };
    let dir = tempfile::tempdir().unwrap();
    let result = unpack_layer(&layer[..], LayerCompression::Zstd, dir.path(), expected);
    assert!(
        matches!(
            &result,
            Err(UnpackError::Zstd { .. }
                | UnpackError::Tar { .. }
                | UnpackError::DigestMismatch {
                    what: DigestKind::DiffId,
                    ..
                })
        ),
        "{result:?}"
    );
}

#[test]
fn truncated_zstd_is_an_error_not_a_short_tree() {
    let tar = files_tar();
    let layer = zstd::encode_all(&tar[..], 3).unwrap();
    // Cut after the tar's end (the tar reader would be satisfied) and in
    // the middle.
    for cut in [layer.len() - 3, layer.len() / 2] {
        let dir = tempfile::tempdir().unwrap();
        let result = unpack_layer(
            &layer[..cut],
            LayerCompression::Zstd,
            dir.path(),
            ExpectedDigests::default(),
        );
        assert!(
            matches!(&result, Err(UnpackError::Zstd { .. })),
            "cut at {cut}: {result:?}"
        );
    }
}

#[test]
fn gzip_data_in_a_zstd_layer_is_a_zstd_error() {
    let layer = gzip(&files_tar());
    let dir = tempfile::tempdir().unwrap();
    let result = unpack_layer(
        &layer[..],
        LayerCompression::Zstd,
        dir.path(),
        ExpectedDigests::default(),
    );
    let Err(UnpackError::Zstd { source, .. }) = &result else {
        panic!("{result:?}")
    };
    assert!(
        source.message.contains("Unknown frame descriptor"),
        "{source}"
    );
}

/// An error of the blob itself (the registry stream's digest check, a
/// reset connection) stays the blob's, not "corrupt zstd".
#[test]
fn a_failing_blob_under_zstd_is_a_read_error() {
    struct Failing<'a>(&'a [u8]);
    impl Read for Failing<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::Error::other("connection reset"));
            }
            self.0.read(buf)
        }
    }
    let layer = zstd::encode_all(&files_tar()[..], 3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let result = unpack_layer(
        Failing(&layer[..layer.len() / 2]),
        LayerCompression::Zstd,
        dir.path(),
        ExpectedDigests::default(),
    );
    let Err(UnpackError::Read { source }) = &result else {
        panic!("{result:?}")
    };
    assert_eq!(source.to_string(), "connection reset");
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// containerd refuses a layer whose uncompressed digest is not the
/// config's `diff_id` ("wrong diff id calculated on extraction"); so do we,
/// naming both digests (issue 14).
#[test]
fn diff_id_and_blob_digest_are_checked() {
    let mut b = Builder::new(Vec::new());
    add(&mut b, EntryType::Regular, "f", "", b"data");
    let tar = b.into_inner().unwrap();
    for (compression, layer) in [
        (LayerCompression::Gzip, gzip(&tar)),
        (LayerCompression::Zstd, zstd_frames(&[&tar])),
    ] {
        digests_are_checked(compression, &tar, &layer);
    }
    // A plain tar's diff_id is its own digest.
    let dir = tempfile::tempdir().unwrap();
    let plain = ExpectedDigests {
        compressed: Some(&sha256(&tar)),
        diff_id: Some(&sha256(&tar)),
    };
    unpack_layer(&tar[..], LayerCompression::Uncompressed, dir.path(), plain).unwrap();
}

fn digests_are_checked(compression: LayerCompression, tar: &[u8], layer: &[u8]) {
    let right = ExpectedDigests {
        compressed: Some(&sha256(layer)),
        diff_id: Some(&sha256(tar)),
    };
    let dir = tempfile::tempdir().unwrap();
    unpack_layer(layer, compression, dir.path(), right).unwrap();

    let wrong = sha256(b"another layer");
    for (expected, what, actual) in [
        (
            ExpectedDigests {
                diff_id: Some(&wrong),
                ..right
            },
            DigestKind::DiffId,
            sha256(tar),
        ),
        (
            ExpectedDigests {
                compressed: Some(&wrong),
                ..right
            },
            DigestKind::Compressed,
            sha256(layer),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let error = unpack_layer(layer, compression, dir.path(), expected).unwrap_err();
        let UnpackError::DigestMismatch {
            what: found,
            expected: e,
            actual: a,
        } = &error
        else {
            panic!("{error:?}")
        };
        assert_eq!(
            (*found, e.as_str(), a.as_str()),
            (what, wrong.as_str(), actual.as_str())
        );
        let message = sochi_format::error_chain(&error);
        assert!(
            message.contains(&wrong) && message.contains(&actual),
            "{compression:?}: {message}"
        );
    }
}

/// A valid v2 file capability (`cap_net_raw+ep`).
fn capability_v2() -> Vec<u8> {
    let mut value = vec![0u8; 20];
    value[..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
    value[4] = 1 << 5;
    value
}

/// The policy the lazy layer tree applies (sochi_tar::check_xattr),
/// naming the entry, the key and the offset.
#[test]
fn xattrs_the_policy_refuses_refuse_the_layer() {
    for (entry, key, value) in [
        (
            EntryType::Directory,
            "trusted.overlay.opaque",
            b"y".to_vec(),
        ),
        (
            EntryType::Regular,
            "trusted.overlay.redirect",
            b"/etc".to_vec(),
        ),
        (EntryType::Regular, "security.capability", vec![1, 0, 0, 2]),
    ] {
        let mut b = Builder::new(Vec::new());
        add(&mut b, EntryType::Regular, "before", "", b"x");
        let record = format!("SCHILY.xattr.{key}");
        b.append_pax_extensions([(record.as_str(), &value[..])])
            .unwrap();
        add(&mut b, entry, "victim", "", b"");
        let (dir, result) = unpack(&b.into_inner().unwrap());
        let Err(
            error @ UnpackError::Refused {
                reason: Refusal::Xattr { .. },
                ..
            },
        ) = result
        else {
            panic!("{key}: {result:?}")
        };
        let message = sochi_format::error_chain(&error);
        assert!(
            message.contains(key) && message.contains("\"victim\""),
            "{message}"
        );
        assert!(message.contains("uncompressed offset 1024"), "{message}");
        assert!(!dir.path().join("victim").exists(), "{key}");
    }
    if needs_root("setting a file capability") {
        return;
    }
    let mut b = Builder::new(Vec::new());
    b.append_pax_extensions([("SCHILY.xattr.security.capability", &capability_v2()[..])])
        .unwrap();
    add(&mut b, EntryType::Regular, "ping", "", b"x");
    let (dir, result) = unpack(&b.into_inner().unwrap());
    result.unwrap();
    assert_eq!(
        xattr::get(dir.path().join("ping"), "security.capability").unwrap(),
        Some(capability_v2())
    );
}

/// `git archive` writes a PAX global header first: skipped as containerd
/// skips it.
#[test]
fn pax_global_header_is_skipped() {
    let mut b = Builder::new(Vec::new());
    let record = b"52 comment=9f8a2c1e4b7d0f6a3c5e8b1d2f4a6c8e0b2d4f6a\n";
    let mut header = Header::new_ustar();
    header.set_entry_type(EntryType::XGlobalHeader);
    header.set_size(record.len() as u64);
    header.set_path("pax_global_header").unwrap();
    header.set_cksum();
    b.append(&header, &record[..]).unwrap();
    add(&mut b, EntryType::Regular, "file", "", b"kept");
    let (dir, result) = unpack(&b.into_inner().unwrap());
    assert_eq!(result.unwrap().entries, 1);
    assert_eq!(fs::read(dir.path().join("file")).unwrap(), b"kept");
    assert!(!dir.path().join("pax_global_header").exists());
}
