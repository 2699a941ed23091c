#!/usr/bin/env python3
"""The fleet simulation (issue 17, contract §8): N real `kura-agent run` processes against moto
behind a counting, throttling proxy, with the version service on or off. See
bench/fleet-sim.sh for the why and the knobs; this file does one run (`run`) or prints the
comparison of several (`report`).

  sim.py run --n N --mode on|off --out RESULT.json [--interval S] ...
  sim.py report RESULT.json...

Everything periodic is time-scaled by SCALE = 120 s / interval: the agents' refresh interval and
the service's TTL (5 s / SCALE), the rotation period and the steady window. Calls per hour are
printed as measured and normalized to the default 2 m interval (measured / SCALE); latencies that
are made of scaled waits are printed in simulated seconds and as their real equivalent
(x SCALE). A rollout is not scaled: its time-to-ready is real seconds.
"""

import argparse
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_INTERVAL = 120  # s: kura's default refresh interval (KURA_REFRESH_INTERVAL)
DEFAULT_TTL = 5  # s: kura serve --version-service-ttl's default
NAMESPACES = ["team-a", "team-b", "team-c", "team-d", "team-e"]
PRICE_PER_CALL = 0.05 / 10_000  # Secrets Manager: $0.05 per 10,000 API calls
HOURS_PER_MONTH = 730
CLIENT_TIMEOUT = 2.0  # s: kura_agent::versions::CLIENT_TIMEOUT (real time, not scaled)
JITTER = 1.0  # the agent waits interval x [0.9, 1.0] (its first wait after start: [0.5, 1.0])


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=60.0, proc=None):
    end = time.time() + timeout
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"process on port {port} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    # Nearest rank.
    return xs[min(len(xs) - 1, max(0, math.ceil(p / 100.0 * len(xs)) - 1))]


def proc_cpu_rss(pid):
    """(CPU seconds, peak RSS KiB, current RSS KiB) of a live process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    hwm = rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
            elif line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return cpu, hwm, rss


class Events:
    """The proxy's events file: `time agent api outcome` a line."""

    def __init__(self, path):
        self.path = path

    def read(self, since=0.0, until=float("inf")):
        out = []
        try:
            with open(self.path) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) != 4:
                        continue
                    t = float(parts[0])
                    if since <= t < until:
                        out.append((t, parts[1], parts[2], parts[3]))
        except FileNotFoundError:
            pass
        return out


def by_api(events):
    out = {}
    for _, _, api, outcome in events:
        c = out.setdefault(api, {"ok": 0, "throttled": 0, "error": 0})
        c[outcome] = c.get(outcome, 0) + 1
    return out


class Agents:
    """N kura-agent processes, each restarted like the kubelet restarts a failed container
    (CrashLoopBackOff: 10 s, doubling, capped at 5 minutes)."""

    def __init__(self, binary, envs, dirs):
        self.binary, self.envs, self.dirs = binary, envs, dirs
        self.procs = [None] * len(envs)
        self.restarts = [0] * len(envs)
        self.due = [None] * len(envs)
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def spawn(self, i):
        logf = open(os.path.join(self.dirs[i], "agent.log"), "ab")
        p = subprocess.Popen([self.binary, "run"], env=self.envs[i], stdin=subprocess.DEVNULL,
                             stdout=logf, stderr=logf, cwd=self.dirs[i])
        logf.close()
        self.procs[i] = p

    def start_all(self):
        for i in range(len(self.envs)):
            self.spawn(i)
        threading.Thread(target=self.supervise, daemon=True).start()

    def supervise(self):
        while not self.stop.wait(0.5):
            now = time.time()
            with self.lock:
                for i, p in enumerate(self.procs):
                    if self.due[i] is not None:
                        if now >= self.due[i]:
                            self.due[i] = None
                            self.restarts[i] += 1
                            self.spawn(i)
                    elif p is not None and p.poll() is not None:
                        backoff = min(300.0, 10.0 * 2 ** min(self.restarts[i], 5))
                        self.due[i] = now + backoff

    def pids(self):
        with self.lock:
            return [p.pid for p in self.procs if p is not None and p.poll() is None]

    def shutdown(self):
        self.stop.set()
        with self.lock:
            for p in self.procs:
                if p is not None and p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in self.procs:
                if p is not None:
                    try:
                        p.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        p.kill()


