#!/usr/bin/env bash
# A limited link to a registry for bench/start.sh: a network namespace
# holding one end of a veth pair, `tc` tbf shaping both directions.
#
# Usage: netns.sh up NS HOST_IP NS_IP     (a /30 between them; no shaping)
#        netns.sh rate NS RATE            (tbf RATE on both ends, e.g.
#                                          100mbit, 1gbit; `none` removes it)
#        netns.sh down NS                 (deletes the namespace and the pair)
#
# The host end is named `NS-h`, the namespace end `NS-r` (NS: at most 12
# characters). The registry inside is started by the caller with
# `ip netns exec NS ...`. This kernel has tbf and htb but no netem, so the
# link adds bandwidth limits, not latency; tbf's own queue (latency 50 ms)
# is the only delay it adds under load.
set -euo pipefail

die() { printf 'netns.sh: %s\n' "$*" >&2; exit 1; }
[ $# -ge 2 ] || die "usage: netns.sh up|rate|down NS ..."
cmd=$1
ns=$2
[ ${#ns} -le 12 ] || die "namespace name $ns is longer than 12 characters"
host_if=$ns-h
ns_if=$ns-r

# tbf RATE on DEV (run through PREFIX, e.g. `ip netns exec NS`). The burst
# must hold what the kernel sends in one timer tick at that rate (GSO
# packets are up to 64 KiB): 10 ms worth of the rate, at least 256 KiB.
shape() {
  local rate=$1 dev=$2 burst mbit
  shift 2
  if [ "$rate" = none ]; then
    "$@" tc qdisc del dev "$dev" root 2>/dev/null || true
    return
  fi
  case "$rate" in
    *gbit) mbit=$((${rate%gbit} * 1000)) ;;
    *mbit) mbit=${rate%mbit} ;;
    *) die "rate $rate: use Nmbit or Ngbit" ;;
  esac
  burst=$((mbit * 1000000 / 8 / 100 / 1024))   # KiB
  [ "$burst" -ge 256 ] || burst=256
  "$@" tc qdisc replace dev "$dev" root tbf rate "$rate" burst "${burst}kb" latency 50ms
}

case "$cmd" in
  up)
    [ $# -eq 4 ] || die "usage: netns.sh up NS HOST_IP NS_IP"
    host_ip=$3
    ns_ip=$4
    ip netns add "$ns"
    ip link add "$host_if" type veth peer name "$ns_if"
    ip link set "$ns_if" netns "$ns"
    ip addr add "$host_ip/30" dev "$host_if"
    ip link set "$host_if" up
    ip netns exec "$ns" ip addr add "$ns_ip/30" dev "$ns_if"
    ip netns exec "$ns" ip link set "$ns_if" up
    ip netns exec "$ns" ip link set lo up
    ;;
  rate)
    [ $# -eq 3 ] || die "usage: netns.sh rate NS RATE"
    shape "$3" "$host_if"
    shape "$3" "$ns_if" ip netns exec "$ns"
    ;;
  down)
    ip link del "$host_if" 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    ;;
  *) die "unknown command $cmd" ;;
esac
