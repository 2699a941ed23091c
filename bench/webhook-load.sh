#!/usr/bin/env bash
# Load benchmark of the admission webhook (issue 3's performance budget); not a test.
#
# Starts, each pinned to CPU 0 (`taskset -c 0`):
#   - baseline: a minimal axum 0.8 + axum-server 0.7 rustls server (examples/baseline_server.rs)
#     that parses each AdmissionReview and answers with kura's own answer for it, fixed;
#   - kura:     the release `kura serve`, built-in policy, file store (tests/fixtures/webhook-store.yaml);
#   - kura:     the same with tests/fixtures/webhook-policy-relaxed.yaml (no plaintext detectors, no KMS
#               rule), to see what those rules add to an admission;
# warms kura's metadata cache, then drives each in turn with wrk on CPU 1: TLS, HTTP/1.1
# keep-alive, 16 connections, POST /mutate of tests/fixtures/webhook-review.json (a Deployment's pod
# declaring 3 secrets). Rounds interleave the servers so a slow spell of the machine hits all
# of them; the report takes the median.
#
# Budget: kura's throughput >= 60% of the baseline's, p99 <= 5 ms, RSS <= 40 MiB.
#
#   bench/webhook-load.sh            # ROUNDS=3 DURATION=10s WARMUP=2s CONNECTIONS=16 PROFILE=release
#   KEEP=1 bench/webhook-load.sh     # keeps the work dir (server logs, answers) and prints its path
#
# Needs wrk (apt-get install wrk), curl, python3, taskset, 2 CPUs. As root, the servers and wrk
# run at nice -10 so that background work (a build) disturbs the numbers less.
set -euo pipefail

cd "$(dirname "$0")/.."
. bench/lib.sh
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-16}
# `release` is what ships; `profiling` (no LTO, symbols) rebuilds quickly while comparing changes.
PROFILE=${PROFILE:-release}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
REVIEW=$PWD/tests/fixtures/webhook-review.json
export REVIEW
if [ "$(id -u)" = 0 ]; then PIN=(nice -n -10 taskset -c); else PIN=(taskset -c); fi

for tool in wrk curl python3 taskset; do
    command -v "$tool" >/dev/null || {
        echo "webhook-load: $tool is missing (apt-get install wrk curl python3 util-linux)" >&2
        exit 2
    }
done

echo "== building ($PROFILE profile)" >&2
cargo build --profile "$PROFILE" --bin kura >&2
baseline=$(bench/bench-target.sh baseline_server "$PROFILE")
kura=$(kura_binary "$PROFILE")
[ -x "$baseline" ] || { echo "webhook-load: baseline_server was not built" >&2; exit 2; }

rss_kib() { awk "/^$2:/ {print \$2}" "/proc/$1/status"; }

# wrk's RESULT line for https://127.0.0.1:$1, after a warm-up run.
drive() {
    "${PIN[@]}" "$CLIENT_CPU" wrk -t1 -c"$CONNECTIONS" -d"$WARMUP" -s bench/webhook-load.lua "https://127.0.0.1:$1" >/dev/null
    "${PIN[@]}" "$CLIENT_CPU" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -s bench/webhook-load.lua "https://127.0.0.1:$1" |
        sed -n 's/^RESULT //p'
}

# "sum count" of kura's own admission latency histogram for /mutate.
histogram() {
    curl -fsS "http://127.0.0.1:$1/metrics" | awk '
        /^kura_admission_duration_seconds_sum\{endpoint="mutate"\}/ { s = $NF }
        /^kura_admission_duration_seconds_count\{endpoint="mutate"\}/ { c = $NF }
        END { print s, c }'
}

# Starts kura on the server CPU with extra args; prints "pid port metrics-port".
start_kura() {
    local port mport pid
    port=$(free_port)
    mport=$(free_port)
    "${PIN[@]}" "$SERVER_CPU" "$kura" serve --self-signed \
        --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$mport" \
        --store file:tests/fixtures/webhook-store.yaml --watch-namespaces never --log-format json "$@" \
        >"$work/kura-$port.log" 2>&1 &
    pid=$!
    wait_port "$port" >&2
    # Warms the metadata cache, and checks that the answer is an injection, not a denial.
    curl -fsSk -H 'Content-Type: application/json' --data-binary "@$REVIEW" \
        "https://127.0.0.1:$port/mutate" >"$work/answer-$port.json"
    python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))["response"]
assert r["allowed"] and r.get("patchType") == "JSONPatch", f"kura did not inject: {r}"' "$work/answer-$port.json"
    echo "$pid $port $mport"
}

# One measured run against a kura: wrk's fields plus RSS and mean time in the handler.
measure_kura() {
    local pid=$1 port=$2 mport=$3 before after line
    before=$(histogram "$mport")
    line=$(drive "$port")
    after=$(histogram "$mport")
    echo "$line rss_kib=$(rss_kib "$pid" VmRSS) hwm_kib=$(rss_kib "$pid" VmHWM)" \
        "handler_ms=$(awk -v b="$before" -v a="$after" 'BEGIN { split(b, x); split(a, y); printf "%.3f", (y[1] - x[1]) / (y[2] - x[2]) * 1000 }')"
}

echo "== starting the servers on CPU $SERVER_CPU" >&2
read -r default_pid default_port default_mport < <(start_kura)
pids+=("$default_pid")
read -r relaxed_pid relaxed_port relaxed_mport < <(start_kura --policy tests/fixtures/webhook-policy-relaxed.yaml)
pids+=("$relaxed_pid")
base_port=$(free_port)
"${PIN[@]}" "$SERVER_CPU" "$baseline" --serve "127.0.0.1:$base_port" \
    --response "$work/answer-$default_port.json" >"$work/baseline.log" 2>&1 &
base_pid=$!
pids+=("$base_pid")
wait_port "$base_port"

: >"$work/results.txt"
for round in $(seq "$ROUNDS"); do
    echo "== round $round/$ROUNDS" >&2
    echo "baseline $(drive "$base_port") rss_kib=$(rss_kib "$base_pid" VmRSS) hwm_kib=$(rss_kib "$base_pid" VmHWM)" >>"$work/results.txt"
    echo "default $(measure_kura "$default_pid" "$default_port" "$default_mport")" >>"$work/results.txt"
    echo "relaxed $(measure_kura "$relaxed_pid" "$relaxed_port" "$relaxed_mport")" >>"$work/results.txt"
done

python3 bench/webhook-report.py "$work/results.txt" "$CONNECTIONS"
