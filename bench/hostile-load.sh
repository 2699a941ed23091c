#!/usr/bin/env bash
# Hostile-input benchmark of the admission webhook (issue 14); not a test, prints numbers.
#
# Starts the built `kura serve` pinned to CPU 0 (file store, built-in policy) and, on CPU 1:
#   1. answers: posts each hostile body of bench/hostile-gen.py once and prints the answer's
#      size and verdict (bounded denials);
#   2. a valid client alone: wrk, 4 keep-alive connections, tests/fixtures/webhook-review.json;
#   3. the same valid client while a hostile one (8 connections) sends the hostile bodies and
#      pods whose ~30 KB declarations differ on every request: the valid client's p99 both ways;
#   4. RSS each 5 s under a stream of distinct large declarations alone (flat once the caches
#      reach their byte bounds).
#
#   bench/hostile-load.sh            # DURATION=10s STREAM=60 PROFILE=release
#
# Needs wrk, curl, python3, taskset and 2 CPUs.
set -euo pipefail

cd "$(dirname "$0")/.."
. bench/lib.sh
DURATION=${DURATION:-10s}
STREAM=${STREAM:-60}
PROFILE=${PROFILE:-release}
REVIEW=$PWD/tests/fixtures/webhook-review.json
export REVIEW
for tool in wrk curl python3 taskset; do
    command -v "$tool" >/dev/null || { echo "hostile-load: $tool is missing" >&2; exit 2; }
done

echo "== building ($PROFILE profile)" >&2
cargo build --profile "$PROFILE" --bin kura >&2
kura=$(kura_binary "$PROFILE")

rss_mib() { awk "/^$2:/ {printf \"%.1f\", \$2 / 1024}" "/proc/$1/status"; }

python3 bench/hostile-gen.py "$REVIEW" "$work"
port=$(free_port)
mport=$(free_port)
taskset -c 0 "$kura" serve --self-signed --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$mport" \
    --store file:tests/fixtures/webhook-store.yaml --watch-namespaces never --log-format json \
    >"$work/kura.log" 2>&1 &
pid=$!
pids+=("$pid")
wait_port "$port"
url=https://127.0.0.1:$port
curl -fsSk -H 'Content-Type: application/json' --data-binary "@$REVIEW" "$url/mutate" >/dev/null

echo "== 1. answers to hostile bodies"
printf '%-10s %10s %10s %8s  %s\n' body bytes-in bytes-out ms verdict
for b in nested oversize huge unknown control; do
    out=$(curl -sSk -o "$work/answer-$b.json" -w '%{size_download} %{time_total}' \
        -H 'Content-Type: application/json' --data-binary "@$work/$b.json" "$url/mutate")
    verdict=$(python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))["response"]
print("allowed" if r["allowed"] else "denied: " + r["status"]["message"][:70])' "$work/answer-$b.json")
    read -r size secs <<<"$out"
    printf '%-10s %10d %10d %8.1f  %s\n' "$b" "$(stat -c %s "$work/$b.json")" "$size" \
        "$(python3 -c "print($secs * 1000)")" "$verdict"
done

valid() { taskset -c 1 wrk -t1 -c4 -d"$DURATION" -s bench/webhook-load.lua "$url" | sed -n 's/^RESULT //p'; }
echo "== 2. valid client alone"
echo "valid-alone $(valid) rss_mib=$(rss_mib "$pid" VmRSS)"

echo "== 3. valid client while a hostile one runs"
HOSTILE="$work/nested.json $work/oversize.json $work/huge.json $work/unknown.json $work/control.json" \
DISTINCT="$work/distinct.jsonl" taskset -c 1 wrk -t1 -c8 -d"$(( ${DURATION%s} + 4 ))s" -s bench/hostile-load.lua "$url" \
    >"$work/hostile.txt" 2>&1 &
hostile=$!
sleep 2
echo "valid-under-attack $(valid) rss_mib=$(rss_mib "$pid" VmRSS) hwm_mib=$(rss_mib "$pid" VmHWM)"
wait "$hostile" || true
grep -E 'Requests/sec|Non-2xx|Socket errors' "$work/hostile.txt" | sed 's/^/hostile: /'

echo "== 4. RSS under a stream of distinct ~30 KB declarations ($STREAM s)"
DISTINCT="$work/distinct.jsonl" HOSTILE="" taskset -c 1 wrk -t1 -c8 -d"${STREAM}s" -s bench/hostile-load.lua "$url" \
    >"$work/stream.txt" 2>&1 &
stream=$!
for t in $(seq 5 5 "$STREAM"); do
    sleep 5
    echo "t=${t}s rss_mib=$(rss_mib "$pid" VmRSS) hwm_mib=$(rss_mib "$pid" VmHWM)"
done
wait "$stream" || true
grep -E 'Requests/sec' "$work/stream.txt" | sed 's/^/stream: /'
curl -fsS "http://127.0.0.1:$mport/metrics" | grep -E '^kura_connections' || true
