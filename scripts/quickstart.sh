#!/usr/bin/env bash
# The main job of this stage (README "Quick start"): build a sample
# multi-layer OCI image from this machine's files, push it to a private
# registry on loopback, index it there with `sochi create` + `sochi push`
# (v1) and `sochi convert` (v2, a SOCI-enabled image next to it), and show
# what was built. Everything lives in a temp dir; the registry is stopped
# and the dir removed at the end, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
scripts/e2e-deps.sh
cargo build --release --bin sochi --quiet
sochi=$PWD/target/release/sochi
work=$(mktemp -d)
cleanup() { scripts/registry.sh stop "$work/registry" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

scripts/make-sample-image.sh "$work/image"
mkdir -p "$work/registry"
eval "$(scripts/registry.sh start "$work/registry")"
ref=$SOCHI_REGISTRY/sample:latest
skopeo copy --quiet --dest-tls-verify=false "oci:$work/image:latest" "docker://$ref"
flags=(--span-size 1048576 --min-layer-size 1048576)

echo "== sochi create $ref (layers stream from the registry into the indexer)"
time "$sochi" --root "$work/root" create "${flags[@]}" "$ref"
echo "== sochi push (v1 index next to the image; found through the fallback tag)"
"$sochi" --root "$work/root" push "$ref"
"$sochi" --root "$work/root" index list
echo "== sochi convert $ref $SOCHI_REGISTRY/sample:soci (v2 SOCI-enabled image)"
time "$sochi" --root "$work/root" convert "${flags[@]}" "$ref" "$SOCHI_REGISTRY/sample:soci"
echo "== skopeo inspect --raw docker://$SOCHI_REGISTRY/sample:soci"
skopeo inspect --tls-verify=false --raw "docker://$SOCHI_REGISTRY/sample:soci" | python3 -m json.tool
echo "== what one zTOC holds (sochi ztoc info, first lines)"
ztoc=$("$sochi" --root "$work/root" ztoc list -q | head -1)
"$sochi" --root "$work/root" ztoc info "$ztoc" | head -12