class Sim:
    def __init__(self, a):
        self.a = a
        self.interval = a.interval
        self.scale = DEFAULT_INTERVAL / a.interval
        # In milliseconds: the default scaled by 6 is under a second.
        self.ttl = max(100, round(DEFAULT_TTL * 1000 / self.scale))
        self.work = a.work
        self.children = []
        self.rng = random.Random(a.seed)
        self.result = {
            "n": a.n, "mode": a.mode, "m": a.m, "perAgent": a.per_agent,
            "interval": a.interval, "scale": self.scale, "ttl": self.ttl,
        }

    # -- parts ----------------------------------------------------------------------------

    def start(self, args, log_name, env=None):
        f = open(os.path.join(self.work, log_name), "ab")
        p = subprocess.Popen(args, stdout=f, stderr=f, stdin=subprocess.DEVNULL, env=env)
        f.close()
        self.children.append(p)
        return p

    def start_aws(self):
        venv = self.a.venv
        self.moto_port = free_port()
        self.moto = self.start([os.path.join(venv, "bin", "moto_server"), "-H", "127.0.0.1",
                                "-p", str(self.moto_port)], "moto.log")
        wait_port(self.moto_port, proc=self.moto)
        self.moto_url = f"http://127.0.0.1:{self.moto_port}"
        self.proxy_port = free_port()
        self.events = Events(os.path.join(self.work, "aws-calls.log"))
        self.proxy = self.start([sys.executable, os.path.join(HERE, "proxy.py"),
                                 str(self.proxy_port), self.moto_url, self.events.path],
                                "proxy.log")
        wait_port(self.proxy_port, proc=self.proxy)
        self.proxy_url = f"http://127.0.0.1:{self.proxy_port}"

    def boto(self, service):
        import boto3
        return boto3.client(service, endpoint_url=self.moto_url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def value(self, name, rev):
        pw = "".join(self.rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(32))
        return json.dumps({"username": "app", "password": pw, "secret": name, "rev": rev})

    def create_secrets(self):
        """M secrets with a customer KMS key, spread evenly over the namespaces' prefixes."""
        self.sm = self.boto("secretsmanager")
        key = self.boto("kms").create_key(Description="fleet-sim")["KeyMetadata"]["Arn"]
        self.secrets = {ns: [] for ns in NAMESPACES}
        for k in range(self.a.m):
            ns = NAMESPACES[k % len(NAMESPACES)]
            name = f"/{ns}/app-{k // len(NAMESPACES):02d}/db"
            self.sm.create_secret(Name=name, SecretString=self.value(name, 0), KmsKeyId=key,
                                  Tags=[{"Key": "kura.dev/namespace", "Value": ns}])
            self.secrets[ns].append(name)

    def start_service(self):
        """The version service: `kura serve` with a TokenReview stub as its cluster."""
        a = self.a
        if not hasattr(self, "vs_port"):
            self.api_port = free_port()
            api = self.start([sys.executable, os.path.join(HERE, "apiserver.py"),
                              str(self.api_port)], "apiserver.log")
            wait_port(self.api_port, proc=api)
            kubeconfig = os.path.join(self.work, "kubeconfig")
            with open(kubeconfig, "w") as f:
                f.write(f"""apiVersion: v1
kind: Config
clusters:
- name: sim
  cluster:
    server: http://127.0.0.1:{self.api_port}
users:
- name: kura
  user:
    token: sim-service-token
contexts:
- name: sim
  context:
    cluster: sim
    user: kura
    namespace: kura-system
current-context: sim
""")
            certs = os.path.join(self.work, "certs")
            # `kura certs` signs `<service>`, `<service>.<namespace>` …: with the service named
            # localhost the serving certificate holds `localhost`, which agents dial.
            subprocess.run([a.kura, "certs", "--service", "localhost", "--namespace", "sim",
                            "--days", "2", "--out-dir", certs], check=True,
                           stdout=subprocess.DEVNULL)
            with open(os.path.join(certs, "ca.crt")) as f:
                self.ca_pem = f.read()
            self.vs_port = free_port()
            self.svc_args = [
                a.kura, "serve", "--store", "aws",
                "--listen", f"127.0.0.1:{free_port()}",
                "--metrics-listen", f"127.0.0.1:{free_port()}",
                "--tls-cert", os.path.join(certs, "tls.crt"),
                "--tls-key", os.path.join(certs, "tls.key"),
                "--watch-namespaces", "never",
                "--version-service-listen", f"127.0.0.1:{self.vs_port}",
                "--version-service-ttl", f"{self.ttl}ms",
            ]
            self.svc_env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "KUBECONFIG": kubeconfig,
                "AWS_ENDPOINT_URL": self.proxy_url, "AWS_REGION": "us-east-1",
                "AWS_ACCESS_KEY_ID": "AKIASIMSERVICE", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_EC2_METADATA_DISABLED": "true", "KURA_LOG_FORMAT": "json",
            }
        self.service = self.start(self.svc_args, "service.log", env=self.svc_env)
        wait_port(self.vs_port, timeout=60, proc=self.service)
        log(f"version service up on 127.0.0.1:{self.vs_port} (pid {self.service.pid})")

    def agent_envs(self):
        a = self.a
        envs, dirs, holders = [], [], {}
        root = os.path.join(self.work, "agents")
        os.makedirs(root, exist_ok=True)
        for i in range(a.n):
            ns = NAMESPACES[i % len(NAMESPACES)]
            sa = f"app-{(i // len(NAMESPACES)) % 4}"
            pod = f"{sa}-{i:05d}"
            held = random.Random(i).sample(self.secrets[ns], min(a.per_agent, len(self.secrets[ns])))
            d = os.path.join(root, f"{i:05d}")
            os.makedirs(os.path.join(d, "files"), exist_ok=True)
            files = []
            for j, name in enumerate(held):
                fname = f"s{j}.json"
                files.append({"file": fname, "secret": name, "mode": "0400"})
                holders.setdefault(name, []).append(os.path.join(d, "files", fname))
            spec = {"version": "kura.dev/v1", "refreshInterval": self.interval, "files": files}
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "KURA_SPEC": json.dumps(spec), "KURA_DIR": os.path.join(d, "files"),
                "KURA_LOG_FORMAT": "json",
                "KURA_TERMINATION_LOG": os.path.join(d, "termination-log"),
                "AWS_ENDPOINT_URL": self.proxy_url, "AWS_REGION": "us-east-1",
                # One access key id per agent: the proxy counts calls per agent by it.
                "AWS_ACCESS_KEY_ID": f"AKIASIM{i:06d}", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_EC2_METADATA_DISABLED": "true",
            }
            if a.mode == "on":
                token = os.path.join(d, "token")
                with open(token, "w") as f:
                    f.write(f"sim.{ns}.{sa}.{pod}")
                env.update({
                    "KURA_VERSION_SERVICE_URL": f"https://localhost:{self.vs_port}",
                    "KURA_VERSION_SERVICE_CA": self.ca_pem,
                    "KURA_VERSION_SERVICE_TOKEN": token,
                    "KURA_POD_NAME": pod,
                })
            envs.append(env)
            dirs.append(d)
        self.holders = holders
        return envs, dirs

    # -- phases ---------------------------------------------------------------------------

    def rollout(self):
        n = self.a.n
        envs, dirs = self.agent_envs()
        self.agents = Agents(self.a.agent, envs, dirs)
        t0 = time.time()
        self.agents.start_all()
        spawned = time.time() - t0
        log(f"rollout: {n} agents started in {spawned:.1f}s")
        ready = [None] * n
        marks = [os.path.join(d, "files", "..data") for d in dirs]
        deadline = t0 + self.a.ready_timeout
        left = set(range(n))
        while left and time.time() < deadline:
            for i in list(left):
                if os.path.exists(marks[i]):
                    ready[i] = time.time()
                    left.discard(i)
            time.sleep(0.1)
        t_all = max((r for r in ready if r is not None), default=None)
        ev = self.events.read(t0, (t_all or time.time()) + 0.001)
        r = {
            "spawnSeconds": spawned,
            "ready": n - len(left),
            "timeToReady": (t_all - t0) if not left else None,
            "readyP50": pct([x - t0 for x in ready if x is not None], 50),
            "throttled": sum(1 for e in ev if e[3] == "throttled"),
            "calls": by_api(ev),
            "restarts": sum(self.agents.restarts),
        }
        self.result["rollout"] = r
        self.t_ready = t_all or time.time()
        log(f"rollout: {r['ready']}/{n} ready, time-to-ready {r['timeToReady']}, "
            f"{r['throttled']} throttled, {r['restarts']} restarts")

    def rotate(self, tag):
        """PutSecretValue straight to moto (not through the proxy) on a random held secret;
        returns each holder's latency until its file holds the new value (None: not seen)."""
        name = self.rng.choice(sorted(self.holders))
        new = self.value(name, tag)
        files = self.holders[name]
        t0 = time.time()
        self.sm.put_secret_value(SecretId=name, SecretString=new)
        seen = {}
        deadline = t0 + self.interval * 3 + 30
        while len(seen) < len(files) and time.time() < deadline:
            for f in files:
                if f in seen:
                    continue
                try:
                    with open(f) as fh:
                        if fh.read() == new:
                            seen[f] = time.time() - t0
                except OSError:
                    pass
            time.sleep(0.02)
        lat = [seen.get(f) for f in files]
        missing = sum(1 for x in lat if x is None)
        log(f"rotation {tag} of {name}: {len(files) - missing}/{len(files)} holders, "
            f"max {max([x for x in lat if x is not None], default=0):.2f}s")
        return {"secret": name, "at": t0, "holders": len(files), "latencies": lat,
                "missing": missing}

    def steady(self):
        a, I = self.a, self.interval
        # The first two intervals after the rollout are reported apart: the agents started
        # together, so their first checks (of the service, or of AWS) come together too.
        start = max(time.time(), self.t_ready + 2 * I)
        time.sleep(max(0.0, start - time.time()))
        ev = self.events.read(self.t_ready, start)
        self.result["afterRollout"] = {
            "window": start - self.t_ready, "calls": by_api(ev),
            "throttled": sum(1 for e in ev if e[3] == "throttled"),
            "agentsPollingDirectly": len({e[1] for e in ev if e[2] == "BatchGetSecretValue"
                                          and e[1].startswith("AKIASIM0")}),
        }
        length = a.steady_intervals * I
        end = start + length
        svc0 = proc_cpu_rss(self.service.pid) if a.mode == "on" else None
        rotations = []
        k = 0
        while True:
            slot = start + (k + 0.5) * a.rotate_every * I + self.rng.uniform(-0.4, 0.4) * I
            if slot >= end - I:
                break
            time.sleep(max(0.0, slot - time.time()))
            rotations.append(self.rotate(f"steady-{k}"))
            k += 1
        time.sleep(max(0.0, end - time.time()))
        ev = self.events.read(start, end)
        calls = by_api(ev)
        per_hour = {api: sum(c.values()) * 3600.0 / length for api, c in calls.items()}
        lat = [x for r in rotations for x in r["latencies"] if x is not None]
        r = {
            "window": length, "calls": calls,
            "perHourMeasured": per_hour,
            "perHourNormalized": {k2: v / self.scale for k2, v in per_hour.items()},
            "throttled": sum(1 for e in ev if e[3] == "throttled"),
            "rotations": rotations,
            "rotationP50": pct(lat, 50), "rotationP99": pct(lat, 99),
            "rotationMax": max(lat) if lat else None,
            "rotationMissing": sum(r["missing"] for r in rotations),
        }
        rss = []
        for pid in self.agents.pids():
            try:
                rss.append(proc_cpu_rss(pid)[2])
            except OSError:
                pass
        r["agentRssMedianKiB"] = pct(rss, 50)
        r["agentRssTotalMiB"] = sum(rss) / 1024.0
        if svc0 is not None:
            cpu, hwm, _ = proc_cpu_rss(self.service.pid)
            r["serviceCpuSeconds"] = cpu - svc0[0]
            r["serviceCpuSecondsPerHourNormalized"] = (cpu - svc0[0]) * 3600.0 / length / self.scale
            r["servicePeakRssKiB"] = hwm
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/__sim/counts",
                                            timeout=5) as resp:
                    r["tokenReviews"] = json.load(resp)
            except OSError:
                pass
        # What the calls were for: with the service on, agents call BatchGetSecretValue only
        # for a version that changed (rotations); everything else is the shared metadata
        # polling. With it off, every BatchGetSecretValue is an agent's poll.
        fetch = sum(calls.get("BatchGetSecretValue", {}).values())
        total = sum(sum(c.values()) for c in calls.values())
        if a.mode == "on":
            r["rotationFetches"], r["pollingCalls"] = fetch, total - fetch
        else:
            r["rotationFetches"], r["pollingCalls"] = 0, total
        norm = 3600.0 / length / self.scale
        r["pollingPerHourNormalized"] = r["pollingCalls"] * norm
        r["rotationFetchesPerHourNormalized"] = r["rotationFetches"] * norm
        r["totalPerHourNormalized"] = total * norm
        self.result["steady"] = r
        log(f"steady: {total} calls in {length:.0f}s ({r['totalPerHourNormalized']:.0f}/h at 2m), "
            f"rotation p50 {r['rotationP50']} p99 {r['rotationP99']}")

    def outage(self):
        """Kill the service; every agent must poll AWS itself within one interval, and a
        rotation during the outage must land. Then bring it back and see agents return."""
        I, n = self.interval, self.a.n
        t_kill = time.time()
        self.service.kill()
        self.service.wait()
        log("version service killed")
        time.sleep(1.0)
        rot = self.rotate("outage")
        # Wait out one jittered interval plus the client timeout, then read who polled.
        time.sleep(max(0.0, t_kill + JITTER * I + CLIENT_TIMEOUT + 1 - time.time()))
        ev = self.events.read(t_kill)
        first = {}
        for t, agent, api, outcome in ev:
            if api == "BatchGetSecretValue" and agent.startswith("AKIASIM0"):
                first.setdefault(agent, t - t_kill)
        back = sorted(first.values())
        r = {
            "agentsBackOnDirect": len(first), "agents": n,
            "fallbackP50": pct(back, 50), "fallbackMax": back[-1] if back else None,
            "rotation": rot,
        }
        # Recovery: start it again; one interval later agents should be asking it again.
        self.start_service()
        time.sleep(JITTER * I + CLIENT_TIMEOUT + 1)
        w0 = time.time()
        time.sleep(I)
        ev = self.events.read(w0, time.time())
        r["agentsStillDirectAfterRecovery"] = len(
            {e[1] for e in ev if e[2] == "BatchGetSecretValue" and e[1].startswith("AKIASIM0")})
        self.result["outage"] = r
        log(f"outage: {len(first)}/{n} agents polled AWS directly, max after "
            f"{r['fallbackMax']}s; rotation missing {rot['missing']}; "
            f"{r['agentsStillDirectAfterRecovery']} still direct after recovery")

    def run(self):
        try:
            self.start_aws()
            self.create_secrets()
            if self.a.mode == "on":
                self.start_service()
            self.rollout()
            self.steady()
            if self.a.mode == "on":
                self.outage()
        finally:
            if hasattr(self, "agents"):
                self.agents.shutdown()
            for p in self.children:
                if p.poll() is None:
                    p.terminate()
            for p in self.children:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        with open(self.a.out, "w") as f:
            json.dump(self.result, f, indent=1)
        print_run(self.result, sys.stderr)


