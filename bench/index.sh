#!/usr/bin/env bash
# Index-build benchmark (issue: one-pass layer indexer).
#
#   bench/index.sh [RUNS]
#
# On a ~1 GB-uncompressed layer made from this machine's files
# (`tar -C / -cf - usr/share usr/bin | gzip -6`), measures in the same run:
#   - gzip -dc > /dev/null               (the baseline)
#   - sochi ztoc build (span 4 MiB)      wall time and peak RSS
#   - sochi ztoc build (span 64 KiB)     peak RSS (more checkpoints)
#   - sochi create of a 4-layer image    wall, user+sys
#   - sochi create of 2 equal big layers  user+sys / wall: both cores busy?
#   - the uncompressed tar of the layer  wall time and peak RSS
# and writes bench/results/index-<date>.csv plus a summary on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
work=bench/work
mkdir -p "$work" bench/results
command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time; }

cargo build --release --bin sochi --quiet
sochi=$PWD/target/release/sochi

layer=$work/big.tar.gz
if [ ! -s "$layer" ]; then
  echo "making $layer (tar of usr/share usr/bin, gzip -6)..." >&2
  tar -C / -cf - usr/share usr/bin 2>/dev/null | gzip -6 > "$layer"
fi
if [ ! -s "$work/big.tar" ]; then gzip -dc "$layer" > "$work/big.tar"; fi
if [ ! -d "$work/image" ]; then scripts/make-sample-image.sh "$work/image" 2>/dev/null; fi
# Two layers of equal weight (the same tar at gzip -6 and -5): does create
# keep both cores busy?
if [ ! -d "$work/two-layers" ]; then
  [ -s "$work/big5.tar.gz" ] || gzip -5 -c "$work/big.tar" > "$work/big5.tar.gz"
  mkdir -p "$work/two-layers/blobs/sha256"
  descs=""
  for f in "$layer" "$work/big5.tar.gz"; do
    hex=$(sha256sum "$f" | cut -d' ' -f1)
    ln -f "$(readlink -f "$f")" "$work/two-layers/blobs/sha256/$hex" 2>/dev/null || cp "$f" "$work/two-layers/blobs/sha256/$hex"
    descs+=$(printf '{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s},' "$hex" "$(stat -L -c %s "$f")")
  done
  printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}' > "$work/config.json"
  chex=$(sha256sum "$work/config.json" | cut -d' ' -f1); mv "$work/config.json" "$work/two-layers/blobs/sha256/$chex"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s]}' \
    "$chex" "$(stat -c %s "$work/two-layers/blobs/sha256/$chex")" "${descs%,}" > "$work/manifest.json"
  mhex=$(sha256sum "$work/manifest.json" | cut -d' ' -f1); msize=$(stat -c %s "$work/manifest.json")
  mv "$work/manifest.json" "$work/two-layers/blobs/sha256/$mhex"
  printf '{"imageLayoutVersion":"1.0.0"}' > "$work/two-layers/oci-layout"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s}]}' "$mhex" "$msize" > "$work/two-layers/index.json"
fi

csv=bench/results/index-$(date -u +%Y%m%dT%H%M%SZ).csv
echo "run,what,wall_s,user_s,sys_s,max_rss_kib" > "$csv"
measure() { # measure RUN NAME CMD... (stdout discarded)
  local run=$1 name=$2; shift 2
  /usr/bin/time -f "%e %U %S %M" -o "$work/time" "$@" > /dev/null
  read -r wall user sys rss < "$work/time"
  echo "$run,$name,$wall,$user,$sys,$rss" >> "$csv"
}
for run in $(seq 1 "$runs"); do
  cat "$layer" > /dev/null   # same page-cache state for everyone
  measure "$run" gzip-dc gzip -dc "$layer"
  measure "$run" sochi-ztoc-build-4m "$sochi" ztoc build -o "$work/out.ztoc" "$layer"
  measure "$run" sochi-ztoc-build-64k "$sochi" ztoc build --span-size 65536 -o "$work/out64k.ztoc" "$layer"
  measure "$run" sochi-ztoc-build-tar "$sochi" ztoc build -o "$work/out-tar.ztoc" "$work/big.tar"
  rm -rf "$work/root"
  measure "$run" sochi-create-4-layers "$sochi" --root "$work/root" create --min-layer-size 0 oci:"$work/image":latest
  rm -rf "$work/root"
  measure "$run" sochi-create-2-big-layers "$sochi" --root "$work/root" create oci:"$work/two-layers"
done

awk -F, -v layer="$(stat -L -c %s "$layer")" '
  NR > 1 { n[$2]++; wall[$2] += $3; cpu[$2] += $4 + $5; if ($6 > rss[$2]) rss[$2] = $6 }
  END {
    printf "layer: %.0f MB gzip\n", layer / 1e6
    base = wall["gzip-dc"] / n["gzip-dc"]
    for (k in n) printf "%-24s mean wall %6.2f s  (%.2fx gzip -dc)  cpu/wall %.2f  peak RSS %6.1f MiB\n",
      k, wall[k] / n[k], (wall[k] / n[k]) / base, cpu[k] / wall[k], rss[k] / 1024
  }' "$csv" | sort
echo "raw: $csv"
