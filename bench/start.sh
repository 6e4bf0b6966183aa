#!/usr/bin/env bash
# Container start benchmark: time from the start of the pull to the
# container's ready line, full pull (overlayfs) against sochi's lazy pull.
#
#   bench/start.sh [--quick] [--runs N] [--images LIST] [--links LIST]
#                  [--systems LIST] [--sochi-config FILE]
#
#   --images  comma list of debian-python, debian-pydata (default both)
#   --links   comma list of loopback, 1gbit, 100mbit (default all three;
#             any NNmbit or Ngbit works)
#   --runs    cold runs per system, image and link (default 3; medians)
#   --systems comma list of overlayfs, sochi, sochi-lo, sochi-wrong,
#             overlayfs-chunked, sochi-chunked (default overlayfs,sochi)
#   --sochi-config  TOML appended to the snapshotter's configuration (e.g.
#             `[background_fetch]` settings); default: sochi's defaults
#   --quick   debian-python on loopback, 1 run
#   (needs root: containerd, FUSE, network namespaces, drop_caches)
#
# Images (scripts/build-test-images.sh, kept in bench/work/images):
#   debian-python  3 layers, 77 MB gzip: python3 /app/main.py hashes 8 MiB
#   debian-pydata  3 layers, 402 MB gzip (numpy, scipy, pandas, matplotlib):
#                  main.py imports scipy, pandas and matplotlib, then the same
# Both print "sochi NAME ready ..." and exit.
#
# The registry is Debian's docker-registry. `loopback`: on 127.0.0.1.
# `1gbit` / `100mbit`: a second registry process on the same storage inside
# a network namespace, reached through a veth pair shaped with tc tbf in
# both directions (bench/start/netns.sh; this kernel has no netem).
# Each image is pushed as NAME:latest (skopeo) and converted with
# `sochi convert --min-layer-size 0` into NAME:soci (SOCI index v2, 4 MiB
# spans).
#
# Systems, per cold run each in a fresh containerd (scripts/containerd.sh,
# new root) and, for sochi, a fresh snapshotter root, with the page cache
# dropped and then the registry's blobs of the image read back into it (the
# registry stands for a remote one; only this side is cold):
#   overlayfs  t0 -> `ctr images pull --plain-http NAME:latest` (fetch all,
#              then unpack) -> `ctr run --rm NAME:latest` -> ready line
#   sochi      t0 -> `sochi pull NAME:soci` (manifests, SOCI index, zTOCs,
#              FUSE mounts) -> `ctr run --rm --snapshotter sochi` -> ready
#              line; the snapshotter's defaults (background fetch on; the
#              .md records the background-fetch and cache settings)
#   sochi-lo   "sochi + load order": as sochi, the image converted with
#              `--load-order` from a run recorded before the runs (`sochi
#              load-order record NAME:soci -- python3 /app/main.py`, once
#              per image, cached in bench/work/start/): NAME:soci-lo
#   sochi-wrong "wrong load order": as sochi-lo, recorded for another
#              command (`python3 -c 'import json, email'`): NAME:soci-wrong
#   overlayfs-chunked  as overlayfs, of NAME:chunked: the image copied by
#              skopeo with `--dest-compress-format zstd:chunked` (its
#              diff_ids recomputed: skopeo 1.9 can write them wrong), no
#              SOCI index; cached in bench/work/start/
#   sochi-chunked  as sochi, of NAME:chunked: lazy from the layers' own
#              tables of contents
# Warm (loopback only; nothing goes over the link then): after the last
# cold run of a system, its image pulled and run once, for sochi the
# background fetch finished (every span cached on disk), and `sync` (the
# write-back of the unpack or of the span cache is over): `ctr run --rm` to
# the ready line, RUNS times (at least 5). Then "dropped": the same with
# the page cache dropped before each run (at least 3): every byte on this
# machine's disk, none over the link, the kernel's caches cold (the
# container's files, ctr, runc, the shim): a cold start with no network.
# At the ready line the helper reads the registry's access log (GET/HEAD
# requests and bytes since t0), the snapshotter's metrics (demand and
# background range requests and bytes, FUSE reads and their summed time)
# and, for cold runs, the CPU seconds since t0 of the whole machine, the
# snapshotter, the registry and containerd (/proc).
# A run during which another process dropped the page cache (/proc/vmstat
# drop_pagecache; other benchmarks on a shared machine do) is repeated, up
# to 3 attempts; before a warm run after such a drop one untimed run warms
# the cache again.
#
# The byte floor of a lazy start, per image: the image is unpacked (umoci)
# and main.py run under `strace -f -y` in a chroot of it (with /proc, /sys,
# /dev bound); the regular files opened from python3's exec on, the files
# exec'd (python3.11, `uname`) and their ELF interpreter, plus /etc/passwd
# and /etc/group (containerd reads them to set the user), each mapped to
# the top layer whose zTOC lists it; the floor is the union of the
# compressed ranges of the spans holding them (zTOC span geometry) plus the
# zTOCs' sizes. Cached per image digest in bench/work/start/.
#
# Output: bench/results/start-<date>.csv (image,link,system,phase,run,
# metric,value), start-<date>-floor-<image>.json, and start-<date>.md with
# the tables (also on stdout). Everything else lives in a temp dir that is
# removed at exit; every process this script starts is stopped by pid and
# the namespace deleted, also on failure. The default set takes 15-20
# minutes on 2 cores (the `--quick` set under a minute), plus building sochi
# and, the first time, the images (debian-pydata about 3 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

