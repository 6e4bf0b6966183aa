#!/usr/bin/env bash
# Starts or stops a private docker-registry (distribution 2.8) for tests.
#
# Usage: registry.sh start DIR [--tls] [--htpasswd USER:PASS] [--ip IP]
#        registry.sh stop DIR
#
# start  writes DIR/config.yml (storage DIR/data, deletes enabled, listening
#        on 127.0.0.1 or IP on a port the kernel picks), starts
#        /usr/bin/docker-registry in the background (log DIR/registry.log),
#        records DIR/registry.pid and DIR/registry.addr (host:port), waits
#        until /v2/ answers and prints shell lines to eval:
#          export SOCHI_REGISTRY=IP:PORT
#          export SOCHI_REGISTRY_PID=PID
#          export SOCHI_REGISTRY_CA=DIR/tls/ca.pem          (--tls)
#          export SOCHI_REGISTRY_CERT_DIR=DIR/tls/certs.d   (--tls; skopeo --*-cert-dir)
#          export SOCHI_REGISTRY_USER=USER:PASS             (--htpasswd)
#        --tls        serve HTTPS with a certificate for IP, 127.0.0.1,
#                     127.0.0.2 and localhost, signed by a CA made under
#                     DIR/tls
#        --ip         listen on this loopback address (default 127.0.0.1).
#                     sochi talks plain HTTP to 127.0.0.1/localhost whatever
#                     its flags: use --tls --ip 127.0.0.2 to test its TLS.
#        --htpasswd   require basic auth (bcrypt htpasswd file DIR/htpasswd)
#        If a registry from DIR is already running, its lines are printed
#        again.
# stop   kills the registry recorded in DIR/registry.pid and waits for it to
#        exit; DIR and its data stay.
#
# Example: eval "$(scripts/registry.sh start /tmp/reg --tls --htpasswd u:p)"
set -euo pipefail

usage() {
  sed -n '/^# Usage:/,/^# Example:/p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

log() { printf 'registry.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ $# -ge 2 ] || usage
cmd=$1
dir=$2
shift 2
tls=false
htpasswd_creds=""
ip=127.0.0.1
while [ $# -gt 0 ]; do
  case "$1" in
    --tls) tls=true; shift ;;
    --htpasswd) htpasswd_creds=${2:?--htpasswd needs USER:PASS}; shift 2 ;;
    --ip) ip=${2:?--ip needs an address}; shift 2 ;;
    *) usage ;;
  esac
done

registry_bin=/usr/bin/docker-registry

