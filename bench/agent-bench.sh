#!/usr/bin/env bash
# kura-agent benchmark against moto (run on demand; not part of the tests).
#
# Prints, for the release build of the agent:
#   - the stripped binary size;
#   - the time from start to files written by `kura-agent init`, for 1 and 20 secrets;
#   - the steady-state RSS of `kura-agent run` with 20 secrets and a 2 s refresh interval, with
#     20 secrets plus 10 SSM parameters (both SDK clients in use), and with 20 secrets checked
#     through the version service (contract §8: `kura serve --version-service-listen` on moto,
#     its tokens reviewed by bench/fleet-sim/apiserver.py, the TokenReview stub);
#   - the AWS calls per refresh (from the agent's own metrics endpoint);
#   - the rotation latency from PutSecretValue to the new file content.
# and checks them against the agent's budgets (RSS <= 8 MiB, calls = ceil(secrets/20) +
# ceil(parameters/10), rotation <= interval + 1 s).
#
# Needs the test venv with moto (scripts/test prepares it: .venv, or $KURA_VENV), curl, and a
# Rust toolchain. The build (profile `agent`: release with opt-level "z", LTO, one codegen unit)
# takes minutes on a small machine; KURA_BENCH_NO_BUILD=1 reuses target/<host>/agent/kura-agent and
# target/release/kura ($KURA_BIN for another kura build).
#
# Knobs: KURA_BENCH_INTERVAL (s, default 2), KURA_BENCH_SETTLE (s before reading RSS, default 30),
# KURA_BENCH_ROTATIONS (default 10), KURA_BENCH_RUNS (init timings per size, default 7).
set -euo pipefail
cd "$(dirname "$0")/.."

. bench/venv.sh
interval="${KURA_BENCH_INTERVAL:-2}"
settle="${KURA_BENCH_SETTLE:-30}"
rotations="${KURA_BENCH_ROTATIONS:-10}"
runs="${KURA_BENCH_RUNS:-7}"

# The binary the image ships: static-pie, built for the build platform's own target (as the
# Dockerfile and scripts/test build it).
host="$(rustc -vV | sed -n 's/^host: //p')"
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
if [ -z "${KURA_BENCH_NO_BUILD:-}" ]; then
    echo "==> cargo build --profile agent -p kura-agent (static-pie, --target $host)" >&2
    RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --profile agent -p kura-agent --bin kura-agent --target "$host" >&2
    if [ -z "${KURA_BIN:-}" ]; then
        echo "==> cargo build --release -p kura (the version service)" >&2
        cargo build --release -p kura --bin kura >&2
    fi
fi
# $work, $pids (killed on exit), free_port, wait_port, kura_binary.
. bench/lib.sh
kura="$(kura_binary release)"
[ -x "$kura" ] || { echo "no $kura" >&2; exit 2; }
bin="$target_dir/$host/agent/kura-agent"
[ -x "$bin" ] || { echo "no $bin" >&2; exit 2; }

# moto over HTTPS, as AWS is reached: the TLS client's code and buffers are part of the agent's
# footprint in a cluster. One certificate for `localhost` serves moto and the version service;
# the agent (rustls-native-certs) trusts its CA through SSL_CERT_FILE, boto3 through
# AWS_CA_BUNDLE.
"$kura" certs --service localhost --namespace bench --days 2 --out-dir "$work/certs" >/dev/null
moto_port="$(free_port)"
"$venv/bin/moto_server" -H 127.0.0.1 -p "$moto_port" -c "$work/certs/tls.crt" \
    -k "$work/certs/tls.key" >"$work/moto.log" 2>&1 &
pids+=($!)
wait_port "$moto_port"

export AWS_ENDPOINT_URL="https://localhost:$moto_port" AWS_REGION=us-east-1 \
    SSL_CERT_FILE="$work/certs/ca.crt" AWS_CA_BUNDLE="$work/certs/ca.crt" \
    AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_EC2_METADATA_DISABLED=true
export KURA_LOG_FORMAT=json KURA_TERMINATION_LOG="$work/termination-log"

# Secrets and specs. Values look like real database credentials (~100 bytes of JSON).
cat >"$work/bench.py" <<'PY'
import json, os, random, statistics, string, sys, time
import boto3

sm = boto3.client(
    "secretsmanager", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"]
)
ssm = boto3.client("ssm", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])

def value(tag):
    pw = "".join(random.choice(string.ascii_letters + string.digits) for _ in range(32))
    return json.dumps({"username": "app", "password": pw, "host": "db.internal", "rev": tag})

def name(i):
    return f"/bench/app/secret-{i:02d}"

def param(i):
    return f"/bench/app/param-{i:02d}"

cmd = sys.argv[1]
if cmd == "create":
    for i in range(int(sys.argv[2])):
        sm.create_secret(Name=name(i), SecretString=value("v0"))
    for i in range(int(sys.argv[3])):
        ssm.put_parameter(Name=param(i), Value=value("v0"), Type="SecureString")
