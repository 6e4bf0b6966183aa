#!/usr/bin/env bash
# Four nodes through one mirror: the time until a fleet of nodes all run the
# same container, sochi's lazy pull against containerd's full pull, every
# node pulling through one pull-through mirror in front of the origin
# registry, and what the origin and the mirror served meanwhile.
#
#   bench/fleet.sh [--quick] [--runs N] [--image NAME] [--link RATE]
#                  [--origin-link RATE] [--nodes N] [--mirror cold|warm]
#                  [--disk] [--tmpfs-size SIZE]
#
#   --image   debian-pydata (default) or debian-python
#   --link    each node's link to the mirror, tbf both ways (default 100mbit;
#             any NNmbit or Ngbit)
#   --origin-link  the mirror's link to the origin (default none: a veth
#             pair, unshaped)
#   --runs    cold runs of each system (default 3; medians)
#   --nodes   how many nodes (default 4)
#   --mirror  cold (default): every run starts with an empty mirror; warm:
#             the mirror first fetches every manifest and blob of both tags
#             from the origin (and has stored them) before t0, as after a
#             first node's pull, so the nodes' range requests get 206s
#   --quick   debian-python, 1 run
#   --disk    keep the work dir (registries, node roots) on /tmp's disk;
#             default: a tmpfs of --tmpfs-size (default 14g) mounted on it,
#             since four full pulls of debian-pydata write about 7 GB
#             (4 x (402 MB of blobs + 1.26 GB unpacked)) and this machine's
#             disk may not have that to spare. On tmpfs the full pull's
#             unpack writes to memory, which helps the full pull.
#   (needs root: containerd, FUSE, network namespaces, drop_caches)
#
# The network (bench/fleet/net.sh): the origin (Debian's docker-registry,
# holding the image) in its own namespace; the mirror (docker-registry with
# `proxy: remoteurl:` pointing at the origin) in another; each node in its
# own, behind its own shaped veth pair to the mirror and with no route to
# the origin, so every byte goes through the mirror. Processes enter only
# the network namespace (nsenter --net), not a mount namespace of their own.
# A node is a containerd (scripts/containerd.sh, its own root, state and
# socket) and, for the lazy pull, a `sochi snapshotter` (its own root; the
# snapshotter's defaults plus `[registry] config_path` = the node's hosts
# directory, metrics on the namespace's 127.0.0.1:9100), all started inside
# the node's namespace, as are the pulls and `ctr run`.
# The node's hosts directory has ORIGIN/hosts.toml: `server` = the origin,
# one `[host."http://MIRROR"]` with capabilities pull and resolve.
#
# The image (scripts/build-test-images.sh, kept in bench/work/images, as
# bench/start.sh does) is pushed as NAME:latest (skopeo) and converted with
# `sochi convert --min-layer-size 0` into NAME:soci (SOCI index v2, 4 MiB
# spans) in a loopback registry; the origin serves that registry's storage
# read-only.
#
# A cold run of a system: a fresh mirror (new process, empty storage),
# fresh node roots, the page cache dropped and the origin's blobs read back
# into it (the origin stands for a remote registry that is warm), then at
# one moment t0 on every node:
#   full   `ctr images pull --hosts-dir H NAME:latest` (fetch all, unpack
#          into overlayfs), then `ctr run --rm NAME:latest` to the ready line
#   lazy   `sochi pull --hosts-dir H NAME:soci` (manifests, SOCI index,
#          zTOCs, FUSE mounts), then `ctr run --rm --snapshotter sochi` to
#          the ready line
# The two systems alternate which goes first from run to run. Recorded
# (bench/fleet/driver.py): each node's time to ready; the fleet's (the last
# node's); bytes and requests in the origin's and the mirror's access logs
# and on the wire (veth counters: the origin's link, each node's link) at
# the last ready line and when all containers have exited; for lazy, each
# snapshotter's requests per host and failovers; the mirror's blob answers
# by kind (206, or the whole blob: a pull-through docker-registry answers a
# range request for a blob it has not stored yet with a 200 and the whole
# blob, streamed from the origin); then, with the nodes
# stopped, what the origin served until its link was quiet for 5 s (the
# mirror may go on filling its cache): the "settled" bytes. Per run the
# origin's blob GETs by digest go to fleet-<date>-blobs.txt (does the
# mirror fetch a blob once, or once per request?).
#
# Output: bench/results/fleet-<date>.csv (run,system,metric,value; the
# image's sizes as system `image`), fleet-<date>-blobs.txt and
# fleet-<date>.md (also on stdout). Everything else lives in a temp dir that
# is removed at exit; every process this script starts is stopped by pid and
# the namespaces deleted, also on failure. The default set takes about
# 15 minutes on 2 cores (`--quick` about 2), plus building sochi and, the
# first time, the image (debian-pydata about 3 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

