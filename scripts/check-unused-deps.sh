#!/usr/bin/env bash
# Fails when a crate declares a dependency that none of its sources names
# (the check `cargo machete` makes, without installing it): every key under
# [dependencies], [dev-dependencies] and [build-dependencies] must appear,
# with `-` as `_`, as a path (`name::`) or a `use`/`extern crate` in that
# crate's src/, tests/, benches/, examples/ or build.rs. Names only generated
# code uses are listed, as for cargo machete, under
# [package.metadata.cargo-machete] `ignored`.
set -euo pipefail
cd "$(dirname "$0")/.."

status=0
for manifest in crates/*/Cargo.toml e2e/Cargo.toml fuzz/Cargo.toml; do
    dir=$(dirname "$manifest")
    sources=()
    for part in src tests benches examples build.rs fuzz_targets; do
        [ -e "$dir/$part" ] && sources+=("$dir/$part")
    done
    deps=$(awk '
        /^\[/ { in_deps = ($0 ~ /^\[(dev-|build-)?dependencies\]$/); next }
        in_deps && /^[A-Za-z0-9_-]+(\.workspace)? *=/ {
            name = $1; sub(/\.workspace$/, "", name); sub(/ *=.*/, "", name); print name
        }' "$manifest")
    ignored=$(awk '
        /^\[/ { in_meta = ($0 == "[package.metadata.cargo-machete]"); next }
        in_meta && /^ignored *=/ { gsub(/[][",=]/, " "); sub(/^ *ignored/, ""); print }' "$manifest")
    for dep in $deps; do
        case " $ignored " in *" $dep "*) continue ;; esac
        ident=${dep//-/_}
        if ! grep -rqE "(^|[^A-Za-z0-9_])${ident}::|use ${ident}( |;|::)|extern crate ${ident}" \
            "${sources[@]}" 2>/dev/null; then
            echo "unused dependency: $dep in $manifest" >&2
            status=1
        fi
    done
done
exit $status
