#!/usr/bin/env bash
# Installs the Debian packages the e2e harness (sochi-e2e) and
# scripts/build-test-images.sh / scripts/registry.sh need. Idempotent: a
# package is installed only when it is missing, and nothing runs apt when
# everything is present.
set -euo pipefail

packages=(
  docker-registry skopeo apache2-utils busybox-static debootstrap openssl
  umoci jq curl pigz ca-certificates debian-archive-keyring python3 tar gzip
  coreutils util-linux containerd runc
)

# One dpkg-query for all of them: "<package> <status>" per known package,
# where a fully installed one has the status "install ok installed".
installed=$(dpkg-query -W -f '${Package} ${Status}\n' "${packages[@]}" 2>/dev/null |
  awk '$2 == "install" && $3 == "ok" && $4 == "installed" { print $1 }' || true)
missing=()
for pkg in "${packages[@]}"; do
  grep -qx -- "$pkg" <<<"$installed" || missing+=("$pkg")
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "e2e-deps: missing packages ${missing[*]} and not root; install them with apt-get" >&2
  exit 1
fi

echo "e2e-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# docker-registry's postinst tries to start a service; policy-rc.d denies it
# on machines without an init system, which is harmless.
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
