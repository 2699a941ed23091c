#!/usr/bin/env bash
# Runs every `cargo fuzz` target of fuzz/ over its committed corpus (issue 14); not a test.
# Each target runs until RUNS executions or SECONDS_EACH seconds, whichever comes first, and
# prints libFuzzer's final stats (executions, exec/s, peak RSS). A crash, timeout or OOM stops
# the run with the reproducer in fuzz/artifacts/<target>/; turn it into a unit test.
#
#   bench/fuzz.sh                                  # RUNS=10000000 SECONDS_EACH=3600, every target
#   TARGETS="annotations agent_spec" SECONDS_EACH=600 bench/fuzz.sh
#   CMIN=1 bench/fuzz.sh                           # then minimize each corpus (cargo fuzz cmin)
#   SANITIZER=none bench/fuzz.sh                   # no AddressSanitizer (default: address)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a C++ compiler. cargo fuzz passes nightly-only
# flags (-Zsanitizer=address); the toolchain pinned in rust-toolchain.toml is stable, and
# RUSTC_BOOTSTRAP=1 lets it accept them. No nightly toolchain is needed.
set -euo pipefail

cd "$(dirname "$0")/../fuzz"
RUNS=${RUNS:-10000000}
SECONDS_EACH=${SECONDS_EACH:-3600}
SANITIZER=${SANITIZER:-address}
# Seconds one input may take before libFuzzer calls it a timeout (wall clock: raise it when the
# fuzzer runs at low priority beside builds, or a starved unit looks like a hang).
TIMEOUT=${TIMEOUT:-10}
command -v cargo-fuzz >/dev/null || { echo "fuzz: cargo install cargo-fuzz" >&2; exit 2; }
export RUSTC_BOOTSTRAP=1
TARGETS=${TARGETS:-$(cargo fuzz list)}

echo "== building the fuzz targets" >&2
cargo fuzz build -O -s "$SANITIZER" >&2
mkdir -p logs
printf '%-16s %12s %10s %8s %10s  %s\n' target executions exec/s rss_mb seconds result
for t in $TARGETS; do
    mkdir -p "corpus/$t"
    start=$(date +%s)
    if cargo fuzz run -O -s "$SANITIZER" "$t" "corpus/$t" -- -runs="$RUNS" -max_total_time="$SECONDS_EACH" \
        -timeout="$TIMEOUT" -rss_limit_mb=1024 -max_len=65536 -print_final_stats=1 >"logs/$t.log" 2>&1; then
        result=ok
    else
        result="FAILED (see fuzz/logs/$t.log and fuzz/artifacts/$t/)"
    fi
    secs=$(( $(date +%s) - start ))
    stat() { sed -n "s/^stat::$1: *//p" "logs/$t.log" | tail -1; }
    printf '%-16s %12s %10s %8s %10s  %s\n' "$t" "$(stat number_of_executed_units)" \
        "$(stat average_exec_per_sec)" "$(stat peak_rss_mb)" "$secs" "$result"
    if [ -n "${CMIN:-}" ]; then cargo fuzz cmin -O -s "$SANITIZER" "$t" "corpus/$t" >/dev/null 2>&1; fi
done