# True when PID exists and is not a zombie (an orphaned registry is reaped by
# whatever PID 1 is, maybe late).
alive() {
  local state
  state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

# True when PID is alive and is the docker-registry serving DIR's config.
is_our_registry() {
  local pid=$1
  [ -n "$pid" ] && alive "$pid" &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$dir/config.yml"
}

print_exports() {
  printf 'export SOCHI_REGISTRY=%s\n' "$(cat "$dir/registry.addr")"
  printf 'export SOCHI_REGISTRY_PID=%s\n' "$(cat "$dir/registry.pid")"
  if [ -f "$dir/tls/ca.pem" ] && grep -q '^  tls:' "$dir/config.yml"; then
    printf 'export SOCHI_REGISTRY_CA=%s\n' "$dir/tls/ca.pem"
    printf 'export SOCHI_REGISTRY_CERT_DIR=%s\n' "$dir/tls/certs.d"
  fi
  if [ -f "$dir/credentials" ] && grep -q '^auth:' "$dir/config.yml"; then
    printf 'export SOCHI_REGISTRY_USER=%s\n' "$(cat "$dir/credentials")"
  fi
}

make_tls() {
  local t=$dir/tls
  command -v openssl >/dev/null || die "openssl is missing; run scripts/e2e-deps.sh"
  mkdir -p "$t/certs.d"
  openssl req -x509 -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$t/ca-key.pem" -out "$t/ca.pem" -days 3650 -subj "/CN=sochi test CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  openssl req -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$t/server-key.pem" -out "$t/server.csr" -subj "/CN=$ip" 2>/dev/null
  local sans="IP:$ip" a
  for a in 127.0.0.1 127.0.0.2; do [ "$a" = "$ip" ] || sans+=",IP:$a"; done
  printf '%s\n' "subjectAltName=$sans,IP:::1,DNS:localhost" \
    "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth" >"$t/server.ext"
  openssl x509 -req -in "$t/server.csr" -CA "$t/ca.pem" -CAkey "$t/ca-key.pem" \
    -CAcreateserial -out "$t/server.pem" -days 825 -extfile "$t/server.ext" 2>/dev/null
  # skopeo/containers-image read a cert dir: every *.crt is a trusted CA.
  cp "$t/ca.pem" "$t/certs.d/ca.crt"
}

start() {
  [ -x "$registry_bin" ] || die "$registry_bin is missing; run scripts/e2e-deps.sh"
  command -v curl >/dev/null || die "curl is missing; run scripts/e2e-deps.sh"
  mkdir -p "$dir/data"
  dir=$(cd "$dir" && pwd)

  if [ -f "$dir/registry.pid" ] && is_our_registry "$(cat "$dir/registry.pid")"; then
    log "already running (pid $(cat "$dir/registry.pid"))"
    print_exports
    return
  fi
  rm -f "$dir/registry.pid" "$dir/registry.addr"

  local tls_config="" auth_config="" scheme=http
  if $tls; then
    make_tls
    scheme=https
    tls_config="  tls:
    certificate: $dir/tls/server.pem
    key: $dir/tls/server-key.pem"
  fi
  rm -f "$dir/credentials"
  if [ -n "$htpasswd_creds" ]; then
    command -v htpasswd >/dev/null || die "htpasswd is missing (apache2-utils); run scripts/e2e-deps.sh"
    case "$htpasswd_creds" in *:*) ;; *) die "--htpasswd wants USER:PASS" ;; esac
    htpasswd -Bbn "${htpasswd_creds%%:*}" "${htpasswd_creds#*:}" >"$dir/htpasswd"
    printf '%s\n' "$htpasswd_creds" >"$dir/credentials"
    chmod 600 "$dir/credentials"
    auth_config="auth:
  htpasswd:
    realm: sochi-test-registry
    path: $dir/htpasswd"
  fi

  # Port 0: the kernel picks a free port, and the registry logs it
  # ("listening on IP:PORT"), so no other service can race us to it.
  cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: $ip:0
  secret: sochi-test-$RANDOM$RANDOM
$tls_config
$auth_config
EOF

  : >"$dir/registry.log"
  # No `cd X && ... &` here: $! must be the registry, not a subshell.
  nohup "$registry_bin" serve "$dir/config.yml" </dev/null >>"$dir/registry.log" 2>&1 &
  local pid=$! addr="" i code
  echo "$pid" >"$dir/registry.pid"

  for i in $(seq 1 200); do
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$dir/registry.log" >&2; die "docker-registry exited (log above)"; }
    addr=$(sed -n 's/.*listening on \([0-9.]*:[0-9][0-9]*\).*/\1/p' "$dir/registry.log" | head -n 1)
    [ -z "$addr" ] || break
    sleep 0.05
  done
  [ -n "$addr" ] || { kill "$pid" 2>/dev/null; die "docker-registry did not log its address in 10 s"; }
  echo "$addr" >"$dir/registry.addr"

  local curl_tls=()
  if $tls; then curl_tls=(--cacert "$dir/tls/ca.pem"); fi
  for i in $(seq 1 200); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "${curl_tls[@]}" "$scheme://$addr/v2/" || true)
    case "$code" in 200|401) break ;; esac
    sleep 0.05
  done
  case "$code" in
    200|401) ;;
    *) kill "$pid" 2>/dev/null; tail -n 20 "$dir/registry.log" >&2; die "$scheme://$addr/v2/ answered '$code'" ;;
  esac
  log "docker-registry pid $pid on $scheme://$addr (data $dir/data, log $dir/registry.log)"
  print_exports
}

stop() {
  [ -d "$dir" ] || die "$dir does not exist"
  dir=$(cd "$dir" && pwd)
  [ -f "$dir/registry.pid" ] || { log "no $dir/registry.pid; nothing to stop"; return; }
  local pid i
  pid=$(cat "$dir/registry.pid")
  if ! is_our_registry "$pid"; then
    log "pid $pid is not running the registry of $dir; nothing to stop"
    rm -f "$dir/registry.pid" "$dir/registry.addr"
    return
  fi
  kill -TERM "$pid"
  for i in $(seq 1 100); do
    alive "$pid" || break
    sleep 0.05
  done
  if alive "$pid"; then
    log "pid $pid ignored SIGTERM for 5 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
      alive "$pid" || break
      sleep 0.05
    done
  fi
  alive "$pid" && die "pid $pid is still running"
  rm -f "$dir/registry.pid" "$dir/registry.addr"
  log "stopped docker-registry pid $pid"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
