#!/usr/bin/env bash
# Lazy-mount benchmark (issue: lazy FUSE layers), with ratarmount (PyPI) as
# the peer on the same layers in the same run.
#
#   bench/mount.sh [RUNS]        (default 3; needs root, /dev/fuse)
#
# Measures, and writes bench/results/mount-<date>.csv (test,system,run,
# metric,value) plus the README tables (medians) on stdout:
#   cold   one small file (usr/lib/python3.11/json/decoder.py, 12.5 KB) read
#          right after a fresh mount: mount time, first-read latency,
#          requests and bytes. sochi mounts the debian-python image from a
#          private docker-registry on loopback (fresh --root, no background
#          fetch; demand requests/bytes from its metrics); ratarmount mounts
#          the blob URL of the python layer from the same registry (its HTTP
#          support), without and with a prebuilt index; both also mount the
#          local layer file (sochi --layer-file + zTOC, ratarmount + index).
#          Registry requests/bytes come from the registry's access log.
#   index  the big layer's index: `sochi ztoc build` vs ratarmount's first
#          mount (`--no-mount`), wall time and peak RSS.
#   seq    the big layer's largest file read sequentially (1 MiB reads)
#          right after a warm-up read of it: page cache hot (3*RUNS runs, at
#          least 5), and after drop_caches (then sochi's own span cache
#          serves). ext4 = the same file extracted with tar into a directory
#          on this ext4 disk. FUSE passthrough: off (sochi does not
#          implement it). Each hot run is warmed right before it: this VM
#          runs DAMON reclaim, which pages out page cache idle for a minute.
#   rand   20 000 random 4 KiB preads over the 8 largest files of the layer
#          right after one full read of each: page cache hot, and after
#          drop_caches (capped at 8 s per run; same offsets everywhere).
#   find   `find MNT -printf '%s %m %u\n'` (the issue's command; %u looks up
#          /etc/passwd per entry) and the same with %U (numeric: stat only)
#          over the debian-python image: cold (drop_caches first) and warm
#          (right after an untimed find); native = the image unpacked on
#          ext4 (layers applied, whiteouts honoured), plus an overlayfs of
#          the unpacked layers.
# Page-cache-sensitive runs (seq, rand, find) are repeated when something
# else drops the page cache meanwhile (/proc/vmstat drop_pagecache moves; on
# the machine this was written on, something does about once a minute); the
# CSV counts the repeats (metrics *_retries).
#   rss    VmRSS/VmHWM of the sochi daemons of busybox, debian-python and
#          edgecase mounted at once (default flags: background fetch on)
#          after every file was read once and the background fetch ended;
#          and of the big-layer mounts after the read tests.
#
# The big layer is bench/index.sh's (`tar -C / -cf - usr/share usr/bin |
# gzip -6`, about 340 MB gzip / 840 MB tar here), reused from bench/work if
# there. Everything else (registry, mounts, roots) lives in a temp dir that
# is unmounted and removed at exit, also on failure; the processes this
# script starts are stopped by pid. ratarmount goes into a venv in
# bench/work/mount/venv (pip, pinned). Runs alternate between the systems
# (so that other load on the machine spreads over all of them). Takes about
# 6-7 minutes on 2 cores, plus the sochi build and, the first time, making
# the big layer and the test images.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
[ "$(id -u)" -eq 0 ] || { echo "mount.sh: needs root (FUSE mounts, drop_caches)" >&2; exit 1; }
[ -c /dev/fuse ] || { echo "mount.sh: no /dev/fuse" >&2; exit 1; }

repo=$PWD
work=$repo/bench/work/mount
helper=$repo/bench/mount-bench.py
mkdir -p "$work" bench/results
command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time; }
scripts/e2e-deps.sh

log() { printf '[mount.sh %s] %s\n' "$(date +%T)" "$*" >&2; }

tmp=$(mktemp -d /tmp/sochi-bench-mount.XXXXXX)
daemons=()   # "ROOT|MNT" of sochi image mounts (stopped with sochi unmount)
fgmounts=()  # "PID|MNT" of foreground FUSE servers (sochi --layer-file, ratarmount)
kmounts=()   # kernel mounts of ours (overlayfs)
registry_started=false