# -- report -----------------------------------------------------------------------------------

def fmt(x, nd=1):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return f"{x:,}"


def print_run(r, out=sys.stdout):
    s, ro = r.get("steady", {}), r.get("rollout", {})
    sc = r["scale"]
    print(f"\n## N = {r['n']}, version service {r['mode']} "
          f"(interval {r['interval']}s = 2m / {sc:g}; TTL {r['ttl']}ms; M = {r['m']}, "
          f"{r['perAgent']} per agent)", file=out)
    rows = [
        ("time-to-ready, whole rollout (real s)", fmt(ro.get("timeToReady"))),
        ("agents ready / restarted containers", f"{ro.get('ready')} / {ro.get('restarts')}"),
        ("ThrottlingExceptions during rollout", fmt(ro.get("throttled"))),
        ("ThrottlingExceptions in steady state", fmt(s.get("throttled"))),
        ("first 2 intervals after the rollout: agents calling BatchGetSecretValue",
         fmt((r.get("afterRollout") or {}).get("agentsPollingDirectly"))),
        ("first 2 intervals after the rollout: calls ok / throttled",
         "{} / {}".format(
             fmt(sum(c.get("ok", 0) for c in ((r.get("afterRollout") or {}).get("calls") or {}).values())),
             fmt((r.get("afterRollout") or {}).get("throttled")))),
    ]
    for api, v in sorted(s.get("perHourNormalized", {}).items()):
        rows.append((f"{api} calls/h (measured {fmt(s['perHourMeasured'][api], 0)}/h)",
                     fmt(v, 0)))
    rows += [
        ("polling + metadata calls/h (at 2m)", fmt(s.get("pollingPerHourNormalized"), 0)),
        ("rotation fetches/h (at 2m; each holder fetches itself)",
         fmt(s.get("rotationFetchesPerHourNormalized"), 0)),
        ("total AWS calls/h (at 2m)", fmt(s.get("totalPerHourNormalized"), 0)),
        ("cost/month (Secrets Manager, $0.05/10k)",
         f"${(s.get('totalPerHourNormalized') or 0) * HOURS_PER_MONTH * PRICE_PER_CALL:,.2f}"),
        ("rotation visible p50 / p99 (sim s)",
         f"{fmt(s.get('rotationP50'), 2)} / {fmt(s.get('rotationP99'), 2)}"),
        ("rotation visible p50 / p99 (real-equivalent s)",
         f"{fmt((s.get('rotationP50') or 0) * sc, 0)} / {fmt((s.get('rotationP99') or 0) * sc, 0)}"),
        ("rotations missed (holders)", fmt(s.get("rotationMissing"))),
        ("agent RSS median (KiB) / all agents (MiB)",
         f"{fmt(s.get('agentRssMedianKiB'))} / {fmt(s.get('agentRssTotalMiB'), 0)}"),
    ]
    if r["mode"] == "on":
        o = r.get("outage", {})
        rows += [
            ("service CPU s in window / per hour at 2m",
             f"{fmt(s.get('serviceCpuSeconds'), 2)} / {fmt(s.get('serviceCpuSecondsPerHourNormalized'), 1)}"),
            ("service peak RSS (MiB)", fmt((s.get("servicePeakRssKiB") or 0) / 1024.0)),
            ("TokenReviews asked of the stub apiserver (whole run so far)",
             json.dumps(s.get("tokenReviews"))),
            ("service killed: agents back on direct polling",
             f"{o.get('agentsBackOnDirect')}/{o.get('agents')}"),
            ("  first direct call after kill p50 / max (sim s)",
             f"{fmt(o.get('fallbackP50'), 2)} / {fmt(o.get('fallbackMax'), 2)}"),
            ("  rotation during outage: holders missed",
             fmt((o.get("rotation") or {}).get("missing"))),
            ("  agents still polling directly 1 interval after recovery",
             fmt(o.get("agentsStillDirectAfterRecovery"))),
        ]
    w = max(len(k) for k, _ in rows)
    print(f"| {'figure':<{w}} | value |\n|{'-' * (w + 2)}|-------|", file=out)
    for k, v in rows:
        print(f"| {k:<{w}} | {v} |", file=out)


