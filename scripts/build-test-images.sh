#!/usr/bin/env bash
# Builds the e2e test images as OCI image layouts, from the Debian archive
# only (debootstrap, umoci, skopeo, python3's tarfile):
#
#   OUT_DIR/busybox        one layer: /bin/busybox (busybox-static) and one
#                          symlink per applet
#   OUT_DIR/debian-python  L1 bookworm minbase (no apt caches), L2 python3,
#                          L3 /app (main.py + 8 MiB random) and whiteouts of
#                          L1 paths; tag `base` is the L1-only image
#   OUT_DIR/edgecase       L1 (PAX tar) hardlinks, symlinks, fifo, setuid,
#                          xattrs, long and unicode names, empty and big
#                          files; L2 (GNU tar) whiteouts and an opaque dir
#   OUT_DIR/debian-pydata  only with --only: debian-python's layers with L2
#                          python3 + numpy, scipy, pandas, matplotlib and
#                          requests (about 400 MB gzip, 2 min more), and a
#                          main.py that imports scipy, pandas and matplotlib
#
# Every image is tagged `latest`. Per image one line `NAME DIGEST` (the
# manifest digest of `latest`) goes to stdout; progress goes to stderr.
#
# Usage: build-test-images.sh [--only NAME[,NAME...]] [--keep-existing]
#                             [--push REGISTRY] [--creds USER:PASS]
#                             [--cert-dir DIR] OUT_DIR
#
#   --only      build only these images (default: all three; debian-pydata
#               is built only when named here)
#   --keep-existing  do not rebuild an image whose layout is already in
#               OUT_DIR (with an index.json)
#   --push      after building, copy each image to REGISTRY/NAME:latest with
#               skopeo (TLS verification off unless --cert-dir is given)
#   --creds     credentials for --push
#   --cert-dir  a directory with the registry's CA as `*.crt` for --push
#
# Environment:
#   BASE_CACHE     a tarball of the debootstrap minbase rootfs: used when it
#                  exists, written there when it does not
#   DEBIAN_MIRROR  default http://deb.debian.org/debian
#
# Needs root (debootstrap, chroot, mounts). Digests are not reproducible
# across builds except for edgecase's; read them from the layout.
set -euo pipefail

usage() {
  sed -n '/^# Usage:/,/^# Needs root/p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

all_images=(busybox debian-python edgecase)
# Built only when --only names them (big; for benchmarks).
extra_images=(debian-pydata)
only=""
keep_existing=false
push=""
creds=""
cert_dir=""
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --only) only=${2:?--only needs a value}; shift 2 ;;
    --keep-existing) keep_existing=true; shift ;;
    --push) push=${2:?--push needs a registry}; shift 2 ;;
    --creds) creds=${2:?--creds needs USER:PASS}; shift 2 ;;
    --cert-dir) cert_dir=${2:?--cert-dir needs a directory}; shift 2 ;;
    -h|--help) usage ;;
    -*) echo "build-test-images: unknown option $1" >&2; usage ;;
    *) [ -z "$out" ] || usage; out=$1; shift ;;
  esac
done
[ -n "$out" ] || usage

images=()
if [ -n "$only" ]; then
  IFS=, read -r -a images <<<"$only"
  for name in "${images[@]}"; do
    case " ${all_images[*]} ${extra_images[*]} " in
      *" $name "*) ;;
      *) echo "build-test-images: unknown image $name (known: ${all_images[*]} ${extra_images[*]})" >&2; exit 2 ;;
    esac
  done
else
  images=("${all_images[@]}")
fi

mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
here=$(cd "$(dirname "$0")" && pwd)