is_mounted() { awk -v m="$1" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo; }

cleanup() {
  local status=$? entry pid mnt root i
  set +e
  for entry in "${daemons[@]}"; do
    root=${entry%%|*}; mnt=${entry#*|}
    is_mounted "$mnt" && "$sochi" --root "$root" unmount "$mnt" >/dev/null 2>&1
  done
  for entry in "${fgmounts[@]}"; do
    pid=${entry%%|*}; mnt=${entry#*|}
    is_mounted "$mnt" && umount "$mnt" 2>/dev/null
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    # still our FUSE server (its command line names the mountpoint)?
    { tr '\0' ' ' < "/proc/$pid/cmdline"; } 2>/dev/null | grep -F "$mnt" >/dev/null && kill "$pid"
  done
  for mnt in "${kmounts[@]}"; do is_mounted "$mnt" && umount "$mnt"; done
  $registry_started && scripts/registry.sh stop "$tmp/registry" >/dev/null 2>&1
  if grep -qF " $tmp/" /proc/self/mountinfo; then
    echo "mount.sh: something is still mounted under $tmp; not removing it" >&2
  else
    rm -rf "$tmp"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Written in the temp dir, copied to bench/results when all went well.
result=bench/results/mount-$(date -u +%Y%m%dT%H%M%SZ).csv
csv=$tmp/results.csv
echo "test,system,run,metric,value" > "$csv"
rec() { echo "$1,$2,$3,$4,$5" >> "$csv"; }
now() { echo "$EPOCHREALTIME"; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.6f}')" "$1" "$(now)"; }
# After dropping, a second's pause: the kernel then sends the FUSE servers
# their FORGETs, which should not land in the timed run.
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; sleep 1; }
dropcount() { awk '$1 == "drop_pagecache" { print $2 }' /proc/vmstat; }
loadavg() { rec load "$1" 1 loadavg_1min "$(cut -d' ' -f1 /proc/loadavg)"; }
ratio() { awk -v a="$1" -v b="$2" -v unit="$3" 'BEGIN { printf "%.1f", a / b / unit }'; }
status_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }

# --- tools ---------------------------------------------------------------
log "building sochi"
cargo build --release --bin sochi --quiet
mkdir -p "$tmp/bin"
# A private copy: others may rebuild target/ while this runs.
cp target/release/sochi "$tmp/bin/sochi"
sochi=$tmp/bin/sochi

venv=$work/venv
ratarmount_version=1.3.0
if ! "$venv/bin/ratarmount" --version 2>/dev/null | grep "ratarmount $ratarmount_version" >/dev/null; then
  log "installing ratarmount $ratarmount_version into $venv"
  python3 -m venv "$venv"
  # fsspec + aiohttp: ratarmount's http:// sources
  "$venv/bin/pip" install -q "ratarmount==$ratarmount_version" fsspec aiohttp requests
fi
ratarmount=$venv/bin/ratarmount

# --- inputs --------------------------------------------------------------
images=${SOCHI_TEST_IMAGES:-$repo/bench/work/images}
log "test images in $images"
BASE_CACHE=${BASE_CACHE:-$repo/bench/work/minbase.tar} scripts/build-test-images.sh --keep-existing "$images" >/dev/null

big=$repo/bench/work/big.tar.gz
if [ ! -s "$big" ]; then
  big=$work/big.tar.gz
  if [ ! -s "$big" ]; then
    log "making $big (tar of usr/share usr/bin, gzip -6; about a minute)"
    tar -C / -cf - usr/share usr/bin 2>/dev/null | gzip -6 > "$big.part"
    mv "$big.part" "$big"
  fi
fi
big=$(readlink -f "$big")

# A one-layer OCI layout of the big layer (hard link, else copy).
biglayout=$tmp/big-layout
mkdir -p "$biglayout/blobs/sha256"
bighex=$(sha256sum "$big" | cut -d' ' -f1)
ln "$big" "$biglayout/blobs/sha256/$bighex" 2>/dev/null || cp "$big" "$biglayout/blobs/sha256/$bighex"
python3 - "$biglayout" "$bighex" "$(stat -c %s "$big")" <<'EOF'
import hashlib, json, os, sys
layout, hexd, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
def put(obj):
    data = json.dumps(obj, separators=(",", ":")).encode()
    d = hashlib.sha256(data).hexdigest()
    open(os.path.join(layout, "blobs", "sha256", d), "wb").write(data)
    return {"digest": "sha256:" + d, "size": len(data)}
config = put({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
manifest = put({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                            "digest": "sha256:" + hexd, "size": size}]})
open(os.path.join(layout, "oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
           **manifest, "annotations": {"org.opencontainers.image.ref.name": "latest"}}]},
          open(os.path.join(layout, "index.json"), "w"))