def verdict(ok):
    return "-" if ok is None else ("ok" if ok else "OVER")


def report(paths):
    runs = {}
    for p in paths:
        with open(p) as f:
            r = json.load(f)
        runs[(r["n"], r["mode"])] = r
        print_run(r)
    ns = sorted({n for n, _ in runs})
    print("\n## On vs off (calls per hour normalized to the default 2 m interval)\n")
    print("| N | mode | polling+metadata/h | rotation fetches/h | total/h | $/month | "
          "rotation p99 (sim s) | time-to-ready (s) | throttled (rollout) | "
          "throttled (2 intervals after) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in ns:
        for mode in ("off", "on"):
            r = runs.get((n, mode))
            if not r:
                continue
            s, ro = r.get("steady", {}), r.get("rollout", {})
            tot = s.get("totalPerHourNormalized") or 0
            print(f"| {n:,} | {mode} | {fmt(s.get('pollingPerHourNormalized'), 0)} | "
                  f"{fmt(s.get('rotationFetchesPerHourNormalized'), 0)} | {fmt(tot, 0)} | "
                  f"${tot * HOURS_PER_MONTH * PRICE_PER_CALL:,.2f} | "
                  f"{fmt(s.get('rotationP99'), 2)} | {fmt(ro.get('timeToReady'))} | "
                  f"{fmt(ro.get('throttled'))} | "
                  f"{fmt((r.get('afterRollout') or {}).get('throttled'))} |")
    print("\n## Budgets\n")
    print("| budget | figures | verdict |\n|---|---|---|")
    on = {n: runs[(n, "on")] for n in ns if (n, "on") in runs}
    off = {n: runs[(n, "off")] for n in ns if (n, "off") in runs}
    if len(on) >= 2:
        lo, hi = on[min(on)], on[max(on)]
        a = lo["steady"]["pollingPerHourNormalized"]
        b = hi["steady"]["pollingPerHourNormalized"]
        # The service lists each namespace's prefix at most once a TTL (one page of 100 here):
        # the bound that does not move with N.
        bound = len(NAMESPACES) * 3600 / DEFAULT_TTL
        print(f"| service on: polling+metadata calls/h at N={max(on):,} within 10 % of N={min(on):,} "
              f"| {b:,.0f} vs {a:,.0f} (bound: {len(NAMESPACES)} namespaces x 1 page x "
              f"3,600 / {DEFAULT_TTL} s TTL = {bound:,.0f}) | "
              f"{verdict(a > 0 and abs(b - a) <= 0.1 * a)} |")
    both = sorted(set(on) & set(off))
    for n in both:
        a = on[n]["steady"]["totalPerHourNormalized"]
        b = off[n]["steady"]["totalPerHourNormalized"]
        # The budget is the fleet's (N = 1,000): with few pods the shared metadata calls are a
        # larger share, so smaller runs are shown for information.
        budget = n == max(both) and n >= 1000
        print(f"| N={n:,}: on at most 1/20 of direct polling (all calls, rotation fetches "
              f"included){'' if budget else ', for information'} | {a:,.0f} vs {b:,.0f} "
              f"(1/{b / a if a else float('inf'):.0f}) | "
              f"{verdict(a * 20 <= b) if budget else '-'} |")
    for (n, mode), r in sorted(runs.items()):
        s = r.get("steady", {})
        # "Within the interval": an agent's wait is 0.9–1.0 x the interval, never longer.
        budget = JITTER * r["interval"] + 5.0 / r["scale"]
        p99 = s.get("rotationP99")
        print(f"| N={n:,} {mode}: rotation visible within interval + 5 s (p99 <= "
              f"{budget:.2f} sim s = interval + 5 s real) | p99 {fmt(p99, 2)} s, "
              f"missed {s.get('rotationMissing')} | "
              f"{verdict(None if p99 is None else p99 <= budget and not s.get('rotationMissing'))} |")
    for n, r in sorted(on.items()):
        o = r.get("outage", {})
        budget = JITTER * r["interval"] + CLIENT_TIMEOUT
        mx = o.get("fallbackMax")
        ok = (o.get("agentsBackOnDirect") == o.get("agents") and mx is not None
              and mx <= budget and not (o.get("rotation") or {}).get("missing"))
        print(f"| N={n:,}: service killed, every agent on direct polling within one interval "
              f"(<= {budget:.1f} s: interval + the 2 s client timeout), no rotation "
              f"missed | {o.get('agentsBackOnDirect')}/{o.get('agents')}, max {fmt(mx, 2)} s, "
              f"missed {(o.get('rotation') or {}).get('missing')} | {verdict(ok)} |")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--n", type=int, required=True)
    r.add_argument("--mode", choices=["on", "off"], required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--work", required=True)
    r.add_argument("--kura", required=True)
    r.add_argument("--agent", required=True)
    r.add_argument("--venv", required=True)
    r.add_argument("--m", type=int, default=50)
    r.add_argument("--per-agent", type=int, default=3)
    r.add_argument("--interval", type=int, default=20)
    r.add_argument("--steady-intervals", type=int, default=9)
    r.add_argument("--rotate-every", type=int, default=3)
    r.add_argument("--ready-timeout", type=float, default=900)
    r.add_argument("--seed", type=int, default=17)
    p = sub.add_parser("report")
    p.add_argument("results", nargs="+")
    a = ap.parse_args()
    if a.cmd == "run":
        os.makedirs(a.work, exist_ok=True)
        Sim(a).run()
    else:
        report(a.results)


if __name__ == "__main__":
    main()