runs=3
image=debian-pydata
link=100mbit
origin_link=none
nodes=4
on_disk=false
tmpfs_size=14g
mirror_state=cold
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) runs=1; image=debian-python; shift ;;
    --runs) runs=${2:?--runs needs a number}; shift 2 ;;
    --image) image=${2:?--image needs a name}; shift 2 ;;
    --link) link=${2:?--link needs a rate}; shift 2 ;;
    --origin-link) origin_link=${2:?--origin-link needs a rate}; shift 2 ;;
    --nodes) nodes=${2:?--nodes needs a number}; shift 2 ;;
    --disk) on_disk=true; shift ;;
    --mirror) mirror_state=${2:?--mirror needs cold or warm}; shift 2 ;;
    --tmpfs-size) tmpfs_size=${2:?--tmpfs-size needs a size}; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "fleet.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$image" in debian-python|debian-pydata) ;; *) echo "fleet.sh: unknown image $image" >&2; exit 2 ;; esac
case "$link" in *mbit|*gbit) ;; *) echo "fleet.sh: --link wants NNmbit or Ngbit" >&2; exit 2 ;; esac
case "$mirror_state" in cold|warm) ;; *) echo "fleet.sh: --mirror wants cold or warm" >&2; exit 2 ;; esac
case "$origin_link" in none|*mbit|*gbit) ;; *) echo "fleet.sh: --origin-link wants none, NNmbit or Ngbit" >&2; exit 2 ;; esac
if [ "$nodes" -lt 1 ] || [ "$nodes" -gt 8 ]; then echo "fleet.sh: --nodes 1..8" >&2; exit 2; fi
[ "$(id -u)" -eq 0 ] || { echo "fleet.sh: needs root" >&2; exit 1; }
[ -c /dev/fuse ] || { echo "fleet.sh: no /dev/fuse" >&2; exit 1; }

driver=$repo/bench/fleet/driver.py
net_sh=$repo/bench/fleet/net.sh
mkdir -p bench/results

log() { printf '[fleet.sh %s] %s\n' "$(date +%T)" "$*" >&2; }

scripts/e2e-deps.sh
for tool in ip:iproute2 tc:iproute2 curl:curl jq:jq; do
  command -v "${tool%%:*}" >/dev/null || { apt-get update -qq && apt-get install -y -qq "${tool#*:}" >/dev/null; }
done

tmp=$(mktemp -d /tmp/sochi-fleet.XXXXXX)
tmp_mounted=false
pfx=sfl$$
origin_ip=10.213.69.2
origin=""          # ORIGIN_IP:PORT, once the origin listens
net_up=false
registry_started=false
origin_pid=""
mirror_pid=""
snap_pids=()
snap_roots=()
node_dirs=()

stop_pid() { # PID [SIGNAL]: signal, wait up to 30 s, then SIGKILL
  local pid=$1 sig=${2:-TERM} i
  [ -n "$pid" ] || return 0
  kill -"$sig" "$pid" 2>/dev/null || return 0
  for i in $(seq 300); do kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }; sleep 0.1; done
  log "pid $pid ignored SIG$sig for 30 s; SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

unmount_under() {
  local m
  awk -v d="$1/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
    while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
}