EOF

mapfile -t pylayers < <(python3 "$helper" layers "$images/debian-python")
small=usr/lib/python3.11/json/decoder.py
smalllayer=""
for l in "${pylayers[@]}"; do
  if tar -tzf "$l" | grep -x "$small" >/dev/null; then smalllayer=$l; fi
done
[ -n "$smalllayer" ] || { echo "mount.sh: no layer of debian-python holds $small" >&2; exit 1; }
smalldigest=sha256:$(basename "$smalllayer")

# --- registry ------------------------------------------------------------
mkdir -p "$tmp/registry"
eval "$(scripts/registry.sh start "$tmp/registry" 2>/dev/null)"
registry_started=true
reg=$SOCHI_REGISTRY
reglog=$tmp/registry/registry.log
log "registry $reg; pushing and indexing the images (sochi convert, min layer size 0)"
for name in busybox debian-python edgecase; do
  "$sochi" --root "$tmp/convert-root" convert --min-layer-size 0 "oci:$images/$name:latest" "$reg/$name:latest" >/dev/null
done
"$sochi" --root "$tmp/convert-root" convert --min-layer-size 0 "oci:$biglayout:latest" "$reg/big:latest" >/dev/null
reglines() { python3 "$helper" reglog "$reglog" 0 | cut -d' ' -f1; }
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

# --- mount helpers -------------------------------------------------------
# sochi_mount ROOT MNT REF [FLAGS...]: a sochi image daemon; sets mpid, maddr.
sochi_mount() {
  local root=$1 mnt=$2 ref=$3
  shift 3
  mkdir -p "$mnt"
  "$sochi" --root "$root" mount "$ref" "$mnt" --metrics-address 127.0.0.1:0 "$@" >/dev/null
  daemons+=("$root|$mnt")
  read -r mpid maddr < <(python3 - "$root" "$mnt" <<'EOF'
import glob, json, sys
for p in glob.glob(sys.argv[1] + "/mounts/*/state.json"):
    s = json.load(open(p))
    if s["mountpoint"] == sys.argv[2]:
        print(s["pid"], s["metrics_address"])
EOF
)
}
sochi_unmount() { "$sochi" --root "$1" unmount "$2" >/dev/null; }

# fg_mount LOG MNT CMD...: a FUSE server in the background, waited for until
# MNT is mounted; sets fgpid.
fg_mount() {
  local logf=$1 mnt=$2 i
  shift 2
  mkdir -p "$mnt"
  "$@" >"$logf" 2>&1 &
  fgpid=$!
  fgmounts+=("$fgpid|$mnt")
  for i in $(seq 60000); do
    is_mounted "$mnt" && return 0
    kill -0 "$fgpid" 2>/dev/null || { cat "$logf" >&2; echo "mount.sh: $* exited" >&2; return 1; }
    sleep 0.005
  done
  echo "mount.sh: $mnt not mounted after 300 s" >&2
  return 1
}
fg_unmount() { # PID MNT
  local i
  umount "$2"
  for i in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.05; done
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  local kept=() e
  for e in "${fgmounts[@]}"; do [ "$e" = "$1|$2" ] || kept+=("$e"); done
  fgmounts=("${kept[@]}")
}

