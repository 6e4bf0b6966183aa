#!/usr/bin/env bash
# The main job (README "Quick start"): a container started lazily, end to
# end, on this machine. Starts a private registry, a private containerd and
# the sochi snapshotter under a temp dir; builds the Debian python test
# image (debootstrap, once: kept in target/quickstart-images), pushes it and
# a SOCI-enabled copy made by `sochi convert`; then runs
# `python3 /app/main.py` in it twice, page cache dropped before each:
#   full pull:  ctr images pull + ctr run       (overlayfs snapshotter)
#   lazy:       sochi pull      + ctr run       (sochi snapshotter)
# and prints both times to the container's ready line and the bytes each
# fetched. Everything is stopped and the temp dir removed at the end, also
# on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
scripts/e2e-deps.sh
cargo build --release --bin sochi --quiet
sochi=$PWD/target/release/sochi
work=$(mktemp -d /tmp/sochi-quickstart.XXXXXX)
snapshotter_pid=""

cleanup() {
  set +e
  if [ -n "$snapshotter_pid" ]; then
    kill -INT "$snapshotter_pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$snapshotter_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$snapshotter_pid" 2>/dev/null
  fi
  # The snapshotter leaves its layers' FUSE connections to its keeper (they
  # survive restarts); with no daemon, anything touching them waits. End
  # them before unmounting.
  keeper="$work/sochi/fuse-keeper.sock.pid"
  [ -f "$keeper" ] && kill -KILL "$(cat "$keeper")" 2>/dev/null
  scripts/containerd.sh stop "$work/containerd" >/dev/null 2>&1
  scripts/registry.sh stop "$work/registry" >/dev/null 2>&1
  # Anything still mounted under the temp dir (a killed snapshotter's layers).
  grep -o " $work[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

echo "== building the Debian python image (cached in target/quickstart-images)"
images=$PWD/target/quickstart-images
mkdir -p "$images"
BASE_CACHE=$images/minbase.tar scripts/build-test-images.sh --only debian-python --keep-existing "$images" >/dev/null

mkdir -p "$work/registry" "$work/containerd"
eval "$(scripts/registry.sh start "$work/registry")"
eval "$(scripts/containerd.sh start "$work/containerd")"
full_ref=$SOCHI_REGISTRY/python:latest
lazy_ref=$SOCHI_REGISTRY/python:soci

echo "== pushing $full_ref and indexing it: sochi convert -> $lazy_ref"
skopeo copy --quiet --dest-tls-verify=false "oci:$images/debian-python:latest" "docker://$full_ref"
"$sochi" --root "$work/sochi-cli" convert --min-layer-size 0 "$full_ref" "$lazy_ref"

metrics_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/snapshotter.toml" <<EOF
metrics_address = "127.0.0.1:$metrics_port"
EOF
SOCHI_LOG=info "$sochi" --root "$work/sochi" snapshotter \
  --address "$SOCHI_SNAPSHOTTER_ADDRESS" --config "$work/snapshotter.toml" \
  >"$work/snapshotter.log" 2>&1 &
snapshotter_pid=$!
for _ in $(seq 100); do [ -S "$SOCHI_SNAPSHOTTER_ADDRESS" ] && break; sleep 0.1; done
[ -S "$SOCHI_SNAPSHOTTER_ADDRESS" ] || { cat "$work/snapshotter.log"; exit 1; }

now() { date +%s.%N; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
metric_sum() { # NAME [KIND]: sum of a metric over all layers
  curl -s "http://127.0.0.1:$metrics_port/metrics" |
    awk -v name="$1" -v kind="${2:-}" '$1 ~ "^"name"[{]" && (kind == "" || index($1, "kind=\""kind"\"")) { s += $2 } END { printf "%d\n", s }'
}
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

echo "== full pull: ctr images pull + ctr run (overlayfs)"
drop_caches
t0=$(now)
ctr images pull --plain-http --snapshotter overlayfs "$full_ref" >/dev/null
t1=$(now)
ctr run --rm --snapshotter overlayfs "$full_ref" "qs-full-$$" /usr/bin/python3 /app/main.py
t2=$(now)
full_bytes=$(skopeo inspect --tls-verify=false --raw "docker://$full_ref" |
  python3 -c 'import json,sys; m=json.load(sys.stdin); print(m["config"]["size"] + sum(l["size"] for l in m["layers"]))')

echo "== lazy: sochi pull + ctr run (sochi snapshotter)"
drop_caches
t3=$(now)
"$sochi" pull --snapshotter sochi "$lazy_ref"
t4=$(now)
ctr run --rm --snapshotter sochi "$lazy_ref" "qs-lazy-$$" /usr/bin/python3 /app/main.py
t5=$(now)
demand_bytes=$(metric_sum sochi_layer_fetched_bytes_total demand)
demand_requests=$(metric_sum sochi_layer_fetch_requests_total demand)
background_bytes=$(metric_sum sochi_layer_fetched_bytes_total background)
ztoc_bytes=$(du -sb "$work/sochi/artifact-cache" | cut -f1)

echo
echo "== sochi snapshotter layers (how each layer was provided)"
"$sochi" --root "$work/sochi" snapshotter layers --image "$lazy_ref"
echo
awk -v t0="$t0" -v t1="$t1" -v t2="$t2" -v t3="$t3" -v t4="$t4" -v t5="$t5" \
    -v fb="$(mib "$full_bytes")" -v db="$(mib "$demand_bytes")" -v dr="$demand_requests" \
    -v zb="$(mib "$ztoc_bytes")" -v bb="$(mib "$background_bytes")" 'BEGIN {
  full = t2 - t0; lazy = t5 - t3
  printf "%-10s %8s %8s %8s   %s\n", "", "pull", "run", "total", "fetched before ready"
  printf "%-10s %7.2fs %7.2fs %7.2fs   %s (every layer)\n", "full", t1 - t0, t2 - t1, full, fb
  printf "%-10s %7.2fs %7.2fs %7.2fs   %s in %d range requests + %s of zTOCs and index\n", "lazy", t4 - t3, t5 - t4, lazy, db, dr, zb
  printf "lazy / full time to ready: %.0f%%; the background fetch had read %s more by then\n", 100 * lazy / full, bb
}'