nodes_down() { # every node's snapshotter and containerd, then their dirs
  local p r d
  for p in "${snap_pids[@]}"; do stop_pid "$p" INT; done
  # A snapshotter's FUSE keeper holds the layers' connections (they survive
  # restarts); with no daemon, anything touching them waits: end it first.
  for r in "${snap_roots[@]}"; do
    if [ -f "$r/fuse-keeper.sock.pid" ]; then kill -KILL "$(cat "$r/fuse-keeper.sock.pid")" 2>/dev/null || true; fi
  done
  for d in "${node_dirs[@]}"; do
    [ -f "$d/c/containerd.pid" ] && { scripts/containerd.sh stop "$d/c" >/dev/null 2>&1 || true; }
    unmount_under "$d"
    if grep -qF " $d/" /proc/self/mountinfo; then
      log "something is still mounted under $d; not removing it"
    else
      rm -rf "$d"
    fi
  done
  snap_pids=()
  snap_roots=()
  node_dirs=()
}

mirror_down() {
  [ -n "$mirror_pid" ] && stop_pid "$mirror_pid"
  mirror_pid=""
}

cleanup() {
  local status=$?
  set +e
  nodes_down
  mirror_down
  [ -n "$origin_pid" ] && stop_pid "$origin_pid"
  $registry_started && scripts/registry.sh stop "$tmp/registry" >/dev/null 2>&1
  $net_up && "$net_sh" down "$pfx" "$nodes"
  unmount_under "$tmp"
  if grep -qF " $tmp/" /proc/self/mountinfo; then
    echo "fleet.sh: something is still mounted under $tmp; not removing it" >&2
  else
    if $tmp_mounted; then
      umount "$tmp" 2>/dev/null || umount -l "$tmp"
    fi
    rm -rf "$tmp"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ! $on_disk; then
  mount -t tmpfs -o "size=$tmpfs_size,mode=0700" sochi-fleet "$tmp"
  tmp_mounted=true
fi

# --- tools and the image -------------------------------------------------------
log "building sochi"
cargo build --release -p sochi-cli --quiet
mkdir -p "$tmp/bin"
cp target/release/sochi "$tmp/bin/sochi"   # a private copy: others may rebuild target/
sochi=$tmp/bin/sochi

imgdir=${SOCHI_TEST_IMAGES:-$repo/bench/work/images}
export BASE_CACHE=${BASE_CACHE:-$repo/bench/work/minbase.tar}
log "image $image (built once into $imgdir; debian-pydata takes about 3 minutes)"
scripts/build-test-images.sh --keep-existing --only "$image" "$imgdir" >/dev/null

mkdir -p "$tmp/registry"
eval "$(scripts/registry.sh start "$tmp/registry" 2>/dev/null)"
registry_started=true
log "pushing $image to $SOCHI_REGISTRY and converting it to $image:soci"
skopeo copy --quiet --preserve-digests --dest-tls-verify=false \
  "oci:$imgdir/$image:latest" "docker://$SOCHI_REGISTRY/$image:latest"
"$sochi" --root "$tmp/convert-root" convert --min-layer-size 0 \
  "oci:$imgdir/$image:latest" "$SOCHI_REGISTRY/$image:soci" >/dev/null
"$driver" image-bytes "$SOCHI_REGISTRY" "$image" >"$tmp/image-bytes"
scripts/registry.sh stop "$tmp/registry" >/dev/null 2>&1
registry_started=false
blob_files=$(awk -v d="$tmp/registry/data/docker/registry/v2/blobs/sha256" '
  $1 == "blob" { h = substr($2, 8); print d "/" substr(h, 1, 2) "/" h "/data" }' "$tmp/image-bytes")

# --- the network, the origin -----------------------------------------------------
log "namespaces $pfx-{o,m,n1..n$nodes}; node links $link, origin link $origin_link"
net_up=true
"$net_sh" up "$pfx" "$nodes"
"$net_sh" rate "$pfx" "$nodes" "$link"
"$net_sh" origin-rate "$pfx" "$origin_link"

# NS CMD...: CMD in network namespace NS only. Not `ip netns exec`: that
# also gives CMD a mount namespace of its own, and then the snapshotter's
# FUSE mounts would be invisible to containerd and runc.
in_ns() { local ns=$1; shift; exec nsenter --net="/run/netns/$ns" -- "$@"; }

registry_config() { # DIR ADDR DATA [remoteurl]: a docker-registry config in DIR
  cat >"$1/config.yml" <<EOF
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: $3
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: $2
  secret: sochi-fleet-$RANDOM$RANDOM
EOF
  [ -z "${4:-}" ] || printf 'proxy:\n  remoteurl: %s\n' "$4" >>"$1/config.yml"
}

# serve_registry NS DIR: docker-registry with DIR/config.yml in namespace
# NS, in the background; sets reg_pid and reg_port (the config listens on
# port 0: the kernel picks a free one and the registry logs it), and waits
# until /v2/ answers.
reg_pid=""
reg_port=""
serve_registry() {
  local ns=$1 dir=$2 i
  : >"$dir/registry.log"
  # in_ns execs (nsenter execs too): $! is the registry.
  in_ns "$ns" /usr/bin/docker-registry serve "$dir/config.yml" \
    </dev/null >>"$dir/registry.log" 2>&1 &
  reg_pid=$!
  reg_port=""
  for i in $(seq 200); do
    reg_port=$(sed -n 's/.*listening on .*:\([0-9][0-9]*\).*/\1/p' "$dir/registry.log" | head -n 1)
    [ -z "$reg_port" ] || break
    kill -0 "$reg_pid" 2>/dev/null || { tail "$dir/registry.log" >&2; return 1; }
    sleep 0.05
  done
  [ -n "$reg_port" ] || { echo "fleet.sh: the registry in $ns logged no port" >&2; return 1; }
  for i in $(seq 200); do
    (in_ns "$ns" curl -sf -o /dev/null "http://127.0.0.1:$reg_port/v2/") && return 0
    kill -0 "$reg_pid" 2>/dev/null || { tail "$dir/registry.log" >&2; return 1; }
    sleep 0.05
  done
  echo "fleet.sh: the registry in $ns does not answer" >&2
  return 1
}

mkdir -p "$tmp/origin"
registry_config "$tmp/origin" 0.0.0.0:0 "$tmp/registry/data"
sed -i 's/^  maintenance:/  maintenance:\n    readonly:\n      enabled: true/' "$tmp/origin/config.yml"
serve_registry "$pfx-o" "$tmp/origin" || { origin_pid=$reg_pid; exit 1; }
origin_pid=$reg_pid
origin=$origin_ip:$reg_port
log "origin http://$origin (pid $origin_pid)"

# --- nodes and the mirror ------------------------------------------------------------
mirror_port=""
mirror_up() { # DIR: a fresh pull-through mirror with its storage in DIR
  mkdir -p "$1/data"
  registry_config "$1" 0.0.0.0:0 "$1/data" "http://$origin"
  serve_registry "$pfx-m" "$1" || { mirror_pid=$reg_pid; return 1; }
  mirror_pid=$reg_pid
  mirror_port=$reg_port
}

# prefill_mirror: every manifest and blob of both tags fetched through the
# mirror (from its own namespace), then waits until the mirror has stored
# each blob (a range request is answered 206 from its storage, not 200 from
# the origin).
prefill_mirror() {
  local p code i base=http://127.0.0.1:$mirror_port/v2/$image
  local accept=application/vnd.oci.image.index.v1+json,application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json
  # shellcheck disable=SC2013  # one path per word, none has a space
  for p in $(awk '$1 == "warm" { print $2 }' "$tmp/image-bytes"); do
    (in_ns "$pfx-m" curl -sf -o /dev/null -H "Accept: $accept" "$base/$p") ||
      { echo "fleet.sh: the mirror did not serve $p" >&2; return 1; }
  done
  # shellcheck disable=SC2013  # one path per word, none has a space
  for p in $(awk '$1 == "warm" && $2 ~ /^blobs\// { print $2 }' "$tmp/image-bytes"); do
    for i in $(seq 1200); do
      code=$(in_ns "$pfx-m" curl -s -o /dev/null -w '%{http_code}' -H 'Range: bytes=0-0' "$base/$p" || true)
      [ "$code" = 206 ] && break
      sleep 0.1
    done
    [ "$code" = 206 ] || { echo "fleet.sh: the mirror has not stored $p after 120 s" >&2; return 1; }
  done
}

node_up() { # SYSTEM I DIR: node I's hosts dir, snapshotter (lazy), containerd
  local system=$1 i=$2 d=$3
  local ns=$pfx-n$i
  mkdir -p "$d/hosts/$origin"
  cat >"$d/hosts/$origin/hosts.toml" <<EOF
server = "http://$origin"

[host."http://10.213.$((60 + i)).1:$mirror_port"]
  capabilities = ["pull", "resolve"]
EOF
  node_dirs+=("$d")
  if [ "$system" = lazy ]; then
    mkdir -p "$d/s"
    chmod 700 "$d/s"   # sochi warns about a root others can read
    printf 'metrics_address = "127.0.0.1:9100"\n\n[registry]\nconfig_path = "%s"\n' "$d/hosts" >"$d/s.toml"
    in_ns "$ns" "$sochi" --plain-http --root "$d/s" --log-level info snapshotter \
      --address "$d/c/sochi.sock" --config "$d/s.toml" </dev/null >"$d/s.log" 2>&1 &
    snap_pids+=($!)
    snap_roots+=("$d/s")
    for _ in $(seq 600); do
      grep -q "snapshotter ready" "$d/s.log" && break
      kill -0 "${snap_pids[-1]}" 2>/dev/null || { cat "$d/s.log" >&2; return 1; }
      sleep 0.05
    done
  fi
  (in_ns "$ns" scripts/containerd.sh start "$d/c" >/dev/null 2>&1) ||
    { tail "$d/c/containerd.log" >&2; return 1; }
}

stamp=$(date -u +%Y%m%dT%H%M%SZ)
csv=bench/results/fleet-$stamp.csv
md=bench/results/fleet-$stamp.md
blobs=bench/results/fleet-$stamp-blobs.txt
# Every run's logs (snapshotters, containerds, mirror, origin), gzipped;
# bench/work is not committed.
logs=$repo/bench/work/fleet/$stamp
mkdir -p "$logs"
echo "run,system,metric,value" >"$csv"
awk 'NF == 2 && $1 != "warm" { print "0,image," $1 "," $2 }' "$tmp/image-bytes" >>"$csv"
{
  echo "# bench/fleet.sh $stamp: the origin's blob GETs per run (digest, GETs, bytes, of which 206)"
  awk '$1 == "blob" { print "# layer " $2 " " $3 " bytes" }' "$tmp/image-bytes"
} >"$blobs"

rec() { # RUN SYSTEM < "metric value" lines
  local metric value
  while read -r metric value; do echo "$1,$2,$metric,$value" >>"$csv"; done
}

log "load before the runs: $(cut -d' ' -f1-3 /proc/loadavg)"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
t_start=$(date +%s)
for run in $(seq "$runs"); do
  order="full lazy"
  [ $((run % 2)) = 1 ] || order="lazy full"
  for system in $order; do
    log "run $run/$runs: $system, $nodes nodes at once"
    rd=$tmp/r$run-$system
    mirror_up "$rd/mirror"
    [ "$mirror_state" = cold ] || prefill_mirror
    for i in $(seq "$nodes"); do node_up "$system" "$i" "$rd/n$i"; done
    sync
    echo 3 >/proc/sys/vm/drop_caches
    # shellcheck disable=SC2086  # one path per word
    cat $blob_files >/dev/null
    node_args=()
    for i in $(seq "$nodes"); do
      node_args+=(--node "$pfx-n$i,$rd/n$i/c,$rd/n$i/hosts,$rd/n$i/s")
    done
    ref=$origin/$image:latest
    [ "$system" = full ] || ref=$origin/$image:soci
    "$driver" fleet --system "$system" --ready "sochi $image ready" --ref "$ref" \
      "${node_args[@]}" --sochi "$sochi" --origin-log "$tmp/origin/registry.log" \
      --mirror-log "$rd/mirror/registry.log" --net "$pfx" >"$tmp/out"
    log "  all ready after $(awk '$1 == "fleet_ready_s" { print $2 }' "$tmp/out") s" \
      "(nodes: $(awk '/^n[0-9]+_ready_s / { printf "%s%s", sep, $2; sep = ", " }' "$tmp/out") s);" \
      "origin $(awk '$1 == "origin_bytes" { printf "%.1f", $2 / 1e6 }' "$tmp/out") MB," \
      "mirror $(awk '$1 == "mirror_bytes" { printf "%.1f", $2 / 1e6 }' "$tmp/out") MB"
    for i in $(seq "$nodes"); do
      {
        echo "n${i}_containerd_log_errors $(grep -c 'level=error' "$rd/n$i/c/containerd.log" || true)"
        if [ "$system" = lazy ]; then
          echo "n${i}_snapshotter_log_warnings $(grep -c ' WARN ' "$rd/n$i/s.log" || true)"
          echo "n${i}_snapshotter_log_errors $(grep -c ' ERROR ' "$rd/n$i/s.log" || true)"
        fi
      } >>"$tmp/out"
      gzip -c "$rd/n$i/c/containerd.log" >"$logs/r$run-$system-n$i-containerd.log.gz"
      [ "$system" = full ] || gzip -c "$rd/n$i/s.log" >"$logs/r$run-$system-n$i-snapshotter.log.gz"
    done
    nodes_down
    start_line=$(awk '$1 == "start_origin_line" { print $2 }' "$tmp/out")
    start_wire=$(awk '$1 == "start_origin_wire" { print $2 }' "$tmp/out")
    "$driver" settle --origin-log "$tmp/origin/registry.log" --net "$pfx" \
      --start-line "$start_line" --start-wire "$start_wire" >>"$tmp/out"
    {
      echo "mirror_stored_bytes $(du -sb "$rd/mirror/data" | cut -f1)"
      echo "mirror_log_errors $(grep -c 'level=error' "$rd/mirror/registry.log" || true)"
    } >>"$tmp/out"
    log "  settled after $(awk '$1 == "settle_wait_s" { print $2 }' "$tmp/out") s:" \
      "origin $(awk '$1 == "origin_bytes_settled" { printf "%.1f", $2 / 1e6 }' "$tmp/out") MB in" \
      "$(awk '$1 == "origin_blob_gets_settled" { print $2 }' "$tmp/out") blob GETs;" \
      "mirror stored $(awk '$1 == "mirror_stored_bytes" { printf "%.1f", $2 / 1e6 }' "$tmp/out") MB"
    rec "$run" "$system" <"$tmp/out"
    {
      echo "## run $run $system"
      "$driver" blob-gets "$tmp/origin/registry.log" --since-line "$start_line"
      echo "# mirror errors:"
      { grep 'level=error' "$rd/mirror/registry.log" || true; } | sed 's/^/#   /' | cut -c1-300 | sort | uniq -c | sort -rn | head -5
    } >>"$blobs"
    mirror_down
    gzip -c "$rd/mirror/registry.log" >"$logs/r$run-$system-mirror.log.gz"
    rm -rf "$rd"
  done
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
gzip -c "$tmp/origin/registry.log" >"$logs/origin.log.gz"

{
  echo "# bench/fleet.sh $stamp"
  echo
  echo "Command: \`bench/fleet.sh --image $image --runs $runs --link $link --origin-link $origin_link --nodes $nodes --mirror $mirror_state$($on_disk && echo " --disk")\`;" \
    "work dir on $($on_disk && echo "/tmp's disk" || echo "tmpfs");" \
    "$(nproc) cores, kernel $(uname -r); load average before $load_start, after $load_end;" \
    "runs took $(( $(date +%s) - t_start )) s. Mirror and origin: $(/usr/bin/docker-registry --version | cut -d' ' -f2-);" \
    "containerd $(containerd --version | awk '{ print $3 }')."
  echo
  echo "sochi: $("$sochi" --version), binary sha256 $(sha256sum "$sochi" | cut -c1-16);" \
    "snapshotter defaults: $("$sochi" snapshotter config default | awk '
      /^\[/ { section = substr($1, 2, length($1) - 2) }
      (section == "background_fetch" || section == "directory_cache") && / = / { printf "%s%s.%s = %s", sep, section, $1, $3; sep = ", " }')."
  echo
  "$driver" summary "$csv" --mirror "$mirror_state"
} | tee "$md"
log "raw: $csv, $blobs; logs in $logs"
