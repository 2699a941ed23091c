#!/usr/bin/env bash
# The fleet simulation of issue 17 (contract §8): does AWS cost grow with distinct secrets
# rather than with pods once the version service is on? Run on demand; not part of the tests.
#
# What runs (all on loopback):
#   - moto (Secrets Manager, SSM, KMS) with M = 50 secrets under one customer KMS key, spread
#     over five namespaces' prefixes (/team-a/app-00/db …); each agent holds 3 of its
#     namespace's secrets, chosen deterministically (seeded by the agent's index);
#   - bench/fleet-sim/proxy.py in front of moto: counts calls by API (X-Amz-Target) and by
#     caller (each agent has its own access key id), and enforces AWS's per-second quotas
#     (BatchGetSecretValue 100/s, ListSecrets 100/s, …; sources cited there) with token
#     buckets, answering a throttled call exactly as AWS does (HTTP 400 ThrottlingException);
#   - with the service on: bench/fleet-sim/apiserver.py (a stub kube-apiserver answering
#     TokenReview as kube-apiserver shapes it) and `kura serve --store aws --watch-namespaces
#     never --version-service-listen …` with a certificate from `kura certs --service localhost`;
#   - N agents as real `kura-agent run` processes, each with its own directory, spec
#     (KURA_SPEC), token file and access key. Processes, not tasks, because that is what is
#     measured in a cluster: the real binary with its real per-process HTTP clients (connection
#     pools, the SDK's retry and its client-side retry quota), its own timers and jitter, its own
#     file writes; nothing is shared between agents that is not shared between pods. A failed
#     agent is restarted like the kubelet restarts a container (10 s doubling to 5 minutes). At
#     ~10 MiB each (the dynamically linked release build), 1,000 agents need ~10 GiB.
#
# Each run (N, service on/off): a rollout (all agents started at once) -> time-to-ready (from
# the first start until every agent's `..data` exists) and the ThrottlingExceptions meanwhile;
# the two intervals after it, reported apart (agents started together check together); a steady
# window of whole intervals with a rotation (PutSecretValue straight to moto, not
# counted by the proxy) every few intervals -> AWS calls per hour by API, rotation visibility
# (p50/p99 over holders, from PutSecretValue to the new content in the holder's file), the
# service's CPU seconds and peak RSS (/proc); with the service on, the service is then killed
# (SIGKILL) -> how soon every agent polls AWS itself and whether a rotation during the outage
# lands; then restarted -> whether the agents go back to it.
#
# Time is scaled. The real default interval (2 m) would make a run last hours, so agents refresh
# every KURA_SIM_INTERVAL seconds (default 20: scale 6) and the service's TTL is scaled alike
# (5 s / 6 = 833 ms); the rotation period and the windows are counted in intervals. Everything
# periodic is 6x denser, so calls per hour are printed as measured and normalized to the default
# interval (divided by the scale); latencies made of scaled waits are printed in simulated
# seconds and as their real equivalent. The rollout is not scaled (pods start at once in real
# time), and the AWS quotas are enforced at their real per-second values, so steady-state
# throttling here overstates a real cluster's.
#
# Knobs: KURA_SIM_N (default "100 1000"), KURA_SIM_MODES (default "off on"), KURA_SIM_INTERVAL
# (s, default 20), KURA_SIM_STEADY (intervals in the steady window, default 9),
# KURA_SIM_ROTATE_EVERY (intervals, default 3), KURA_SIM_NO_BUILD=1 (reuse the release
# binaries), KURA_BIN / KURA_AGENT_BIN (other builds), KEEP=1 (keep the scratch dir with every
# log and the proxy's per-call log). Needs the venv with moto (scripts/test prepares .venv, or
# $KURA_VENV). A run takes 5–7 minutes a mode and size; N = 1,000 needs ~10 GiB.
set -euo pipefail
cd "$(dirname "$0")/.."

. bench/venv.sh
sizes="${KURA_SIM_N:-100 1000}"
modes="${KURA_SIM_MODES:-off on}"
interval="${KURA_SIM_INTERVAL:-20}"
steady="${KURA_SIM_STEADY:-9}"
rotate_every="${KURA_SIM_ROTATE_EVERY:-3}"

. bench/lib.sh

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
if [ -z "${KURA_SIM_NO_BUILD:-}" ]; then
    echo "==> cargo build --release -p kura -p kura-agent" >&2
    cargo build --release -p kura -p kura-agent >&2
fi
kura="$(kura_binary release)"
agent="${KURA_AGENT_BIN:-$target_dir/release/kura-agent}"
for b in "$kura" "$agent"; do [ -x "$b" ] || { echo "no $b" >&2; exit 2; }; done

# A thousand agents: each holds a few sockets and files; the proxy holds one thread and socket
# per agent connection.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 65536 2>/dev/null || true
need=$(( $(echo "$sizes" | tr ' ' '\n' | sort -n | tail -1) * 3 + 200 ))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$need" ]; then
    echo "open-files limit $(ulimit -n) is below $need: raise it (ulimit -n)" >&2
    exit 2
fi

results=()
for n in $sizes; do
    for mode in $modes; do
        echo "==> N = $n, version service $mode" >&2
        out="$work/result-$n-$mode.json"
        "$py" bench/fleet-sim/sim.py run --n "$n" --mode "$mode" --out "$out" \
            --work "$work/run-$n-$mode" --kura "$kura" --agent "$agent" --venv "$venv" \
            --interval "$interval" --steady-intervals "$steady" --rotate-every "$rotate_every"
        results+=("$out")
    done
done

echo
echo "# Fleet simulation: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(git rev-parse --short HEAD)"
"$py" bench/fleet-sim/sim.py report "${results[@]}"
