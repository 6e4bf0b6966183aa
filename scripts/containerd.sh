#!/usr/bin/env bash
# Starts or stops a private containerd (Debian's 1.6) for tests and by hand.
#
# Usage: containerd.sh start DIR [OPTIONS]
#        containerd.sh config DIR [OPTIONS]
#        containerd.sh stop DIR
#
# Options (start and config):
#   --snapshotter-socket PATH   the proxy snapshotter's socket
#   --cri                       enable the CRI plugin (see below)
#   --sandbox-image REF         with --cri: the pod sandbox ("pause") image
#   --registry-config-path DIR  with --cri: containerd reads
#                               DIR/<host:port>/hosts.toml per registry
#
# config writes DIR/config.toml and prints its path: root DIR/root, state
#        DIR/state, sockets DIR/containerd.sock(.ttrpc) and DIR/debug.sock,
#        the opt plugin under DIR/opt, the CRI plugin disabled, and a proxy
#        snapshotter `sochi` at DIR/sochi.sock (or PATH). containerd starts
#        fine while that socket does not exist yet.
#        With --cri the CRI plugin is on instead, serving runtime.v1 on
#        DIR/containerd.sock, set up as a private instance on this machine
#        kind needs it (environment.md, "Interop notes found later"): images
#        unpacked with the `sochi` snapshotter with the cri.* snapshot
#        labels on (disable_snapshot_annotations = false), no TCP service,
#        the streaming server on 127.0.0.1 (a free port), runc not asked to
#        lower oom_score_adj (restrict_oom_score_adj), CNI bin and conf
#        dirs empty under DIR/cni (host-network pods only).
# start  writes the config, starts /usr/bin/containerd in the background
#        (log DIR/containerd.log, pid DIR/containerd.pid), waits until
#        `ctr -a DIR/containerd.sock version` answers and prints shell lines
#        to eval:
#          export CONTAINERD_ADDRESS=DIR/containerd.sock   (ctr reads it)
#          export SOCHI_CONTAINERD_ADDRESS=DIR/containerd.sock
#          export SOCHI_CONTAINERD_PID=PID
#          export SOCHI_SNAPSHOTTER_ADDRESS=DIR/sochi.sock
#        If a containerd from DIR is already running, its lines are printed
#        again.
# stop   kills the shims of this containerd (their -address is DIR's
#        socket), then the containerd recorded in DIR/containerd.pid, waits
#        for it to exit and unmounts what is still mounted under DIR; DIR
#        and its data stay.
#
# Some paths ignore root/state (environment.md §4): shim sockets go to
# /run/containerd/s/<hash of our socket path>, ctr's FIFOs to
# /run/containerd/fifo, runc's state to /run/containerd/runc/<namespace>.
#
# Example: eval "$(scripts/containerd.sh start /tmp/ctd)"; ctr images ls
set -euo pipefail

usage() {
  sed -n '/^# Usage:/,/^# Example:/p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

log() { printf 'containerd.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ $# -ge 2 ] || usage
cmd=$1
dir=$2
shift 2
snapshotter_socket=""
cri=false
sandbox_image=""
registry_config_path=""
while [ $# -gt 0 ]; do
  case "$1" in
    --snapshotter-socket) snapshotter_socket=${2:?--snapshotter-socket needs a path}; shift 2 ;;
    --cri) cri=true; shift ;;
    --sandbox-image) sandbox_image=${2:?--sandbox-image needs an image reference}; shift 2 ;;
    --registry-config-path) registry_config_path=${2:?--registry-config-path needs a directory}; shift 2 ;;
    *) usage ;;
  esac
done
if ! $cri && { [ -n "$sandbox_image" ] || [ -n "$registry_config_path" ]; }; then
  printf 'containerd.sh: error: --sandbox-image and --registry-config-path need --cri\n' >&2
  exit 2
fi

containerd_bin=${SOCHI_CONTAINERD_BIN:-/usr/bin/containerd}
ctr_bin=${SOCHI_CTR_BIN:-/usr/bin/ctr}

