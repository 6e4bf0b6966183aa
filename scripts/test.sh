#!/usr/bin/env bash
# The test command (README "Tests"): lint, unit and conformance tests, the
# end-to-end suite against a real registry (started and stopped by the
# tests themselves), then the CLI on a sample image made from this machine.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
scripts/e2e-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
scripts/check-unused-deps.sh
scripts/check-msrv.sh
cargo build --workspace --all-targets --quiet
export SOCHI_BIN=$PWD/target/debug/sochi
# Unit and conformance tests (the default members), then the end-to-end
# suite against real services.
cargo test --quiet 2>&1 | tee target/test-output.txt
cargo test -p sochi-e2e --quiet 2>&1 | tee -a target/test-output.txt
scripts/cli-e2e.sh "$SOCHI_BIN"
