#!/usr/bin/env python3
"""Writes the AdmissionReview bodies of bench/hostile-load.sh into a directory (not a test).

From tests/fixtures/webhook-review.json (a valid pod declaring 3 secrets), each hostile shape the
issue-14 review found, at or past kura's bounds:
  nested.json    kura.dev/secrets of nested flow collections at the size and depth bounds
  oversize.json  kura.dev/secrets of 200 KB (refused by size before parsing)
  huge.json      a 1 MB kura.dev/inject value (the denial must not repeat it)
  unknown.json   5,000 unknown kura.dev/ annotations (the denial names five and counts the rest)
  control.json   a kura.dev/mount-path with an escape sequence and a bidi override
  distinct.jsonl one review a line, each pod declaring ~30 KB of secrets (a 200-entry list and
                 300 short forms) that no other line repeats: what byte-bounded caches must survive
"""
import copy
import json
import sys

src, out = sys.argv[1], sys.argv[2]
base = json.load(open(src))


def with_annotations(extra):
    r = copy.deepcopy(base)
    ann = r["request"]["object"]["metadata"].setdefault("annotations", {})
    ann.update(extra)
    return r


unit = "{a: [{b: [x, y]}], c: {d: [e]}}"
nested = "[" + ",".join([unit] * (16000 // (len(unit) + 1))) + "]"
shapes = {
    "nested": {"kura.dev/secrets": nested},
    "oversize": {"kura.dev/secrets": "- file: a\n  secret: /x/y\n" * 8000},
    "huge": {"kura.dev/inject": "v" * (1 << 20)},
    "unknown": {f"kura.dev/unknown-{i}": "x" for i in range(5000)},
    "control": {"kura.dev/mount-path": "/etc/app\x1b[2J\u202e"},
}
for name, extra in shapes.items():
    with open(f"{out}/{name}.json", "w") as f:
        json.dump(with_annotations(extra), f)

with open(f"{out}/distinct.jsonl", "w") as f:
    for i in range(int(sys.argv[3]) if len(sys.argv) > 3 else 1000):
        lst = "".join(f"- file: f{i}-{j}\n  secret: /bench/s{i}-{j}\n" for j in range(200))
        short = {f"kura.dev/secret.g{i}-{j}": f"/bench/g{i}-{j}" for j in range(300)}
        r = with_annotations({"kura.dev/secrets": lst, **short})
        r["request"]["uid"] = f"distinct-{i}"
        f.write(json.dumps(r) + "\n")
