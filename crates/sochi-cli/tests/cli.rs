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

/// The top layer of the fixture image (gnu-mixed.tar.gz).
const TOP_LAYER: &str = "sha256:e1f2a4768c5a1c9dcddc823c8ecf8e582a2dddf5ad29882dc626d6c849bc71cf";
/// What `/etc/passwd` (span 0), `/data/random-300k.bin` (2..=6) and
/// `data/hard` (6..=6) make of the top layer at span size 65536.
const TOP_ARTIFACT: &str = r#"{"version":"1.0","prefetch_spans":[{"start_span":0,"end_span":0},{"start_span":2,"end_span":6}]}"#;

/// The prefetch descriptor of `TOP_ARTIFACT` as Go encodes it.
fn top_prefetch_descriptor() -> String {
    format!(
        r#"{{"mediaType":"application/vnd.amazon.soci.prefetch.v1+json","digest":"{}","size":{},"annotations":{{"com.amazon.soci.image-layer-digest":"{TOP_LAYER}"}}}}"#,
        sochi_format::Sha256Digest::of(TOP_ARTIFACT.as_bytes()),
        TOP_ARTIFACT.len()
    )
}

/// `index` (the reference's bytes) with the prefetch descriptor appended to
/// its `layers`.
fn with_prefetch(index: &str) -> String {
    let end = index.find("],\"").unwrap();
    format!(
        "{},{}{}",
        &index[..end],
        top_prefetch_descriptor(),
        &index[end..]
    )
}

#[test]
fn create_and_convert_write_prefetch_artifacts() {
    let root = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let list = work.path().join("prefetch.json");
    fs::write(&list, br#"["data/hard", "  ", null]"#).unwrap();
    let image = format!("oci:{}:latest", fixture("image").display());
    let flags = [
        "--span-size",
        "65536",
        "--min-layer-size",
        "0",
        "--prefetch-file",
        "/etc/passwd,/data/random-300k.bin",
        "--prefetch-file",
        " nope ",
        "--prefetch-files-json",
        list.to_str().unwrap(),
    ];
    let out = sochi(
        root.path(),
        &[&["create", "--json"][..], &flags, &[&image]].concat(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("prefetch file nope not found in any layer"),
        "{stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let artifact = sochi_format::Sha256Digest::of(TOP_ARTIFACT.as_bytes()).to_string();
    assert_eq!(
        report["prefetch"],
        serde_json::json!([{"layer": TOP_LAYER, "artifact": artifact, "span_ranges": [[0, 0], [2, 6]]}])
    );
    assert_eq!(report["prefetch_not_found"], serde_json::json!(["nope"]));

    // The index is the reference's with the descriptor after the zTOCs; the
    // artifact is in the store beside the zTOCs, for `push`.
    let blob = |d: &str| {
        fs::read(
            root.path()
                .join("content/blobs/sha256")
                .join(d.strip_prefix("sha256:").unwrap()),
        )
        .unwrap()
    };
    let index = report["index"].as_str().unwrap();
    let reference = fs::read_to_string(fixture("index-v1/index.json")).unwrap();
    assert_eq!(
        String::from_utf8(blob(index)).unwrap(),
        with_prefetch(&reference)
    );
    assert_eq!(blob(&artifact), TOP_ARTIFACT.as_bytes());
    let text = String::from_utf8(ok(
        root.path(),
        &[&["create"][..], &flags, &[&image]].concat(),
    ))
    .unwrap();
    assert!(
        text.contains(&format!(
            "Created prefetch artifact for layer {TOP_LAYER}: {artifact}"
        )),
        "{text}"
    );

    // convert: the v2 index lists it the same way, and the layout holds it.
    let dst = work.path().join("converted");
    let dst_ref = format!("oci:{}", dst.display());
    let text = String::from_utf8(ok(
        root.path(),
        &[&["convert"][..], &flags, &[&image, &dst_ref]].concat(),
    ))
    .unwrap();
    assert!(text.contains("3 ztocs, 1 prefetch artifacts"), "{text}");
    let layout_blob = |d: &str| {
        fs::read(
            dst.join("blobs/sha256")
                .join(d.strip_prefix("sha256:").unwrap()),
        )
        .unwrap()
    };
    assert_eq!(layout_blob(&artifact), TOP_ARTIFACT.as_bytes());
    let top: serde_json::Value =
        serde_json::from_slice(&fs::read(dst.join("index.json")).unwrap()).unwrap();
    let top = layout_blob(top["manifests"][0]["digest"].as_str().unwrap());
    let top: serde_json::Value = serde_json::from_slice(&top).unwrap();
    let soci = top["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["artifactType"] == "application/vnd.amazon.soci.index.v2+json")
        .unwrap();
    let ours = String::from_utf8(layout_blob(soci["digest"].as_str().unwrap())).unwrap();
    // The reference's v2 index of the same image (no prefetch), extended.
    let reference_top: serde_json::Value =
        serde_json::from_slice(&fs::read(fixture("converted/index.json")).unwrap()).unwrap();
    let reference_blob = |d: &str| {
        fs::read(fixture("converted/blobs/sha256").join(d.strip_prefix("sha256:").unwrap()))
            .unwrap()
    };
    let reference_top: serde_json::Value = serde_json::from_slice(&reference_blob(
        reference_top["manifests"][0]["digest"].as_str().unwrap(),
    ))
    .unwrap();
    let reference_soci = reference_top["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["artifactType"] == "application/vnd.amazon.soci.index.v2+json")
        .unwrap();
    let reference_v2 =
        String::from_utf8(reference_blob(reference_soci["digest"].as_str().unwrap())).unwrap();
    assert_eq!(ours, with_prefetch(&reference_v2));
}

#[test]
fn bad_prefetch_lists_get_a_clear_error() {
    let root = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let image = format!("oci:{}:latest", fixture("image").display());
    let bad = work.path().join("bad.json");
    fs::write(&bad, br#"{"paths":["a"]}"#).unwrap();
    fails_with(
        root.path(),
        &[
            "create",
            "--prefetch-files-json",
            bad.to_str().unwrap(),
            &image,
        ],
        &format!(
            "reading the prefetch paths in {}: a JSON array of prefetch paths: invalid json",
            bad.display()
        ),
    );
    let missing = work.path().join("missing.json");
    fails_with(
        root.path(),
        &[
            "create",
            "--prefetch-files-json",
            missing.to_str().unwrap(),
            &image,
        ],
        &format!("reading the prefetch paths in {}", missing.display()),
    );
}
