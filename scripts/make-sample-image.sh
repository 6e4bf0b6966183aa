#!/usr/bin/env bash
# Builds a small multi-layer OCI image layout from files of this machine,
# with nothing but tar, gzip and coreutils: the embedded default image of
# the README's quick start.
#
#   scripts/make-sample-image.sh OUT_DIR
#
# Layers (each only if the directory exists here):
#   1. etc                    gzip, GNU tar format
#   2. usr/lib/python3.*      gzip, PAX format (largest: the one indexed by default)
#   3. usr/share/perl*        uncompressed tar (an OCI ...layer.v1.tar layer)
#   4. usr/share/doc          gzip, written as 3 concatenated gzip members
set -euo pipefail

out=${1:?usage: make-sample-image.sh OUT_DIR}
rm -rf "$out"
mkdir -p "$out/blobs/sha256"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

layers=()      # "mediaType digest size"
diff_ids=()

put_blob() {   # put_blob FILE -> prints "digest size"
  local file=$1 hex size
  hex=$(sha256sum "$file" | cut -d' ' -f1)
  size=$(stat -c %s "$file")
  mv "$file" "$out/blobs/sha256/$hex"
  echo "sha256:$hex $size"
}

add_layer() {  # add_layer DIR FORMAT COMPRESSION
  local dir=$1 format=$2 compression=$3 tarfile="$work/layer.tar" diff blob media
  tar --sort=name --numeric-owner --format="$format" -C / -cf "$tarfile" "$dir" 2>/dev/null || true
  [ -s "$tarfile" ] || return 0
  diff=sha256:$(sha256sum "$tarfile" | cut -d' ' -f1)
  case $compression in
    gzip) gzip -6 -n -c "$tarfile" > "$work/blob"; media=application/vnd.oci.image.layer.v1.tar+gzip ;;
    multi)
      # Three members, as pigz or mgzip may write them.
      local size third
      size=$(stat -c %s "$tarfile"); third=$(( (size / 3 / 512 + 1) * 512 ))
      split -b "$third" -d "$tarfile" "$work/part."
      : > "$work/blob"
      for p in "$work"/part.*; do gzip -6 -n -c "$p" >> "$work/blob"; done
      rm -f "$work"/part.*
      media=application/vnd.oci.image.layer.v1.tar+gzip ;;
    none) cp "$tarfile" "$work/blob"; media=application/vnd.oci.image.layer.v1.tar ;;
  esac
  rm -f "$tarfile"
  blob=$(put_blob "$work/blob")
  layers+=("$media $blob")
  diff_ids+=("$diff")
  echo "layer $dir ($compression): ${blob% *}" >&2
}

first_existing() { for d in "$@"; do [ -d "/$d" ] && { echo "$d"; return; }; done; }

add_layer etc gnu gzip
py=$(cd / && first_existing usr/lib/python3.11 usr/lib/python3 usr/lib/python3.*)
[ -n "$py" ] && add_layer "$py" posix gzip
perl=$(cd / && first_existing usr/share/perl usr/share/perl5)
[ -n "$perl" ] && add_layer "$perl" posix none
[ -d /usr/share/doc ] && add_layer usr/share/doc gnu multi

arch=$(uname -m); case $arch in x86_64) arch=amd64;; aarch64) arch=arm64;; esac
diffs=$(printf '"%s",' "${diff_ids[@]}"); diffs=${diffs%,}
printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/usr/bin:/bin"],"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":[%s]}}' \
  "$arch" "$diffs" > "$work/config"
config=$(put_blob "$work/config")

descs=""
for l in "${layers[@]}"; do
  read -r media digest size <<<"$l"
  descs+=$(printf '{"mediaType":"%s","digest":"%s","size":%s},' "$media" "$digest" "$size")
done
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[%s]}' \
  "${config% *}" "${config#* }" "${descs%,}" > "$work/manifest"
manifest=$(put_blob "$work/manifest")

printf '{"imageLayoutVersion":"1.0.0"}' > "$out/oci-layout"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}' \
  "${manifest% *}" "${manifest#* }" > "$out/index.json"
echo "image ${manifest% *} in $out (tag latest)" >&2