runs=3
images_arg=debian-python,debian-pydata
links_arg=loopback,1gbit,100mbit
systems_arg=overlayfs,sochi
sochi_config=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) runs=1; images_arg=debian-python; links_arg=loopback; shift ;;
    --runs) runs=${2:?--runs needs a number}; shift 2 ;;
    --images) images_arg=${2:?--images needs a list}; shift 2 ;;
    --links) links_arg=${2:?--links needs a list}; shift 2 ;;
    --systems) systems_arg=${2:?--systems needs a list}; shift 2 ;;
    --sochi-config) sochi_config=$(cd "$(dirname "${2:?--sochi-config needs a file}")" && pwd)/$(basename "$2"); shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "start.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
IFS=, read -r -a images <<<"$images_arg"
IFS=, read -r -a links <<<"$links_arg"
IFS=, read -r -a systems <<<"$systems_arg"
for s in "${systems[@]}"; do
  case "$s" in overlayfs|sochi|sochi-lo|sochi-wrong|overlayfs-chunked|sochi-chunked) ;; *) echo "start.sh: unknown system $s" >&2; exit 2 ;; esac
done
[ -z "$sochi_config" ] || [ -f "$sochi_config" ] || { echo "start.sh: no file $sochi_config" >&2; exit 2; }
for i in "${images[@]}"; do
  case "$i" in debian-python|debian-pydata) ;; *) echo "start.sh: unknown image $i" >&2; exit 2 ;; esac
done
for l in "${links[@]}"; do
  case "$l" in loopback|*mbit|*gbit) ;; *) echo "start.sh: unknown link $l" >&2; exit 2 ;; esac
done
[ "$(id -u)" -eq 0 ] || { echo "start.sh: needs root" >&2; exit 1; }
[ -c /dev/fuse ] || { echo "start.sh: no /dev/fuse" >&2; exit 1; }

helper=$repo/bench/start/helper.py
netns_sh=$repo/bench/start/netns.sh
cache=$repo/bench/work/start
mkdir -p "$cache" bench/results

log() { printf '[start.sh %s] %s\n' "$(date +%T)" "$*" >&2; }

scripts/e2e-deps.sh
for tool in strace:strace ip:iproute2 tc:iproute2; do
  command -v "${tool%%:*}" >/dev/null || { apt-get update -qq && apt-get install -y -qq "${tool#*:}" >/dev/null; }
done

tmp=$(mktemp -d /tmp/sochi-start.XXXXXX)
ns=sochibench$$
ns=${ns:0:12}
host_ip=10.213.7.1
ns_ip=10.213.7.2
netns_up=false
registry_started=false
nsreg_pid=""
snap_pid=""
snap_root=""
ctd=""
floor_mounts=()