# --- index of the big layer ----------------------------------------------
loadavg index
log "index: sochi ztoc build vs ratarmount index, $runs runs"
for run in $(seq "$runs"); do
  cat "$big" > /dev/null
  /usr/bin/time -f "%e %M" -o "$tmp/time" "$sochi" ztoc build -o "$tmp/big.ztoc" "$big" >/dev/null
  read -r wall rss < "$tmp/time"
  rec index sochi-ztoc-build "$run" wall_s "$wall"
  rec index sochi-ztoc-build "$run" peak_rss_kib "$rss"
  rec index sochi-ztoc-build "$run" index_bytes "$(stat -c %s "$tmp/big.ztoc")"
  rm -f "$tmp/big.sqlite"
  /usr/bin/time -f "%e %M" -o "$tmp/time" "$ratarmount" --no-mount --index-file "$tmp/big.sqlite" "$big" >/dev/null 2>&1
  read -r wall rss < "$tmp/time"
  rec index ratarmount-index "$run" wall_s "$wall"
  rec index ratarmount-index "$run" peak_rss_kib "$rss"
  rec index ratarmount-index "$run" index_bytes "$(stat -c %s "$tmp/big.sqlite")"
done

# --- cold read of one small file -----------------------------------------
loadavg cold
log "cold read of $small ($runs runs per system)"
"$sochi" ztoc build -o "$tmp/small.ztoc" "$smalllayer" >/dev/null
smallurl=http://$reg/v2/debian-python/blobs/$smalldigest
"$ratarmount" --no-mount --index-file "$tmp/small-local.sqlite" "$smalllayer" >/dev/null 2>&1
"$ratarmount" --no-mount --index-file "$tmp/small-http.sqlite" "$smallurl" >/dev/null 2>&1
cold_fg() { # SYSTEM RUN CMD... (a foreground FUSE server on $tmp/cold)
  local system=$1 run=$2 t0 l0 l1 l2 r1 b1 r2 b2 ms
  shift 2
  l0=$(reglines)
  t0=$(now)
  fg_mount "$tmp/cold.log" "$tmp/cold" "$@"
  rec cold "$system" "$run" mount_s "$(since "$t0")"
  read -r l1 r1 b1 < <(python3 "$helper" reglog "$reglog" "$l0")
  read -r ms _ < <(python3 "$helper" first "$tmp/cold/$small")
  read -r l2 r2 b2 < <(python3 "$helper" reglog "$reglog" "$l1")
  rec cold "$system" "$run" first_read_ms "$ms"
  if [ "${system%-local}" = "$system" ] && [ "$system" != sochi-layer ]; then
    rec cold "$system" "$run" read_requests "$r2"
    rec cold "$system" "$run" read_bytes "$b2"
    rec cold "$system" "$run" total_requests "$((r1 + r2))"
    rec cold "$system" "$run" total_bytes "$((b1 + b2))"
  fi
  fg_unmount "$fgpid" "$tmp/cold"
}
for run in $(seq "$runs"); do
  # sochi: the whole image from the registry, fresh root (no cached zTOC or span)
  root=$tmp/cold-root-$run
  l0=$(reglines)
  t0=$(now)
  sochi_mount "$root" "$tmp/cold" "$reg/debian-python:latest" --no-background-fetch
  rec cold sochi-image "$run" mount_s "$(since "$t0")"
  read -r l1 r1 b1 < <(python3 "$helper" reglog "$reglog" "$l0")
  read -r ms _ < <(python3 "$helper" first "$tmp/cold/$small")
  read -r l2 r2 b2 < <(python3 "$helper" reglog "$reglog" "$l1")
  read -r dreq dbytes _ < <(python3 "$helper" metrics "$maddr")
  rec cold sochi-image "$run" first_read_ms "$ms"
  rec cold sochi-image "$run" read_requests "$dreq"
  rec cold sochi-image "$run" read_bytes "$dbytes"
  rec cold sochi-image "$run" registry_read_requests "$r2"
  rec cold sochi-image "$run" registry_read_bytes "$b2"
  rec cold sochi-image "$run" total_requests "$((r1 + r2))"
  rec cold sochi-image "$run" total_bytes "$((b1 + b2))"
  sochi_unmount "$root" "$tmp/cold"
  rm -rf "$root"

  cold_fg ratarmount-http "$run" "$ratarmount" -f --index-file :memory: "$smallurl" "$tmp/cold"
  cold_fg ratarmount-http-index "$run" "$ratarmount" -f --index-file "$tmp/small-http.sqlite" "$smallurl" "$tmp/cold"
  cold_fg sochi-layer "$run" "$sochi" mount --layer-file "$smalllayer" --ztoc "$tmp/small.ztoc" "$tmp/cold"
  cold_fg ratarmount-local "$run" "$ratarmount" -f --index-file "$tmp/small-local.sqlite" "$smalllayer" "$tmp/cold"
