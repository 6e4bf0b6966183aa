#!/usr/bin/env bash
# Registry indexing benchmark (issue: index images where they live).
#
#   bench/registry.sh [RUNS]
#
# The debian-python test image (three layers, 77 MB gzip) is pushed to a
# private docker-registry on loopback; in the same run, alternating:
#   - sochi create oci:LAYOUT      (the same layers from local files)
#   - sochi create REGISTRY/python (layers streamed from the registry)
# Wall time, CPU and peak RSS of each go to bench/results/registry-<date>.csv
# with a summary (mean wall time, ratio registry/local) on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
work=$PWD/bench/work
mkdir -p "$work" bench/results
command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time; }
scripts/e2e-deps.sh
cargo build --release --bin sochi --quiet
sochi=$PWD/target/release/sochi

BASE_CACHE=${BASE_CACHE:-$work/minbase.tar} scripts/build-test-images.sh --only debian-python --keep-existing "$work/images" >/dev/null
layout=$work/images/debian-python

mkdir -p "$work/registry"
eval "$(scripts/registry.sh start "$work/registry")"
trap 'scripts/registry.sh stop "$work/registry" >/dev/null' EXIT
skopeo copy --quiet --dest-tls-verify=false "oci:$layout:latest" "docker://$SOCHI_REGISTRY/python:latest"

csv=bench/results/registry-$(date -u +%Y%m%dT%H%M%SZ).csv
echo "run,what,wall_s,user_s,sys_s,max_rss_kib" > "$csv"
measure() { # measure RUN NAME CMD...
  local run=$1 name=$2; shift 2
  rm -rf "$work/root"
  /usr/bin/time -f "%e %U %S %M" -o "$work/time" "$@" > /dev/null
  read -r wall user sys rss < "$work/time"
  echo "$run,$name,$wall,$user,$sys,$rss" >> "$csv"
}
for run in $(seq 1 "$runs"); do
  measure "$run" local-layout "$sochi" --root "$work/root" create --min-layer-size 0 "oci:$layout:latest"
  measure "$run" registry "$sochi" --root "$work/root" create --min-layer-size 0 "$SOCHI_REGISTRY/python:latest"
done

awk -F, -v size="$(du -cb "$layout"/blobs/sha256/* | tail -1 | cut -f1)" '
  NR > 1 { n[$2]++; wall[$2] += $3; cpu[$2] += $4 + $5; if ($6 > rss[$2]) rss[$2] = $6 }
  END {
    printf "image: %.0f MB of blobs\n", size / 1e6
    for (k in n) printf "%-14s mean wall %6.3f s  cpu/wall %.2f  peak RSS %6.1f MiB\n", k, wall[k] / n[k], cpu[k] / wall[k], rss[k] / 1024
    printf "registry / local: %.2fx\n", (wall["registry"] / n["registry"]) / (wall["local-layout"] / n["local-layout"])
  }' "$csv"
echo "raw: $csv"