is_mounted() { awk -v m="$1" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo; }

stop_pid() { # PID [SIGNAL]: signal, wait up to 30 s, then SIGKILL
  local pid=$1 sig=${2:-TERM} i
  [ -n "$pid" ] || return 0
  kill -"$sig" "$pid" 2>/dev/null || return 0
  for i in $(seq 300); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  log "pid $pid ignored SIG$sig for 30 s; SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

env_down() { # stops the snapshotter and containerd of the current run, removes their dirs
  local m
  if [ -n "$snap_pid" ]; then
    stop_pid "$snap_pid" INT
    wait "$snap_pid" 2>/dev/null || true
    snap_pid=""
  fi
  # Its FUSE keeper holds the layers' connections (they survive restarts);
  # with no daemon, anything touching them waits: end them first.
  if [ -n "$snap_root" ] && [ -f "$snap_root/fuse-keeper.sock.pid" ]; then
    kill -KILL "$(cat "$snap_root/fuse-keeper.sock.pid")" 2>/dev/null || true
  fi
  if [ -n "$ctd" ]; then
    scripts/containerd.sh stop "$ctd" >/dev/null 2>&1 || true
  fi
  for d in "$snap_root" "$ctd"; do
    [ -n "$d" ] || continue
    awk -v d="$d/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
      while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
    if grep -qF " $d/" /proc/self/mountinfo; then
      log "something is still mounted under $d; not removing it"
    else
      rm -rf "$d"
    fi
  done
  snap_root=""
  ctd=""
}

cleanup() {
  local status=$? m
  set +e
  env_down
  [ -n "$nsreg_pid" ] && stop_pid "$nsreg_pid"
  $registry_started && scripts/registry.sh stop "$tmp/registry" >/dev/null 2>&1
  $netns_up && "$netns_sh" down "$ns"
  for m in "${floor_mounts[@]}"; do is_mounted "$m" && { umount "$m" || umount -l "$m"; }; done
  if grep -qF " $tmp/" /proc/self/mountinfo; then
    echo "start.sh: something is still mounted under $tmp; not removing it" >&2
  else
    rm -rf "$tmp"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- tools and images ------------------------------------------------------
log "building sochi"
cargo build --release -p sochi-cli --quiet
mkdir -p "$tmp/bin"
cp target/release/sochi "$tmp/bin/sochi"   # a private copy: others may rebuild target/
sochi=$tmp/bin/sochi

imgdir=${SOCHI_TEST_IMAGES:-$repo/bench/work/images}
export BASE_CACHE=${BASE_CACHE:-$repo/bench/work/minbase.tar}
for img in "${images[@]}"; do
  log "image $img (built once into $imgdir; debian-pydata takes about 3 minutes)"
  scripts/build-test-images.sh --keep-existing --only "$img" "$imgdir" >/dev/null
done

manifest_of() { jq -r '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == "latest") | .digest' "${2:-$imgdir/$1}/index.json"; }
layer_blobs() { # IMAGE [LAYOUT]: registry blob files of IMAGE's layers (as in LAYOUT)
  local m layout=${2:-$imgdir/$1}
  m=$(manifest_of "$1" "$layout")
  jq -r '.layers[].digest | sub("sha256:"; "")' "$layout/blobs/sha256/${m#sha256:}" |
    while read -r h; do echo "$tmp/registry/data/docker/registry/v2/blobs/sha256/${h:0:2}/$h/data"; done
}
chunked_layout() { # IMAGE: the path of its zstd:chunked copy (made once, cached)
  local m
  m=$(manifest_of "$1")
  echo "$cache/$1-chunked-${m:7:16}"
}
wants_chunked=false
for s in "${systems[@]}"; do case "$s" in *-chunked) wants_chunked=true ;; esac; done

# --- registries --------------------------------------------------------------
mkdir -p "$tmp/registry"
eval "$(scripts/registry.sh start "$tmp/registry" 2>/dev/null)"
registry_started=true
loop_reg=$SOCHI_REGISTRY
for img in "${images[@]}"; do
  log "pushing $img to $loop_reg and converting it to $img:soci"
  skopeo copy --quiet --preserve-digests --dest-tls-verify=false \
    "oci:$imgdir/$img:latest" "docker://$loop_reg/$img:latest"
  "$sochi" --root "$tmp/convert-root" convert --min-layer-size 0 \
    "oci:$imgdir/$img:latest" "$loop_reg/$img:soci" >/dev/null
done

# zstd:chunked copies, made once per image with skopeo and pushed as
# NAME:chunked.
if $wants_chunked; then
  for img in "${images[@]}"; do
    layout=$(chunked_layout "$img")
    if [ ! -s "$layout/index.json" ]; then
      log "copying $img as zstd:chunked"
      rm -rf "$layout.part"
      skopeo copy --quiet --dest-compress --dest-compress-format zstd:chunked \
        "oci:$imgdir/$img:latest" "oci:$layout.part:latest"
      "$helper" fix-diff-ids "$layout.part"
      mv "$layout.part" "$layout"
    fi
    skopeo copy --quiet --preserve-digests --dest-tls-verify=false \
      "oci:$layout:latest" "docker://$loop_reg/$img:chunked"
  done
fi

# Load orders, recorded once per image (and sochi binary) from a run of the
# command under `sochi load-order record`, then converted into NAME:soci-lo
# (main.py) and NAME:soci-wrong (another command).
tag_of() { case "$1" in sochi-lo) echo soci-lo ;; sochi-wrong) echo soci-wrong ;; *-chunked) echo chunked ;; overlayfs) echo latest ;; *) echo soci ;; esac; }
sochi_sum=$(sha256sum "$sochi" | cut -c1-12)
for img in "${images[@]}"; do
  for system in "${systems[@]}"; do
    case "$system" in
      sochi-lo) cmd=(/usr/bin/python3 /app/main.py) ;;
      sochi-wrong) cmd=(/usr/bin/python3 -c 'import json, email') ;;
      *) continue ;;
    esac
    order=$cache/load-order-$img-$system-$sochi_sum.json
    if [ ! -s "$order" ]; then
      log "recording the load order of $img for $system: ${cmd[*]}"
      "$sochi" --plain-http --root "$tmp/record-root" load-order record \
        "$loop_reg/$img:soci" -o "$order.part" -- "${cmd[@]}" >&2
      mv "$order.part" "$order"
    fi
    cp "$order" "bench/results/start-load-order-$img-$system.json"
    "$sochi" --root "$tmp/convert-root" convert --min-layer-size 0 --load-order "$order" \
      "oci:$imgdir/$img:latest" "$loop_reg/$img:$(tag_of "$system")" >/dev/null
  done