log() { printf 'build-test-images: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in umoci skopeo jq python3 tar gzip; do
  command -v "$tool" >/dev/null || die "$tool is missing; run $here/e2e-deps.sh"
done

mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/sochi-images.XXXXXX")

# Unmounts everything at or below $work (deepest first), then removes
# $work. rm stays on $work's file system, so a bind mount that failed to
# unmount can never take the host's /dev with it.
mounts_below_work() {
  awk -v w="$work" '$2 == w || index($2, w "/") == 1 { print $2 }' /proc/self/mounts
}
cleanup() {
  local status=$? mnt
  while read -r mnt; do
    [ -n "$mnt" ] || continue
    umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null ||
      log "warning: could not unmount $mnt"
  done < <(mounts_below_work | sort -r)
  if [ -n "$(mounts_below_work)" ]; then
    log "warning: mounts left below $work; not removing it"
  else
    rm -rf --one-file-system "$work"
  fi
  # Half-built layouts of this run.
  rm -rf "$out"/.*.partial.$$ 2>/dev/null || true
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The rootfs work happens on a private tmpfs: dpkg's fsyncs cost nothing
# there and removing it at the end is an unmount, not a 10 s rm -rf on this
# machine kind's disk. Without one (no permission) the work stays on disk.
mount -t tmpfs -o size=8g,mode=0700 sochi-images "$work" 2>/dev/null ||
  log "note: no tmpfs for the work dir; building on disk"

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

# The manifest digest of LAYOUT's `latest`.
manifest_digest() {
  jq -r '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == "latest") | .digest' \
    "$1/index.json"
}

# Moves the finished layout into place.
publish() {
  local name=$1 partial=$2
  rm -rf "${out:?}/$name"
  mv "$partial" "$out/$name"
}

# --- busybox -----------------------------------------------------------------

build_busybox() {
  local layout=$out/.busybox.partial.$$ bundle=$work/busybox-bundle applet
  dpkg-query -W -f '${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed' ||
    die "busybox-static is not installed (the dynamic busybox would not run in the image)"
  umoci init --layout "$layout"
  umoci new --image "$layout:latest"
  umoci unpack --image "$layout:latest" "$bundle" >/dev/null
  install -D -m 0755 /bin/busybox "$bundle/rootfs/bin/busybox"
  while read -r applet; do
    [ -n "$applet" ] && [ "$applet" != bin/busybox ] || continue
    mkdir -p "$bundle/rootfs/$(dirname "$applet")"
    ln -sf /bin/busybox "$bundle/rootfs/$applet"
  done < <(/bin/busybox --list-full)
  umoci repack --refresh-bundle --image "$layout:latest" \
    --history.created_by "busybox-static /bin/busybox + applet symlinks" "$bundle"
  umoci config --image "$layout:latest" --config.cmd /bin/sh \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  umoci gc --layout "$layout"
  publish busybox "$layout"
}

# --- debian-python -----------------------------------------------------------

# Fills DIR with a bookworm minbase rootfs: from $BASE_CACHE when it exists,
# else by debootstrap (and then saved to $BASE_CACHE when that is set).
base_rootfs() {
  local dir=$1 t
  t=$(now)
  if [ -n "${BASE_CACHE:-}" ] && [ -s "$BASE_CACHE" ]; then
    log "minbase rootfs from $BASE_CACHE"
    tar -C "$dir" --numeric-owner --xattrs --xattrs-include='*' -xpf "$BASE_CACHE"
  else
    command -v debootstrap >/dev/null || die "debootstrap is missing; run $here/e2e-deps.sh"
    log "debootstrap --variant=minbase bookworm from $mirror (takes 30-45 s)"
    debootstrap --variant=minbase bookworm "$dir" "$mirror" >"$work/debootstrap.log" 2>&1 || {
      tail -n 30 "$work/debootstrap.log" >&2
      die "debootstrap failed (log above)"
    }
    rm -f "$dir"/var/cache/apt/archives/*.deb
    if [ -n "${BASE_CACHE:-}" ]; then
      mkdir -p "$(dirname "$BASE_CACHE")"
      tar -C "$dir" --numeric-owner --xattrs --xattrs-include='*' -cf "$BASE_CACHE.tmp.$$" .
      mv "$BASE_CACHE.tmp.$$" "$BASE_CACHE"
      log "saved the minbase rootfs to $BASE_CACHE"
    fi
  fi
  log "minbase rootfs ready in $(elapsed "$t")"
}

# Runs apt-get in the chroot ROOTFS with /proc, /dev and resolv.conf in
# place; everything is undone before it returns, and by the EXIT trap if it
# fails half-way.
chroot_apt() {
  local rootfs=$1; shift
  local saved_resolv=$work/resolv.conf.saved
  rm -f "$saved_resolv"
  if [ -e "$rootfs/etc/resolv.conf" ] || [ -L "$rootfs/etc/resolv.conf" ]; then
    mv "$rootfs/etc/resolv.conf" "$saved_resolv"
  fi
  cp -L /etc/resolv.conf "$rootfs/etc/resolv.conf"
  mount -t proc proc "$rootfs/proc"
  mount --bind /dev "$rootfs/dev"
  local status=0
  chroot "$rootfs" /usr/bin/env -i DEBIAN_FRONTEND=noninteractive \
    PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@" || status=$?
  umount "$rootfs/dev"
  umount "$rootfs/proc"
  rm -f "$rootfs/etc/resolv.conf"
  if [ -e "$saved_resolv" ] || [ -L "$saved_resolv" ]; then
    mv "$saved_resolv" "$rootfs/etc/resolv.conf"
  fi
  [ "$status" -eq 0 ] || die "in the chroot: '$*' failed with status $status"
}

# build_debian_python [NAME PACKAGES IMPORTS]: NAME (default debian-python)
# with PACKAGES (default python3) in L2 and main.py importing IMPORTS first.
build_debian_python() {
  local name=${1:-debian-python} packages=${2:-python3} imports=${3:-}
  local layout=$out/.$name.partial.$$ bundle=$work/$name-bundle t rootfs
  rootfs=$bundle/rootfs
  umoci init --layout "$layout"
  umoci new --image "$layout:latest"
  umoci unpack --image "$layout:latest" "$bundle" >/dev/null
  base_rootfs "$rootfs"

  # L1: minbase without apt's lists and caches (kept aside for L2).
  t=$(now)
  mv "$rootfs/var/lib/apt/lists" "$work/apt-lists"
  mkdir -p "$rootfs/var/lib/apt/lists/partial"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin
  umoci repack --refresh-bundle --image "$layout:latest" \
    --history.created_by "debootstrap --variant=minbase bookworm" "$bundle"
  umoci tag --image "$layout:latest" base
  log "$name L1 in $(elapsed "$t")"

  # L2: python3.
  t=$(now)
  rm -rf "$rootfs/var/lib/apt/lists"
  mv "$work/apt-lists" "$rootfs/var/lib/apt/lists"
  chroot_apt "$rootfs" sh -c 'apt-get update -qq &&
    apt-get install -y -qq --no-install-recommends '"$packages"' >/dev/null &&
    apt-get clean' 2> >(grep -v -e 'Can not write log' -e 'debconf: delaying' >&2)
  rm -rf "$rootfs/var/lib/apt/lists"
  mkdir -p "$rootfs/var/lib/apt/lists/partial"
  rm -rf "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/apt/* "$rootfs"/var/log/dpkg.log
  umoci repack --refresh-bundle --image "$layout:latest" \
    --history.created_by "apt-get install --no-install-recommends $packages" "$bundle"
  log "$name L2 in $(elapsed "$t")"

  # L3: the app, 8 MiB of random data, whiteouts of L1 paths (a directory
  # and a file).
  t=$(now)
  mkdir -p "$rootfs/app"
  {
    printf 'import hashlib\nimport os\nimport sys\n'
    [ -z "$imports" ] || printf 'import %s\n' $imports
    cat <<'PY'

here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "data.bin"), "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
print(f"sochi NAME ready python={sys.version.split()[0]} data=sha256:{digest}", flush=True)
PY
  } | sed "s/^print(f\"sochi NAME ready/print(f\"sochi $name ready/" >"$rootfs/app/main.py"
  head -c $((8 * 1024 * 1024)) /dev/urandom >"$rootfs/app/data.bin"
  rm -rf "$rootfs/usr/share/doc/apt" "$rootfs/etc/issue.net"
  umoci repack --refresh-bundle --image "$layout:latest" \
    --history.created_by "/app + whiteouts of usr/share/doc/apt and etc/issue.net" "$bundle"
  umoci config --image "$layout:latest" \
    --config.cmd python3 --config.cmd /app/main.py --config.workingdir /app \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.env LANG=C.UTF-8
  umoci gc --layout "$layout"
  log "$name L3 in $(elapsed "$t")"
  publish "$name" "$layout"
}

# --- edgecase ----------------------------------------------------------------

build_edgecase() {
  local layout=$out/.edgecase.partial.$$
  python3 - "$layout" "$(dpkg --print-architecture 2>/dev/null || echo amd64)" <<'PY'
"""Writes the edgecase OCI layout with tarfile; the bytes are reproducible."""
import gzip
import hashlib
import io
import json
import os
import random
import sys
import tarfile

layout, arch = sys.argv[1], sys.argv[2]
MTIME = 1700000000
blobs = os.path.join(layout, "blobs", "sha256")
os.makedirs(blobs)


def put_blob(data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, digest), "wb") as f:
        f.write(data)
    return "sha256:" + digest, len(data)


class Layer:
    def __init__(self, fmt):
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=fmt)

    def add(self, name, kind=tarfile.REGTYPE, data=b"", mode=0o644, link="",
            uid=0, gid=0, uname="root", gname="root", pax=None):
        ti = tarfile.TarInfo(name)
        ti.type = kind
        ti.mode = mode
        ti.mtime = MTIME
        ti.uid, ti.gid, ti.uname, ti.gname = uid, gid, uname, gname
        ti.linkname = link
        if pax:
            ti.pax_headers = dict(pax)
        if kind == tarfile.REGTYPE:
            ti.size = len(data)
            self.tar.addfile(ti, io.BytesIO(data))
        else:
            self.tar.addfile(ti)

    def dir(self, name, mode=0o755):
        self.add(name, tarfile.DIRTYPE, mode=mode)

    def finish(self):
        self.tar.close()
        raw = self.buf.getvalue()
        gz = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=gz, mtime=0) as z:
            z.write(raw)
        digest, size = put_blob(gz.getvalue())
        return {
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest,
            "size": size,
        }, "sha256:" + hashlib.sha256(raw).hexdigest()


rng = random.Random(20240601)
long_dir = "long/" + "d" * 60
long_100 = long_dir + "/" + "f" * 60 + ".txt"  # 131 chars
long_255_dir = "long/" + "/".join(["x" * 80] * 3)
long_255 = long_255_dir + "/" + "y" * 100 + ".txt"  # 352 chars
assert len(long_100) > 100 and len(long_255) > 255

# L1: PAX format.
l1 = Layer(tarfile.PAX_FORMAT)
l1.dir("bin")
l1.add("bin/suid", data=b"#!/bin/sh\necho suid\n", mode=0o4755)
l1.add("bin/sgid", data=b"#!/bin/sh\necho sgid\n", mode=0o2755)
l1.dir("tmp", mode=0o1777)
l1.dir("data")
l1.add("data/file.txt", data=b"hello from edgecase L1\n")
l1.add("data/hardlink.txt", tarfile.LNKTYPE, link="data/file.txt")
l1.add("data/rel-link", tarfile.SYMTYPE, link="file.txt", mode=0o777)
l1.add("data/abs-link", tarfile.SYMTYPE, link="/data/file.txt", mode=0o777)
l1.add("data/dangling", tarfile.SYMTYPE, link="does-not-exist", mode=0o777)
l1.add("data/dir-link", tarfile.SYMTYPE, link="../bin", mode=0o777)
l1.add("data/fifo", tarfile.FIFOTYPE, mode=0o644)
l1.add("data/empty", data=b"")
l1.dir("data/emptydir")
l1.add("data/xattr.txt", data=b"has xattrs\n", pax={
    "SCHILY.xattr.user.comment": "hello xattr",
    "SCHILY.xattr.user.sochi.test": "caf\u00e9",
})
l1.add("data/owned-by-1000", data=b"uid 1000\n", mode=0o600,
       uid=1000, gid=1000, uname="user", gname="user")
big_random = rng.randbytes(5 * 1024 * 1024 + 123)
l1.add("data/big-random.bin", data=big_random)
l1.add("data/big-zeros.bin", data=bytes(3 * 1024 * 1024))
l1.add("data/remove-me.txt", data=b"whited out by L2\n")
l1.add("data/replace-me.txt", data=b"L1 version\n")
l1.dir("gone")
l1.add("gone/inside.txt", data=b"whited out with its directory\n")
l1.dir("opaque")
l1.add("opaque/a.txt", data=b"hidden by the opaque dir of L2\n")
l1.dir("opaque/sub")
l1.add("opaque/sub/b.txt", data=b"hidden too\n")
l1.dir("long")
l1.dir(long_dir)
l1.add(long_100, data=b"name longer than 100 chars\n")
path = "long"
for part in long_255_dir.split("/")[1:]:
    path += "/" + part
    l1.dir(path)
l1.add(long_255, data=b"name longer than 255 chars\n")
l1.add("long/link-to-long", tarfile.SYMTYPE, link="/" + long_255, mode=0o777)
l1.add("long/hardlink-to-long", tarfile.LNKTYPE, link=long_255)
l1.dir("unicode")
l1.add("unicode/h\u00e9llo w\u00f6rld.txt", data="h\u00e9llo\n".encode())
l1.dir("unicode/\u65e5\u672c\u8a9e")
l1.add("unicode/\u65e5\u672c\u8a9e/\u30d5\u30a1\u30a4\u30eb.txt", data="\u65e5\u672c\n".encode())
l1.add("unicode/emoji-\U0001f980.txt", data="\U0001f980\n".encode())
desc1, diff1 = l1.finish()

# L2: GNU format (././@LongLink for long names); whiteouts and an opaque dir.
l2 = Layer(tarfile.GNU_FORMAT)
l2.dir("data")
l2.add("data/.wh.remove-me.txt")
l2.add("data/replace-me.txt", data=b"L2 version\n")
l2.add(".wh.gone")
l2.dir("opaque")
l2.add("opaque/.wh..wh..opq")
l2.add("opaque/new.txt", data=b"only file left in opaque/\n")
l2.dir("long")
l2.add("long/" + "g" * 120 + ".txt", data=b"GNU long name\n")
desc2, diff2 = l2.finish()

config = {
    "created": "2023-11-14T22:13:20Z",
    "architecture": arch,
    "os": "linux",
    "config": {"Cmd": ["/bin/sh"], "WorkingDir": "/data"},
    "rootfs": {"type": "layers", "diff_ids": [diff1, diff2]},
    "history": [
        {"created": "2023-11-14T22:13:20Z", "created_by": "edgecase L1 (PAX)"},
        {"created": "2023-11-14T22:13:20Z", "created_by": "edgecase L2 (GNU): whiteouts, opaque dir"},
    ],
}
config_digest, config_size = put_blob(json.dumps(config, separators=(",", ":")).encode())
manifest = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        "digest": config_digest,
        "size": config_size,
    },
    "layers": [desc1, desc2],
}
manifest_digest, manifest_size = put_blob(json.dumps(manifest, separators=(",", ":")).encode())
index = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest,
        "size": manifest_size,
        "annotations": {"org.opencontainers.image.ref.name": "latest"},
    }],
}
with open(os.path.join(layout, "index.json"), "w") as f:
    json.dump(index, f, separators=(",", ":"))
with open(os.path.join(layout, "oci-layout"), "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)
PY
  publish edgecase "$layout"
}

# --- main --------------------------------------------------------------------

total=$(now)
for name in "${images[@]}"; do
  if $keep_existing && [ -f "$out/$name/index.json" ]; then
    log "keeping the existing $out/$name"
    continue
  fi
  t=$(now)
  log "building $name"
  case "$name" in
    busybox) build_busybox ;;
    debian-python) build_debian_python ;;
    debian-pydata)
      build_debian_python debian-pydata \
        "python3 python3-numpy python3-scipy python3-pandas python3-matplotlib python3-requests" \
        "scipy pandas matplotlib" ;;
    edgecase) build_edgecase ;;
  esac
  log "$name built in $(elapsed "$t")"
done

if [ -n "$push" ]; then
  t=$(now)
  push_flags=()
  if [ -n "$cert_dir" ]; then
    push_flags+=(--dest-cert-dir "$cert_dir")
  else
    push_flags+=(--dest-tls-verify=false)
  fi
  [ -z "$creds" ] || push_flags+=(--dest-creds "$creds")
  for name in "${images[@]}"; do
    skopeo copy --quiet --preserve-digests "${push_flags[@]}" \
      "oci:$out/$name:latest" "docker://$push/$name:latest" >&2 ||
      die "pushing $name to $push failed"
  done
  log "pushed ${images[*]} to $push in $(elapsed "$t")"
fi

for name in "${images[@]}"; do
  printf '%s %s\n' "$name" "$(manifest_digest "$out/$name")"
done
log "done in $(elapsed "$total")"
