//! The `sochi` binary against the reference's fixtures: what the issue's
//! "must show" asks of create, convert, ztoc info and get-file, and clear
//! errors on bad input.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");
const LAYERS: [&str; 4] = [
    "pax-mixed.tar.gz",
    "gnu-mixed.tar.gz",
    "multimember.tar.gz",
    "plain.tar",
];

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

fn sochi(root: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_sochi"))
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .unwrap();
    out
}

fn ok(root: &Path, args: &[&str]) -> Vec<u8> {
    let out = sochi(root, args);
    assert!(
        out.status.success(),
        "sochi {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn fails_with(root: &Path, args: &[&str], needle: &str) {
    let out = sochi(root, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "sochi {args:?}: {stderr}");
    assert!(
        stderr.contains(needle),
        "sochi {args:?}: expected {needle:?} in:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn create_stores_the_reference_v1_index_byte_for_byte() {
    let root = tempfile::tempdir().unwrap();
    let image = format!("oci:{}:latest", fixture("image").display());
    ok(
        root.path(),
        &[
            "create",
            "--span-size",
            "65536",
            "--min-layer-size",
            "0",
            &image,
        ],
    );
    for entry in fs::read_dir(fixture("index-v1/blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let ours = root
            .path()
            .join("content/blobs/sha256")
            .join(entry.file_name());
        assert_eq!(
            fs::read(&ours).unwrap_or_default(),
            fs::read(entry.path()).unwrap(),
            "blob {:?} differs from the reference's",
            entry.file_name()
        );
    }
    let listed = String::from_utf8(ok(root.path(), &["index", "list", "-q"])).unwrap();
    assert_eq!(
        listed.trim(),
        "sha256:6c22e9634b5ceb406732df877ab1a998d3aa06892f6d400124dcd603638b6a3e"
    );
    // A second run reuses the stored zTOCs and yields the same index.
    let again = String::from_utf8(ok(
        root.path(),
        &[
            "create",
            "--span-size",
            "65536",
            "--min-layer-size",
            "0",
            &image,
        ],
    ))
    .unwrap();
    assert!(again.contains("already exists"), "{again}");
    assert!(
        again.contains("sha256:6c22e9634b5ceb406732df877ab1a998d3aa06892f6d400124dcd603638b6a3e")
    );
}

#[test]
fn convert_reproduces_the_reference_converted_image() {
    let root = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let image = format!("oci:{}", fixture("image").display());
    let out = format!("oci:{}", dst.path().join("converted").display());
    ok(
        root.path(),
        &[
            "convert",
            "--span-size",
            "65536",
            "--min-layer-size",
            "0",
            &image,
            &out,
        ],
    );
    let index = fs::read_to_string(dst.path().join("converted/index.json")).unwrap();
    let reference = fs::read_to_string(fixture("converted/index.json")).unwrap();
    assert_eq!(index, reference, "top-level index.json differs");
    for entry in fs::read_dir(fixture("converted/blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let ours = dst
            .path()
            .join("converted/blobs/sha256")
            .join(entry.file_name());
        assert_eq!(
            fs::read(&ours).unwrap_or_default(),
            fs::read(entry.path()).unwrap(),
            "blob {:?} differs from the reference's",
            entry.file_name()
        );
    }
}

#[test]
fn ztoc_build_and_info_match_the_reference() {
    let root = tempfile::tempdir().unwrap();
    for layer in LAYERS {
        for span in ["65536", "4194304"] {
            let name = format!("{layer}.{span}");
            let out = root.path().join(format!("{name}.ztoc"));
            ok(
                root.path(),
                &[
                    "ztoc",
                    "build",
                    "--span-size",
                    span,
                    "-o",
                    out.to_str().unwrap(),
                    fixture(layer).to_str().unwrap(),
                ],
            );
            assert_eq!(
                fs::read(&out).unwrap(),
                fs::read(fixture(&format!("{name}.ztoc"))).unwrap(),
                "{name}: zTOC bytes differ"
            );

            let info = ok(
                root.path(),
                &[
                    "ztoc",
                    "info",
                    fixture(&format!("{name}.ztoc")).to_str().unwrap(),
                ],
            );
            let ours: serde_json::Value = serde_json::from_slice(&info).unwrap();
            let mut expected: serde_json::Value =
                serde_json::from_slice(&fs::read(fixture(&format!("{name}.info.json"))).unwrap())
                    .unwrap();
            expected
                .as_object_mut()
                .unwrap()
                .retain(|k, _| !k.starts_with("x_"));
            assert_eq!(
                serde_json::to_string_pretty(&ours).unwrap(),
                serde_json::to_string_pretty(&expected).unwrap(),
                "{name}: ztoc info differs"
            );
        }
    }
}

#[test]
fn get_file_returns_every_regular_file_as_tar_extracts_it() {
    let root = tempfile::tempdir().unwrap();
    for layer in LAYERS {
        let dir = tempfile::tempdir().unwrap();
        let flag = if layer.ends_with(".gz") {
            "-xzf"
        } else {
            "-xf"
        };
        // tar may refuse some entries (the invalid capability xattr, device
        // nodes without privileges); regular files are what we compare.
        let _ = Command::new("tar")
            .args([
                flag,
                fixture(layer).to_str().unwrap(),
                "-C",
                dir.path().to_str().unwrap(),
            ])
            .output()
            .unwrap();
        let ztoc = fixture(&format!("{layer}.65536.ztoc"));
        let mut compared = 0;
        for file in walk(dir.path()) {
            let rel = file
                .strip_prefix(dir.path())
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            let got = ok(
                root.path(),
                &[
                    "ztoc",
                    "get-file",
                    "--layer",
                    fixture(layer).to_str().unwrap(),
                    ztoc.to_str().unwrap(),
                    &rel,
                ],
            );
            assert_eq!(got, fs::read(&file).unwrap(), "{layer}: {rel} differs");
            compared += 1;
        }
        assert!(compared > 40, "{layer}: only {compared} files compared");
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            out.extend(walk(&entry.path()));
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
    out
}

#[test]
fn bad_input_gets_a_clear_error() {
    let root = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let path = |n: &str| work.path().join(n).to_str().unwrap().to_string();

    let ztoc = fs::read(fixture("pax-mixed.tar.gz.65536.ztoc")).unwrap();
    fs::write(path("truncated.ztoc"), &ztoc[..ztoc.len() / 2]).unwrap();
    fails_with(
        root.path(),
        &["ztoc", "info", &path("truncated.ztoc")],
        "ztoc",
    );

    let layer = fs::read(fixture("pax-mixed.tar.gz")).unwrap();
    fs::write(path("truncated.tar.gz"), &layer[..layer.len() / 2]).unwrap();
    fails_with(
        root.path(),
        &["ztoc", "build", "-o", &path("o"), &path("truncated.tar.gz")],
        "truncated.tar.gz",
    );

    let mut corrupt = layer.clone();
    for b in &mut corrupt[1000..1400] {
        *b ^= 0x5a;
    }
    fs::write(path("corrupt.tar.gz"), &corrupt).unwrap();
    fails_with(
        root.path(),
        &["ztoc", "build", "-o", &path("o"), &path("corrupt.tar.gz")],
        "corrupt.tar.gz",
    );

    let mut trailing = layer.clone();
    trailing.extend_from_slice(b"garbage after the last member");
    fs::write(path("trailing.tar.gz"), &trailing).unwrap();
    fails_with(
        root.path(),
        &["ztoc", "build", "-o", &path("o"), &path("trailing.tar.gz")],
        "trailing.tar.gz",
    );

    fails_with(
        root.path(),
        &[
            "ztoc",
            "build",
            "--span-size",
            "0",
            "-o",
            &path("o"),
            fixture("plain.tar").to_str().unwrap(),
        ],
        "span size of 0",
    );
    assert!(
        !work.path().join("o").exists(),
        "no output is left behind on failure"
    );

    fails_with(
        root.path(),
        &["create", "127.0.0.1:9/nothing:latest"],
        "127.0.0.1:9",
    );
    fails_with(
        root.path(),
        &[
            "index",
            "info",
            "sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ],
        "not found",
    );
    let usage = sochi(root.path(), &["create"]);
    assert_eq!(usage.status.code(), Some(2));
}