# True when PID exists and is not a zombie.
alive() {
  local state
  state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

# True when PID is alive and is the containerd running DIR's config.
is_our_containerd() {
  local pid=$1
  [ -n "$pid" ] && alive "$pid" &&
    tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "--config $dir/config.toml"
}

# Waits up to 5 s for PID to exit; SIGKILL after that. Fails if it stays.
wait_gone() {
  local pid=$1 i
  for i in $(seq 1 100); do
    alive "$pid" || return 0
    sleep 0.05
  done
  log "pid $pid ignored SIGTERM for 5 s; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do
    alive "$pid" || return 0
    sleep 0.05
  done
  die "pid $pid is still running"
}

print_exports() {
  printf 'export CONTAINERD_ADDRESS=%s\n' "$dir/containerd.sock"
  printf 'export SOCHI_CONTAINERD_ADDRESS=%s\n' "$dir/containerd.sock"
  printf 'export SOCHI_CONTAINERD_PID=%s\n' "$(cat "$dir/containerd.pid")"
  printf 'export SOCHI_SNAPSHOTTER_ADDRESS=%s\n' "$(cat "$dir/snapshotter.addr")"
}

write_config() {
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  local sock=${snapshotter_socket:-$dir/sochi.sock}
  # A unix socket path has at most 107 bytes (sun_path).
  [ ${#dir} -le 80 ] || die "$dir is too long for unix socket paths under it"
  mkdir -p "$dir/root" "$dir/state" "$dir/opt"
  local plugins
  if $cri; then
    plugins="# The CRI plugin is on (--cri): its section is at the end."
  else
    plugins='# The CRI plugin wants a CNI config; ctr and sochi pull do not need it.
disabled_plugins = ["io.containerd.grpc.v1.cri"]'
  fi
  cat >"$dir/config.toml" <<EOF
version = 2
root = "$dir/root"
state = "$dir/state"
$plugins

[grpc]
  address = "$dir/containerd.sock"

[ttrpc]
  address = "$dir/containerd.sock.ttrpc"

[debug]
  address = "$dir/debug.sock"
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"

[proxy_plugins]
  [proxy_plugins.sochi]
    type = "snapshot"
    address = "$sock"
EOF
  if $cri; then
    write_cri_config
  fi
  printf '%s\n' "$sock" >"$dir/snapshotter.addr"
}

# Appends the CRI plugin's section to DIR/config.toml (--cri).
write_cri_config() {
  mkdir -p "$dir/cni/bin" "$dir/cni/conf"
  if [ -n "$registry_config_path" ]; then
    mkdir -p "$registry_config_path"
    registry_config_path=$(cd "$registry_config_path" && pwd)
  fi
  {
    printf '\n[plugins."io.containerd.grpc.v1.cri"]\n'
    [ -z "$sandbox_image" ] || printf '  sandbox_image = "%s"\n' "$sandbox_image"
    cat <<EOF
  # runc cannot lower oom_score_adj to the sandbox's -998 in a VM like ours
  # ("nsexec: failed to update /proc/self/oom_score_adj").
  restrict_oom_score_adj = true
  # A private instance: no TCP listener, streaming (exec, attach) on
  # loopback at a port the kernel picks.
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "sochi"
  # The cri.* labels tell the snapshotter which image a layer is of; 1.6
  # leaves them out by default.
  disable_snapshot_annotations = false

[plugins."io.containerd.grpc.v1.cri".cni]
  # Empty: only host-network pods, which need no CNI plugin.
  bin_dir = "$dir/cni/bin"
  conf_dir = "$dir/cni/conf"
EOF
    if [ -n "$registry_config_path" ]; then
      printf '\n[plugins."io.containerd.grpc.v1.cri".registry]\n'
      printf '  config_path = "%s"\n' "$registry_config_path"
    fi
  } >>"$dir/config.toml"
}

start() {
  [ -x "$containerd_bin" ] || die "$containerd_bin is missing; run scripts/e2e-deps.sh"
  [ -x "$ctr_bin" ] || die "$ctr_bin is missing; run scripts/e2e-deps.sh"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if [ -f "$dir/containerd.pid" ] && is_our_containerd "$(cat "$dir/containerd.pid")"; then
    log "already running (pid $(cat "$dir/containerd.pid"))"
    print_exports
    return
  fi
  rm -f "$dir/containerd.pid"
  write_config

  : >"$dir/containerd.log"
  # No `cd X && ... &` here: $! must be containerd, not a subshell.
  nohup "$containerd_bin" --config "$dir/config.toml" </dev/null >>"$dir/containerd.log" 2>&1 &
  local pid=$! i ok=false
  echo "$pid" >"$dir/containerd.pid"
  for i in $(seq 1 400); do
    alive "$pid" || { tail -n 20 "$dir/containerd.log" >&2; rm -f "$dir/containerd.pid"; die "containerd exited (log above)"; }
    if [ -S "$dir/containerd.sock" ] &&
      timeout 5 "$ctr_bin" -a "$dir/containerd.sock" version >/dev/null 2>&1; then
      ok=true
      break
    fi
    sleep 0.05
  done
  if ! $ok; then
    kill -TERM "$pid" 2>/dev/null || true
    wait_gone "$pid"
    rm -f "$dir/containerd.pid"
    tail -n 20 "$dir/containerd.log" >&2
    die "containerd did not answer on $dir/containerd.sock in 20 s (log above)"
  fi
  log "containerd pid $pid on $dir/containerd.sock (root $dir/root, log $dir/containerd.log)"
  print_exports
}

# PIDs of the shims serving this containerd: their command line names our
# socket (`-address DIR/containerd.sock`).
our_shims() {
  local p
  for p in /proc/[0-9]*; do
    tr '\0' ' ' 2>/dev/null <"$p/cmdline" |
      grep -qE -- "^[^ ]*containerd-shim[^ ]* .*-address $dir/containerd.sock( |$)" &&
      echo "${p#/proc/}"
  done
  return 0
}

# Unmounts, deepest first, whatever is mounted under DIR (snapshots of
# containers that were still running).
unmount_under_dir() {
  local m
  awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
    while read -r m; do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "cannot unmount $m"
    done
}

stop() {
  [ -d "$dir" ] || die "$dir does not exist"
  dir=$(cd "$dir" && pwd)
  local pid shim
  for shim in $(our_shims); do
    log "killing shim pid $shim"
    kill -KILL "$shim" 2>/dev/null || true
  done
  if [ -f "$dir/containerd.pid" ]; then
    pid=$(cat "$dir/containerd.pid")
    if is_our_containerd "$pid"; then
      kill -TERM "$pid"
      wait_gone "$pid"
      log "stopped containerd pid $pid"
    else
      log "pid $pid is not running the containerd of $dir; nothing to stop"
    fi
    rm -f "$dir/containerd.pid"
  else
    log "no $dir/containerd.pid; nothing to stop"
  fi
  unmount_under_dir
}

case "$cmd" in
  start) start ;;
  config) write_config; printf '%s\n' "$dir/config.toml" ;;
  stop) stop ;;
  *) usage ;;
esac
