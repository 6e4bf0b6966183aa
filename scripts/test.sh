#!/usr/bin/env bash
# The test command (README "Tests"): lint, unit and conformance tests,
# then the CLI end to end on the fixtures and on a sample image.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo build --release --bin sochi --quiet
SOCHI_BIN=$PWD/target/release/sochi cargo test --workspace --all-targets --release --quiet 2>&1 | tee target/test-output.txt
scripts/cli-e2e.sh target/release/sochi
