#!/usr/bin/env bash
# The network of bench/fleet.sh: an origin registry's namespace, a mirror's
# namespace and one namespace per node, every link a veth pair, nothing in
# the host's namespace (so no address or port of the host is taken).
#
#   PFX-o   origin   10.213.69.2 (`up0`)  <->  10.213.69.1 (`org0`)  PFX-m
#   PFX-nI  node I   10.213.(60+I).2 (`eth0`)  <->  10.213.(60+I).1 (`ndI`)
#                                                             in PFX-m
# Each node reaches the mirror at its own link's far end, 10.213.(60+I).1
# (the mirror listens on 0.0.0.0 in its namespace), and has no route to the
# origin: a request that skips the mirror fails at once instead of
# hiding in the numbers. The mirror reaches the origin at 10.213.69.2.
#
# Usage: net.sh up PFX NODES        (namespaces, pairs, addresses; no shaping)
#        net.sh rate PFX NODES RATE (tbf RATE both ways on every node link,
#                                    e.g. 100mbit, 1gbit; `none` removes it)
#        net.sh origin-rate PFX RATE  (the same on the origin's link)
#        net.sh down PFX NODES      (deletes the namespaces, so the pairs)
#
# This kernel has tbf and htb but no netem: links get bandwidth limits, not
# latency; tbf's own queue (latency 50 ms) is the only delay under load.
set -euo pipefail

die() { printf 'net.sh: %s\n' "$*" >&2; exit 1; }
[ $# -ge 2 ] || die "usage: net.sh up|rate|origin-rate|down PFX ..."
cmd=$1
pfx=$2

# tbf RATE on DEV in namespace NS. The burst must hold what the kernel sends
# in one timer tick at that rate (GSO packets are up to 64 KiB): 10 ms worth
# of the rate, at least 256 KiB (as bench/start/netns.sh).
shape() {
  local ns=$1 dev=$2 rate=$3 burst mbit
  if [ "$rate" = none ]; then
    ip netns exec "$ns" tc qdisc del dev "$dev" root 2>/dev/null || true
    return
  fi
  case "$rate" in
    *gbit) mbit=$((${rate%gbit} * 1000)) ;;
    *mbit) mbit=${rate%mbit} ;;
    *) die "rate $rate: use Nmbit or Ngbit" ;;
  esac
  burst=$((mbit * 1000000 / 8 / 100 / 1024))   # KiB
  [ "$burst" -ge 256 ] || burst=256
  ip netns exec "$ns" tc qdisc replace dev "$dev" root tbf rate "$rate" burst "${burst}kb" latency 50ms
}

case "$cmd" in
  up)
    [ $# -eq 3 ] || die "usage: net.sh up PFX NODES"
    nodes=$3
    ip netns add "$pfx-o"
    ip netns add "$pfx-m"
    ip -n "$pfx-o" link set lo up
    ip -n "$pfx-m" link set lo up
    ip -n "$pfx-m" link add org0 type veth peer name up0 netns "$pfx-o"
    ip -n "$pfx-m" addr add 10.213.69.1/30 dev org0
    ip -n "$pfx-o" addr add 10.213.69.2/30 dev up0
    ip -n "$pfx-m" link set org0 up
    ip -n "$pfx-o" link set up0 up
    for i in $(seq "$nodes"); do
      ip netns add "$pfx-n$i"
      ip -n "$pfx-n$i" link set lo up
      ip -n "$pfx-m" link add "nd$i" type veth peer name eth0 netns "$pfx-n$i"
      ip -n "$pfx-m" addr add "10.213.$((60 + i)).1/30" dev "nd$i"
      ip -n "$pfx-n$i" addr add "10.213.$((60 + i)).2/30" dev eth0
      ip -n "$pfx-m" link set "nd$i" up
      ip -n "$pfx-n$i" link set eth0 up
    done
    ;;
  rate)
    [ $# -eq 4 ] || die "usage: net.sh rate PFX NODES RATE"
    for i in $(seq "$3"); do
      shape "$pfx-m" "nd$i" "$4"
      shape "$pfx-n$i" eth0 "$4"
    done
    ;;
  origin-rate)
    [ $# -eq 3 ] || die "usage: net.sh origin-rate PFX RATE"
    shape "$pfx-m" org0 "$3"
    shape "$pfx-o" up0 "$3"
    ;;
  down)
    [ $# -eq 3 ] || die "usage: net.sh down PFX NODES"
    for i in $(seq "$3"); do ip netns del "$pfx-n$i" 2>/dev/null || true; done
    ip netns del "$pfx-m" 2>/dev/null || true
    ip netns del "$pfx-o" 2>/dev/null || true
    ;;
  *) die "unknown command $cmd" ;;
esac
