#!/usr/bin/env bash
# Checks that the workspace builds with the Rust version it claims
# (`rust-version` in Cargo.toml, which every crate inherits): 1.89, for
# `File::lock` and for the locked tonic/icu/time releases (1.88).
set -euo pipefail
cd "$(dirname "$0")/.."

msrv=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
if ! command -v rustup >/dev/null 2>&1; then
    echo "check-msrv: rustup is needed to install Rust $msrv" >&2
    exit 1
fi
rustup toolchain install "$msrv" --profile minimal --no-self-update >/dev/null
# Its own target dir, so the main build's artefacts stay valid.
cargo "+$msrv" check --workspace --all-targets --locked --quiet --target-dir target/msrv
echo "check-msrv: builds with Rust $msrv"