elif cmd == "spec":
    n, interval = int(sys.argv[2]), int(sys.argv[3])
    m = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    files = [{"file": f"secret-{i:02d}.json", "secret": name(i), "mode": "0400"} for i in range(n)]
    files += [{"file": f"param-{i:02d}.json", "secret": f"ssm:{param(i)}", "mode": "0400"} for i in range(m)]
    print(json.dumps({"version": "kura.dev/v1", "refreshInterval": interval, "files": files}))
elif cmd == "rotate":
    # Rotations at random points of the refresh cycle; latency = from just before
    # PutSecretValue until the file the app reads holds the new value.
    path, count, interval = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    lat = []
    for k in range(count):
        time.sleep(random.uniform(0.2, interval))
        new = value(f"r{k}")
        t0 = time.monotonic()
        sm.put_secret_value(SecretId=name(0), SecretString=new)
        while True:
            try:
                with open(path) as f:
                    if f.read() == new:
                        break
            except FileNotFoundError:
                pass
            if time.monotonic() - t0 > interval + 30:
                sys.exit(f"rotation {k} not seen after {interval + 30}s")
            time.sleep(0.002)
        lat.append(time.monotonic() - t0)
    lat.sort()
    print(f"{statistics.median(lat):.3f} {lat[max(0, int(len(lat) * 0.9) - 1)]:.3f} {lat[-1]:.3f}")
PY
bench() { "$py" "$work/bench.py" "$@"; }

bench create 20 10
spec1="$(bench spec 1 "$interval")"
spec20="$(bench spec 20 "$interval")"
spec30="$(bench spec 20 "$interval" 10)"

median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
now_ns() { date +%s%N; }

# Start to files written, `init`, fresh directory each time.
init_ms() {
    local spec="$1" i dir t0 t1
    for i in $(seq 1 "$runs"); do
        dir="$work/init-$RANDOM$RANDOM"
        mkdir "$dir"
        t0="$(now_ns)"
        KURA_SPEC="$spec" KURA_DIR="$dir" "$bin" init 2>>"$work/init.log"
        t1="$(now_ns)"
        echo $(( (t1 - t0) / 1000000 ))
    done | median
}
bench_init_1="$(init_ms "$spec1")"
bench_init_20="$(init_ms "$spec20")"

# Steady state of `run`: starts the agent on a spec, waits for its last file, samples its RSS
# every second for $settle s and scrapes its metrics. Sets agent_pid, rss_max, rss_now, hwm and
# metrics.
steady() {
    local spec="$1" dir="$2" last="$3" port rss
    mkdir "$dir"
    port="$(free_port)"
    env "${agent_env[@]}" KURA_SPEC="$spec" KURA_DIR="$dir" KURA_METRICS_LISTEN="127.0.0.1:$port" \
        "$bin" run 2>"$dir.log" &
    agent_pid=$!
    pids+=("$agent_pid")
    for _ in $(seq 1 300); do if [ -e "$dir/$last" ]; then break; fi; sleep 0.05; done
    rss_max=0
    for _ in $(seq 1 "$settle"); do
        sleep 1
        rss="$(awk '/^VmRSS/ { print $2 }' "/proc/$agent_pid/status")"
        if [ "$rss" -gt "$rss_max" ]; then rss_max="$rss"; fi
    done
    rss_now="$(awk '/^VmRSS/ { print $2 }' "/proc/$agent_pid/status")"
    hwm="$(awk '/^VmHWM/ { print $2 }' "/proc/$agent_pid/status")"
    metrics="$(curl -sf "http://127.0.0.1:$port/metrics")"
}
sample() { awk -v k="$1" '$1 == k { print $2 }' <<<"$metrics"; }

agent_env=()

# 20 secrets, then rotations.
dir="$work/run"
steady "$spec20" "$dir" secret-19.json
calls_last="$(sample kura_agent_last_refresh_aws_calls)"
calls_total="$(sample kura_agent_aws_calls_total)"
refreshes="$(sample kura_agent_refreshes_total)"
secrets_max="$rss_max" secrets_now="$rss_now" secrets_hwm="$hwm"
read -r rot_median rot_p90 rot_max < <(bench rotate "$dir/secret-00.json" "$rotations" "$interval")
rss_after="$(awk '/^VmRSS/ { print $2 }' "/proc/$agent_pid/status")"
kill "$agent_pid"; wait "$agent_pid" 2>/dev/null || true

# 20 secrets and 10 parameters: both SDK clients in use.
steady "$spec30" "$work/run-mixed" param-09.json
mixed_max="$rss_max" mixed_now="$rss_now" mixed_hwm="$hwm"
mixed_calls="$(sample kura_agent_last_refresh_aws_calls)"
mixed_written="$(ls "$work/run-mixed" | grep -c '\.json$' || true)"

kill "$agent_pid"; wait "$agent_pid" 2>/dev/null || true