done

# --- big layer: sequential and random reads ------------------------------
log "big layer: mounting it three ways"
"$sochi" ztoc build -o "$tmp/big.ztoc" "$big" >/dev/null
fg_mount "$tmp/sochi-layer.log" "$tmp/big-sochi-layer" "$sochi" mount --layer-file "$big" --ztoc "$tmp/big.ztoc" "$tmp/big-sochi-layer"
pid_sochi_layer=$fgpid
fg_mount "$tmp/ratarmount-big.log" "$tmp/big-ratarmount" "$ratarmount" -f --index-file "$tmp/big.sqlite" "$big" "$tmp/big-ratarmount"
pid_ratarmount=$fgpid
t0=$(now)
sochi_mount "$tmp/big-root" "$tmp/big-sochi-image" "$reg/big:latest"
pid_sochi_image=$mpid
for i in $(seq 1200); do
  read -r _ _ complete layers < <(python3 "$helper" metrics "$maddr")
  [ "$complete" = "$layers" ] && break
  sleep 0.25
done
[ "$complete" = "$layers" ] || { echo "mount.sh: background fetch of the big layer did not finish in 300 s" >&2; exit 1; }
rec bgfetch sochi-image 1 wall_s "$(since "$t0")"

mapfile -t bigfiles < <(find "$tmp/big-sochi-layer" -type f -printf '%s %P\n' | sort -n | tail -8 | cut -d' ' -f2-)
largest=${bigfiles[-1]}
log "extracting the 8 largest files of the layer onto ext4 (largest: $largest)"
mkdir -p "$tmp/big-ext4"
tar -C "$tmp/big-ext4" -xzf "$big" "${bigfiles[@]}"
sync
declare -A bigmnt=([ext4]=$tmp/big-ext4 [sochi-image]=$tmp/big-sochi-image
                   [sochi-layer]=$tmp/big-sochi-layer [ratarmount]=$tmp/big-ratarmount)
for system in sochi-image sochi-layer ratarmount; do
  for f in "${bigfiles[@]}"; do
    cmp "${bigmnt[ext4]}/$f" "${bigmnt[$system]}/$f" ||
      { echo "mount.sh: $system serves different bytes for $f" >&2; exit 1; }
  done
done
rec seq file 1 size_bytes "$(stat -c %s "$tmp/big-ext4/$largest")"

