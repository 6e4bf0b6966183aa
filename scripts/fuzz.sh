#!/usr/bin/env bash
# Runs every cargo-fuzz target for N seconds each (default 60), one after
# the other: scripts/fuzz.sh 300, or scripts/fuzz.sh 300 tar_reader ztoc_reader
# for some of them. See README "Fuzzing".
#
# The machine has only a stable toolchain; cargo-fuzz needs nightly flags
# (-Zsanitizer=address and others), which RUSTC_BOOTSTRAP=1 unlocks on
# stable. AddressSanitizer works this way, so it stays on (the default).
#
# Each target starts from its committed seeds (fuzz/seeds/<target>/) copied
# into fuzz/corpus/<target>/ (git-ignored; it keeps what earlier runs found).
# A crash stops the run and leaves its input in fuzz/artifacts/<target>/;
# reproduce it with:
#   cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run <target> artifacts/<target>/<file>
# Limits: an input taking more than 2 s is a timeout, more than 2 GB an OOM.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(ztoc_reader zinfo_reader tar_reader checkpoint_builder corrupt_checkpoint ztoc_extract manifests zstd_layers zstd_frame_index)
fi

if ! command -v cargo-fuzz >/dev/null; then
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1

for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "artifacts/$target"
    cp -n "seeds/$target"/* "corpus/$target/" 2>/dev/null || true
    echo "== $target: ${seconds}s"
    # `cargo fuzz run` builds just this target, so runs of different
    # targets side by side do not replace each other's binaries.
    cargo fuzz run "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=2 -rss_limit_mb=2048 -print_final_stats=1
done
