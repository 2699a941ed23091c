#!/usr/bin/env bash
# Soak benchmark of the admission webhook (issue 14); not a test, prints a line a minute.
#
# The built `kura serve` (CPU 0) with a file store and a policy file, for MINUTES minutes, under
# steady admissions from two wrk clients (CPU 1):
#   valid:   tests/fixtures/webhook-review.json, expected allowed (or KURA009 while the store is out);
#   denied:  a pod with a plaintext password plus every bench/hostile-gen.py body, expected denied;
# while, every minute, the serving certificate is replaced (kura certs) and the policy file is
# rewritten (its cache TTL alternates between 5 s and 6 s), and every third minute the store
# file disappears for 15 s (an outage: lookups past the cache TTL answer KURA009, fail closed).
# Each minute prints: requests per second, p50/p99 of each client, answers by kind
# (`unexpected` must stay 0), kura's RSS, open descriptors, and open connections.
#
#   bench/soak.sh                 # MINUTES=30 PROFILE=release RATE_CONNECTIONS=2
#   MINUTES=3 bench/soak.sh       # a short try
#
# Needs wrk, curl, python3, taskset and 2 CPUs.
set -euo pipefail

cd "$(dirname "$0")/.."
. bench/lib.sh
MINUTES=${MINUTES:-30}
PROFILE=${PROFILE:-release}
CONNECTIONS=${RATE_CONNECTIONS:-2}
for tool in wrk curl python3 taskset; do
    command -v "$tool" >/dev/null || { echo "soak: $tool is missing" >&2; exit 2; }
done
echo "== building ($PROFILE profile)" >&2
cargo build --profile "$PROFILE" --bin kura >&2
kura=$(kura_binary "$PROFILE")


review=tests/fixtures/webhook-review.json
python3 bench/hostile-gen.py "$review" "$work" 0
python3 - "$review" "$work/plaintext.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
r["request"]["object"]["spec"]["containers"][0].setdefault("env", []).append(
    {"name": "DB_PASSWORD", "value": "soak-plaintext-value"})
json.dump(r, open(sys.argv[2], "w"))
PY
cp tests/fixtures/webhook-store.yaml "$work/store.yaml"
policy() {
    printf 'apiVersion: kura.dev/v1alpha1\nkind: Policy\ncache:\n  ttl: %ss\n  negativeTtl: 5s\n' "$1" >"$work/policy.yaml.new"
    mv "$work/policy.yaml.new" "$work/policy.yaml"
}
certs() {
    "$kura" certs --service localhost --out-dir "$work/certs.new" --log-format json >/dev/null 2>&1
    cp "$work/certs.new/tls.key" "$work/tls.key.new" && cp "$work/certs.new/tls.crt" "$work/tls.crt.new"
    mv "$work/tls.key.new" "$work/tls.key" && mv "$work/tls.crt.new" "$work/tls.crt"
}
policy 5
certs

port=$(free_port)
mport=$(free_port)
taskset -c 0 "$kura" serve --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$mport" \
    --tls-cert "$work/tls.crt" --tls-key "$work/tls.key" --policy "$work/policy.yaml" \
    --store "file:$work/store.yaml" --watch-namespaces never --log-format json >"$work/kura.log" 2>&1 &
pid=$!
pids+=("$pid")
wait_port "$port"
url=https://127.0.0.1:$port

client() { # name, expect_denied, bodies...
    local name=$1 expect=$2
    shift 2
    BODIES="$*" EXPECT_DENIED=$expect taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d60s -s bench/soak.lua "$url" |
        sed -n "s/^RESULT /$name /p"
}

printf 'minute  rss_mib  fds  conns  reloads\n'
for m in $(seq "$MINUTES"); do
    client valid 0 "$PWD/$review" >"$work/valid.txt" &
    v=$!
    client denied 1 "$work/plaintext.json" "$work/nested.json" "$work/oversize.json" \
        "$work/huge.json" "$work/unknown.json" "$work/control.json" >"$work/denied.txt" &
    d=$!
    sleep 20
    certs
    policy $(( 5 + m % 2 ))
    if [ $(( m % 3 )) = 0 ]; then
        mv "$work/store.yaml" "$work/store.yaml.out"
        sleep 15
        mv "$work/store.yaml.out" "$work/store.yaml"
    fi
    wait "$v" "$d" || true
    metrics=$(curl -fsS "http://127.0.0.1:$mport/metrics")
    printf '%6d %8.1f %4d %6s  %s\n' "$m" "$(awk '/^VmRSS:/ {print $2 / 1024}' "/proc/$pid/status")" \
        "$(ls "/proc/$pid/fd" | wc -l)" \
        "$(echo "$metrics" | awk '/^kura_connections_open / {print $2}')" \
        "$(echo "$metrics" | awk -F'[{}" ]+' '/^kura_reloads_total/ {printf "%s=%s ", $3, $4}')"
    sed 's/^/        /' "$work/valid.txt" "$work/denied.txt"
done