# Runs alternate between the systems, so that the load of whatever else runs
# on the machine spreads over all of them.
# rotated N A B C...: the systems, starting with the (N mod count)th.
rotated() {
  local n=$1
  shift
  local all=("$@") i
  for i in $(seq 0 $(($# - 1))); do echo "${all[$(((n + i) % $#))]}"; done
}
bigsystems=(ext4 sochi-image sochi-layer ratarmount)
hotruns=$((runs * 3 > 5 ? runs * 3 : 5))
loadavg seq
log "sequential read of $largest: $hotruns hot and $hotruns dropped runs per system"
# "Hot" runs read the file once right before they measure (this VM runs
# DAMON reclaim, which pages out page cache idle for a minute); every run is
# repeated if somebody else drops the page cache meanwhile (on this machine
# something does, about once a minute).
for run in $(seq "$hotruns"); do
  for system in "${bigsystems[@]}"; do
    read -r s n r < <(python3 "$helper" seq --warm "${bigmnt[$system]}/$largest")
    rec seq "$system" "$run" hot_MBps "$(ratio "$n" "$s" 1e6)"
    rec seq "$system" "$run" hot_retries "$r"
  done
done
# After drop_caches both read the disk, whose speed swings 3x within a
# minute here (a host cache; slow for a while after a burst of writes, such
# as the background fetch that just wrote the big layer): let writeback
# settle, take as many dropped runs as hot ones, and rotate the order of
# the systems from run to run, so that none always follows the same one.
sync
sleep 30
for run in $(seq "$hotruns"); do
  for system in $(rotated "$run" "${bigsystems[@]}"); do
    read -r s n r < <(python3 "$helper" seq --drop "${bigmnt[$system]}/$largest")
    rec seq "$system" "$run" dropped_MBps "$(ratio "$n" "$s" 1e6)"
    rec seq "$system" "$run" dropped_retries "$r"
  done
done

loadavg rand
log "random 4 KiB reads over the 8 largest files: $runs hot and $runs dropped runs per system"
declare -A bigset
for system in "${bigsystems[@]}"; do
  files=()
  for f in "${bigfiles[@]}"; do files+=("${bigmnt[$system]}/$f"); done
  bigset[$system]=$(printf '%s\n' "${files[@]}")
done
for mode in hot dropped; do
  flag=(--warm); [ "$mode" = dropped ] && flag=(--drop)
  for run in $(seq "$runs"); do
    for system in $(rotated "$run" "${bigsystems[@]}"); do
      mapfile -t files <<<"${bigset[$system]}"
      read -r ops s r < <(python3 "$helper" rand "${flag[@]}" --ops 20000 --max-seconds 8 "${files[@]}")
      rec rand "$system" "$run" "${mode}_ops" "$(ratio "$ops" "$s" 1)"
      rec rand "$system" "$run" "${mode}_retries" "$r"
    done
  done
done
for pair in "sochi-image-big $pid_sochi_image" "sochi-layer-big $pid_sochi_layer" "ratarmount-big $pid_ratarmount"; do
  set -- $pair
  rec rss "$1" 1 vmrss_kib "$(status_kib "$2" VmRSS)"
  rec rss "$1" 1 vmhwm_kib "$(status_kib "$2" VmHWM)"
done
sochi_unmount "$tmp/big-root" "$tmp/big-sochi-image"
fg_unmount "$pid_sochi_layer" "$tmp/big-sochi-layer"
fg_unmount "$pid_ratarmount" "$tmp/big-ratarmount"
rm -rf "$tmp/big-root" "$tmp/big-ext4"

# --- find + stat over the python image -----------------------------------
log "find over debian-python: unpacking it on ext4"
python3 "$helper" unpack "$tmp/py-native" "$tmp/py-layers" "${pylayers[@]}"
sync
lower=""
for ((i = ${#pylayers[@]} - 1; i >= 0; i--)); do lower+="${lower:+:}$tmp/py-layers/$i"; done
mkdir -p "$tmp/py-overlay"
mount -t overlay overlay -o "ro,lowerdir=$lower" "$tmp/py-overlay"
kmounts+=("$tmp/py-overlay")
sochi_mount "$tmp/py-root" "$tmp/py-sochi" "$reg/debian-python:latest" --no-background-fetch
fg_mount "$tmp/py-ratarmount.log" "$tmp/py-ratarmount" "$ratarmount" -f --index-folders "$tmp/py-index" "${pylayers[@]}" "$tmp/py-ratarmount"
pid_py_ratarmount=$fgpid
declare -A pymnt=([native]=$tmp/py-native [native-overlay]=$tmp/py-overlay
                  [sochi-image]=$tmp/py-sochi [ratarmount-union]=$tmp/py-ratarmount)
loadavg find
log "find over debian-python: $((runs + 2)) cold and $((runs + 2)) warm runs per system and format"

pysystems=(native native-overlay sochi-image ratarmount-union)
# timed_find DIR FORMAT cold|warm: seconds of one find, after drop_caches
# (cold) or right after an untimed find (warm); again if somebody else
# drops the page cache meanwhile.
timed_find() {
  local try c0 t0 t
  for try in 1 2 3 4 5 6; do
    if [ "$3" = cold ]; then drop_caches; fi
    c0=$(dropcount)
    if [ "$3" = warm ]; then find "$1" -printf "$2" > /dev/null; fi
    t0=$(now); find "$1" -printf "$2" > /dev/null; t=$(since "$t0")
    [ "$(dropcount)" != "$c0" ] || break
  done
  echo "$t $((try - 1))"
}
for mode in cold warm; do
  for run in $(seq $((runs + 2))); do
    for system in "${pysystems[@]}"; do
      read -r t r < <(timed_find "${pymnt[$system]}" '%s %m %u\n' "$mode")
      rec find "$system" "$run" "${mode}_s" "$t"; rec find "$system" "$run" "${mode}_retries" "$r"
      read -r t r < <(timed_find "${pymnt[$system]}" '%s %m %U\n' "$mode")
      rec find "$system" "$run" "${mode}_numeric_s" "$t"; rec find "$system" "$run" "${mode}_retries" "$r"
    done
  done
done
for system in "${pysystems[@]}"; do rec find "$system" 1 entries "$(find "${pymnt[$system]}" | wc -l)"; done
sochi_unmount "$tmp/py-root" "$tmp/py-sochi"
fg_unmount "$pid_py_ratarmount" "$tmp/py-ratarmount"
umount "$tmp/py-overlay"
rm -rf "$tmp/py-root" "$tmp/py-native" "$tmp/py-layers"

# --- RSS with all test images mounted ------------------------------------
loadavg rss
log "RSS: busybox, debian-python and edgecase mounted at once; reading every file"
declare -A rsspid rssaddr
for name in busybox debian-python edgecase; do
  sochi_mount "$tmp/rss-root-$name" "$tmp/rss-$name" "$reg/$name:latest"
  rsspid[$name]=$mpid; rssaddr[$name]=$maddr
done
for name in busybox debian-python edgecase; do
  rec rss "sochi-$name" 1 vmrss_mounted_kib "$(status_kib "${rsspid[$name]}" VmRSS)"
done
for name in busybox debian-python edgecase; do
  read -r files bytes errors < <(python3 "$helper" readall "$tmp/rss-$name")
  rec rss "sochi-$name" 1 files_read "$files"
  rec rss "sochi-$name" 1 bytes_read "$bytes"
  [ "$errors" = 0 ] || log "warning: $errors read errors in $name"
done
for name in busybox debian-python edgecase; do
  for i in $(seq 1200); do
    read -r _ _ complete layers < <(python3 "$helper" metrics "${rssaddr[$name]}")
    [ "$complete" = "$layers" ] && break
    sleep 0.25
  done
done
tot_rss=0 tot_hwm=0
for name in busybox debian-python edgecase; do
  r=$(status_kib "${rsspid[$name]}" VmRSS); h=$(status_kib "${rsspid[$name]}" VmHWM)
  rec rss "sochi-$name" 1 vmrss_kib "$r"; rec rss "sochi-$name" 1 vmhwm_kib "$h"
  tot_rss=$((tot_rss + r)); tot_hwm=$((tot_hwm + h))
done
rec rss sochi-all-3-images 1 vmrss_kib "$tot_rss"
rec rss sochi-all-3-images 1 vmhwm_kib "$tot_hwm"
for name in busybox debian-python edgecase; do sochi_unmount "$tmp/rss-root-$name" "$tmp/rss-$name"; done
rm -rf "$tmp"/rss-root-*
# Diagnostic: the same debian-python run with glibc's mmap threshold fixed at
# 1 MiB (span-sized buffers then go back to the kernel when freed).
log "RSS: debian-python again with MALLOC_MMAP_THRESHOLD_=1048576"
MALLOC_MMAP_THRESHOLD_=1048576 sochi_mount "$tmp/rss-root-mmap" "$tmp/rss-mmap" "$reg/debian-python:latest"
python3 "$helper" readall "$tmp/rss-mmap" >/dev/null
for i in $(seq 1200); do
  read -r _ _ complete layers < <(python3 "$helper" metrics "$maddr")
  [ "$complete" = "$layers" ] && break
  sleep 0.25
done
rec rss sochi-debian-python-mmap-threshold 1 vmrss_kib "$(status_kib "$mpid" VmRSS)"
rec rss sochi-debian-python-mmap-threshold 1 vmhwm_kib "$(status_kib "$mpid" VmHWM)"
sochi_unmount "$tmp/rss-root-mmap" "$tmp/rss-mmap"

# --- report --------------------------------------------------------------
echo
echo "sochi $(git rev-parse --short HEAD 2>/dev/null || echo '?') (working tree as built), ratarmount $ratarmount_version, $(nproc) cores, kernel $(uname -r), load average before the measurements: $load_start, at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "big layer: $(stat -c %s "$big" | awk '{ printf "%.0f MB gzip", $1 / 1e6 }'); largest file $largest"
echo
cp "$csv" "$result"
python3 "$helper" summary "$result"
echo
echo "raw: $result"