done

need_netns=false
for l in "${links[@]}"; do [ "$l" = loopback ] || need_netns=true; done
ns_reg=""
if $need_netns; then
  log "network namespace $ns ($host_ip <-> $ns_ip) and a registry in it"
  netns_up=true
  "$netns_sh" up "$ns" "$host_ip" "$ns_ip"
  mkdir -p "$tmp/nsreg"
  cat >"$tmp/nsreg/config.yml" <<EOF
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: $tmp/registry/data
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
    readonly:
      enabled: true
http:
  addr: $ns_ip:5000
  secret: sochi-bench-$RANDOM$RANDOM
EOF
  : >"$tmp/nsreg/registry.log"
  # `ip netns exec` execs the command: $! is the registry.
  nohup ip netns exec "$ns" /usr/bin/docker-registry serve "$tmp/nsreg/config.yml" \
    </dev/null >>"$tmp/nsreg/registry.log" 2>&1 &
  nsreg_pid=$!
  ns_reg=$ns_ip:5000
  for i in $(seq 200); do
    curl -sf -o /dev/null "http://$ns_reg/v2/" && break
    kill -0 "$nsreg_pid" 2>/dev/null || { tail "$tmp/nsreg/registry.log" >&2; exit 1; }
    sleep 0.05
  done
  curl -sf -o /dev/null "http://$ns_reg/v2/" || { echo "start.sh: the namespace's registry does not answer" >&2; exit 1; }
