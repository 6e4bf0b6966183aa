#!/usr/bin/env bash
# Load benchmark: twenty images pulled lazily through the snapshotter and
# one container of each started at once, against twenty full pulls started
# at once, with the registry behind a fault-injecting proxy (500s, bodies
# cut, corrupted bodies, an outage) and the snapshotter killed (kill -9) and
# restarted once in the middle of the lazy run. It reports figures, not
# pass/fail: every container's output (sha256 of the files it read), the
# snapshotter + FUSE keeper RSS over time against the memory budget, the
# disk cache against max_bytes, verification counters, and the time to all
# ready, lazy against full.
#
#   bench/load.sh [--quick] [DRIVER FLAGS...]
#
#   --quick   6 images, 3 data layers, a 64 MiB disk budget (still below
#             their data), shorter settle (a smoke run)
#   DRIVER FLAGS go to e2e/examples/load.rs (see its header), e.g.
#             --images 20 --max-bytes 268435456 --memory-bytes 67108864
#             --fail-every 25 --reset-every 25 --corrupt-every 50
#             --outage-ms 1000 --kill-after-ready 5 --down-ms 1000
#             --settle-s 150 --phases lazy,full
#
# Needs root (containerd, FUSE, drop_caches). The registry (Debian's
# docker-registry, scripts/registry.sh) keeps its storage on tmpfs
# (/dev/shm): a warm remote registry, and no disk for 1.5 GB of blobs.
# containerd's and the snapshotter's dirs are on disk under
# /tmp/sochi-load.XXXXXX (TMPDIR of the driver). Everything started here is
# stopped by PID on exit, Ctrl-C or failure: the driver's children (by the
# harness, or by pid files here), the FUSE keeper, containerd shims (via
# scripts/containerd.sh stop), and mounts under the work dirs.
#
# Results: bench/results/load-<UTC stamp>{.md,.env,-jobs.csv,-rss.csv,
# -events.csv,-faults.csv,-warnings.log,-metrics-lazy-{1,2}.txt,-snapshotter.toml,
# -snapshotter-lazy.log.tail}.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

command_line="bench/load.sh $*"
quick=false
driver_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=true; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) driver_args+=("$1"); shift ;;
  esac
done
$quick && driver_args=(--images 6 --data-layers 3 --max-bytes 67108864 --settle-s 60 "${driver_args[@]}")

[ "$(id -u)" -eq 0 ] || { echo "load.sh: needs root" >&2; exit 1; }
[ -c /dev/fuse ] || { echo "load.sh: no /dev/fuse" >&2; exit 1; }

log() { printf '[load.sh %s] %s\n' "$(date +%T)" "$*" >&2; }

scripts/e2e-deps.sh

tmp=$(mktemp -d /tmp/sochi-load.XXXXXX)
shm=$(mktemp -d /dev/shm/sochi-load.XXXXXX)
registry_started=false
driver_pid=""
# The driver's container IDs start with this (set with the stamp below).
id_prefix=""
out=""

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

cleanup() {
  local status=$? d pid m
  set +e
  trap - INT TERM
  if [ "$status" -ne 0 ] && [ -n "$out" ] && [ -f "$out.env" ]; then
    echo "# incomplete: load.sh ended with status $status" >>"$out.env"
    log "incomplete run; what it wrote: $out*"
  fi
  if alive "$driver_pid"; then
    kill -TERM "$driver_pid" 2>/dev/null
    for _ in $(seq 50); do alive "$driver_pid" || break; sleep 0.1; done
    alive "$driver_pid" && kill -KILL "$driver_pid" 2>/dev/null
    wait "$driver_pid" 2>/dev/null
  fi
  # What the driver left when it did not end normally (its services got
  # SIGKILL with it, setpriv --pdeathsig; these did not).
  if [ -f "$tmp/load-pids" ]; then
    while read -r kind pid dir; do
      [ "$kind" = snapshotter ] || continue
      # Only if it still is our snapshotter (its command line names our root).
      if alive "$pid" && grep -qF "$dir" "/proc/$pid/cmdline" 2>/dev/null; then kill -KILL "$pid"; fi
    done <"$tmp/load-pids"
  fi
  for d in "$tmp"/sochi-e2e-snapshotter-*/root; do
    [ -f "$d/fuse-keeper.sock.pid" ] || continue
    pid=$(cat "$d/fuse-keeper.sock.pid")
    if alive "$pid" && grep -qF "$d" "/proc/$pid/cmdline" 2>/dev/null; then kill -KILL "$pid"; fi
  done
  # Containers a killed run left: runc's state is outside the work dirs
  # (/run/containerd/runc/<namespace>/<id>), and so are the sockets of the
  # shims (/run/containerd/s/<hash>), which a SIGKILLed shim leaves behind.
  if [ -n "$id_prefix" ]; then
    for d in /run/containerd/runc/*/"$id_prefix"-*; do
      [ -d "$d" ] && runc --root "$(dirname "$d")" delete --force "$(basename "$d")" 2>/dev/null
    done
  fi
  for d in "$tmp"/sochi-e2e-containerd-*; do
    [ -f "$d/containerd.pid" ] || continue
    for pid in $(pgrep -f -- "containerd-shim.* -address $d/containerd.sock"); do
      ss -xlpn 2>/dev/null | awk -v p="pid=$pid," 'index($0, p) && $5 ~ "^/run/containerd/s/" { print $5 }'
    done >"$tmp/shim-sockets"
    scripts/containerd.sh stop "$d" >/dev/null 2>&1
    while read -r m; do [ -S "$m" ] && rm -f "$m"; done <"$tmp/shim-sockets"
  done
  for d in "$tmp" "$shm"; do
    awk -v d="$d/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
      while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
  done
  $registry_started && scripts/registry.sh stop "$shm/registry" >/dev/null 2>&1
  for d in "$tmp" "$shm"; do
    if grep -qF " $d/" /proc/self/mountinfo; then
      echo "load.sh: something is still mounted under $d; not removing it" >&2
    else
      rm -rf "$d"
    fi
  done
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building sochi and the driver (release)"
cargo build --release --quiet -p sochi-cli
cargo build --release --quiet -p sochi-e2e --example load
mkdir -p "$tmp/bin" bench/results
# Private copies: others may rebuild target/ meanwhile.
cp target/release/sochi "$tmp/bin/sochi"
cp target/release/examples/load "$tmp/bin/load"

mkdir -p "$shm/registry"
eval "$(scripts/registry.sh start "$shm/registry" 2>/dev/null)"
registry_started=true
log "registry $SOCHI_REGISTRY (storage on tmpfs), work dir $tmp"

stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=bench/results/load-$stamp
id_prefix=load-$stamp
log "load before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
{
  echo "# command: $command_line"
  echo "# sochi $("$tmp/bin/sochi" --version), commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo '+dirty'), $(nproc) cores, kernel $(uname -r)"
} >"$out.env"
# The driver in the background so that the trap can end it; its own
# children die with it (setpriv --pdeathsig), the rest is cleaned above.
TMPDIR=$tmp SOCHI_BIN=$tmp/bin/sochi "$tmp/bin/load" \
  --registry "$SOCHI_REGISTRY" --work "$shm/layouts" --out "$out" --id-prefix "$id_prefix" \
  "${driver_args[@]}" &
driver_pid=$!
wait "$driver_pid"
driver_pid=""
log "results: $out.md and $out-*.csv"
