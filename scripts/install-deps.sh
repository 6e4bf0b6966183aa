#!/usr/bin/env bash
# Installs the Debian packages sochi's tests and quick start use.
set -euo pipefail
need=()
# protoc: sochi-snapshotter compiles containerd's Snapshots proto.
for tool in gzip:gzip tar:tar sha256sum:coreutils split:coreutils protoc:protobuf-compiler; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}"
fi