# 20 secrets checked through the version service: `kura serve` on moto with a TokenReview stub
# as its cluster, the agent with the environment the webhook's patch gives it.
api_port="$(free_port)"
"$py" bench/fleet-sim/apiserver.py "$api_port" >"$work/apiserver.log" 2>&1 &
pids+=($!)
cat >"$work/kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters: [{name: bench, cluster: {server: "http://127.0.0.1:$api_port"}}]
users: [{name: kura, user: {token: bench-service-token}}]
contexts: [{name: bench, context: {cluster: bench, user: kura, namespace: kura-system}}]
current-context: bench
KUBECONFIG
vs_port="$(free_port)"
KUBECONFIG="$work/kubeconfig" "$kura" serve --store aws --listen "127.0.0.1:$(free_port)" \
    --metrics-listen "127.0.0.1:$(free_port)" --tls-cert "$work/certs/tls.crt" \
    --tls-key "$work/certs/tls.key" --watch-namespaces never \
    --version-service-listen "127.0.0.1:$vs_port" >"$work/service.log" 2>&1 &
pids+=($!)
wait_port "$vs_port"
printf 'sim.bench.app.app-0' >"$work/token"
agent_env=(KURA_VERSION_SERVICE_URL="https://localhost:$vs_port"
    KURA_VERSION_SERVICE_CA="$(cat "$work/certs/ca.crt")"
    KURA_VERSION_SERVICE_TOKEN="$work/token" KURA_POD_NAME=app-0)
steady "$spec20" "$work/run-service" secret-19.json
service_max="$rss_max" service_now="$rss_now" service_hwm="$hwm"
checks_ok="$(awk '$1 ~ /^kura_agent_version_checks_total/ && /outcome="ok"/ { s += $2 } END { print s + 0 }' <<<"$metrics")"
checks_all="$(awk '$1 ~ /^kura_agent_version_checks_total/ { s += $2 } END { print s + 0 }' <<<"$metrics")"
service_calls="$(sample kura_agent_aws_calls_total)"
service_refreshes="$(sample kura_agent_refreshes_total)"

size="$(stat -c %s "$bin")"
symtab="stripped"
if command -v readelf >/dev/null && readelf -S "$bin" | grep -q '\.symtab'; then
    symtab="NOT stripped"
fi

verdict() { if awk "BEGIN { exit !($1) }"; then echo ok; else echo OVER; fi; }
budget_calls=$(( (20 + 19) / 20 ))
mib() { awk -v k="$1" 'BEGIN { printf "%.2f MiB", k / 1024 }'; }

line() { printf '  %-44s %s\n' "$1" "$2"; }
echo
echo "kura-agent benchmark ($(uname -sr), $(nproc) CPU, $(rustc --version 2>/dev/null || echo rustc ?), moto $("$py" -c 'import moto; print(moto.__version__)'))"
line "binary size (profile agent, $symtab)" \
    "$(awk -v b="$size" 'BEGIN { printf "%.2f MB (%d bytes)", b / 1e6, b }')"
line "init: start to files written, 1 secret" "${bench_init_1} ms (median of $runs)"
line "init: start to files written, 20 secrets" "${bench_init_20} ms (median of $runs)"
line "run: RSS, 20 secrets, ${interval} s interval" \
    "$(mib "$secrets_now") after ${settle} s; max $(mib "$secrets_max"), VmHWM $(mib "$secrets_hwm"), $(mib "$rss_after") after the rotations   [budget 8 MiB: $(verdict "$secrets_max <= 8192")]"
line "AWS calls per refresh, 20 secrets" \
    "${calls_last} (${calls_total} calls over ${refreshes} refreshes)   [budget ${budget_calls}: $(verdict "$calls_last <= $budget_calls")]"
line "run: RSS, 20 secrets + 10 parameters" \
    "$(mib "$mixed_now") after ${settle} s; max $(mib "$mixed_max"), VmHWM $(mib "$mixed_hwm")   [budget 8 MiB: $(verdict "$mixed_max <= 8192")]"
line "AWS calls per refresh, 20 secrets + 10 parameters" \
    "${mixed_calls} (${mixed_written} files)   [budget $((budget_calls + 1)): $(verdict "$mixed_calls <= $budget_calls + 1")]"
line "run: RSS, 20 secrets, version service on" \
    "$(mib "$service_now") after ${settle} s; max $(mib "$service_max"), VmHWM $(mib "$service_hwm")   [budget 8 MiB: $(verdict "$service_max <= 8192")]"
line "version checks answered, 20 secrets" \
    "${checks_ok} of ${checks_all}; ${service_calls} AWS calls over ${service_refreshes} refreshes   [$(verdict "$checks_ok > 0 && $checks_ok == $checks_all")]"
line "rotation: PutSecretValue to new file" \
    "median ${rot_median} s, p90 ${rot_p90} s, max ${rot_max} s over ${rotations}   [budget $((interval + 1)) s: $(verdict "$rot_max <= $interval + 1")]"