fi

# --- the byte floor ------------------------------------------------------------
stamp=$(date -u +%Y%m%dT%H%M%SZ)
csv=bench/results/start-$stamp.csv
md=bench/results/start-$stamp.md
echo "image,link,system,phase,run,metric,value" >"$csv"

for img in "${images[@]}"; do
  mhex=$(manifest_of "$img"); mhex=${mhex#sha256:}
  "$helper" soci-ztocs "$loop_reg" "$img" soci "$tmp/ztocs-$img" >/dev/null
  floor=$cache/floor-$img-${mhex:0:16}.json
  if [ ! -s "$floor" ]; then
    log "floor of $img: unpacking it and tracing main.py"
    fl=$tmp/floor-$img
    mkdir -p "$fl"
    mount -t tmpfs -o size=4g sochi-start-floor "$fl"
    floor_mounts+=("$fl")
    umoci unpack --image "$imgdir/$img:latest" "$fl/bundle" >/dev/null
    rf=$fl/bundle/rootfs
    mount -t proc proc "$rf/proc"; floor_mounts=("$rf/proc" "${floor_mounts[@]}")
    mount --bind /dev "$rf/dev"; floor_mounts=("$rf/dev" "${floor_mounts[@]}")
    mount --bind /sys "$rf/sys"; floor_mounts=("$rf/sys" "${floor_mounts[@]}")
    strace -f -y -qq -e trace=execve,open,openat,openat2 -o "$tmp/trace-$img.log" \
      chroot "$rf" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      TERM=xterm LANG=C.UTF-8 HOME=/root /bin/sh -c 'cd /app && exec python3 /app/main.py' >"$tmp/trace-$img.out"
    grep -q "sochi $img ready" "$tmp/trace-$img.out" || { cat "$tmp/trace-$img.out" >&2; exit 1; }
    { "$helper" opened "$tmp/trace-$img.log" "$rf"; echo etc/passwd; echo etc/group; } >"$cache/opened-$img-${mhex:0:16}.txt"
    umount "$rf/sys" "$rf/dev" "$rf/proc" "$fl"
    "$helper" floor --opened "$cache/opened-$img-${mhex:0:16}.txt" --ztocs "$tmp/ztocs-$img" \
      --layout "$imgdir/$img" --sochi "$sochi" --json "$floor.part" >&2
    mv "$floor.part" "$floor"
  fi
  cp "$floor" "bench/results/start-$stamp-floor-$img.json"
  if $wants_chunked; then
    "$helper" chunk-floor --opened "$cache/opened-$img-${mhex:0:16}.txt" --layout "$(chunked_layout "$img")" \
      --json "bench/results/start-$stamp-floor-$img-chunked.json" >&2
  fi
done

# --- runs ----------------------------------------------------------------------
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# env_up SYSTEM: a fresh containerd, and for sochi a fresh snapshotter
# started first (so containerd's first call finds its socket).
env_up() {
  local i
  ctd=$tmp/c$RANDOM
  metrics=""
  mkdir -p "$ctd"
  if [ "${1%%-*}" = sochi ]; then
    snap_root=$tmp/s$RANDOM
    mkdir -p "$snap_root"
    metrics=127.0.0.1:$(free_port)
    printf 'metrics_address = "%s"\n' "$metrics" >"$snap_root.toml"
    [ -z "$sochi_config" ] || cat "$sochi_config" >>"$snap_root.toml"
    "$sochi" --plain-http --root "$snap_root" --log-level info snapshotter \
      --address "$ctd/sochi.sock" --config "$snap_root.toml" </dev/null >"$snap_root.log" 2>&1 &
    snap_pid=$!
    for i in $(seq 600); do
      grep -q "snapshotter ready" "$snap_root.log" && break
      kill -0 "$snap_pid" 2>/dev/null || { cat "$snap_root.log" >&2; exit 1; }
      sleep 0.05
    done
  fi
  eval "$(scripts/containerd.sh start "$ctd" 2>/dev/null)"
}

# cold_caches IMAGE SYSTEM: drop the page cache, then read the registry's
# blobs of IMAGE (as SYSTEM pulls it) back in (the remote registry is warm,
# this machine is not).
cold_caches() {
  sync
  echo 3 >/proc/sys/vm/drop_caches
  case "$2" in
    *-chunked) layer_blobs "$1" "$(chunked_layout "$1")" | xargs cat >/dev/null ;;
    *) layer_blobs "$1" | xargs cat >/dev/null ;;
  esac
}

