#!/usr/bin/env python3
"""The fleet simulation's AWS front door: a counting, throttling HTTP proxy in front of moto.

Every agent and the version service reach "AWS" through it (AWS_ENDPOINT_URL). It

- names each call by its API (the `X-Amz-Target` header of the JSON protocols:
  `secretsmanager.BatchGetSecretValue` -> `BatchGetSecretValue`) and its caller (the access key
  id in the SigV4 `Authorization` header; the simulation gives each agent its own, so calls are
  counted per agent without touching the agent);
- enforces AWS's per-account, per-Region request quotas with one token bucket per API (capacity
  = one second of quota, refilled continuously), and when a bucket is empty answers as AWS does:
  HTTP 400 with `{"__type":"ThrottlingException",...}` (the call never reaches moto);
- forwards everything else to moto and relays its answer unchanged;
- appends one line per call to an events file (`time agent api status`, wall-clock seconds),
  which the report counts.

The quotas (requests per second, each Region; "No" = not adjustable):
  Secrets Manager, https://docs.aws.amazon.com/secretsmanager/latest/userguide/reference_limits.html
    BatchGetSecretValue   100     (No)
    ListSecrets           100     (2022-11 "AWS Secrets Manager increases API requests per second
                                   limits": ListSecrets raised to 100/s)
    GetSecretValue     10,000     (2025-03 "AWS Secrets Manager increases API requests per
    DescribeSecret     40,000      second limits": GetSecretValue 10,000/s, DescribeSecret 40,000/s)
    PutSecretValue, UpdateSecret, UpdateSecretVersionStage ... combined 50 (No)
  Parameter Store (AWS Systems Manager endpoints and quotas, "Max throughput"):
    GetParameter, GetParameters, GetParametersByPath: 40 combined (standard throughput; 3,000
    with higher throughput enabled, which costs extra). DescribeParameters has no published
    per-API figure in the pages we found; the same 40/s stands in for it (a guess, conservative).
The proxy enforces these real per-second values, not time-scaled ones: the simulation shortens
the refresh interval, so its steady-state load per second is denser than a real cluster's of the
same size, and any throttling it shows in steady state overstates the real one. A rollout is not
time-scaled at all (all pods start at once in real time), so its throttling is faithful.

Usage: proxy.py LISTEN_PORT MOTO_URL EVENTS_FILE
"""

import http.client
import re
import sys
import threading
import time
import urllib.parse
from http.server import ThreadingHTTPServer

from quiet_http import QuietHandler

# API -> (bucket, requests per second). APIs sharing a quota share a bucket.
QUOTAS = {
    "BatchGetSecretValue": ("sm.BatchGetSecretValue", 100),
    "ListSecrets": ("sm.ListSecrets", 100),
    "GetSecretValue": ("sm.GetSecretValue", 10_000),
    "DescribeSecret": ("sm.DescribeSecret", 40_000),
    "PutSecretValue": ("sm.write", 50),
    "UpdateSecret": ("sm.write", 50),
    "UpdateSecretVersionStage": ("sm.write", 50),
    "GetParameter": ("ssm.get", 40),
    "GetParameters": ("ssm.get", 40),
    "GetParametersByPath": ("ssm.get", 40),
    "DescribeParameters": ("ssm.DescribeParameters", 40),
}

# What AWS answers when a quota is exceeded. Both services speak awsJson1_1; the SDKs read the
# error code from `__type`. Secrets Manager's body carries `message`; SSM models its
# ThrottlingException with `Message` (and optional QuotaCode/ServiceCode).
THROTTLED = {
    "secretsmanager": b'{"__type":"ThrottlingException","message":"Rate exceeded"}',
    "ssm": b'{"__type":"ThrottlingException","Message":"Rate exceeded"}',
}

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
       "proxy-connection", "content-length"}
CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")


class Bucket:
    def __init__(self, rate):
        self.rate = float(rate)
        self.tokens = float(rate)
        self.at = time.monotonic()

    def take(self):
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class State:
    def __init__(self, moto, events_path):
        u = urllib.parse.urlsplit(moto)
        self.moto_host, self.moto_port = u.hostname, u.port
        self.lock = threading.Lock()
        self.buckets = {}
        for bucket, rate in QUOTAS.values():
            self.buckets.setdefault(bucket, Bucket(rate))
        self.events = open(events_path, "a", buffering=1)

    def admit(self, api):
        q = QUOTAS.get(api)
        if q is None:
            return True
        with self.lock:
            return self.buckets[q[0]].take()

    def record(self, agent, api, outcome):
        t = time.time()
        with self.lock:
            self.events.write(f"{t:.3f} {agent} {api} {outcome}\n")


STATE = None


class Handler(QuietHandler):
    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def reply(self, status, body, headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        return self.forward(b"")

    def do_POST(self):
        self.forward(self.read_body())

    def forward(self, body):
        target = self.headers.get("X-Amz-Target", "")
        service, _, api = target.rpartition(".")
        api = api or self.command
        m = CREDENTIAL.search(self.headers.get("Authorization", ""))
        agent = m.group(1) if m else "-"
        if not STATE.admit(api):
            STATE.record(agent, api, "throttled")
            kind = "ssm" if service.startswith("AmazonSSM") else "secretsmanager"
            return self.reply(400, THROTTLED[kind], [
                ("Content-Type", "application/x-amz-json-1.1"),
                ("x-amzn-RequestId", f"sim-{time.monotonic_ns()}"),
                ("x-amzn-ErrorType", "ThrottlingException"),
            ])
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        try:
            c = http.client.HTTPConnection(STATE.moto_host, STATE.moto_port, timeout=30)
            c.request(self.command, self.path, body=body, headers=headers)
            r = c.getresponse()
            data = r.read()
            out = [(k, v) for k, v in r.getheaders() if k.lower() not in HOP]
            c.close()
        except OSError as e:
            STATE.record(agent, api, "error")
            return self.reply(502, f"moto unreachable: {e}".encode())
        STATE.record(agent, api, "ok" if r.status < 300 else "error")
        self.reply(r.status, data, out)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 4096


def main():
    global STATE
    port, moto, events = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    STATE = State(moto, events)
    Server(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
