#!/usr/bin/env bash
# Instructions per admission (decode, decide, plan, encode the answer; no TLS or HTTP), counted
# by valgrind's callgrind: steady where timings on a shared VM are not, so it shows whether a
# change to the admission path helped. Not a test, and not the budget (bench/webhook-load.sh).
#
#   bench/admission-instructions.sh           # PROFILE=profiling N=200
#
# Needs valgrind (apt-get install valgrind).
set -euo pipefail

cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-profiling}
N=${N:-200}
command -v valgrind >/dev/null || {
    echo "admission-instructions: valgrind is missing (apt-get install valgrind)" >&2
    exit 2
}
bin=$(bench/bench-target.sh admission_instructions "$PROFILE")
[ -x "$bin" ] || { echo "admission-instructions: the bench did not build" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
count() {
    valgrind --tool=callgrind --callgrind-out-file="$work/out.$1" "$bin" "$1" 2>&1 |
        sed -n 's/.*Collected : //p'
}
warm=$(count 0)
all=$(count "$N")
echo "instructions per admission ($PROFILE profile, $N admissions): $(((all - warm) / N))"