rec() { # IMAGE LINK SYSTEM PHASE RUN < "metric value" lines
  local metric value
  while read -r metric value; do echo "$1,$2,$3,$4,$5,$metric,$value" >>"$csv"; done
}

drop_count() { awk '$1 == "drop_pagecache" { print $2 }' /proc/vmstat; }
foreign_drop() { awk '$1 == "foreign_drops" && $2 > 0 { found = 1 } END { exit !found }' "$1"; }

wait_background() { # all layers' background fetch complete (bounded)
  local i
  for i in $(seq 1200); do
    read -r done total < <("$helper" metrics "$metrics" | awk '$1 == "background_complete" { c = $2 } $1 == "layers_mounted" { t = $2 } END { print c + 0, t + 0 }')
    [ "$total" -gt 0 ] && [ "$done" = "$total" ] && return 0
    sleep 0.25
  done
  return 1
}

log "load before the runs: $(cut -d' ' -f1-3 /proc/loadavg)"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
t_start=$(date +%s)
for img in "${images[@]}"; do
  ready="sochi $img ready"
  for link in "${links[@]}"; do
    if [ "$link" = loopback ]; then
      reg=$loop_reg
      reglog=$tmp/registry/registry.log
      reg_pid=$SOCHI_REGISTRY_PID
    else
      reg=$ns_reg
      reglog=$tmp/nsreg/registry.log
      reg_pid=$nsreg_pid
      "$netns_sh" rate "$ns" "$link"
    fi
    for run in $(seq "$runs"); do
      for system in "${systems[@]}"; do
        for attempt in 1 2 3; do
          log "$img $link $system cold run $run/$runs$([ "$attempt" = 1 ] || echo " (attempt $attempt)")"
          env_up "$system"
          cold_caches "$img" "$system"
          id=start-$system-$run-$RANDOM
          cpu=(--cpu "registry=$reg_pid" --cpu "containerd=$SOCHI_CONTAINERD_PID")
          [ -z "$snap_pid" ] || cpu+=(--cpu "snapshotter=$snap_pid")
          if [ "${system%%-*}" = overlayfs ]; then
            "$helper" timed "${cpu[@]}" --ready "$ready" --reglog "$reglog" \
              --pull "ctr -a $ctd/containerd.sock images pull --plain-http $reg/$img:$(tag_of "$system")" \
              --run "ctr -a $ctd/containerd.sock run --rm $reg/$img:$(tag_of "$system") $id" >"$tmp/out"
          else
            "$helper" timed "${cpu[@]}" --ready "$ready" --reglog "$reglog" --metrics "$metrics" \
              --pull "$sochi --plain-http pull -a $ctd/containerd.sock --root $snap_root-pull $reg/$img:$(tag_of "$system")" \
              --run "ctr -a $ctd/containerd.sock run --rm --snapshotter sochi $reg/$img:$(tag_of "$system") $id" >"$tmp/out"
          fi
          log "  ready after $(awk '$1 == "ready_s" { print $2 }' "$tmp/out") s (pull $(awk '$1 == "pull_s" { print $2 }' "$tmp/out") s, $(awk '$1 == "reg_bytes" { printf "%.1f", $2 / 1e6 }' "$tmp/out") MB from the registry)"
          foreign_drop "$tmp/out" && [ "$attempt" -lt 3 ] || break
          log "  another process dropped the page cache during the run: once more"
          env_down
        done
        echo "attempts $attempt" >>"$tmp/out"
        rec "$img" "$link" "$system" cold "$run" <"$tmp/out"
        # Warm runs only for overlayfs and sochi: the others' would be theirs again.
        if [ "$link" = loopback ] && [ "$run" = "$runs" ] && { [ "$system" = overlayfs ] || [ "$system" = sochi ]; }; then
          if [ "$system" = sochi ]; then
            if grep -Eq '^[[:space:]]*disable[[:space:]]*=[[:space:]]*true' "$snap_root.toml"; then
              bg=0   # background fetch off: warm means page cache and demand-fetched spans only
            elif wait_background; then bg=1; else bg=0; log "  background fetch not done after 300 s"; fi
            echo "background_complete_before_warm $bg" | rec "$img" "$link" "$system" warm 0
          fi
          sync
          warm_cmd="ctr -a $ctd/containerd.sock run --rm $reg/$img:latest"
          [ "$system" = overlayfs ] || warm_cmd="ctr -a $ctd/containerd.sock run --rm --snapshotter sochi $reg/$img:soci"
          warm_drops=$(drop_count)
          for w in $(seq "$(( runs > 5 ? runs : 5 ))"); do
            for attempt in 1 2 3; do
              if [ "$(drop_count)" != "$warm_drops" ]; then
                log "  another process dropped the page cache: one untimed run to warm it again"
                $warm_cmd "start-$system-rewarm-$RANDOM" >/dev/null
                warm_drops=$(drop_count)
              fi
              "$helper" timed --ready "$ready" ${metrics:+--metrics "$metrics"} \
                --run "$warm_cmd start-$system-warm-$w-$RANDOM" >"$tmp/out"
              log "  warm run $w: ready after $(awk '$1 == "ready_s" { print $2 }' "$tmp/out") s"
              foreign_drop "$tmp/out" && [ "$attempt" -lt 3 ] || break
            done
            echo "attempts $attempt" >>"$tmp/out"
            rec "$img" "$link" "$system" warm "$w" <"$tmp/out"
          done
          # The same with the page cache dropped before each run: every
          # byte is on this machine's disk (the unpacked snapshot, or
          # sochi's span cache), nothing goes over the link, but the kernel
          # has to read the container's files, ctr, runc and the shim
          # again: what a cold start costs with no network at all.
          for w in $(seq "$(( runs > 3 ? runs : 3 ))"); do
            sync
            echo 3 >/proc/sys/vm/drop_caches
            "$helper" timed --ready "$ready" ${metrics:+--metrics "$metrics"} \
              --run "$warm_cmd start-$system-dropped-$w-$RANDOM" >"$tmp/out"
            log "  warm run $w with the page cache dropped: ready after $(awk '$1 == "ready_s" { print $2 }' "$tmp/out") s"
            rec "$img" "$link" "$system" dropped "$w" <"$tmp/out"
          done
        fi
        [ "${system%%-*}" = sochi ] && cp "$snap_root.log" "$cache/snapshotter-$img-$link-$system.log"
        env_down
      done
    done
  done
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

{
  echo "# bench/start.sh $stamp"
  echo
  echo "Command: \`bench/start.sh --runs $runs --images $images_arg --links $links_arg --systems $systems_arg${sochi_config:+ --sochi-config $sochi_config}\`;" \
    "$(nproc) cores, kernel $(uname -r); load average before $load_start, after $load_end;" \
    "runs took $(( $(date +%s) - t_start )) s."
  echo
  echo "sochi: $("$sochi" --version), binary sha256 $(sha256sum "$sochi" | cut -c1-16);" \
    "snapshotter defaults: $("$sochi" snapshotter config default | awk '
      /^\[/ { section = substr($1, 2, length($1) - 2) }
      (section == "background_fetch" || section == "directory_cache") && / = / { printf "%s%s.%s = %s", sep, section, $1, $3; sep = ", " }')."
  echo
  if [ -n "$sochi_config" ]; then
    echo "sochi snapshotter configuration added to the defaults:"
    echo
    sed 's/^/    /' "$sochi_config"
    echo
  fi
  "$helper" summary "$csv" "bench/results/start-$stamp-floor-"
} | tee "$md"
log "raw: $csv"
