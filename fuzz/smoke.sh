#!/usr/bin/env bash
# Builds the NBD fuzz targets with libFuzzer's coverage instrumentation on
# the stable toolchain and runs each for a few seconds over the committed
# seed corpus: any crash, hang (>5 s per input), or allocation beyond the
# server's limits fails. New inputs go to a temporary directory, so the
# committed corpus is only read.
#
#   fuzz/smoke.sh            # 20 s per target
#   fuzz/smoke.sh 600        # a longer run
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-20}
# What cargo-fuzz passes, minus -Zsanitizer (nightly only; the targets are
# safe Rust, the allocator cap stands in for the malloc limit).
export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# An explicit --target keeps RUSTFLAGS off the build scripts.
triple=$(rustc -vV | sed -n 's/^host: //p')
cargo build --release --quiet --bins --target "$triple"
mkdir -p artifacts
for t in session parsers; do
    new=$(mktemp -d)
    echo "fuzz: $t for ${secs}s"
    ./target/"$triple"/release/$t -max_total_time="$secs" -timeout=5 -rss_limit_mb=1024 \
        -artifact_prefix=artifacts/ -print_final_stats=1 "$new" "corpus/$t" 2>&1 |
        grep -E '^(INFO: seed corpus|#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+==|SUMMARY|.*(crash|deadly|timeout|panicked))' || true
    status=${PIPESTATUS[0]}
    rm -rf "$new"
    if [ "$status" -ne 0 ]; then
        echo "fuzz: $t FAILED (exit $status); the input is in fuzz/artifacts/" >&2
        exit 1
    fi
done
echo "fuzz: 2 passed, 0 failed"
