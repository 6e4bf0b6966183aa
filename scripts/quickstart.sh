#!/usr/bin/env bash
# The main job of this stage (README "Quick start"): build a sample
# multi-layer OCI image from this machine's files, index it with
# `sochi create` (v1, in a private store) and `sochi convert` (v2, a
# SOCI-enabled image), and show what was built. Everything lives in a temp
# dir that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo build --release --bin sochi --quiet
sochi=$PWD/target/release/sochi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

scripts/make-sample-image.sh "$work/image"
echo "== sochi create (v1 index into the local store)"
time "$sochi" --root "$work/root" create --span-size 1048576 --min-layer-size 1048576 oci:"$work/image":latest
echo "== sochi index list"
"$sochi" --root "$work/root" index list
echo "== sochi convert (v2 SOCI-enabled image)"
time "$sochi" --root "$work/root" convert --min-layer-size 1048576 oci:"$work/image":latest oci:"$work/converted":latest
echo "== the converted image index"
python3 -m json.tool "$work/converted/blobs/sha256/$(grep -o 'sha256:[0-9a-f]*' "$work/converted/index.json" | head -1 | cut -d: -f2)" 2>/dev/null \
  || cat "$work/converted/index.json"
echo "== one file through a zTOC"
ztoc=$("$sochi" --root "$work/root" ztoc list -q | head -1)
"$sochi" --root "$work/root" ztoc info "$ztoc" | head -12
