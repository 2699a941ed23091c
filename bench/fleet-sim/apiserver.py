#!/usr/bin/env python3
"""A stub kube-apiserver for the fleet simulation: TokenReview only.

The version service validates each agent's projected service-account token with
`POST /apis/authentication.k8s.io/v1/tokenreviews`. The simulation writes each agent a token
file `sim.<namespace>.<serviceaccount>.<pod>`; this stub authenticates exactly those (and any
audience list the request names is echoed back, as kube-apiserver does when the token is valid
for it) and answers as kube-apiserver shapes a TokenReview: apiVersion, kind, metadata, the
request's spec, and a status with `authenticated`, `user` (username
`system:serviceaccount:<ns>:<sa>`, uid, groups, the pod-name extra) and `audiences`. Anything
else is `authenticated: false` with an `error`, as the real one answers. Plain HTTP: kube-rs's
client builds its connector with `https_or_http()`, so an `http://` server in the kubeconfig
works.

It counts reviews (GET /__sim/counts) so the report can show the service's cache at work.

Usage: apiserver.py LISTEN_PORT
"""

import json
import sys
import threading
import zlib
from http.server import ThreadingHTTPServer

from quiet_http import QuietHandler

PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
LOCK = threading.Lock()
COUNTS = {"authenticated": 0, "rejected": 0, "other": 0}


def review(req):
    spec = req.get("spec") or {}
    token = spec.get("token") or ""
    audiences = spec.get("audiences") or []
    parts = token.strip().split(".")
    out = {
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": None},
        "spec": spec,
    }
    if len(parts) == 4 and parts[0] == "sim" and all(parts[1:]):
        _, ns, sa, pod = parts
        username = f"system:serviceaccount:{ns}:{sa}"
        out["status"] = {
            "authenticated": True,
            "user": {
                "username": username,
                "uid": f"00000000-0000-4000-8000-{zlib.crc32(username.encode()):012d}",
                "groups": [
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{ns}",
                    "system:authenticated",
                ],
                "extra": {
                    "authentication.kubernetes.io/pod-name": [pod],
                    "authentication.kubernetes.io/pod-uid": [f"uid-{pod}"],
                },
            },
            "audiences": audiences,
        }
        return out, True
    out["status"] = {"user": {}, "error": "[invalid bearer token, token lookup failed]"}
    return out, False


class Handler(QuietHandler):
    def reply(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def not_found(self):
        with LOCK:
            COUNTS["other"] += 1
        self.reply(404, {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": f"the stub apiserver serves only {PATH}", "reason": "NotFound", "code": 404,
        })

    def do_GET(self):
        if self.path == "/__sim/counts":
            with LOCK:
                return self.reply(200, dict(COUNTS))
        self.not_found()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.split("?")[0] != PATH:
            return self.not_found()
        try:
            req = json.loads(body)
        except ValueError:
            return self.reply(400, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                    "message": "not JSON", "reason": "BadRequest", "code": 400})
        out, ok = review(req)
        with LOCK:
            COUNTS["authenticated" if ok else "rejected"] += 1
        self.reply(201, out)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024


if __name__ == "__main__":
    Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
