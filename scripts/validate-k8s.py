#!/usr/bin/env python3
"""Validate Kubernetes objects (JSON or YAML files, `-` for stdin) against the OpenAPI schemas
that kubernetes-validate ships, strictly (unknown fields rejected), for every version given with
--version (default: 1.29 and the newest shipped). Unlike the kubernetes-validate CLI this also
accepts objects without metadata.name (pods created from generateName).

Exit 0 when every object is valid, 1 when one is not, 2 on unreadable input."""
import argparse
import json
import sys

import kubernetes_validate
import yaml
from kubernetes_validate import utils


def load(path):
    text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    if path.endswith(".json"):
        docs = [json.loads(text)]
    else:
        docs = list(yaml.safe_load_all(text))
    out = []
    for d in docs:
        if not d:
            continue
        if d.get("kind") == "List":
            out.extend(d.get("items") or [])
        else:
            out.append(d)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--version", action="append", dest="versions")
    args = ap.parse_args()
    versions = args.versions or ["1.29.0", utils.latest_version()]
    rc = 0
    for path in args.files:
        try:
            docs = load(path)
        except Exception as e:  # noqa: BLE001 - report any unreadable input plainly
            print(f"{path}: cannot read: {e}", file=sys.stderr)
            return 2
        for doc in docs:
            name = (doc.get("metadata") or {}).get("name") or (doc.get("metadata") or {}).get("generateName", "<unnamed>")
            what = f"{path}: {doc.get('kind')}/{name}"
            for v in versions:
                try:
                    kubernetes_validate.validate(doc, v, strict=True)
                except kubernetes_validate.ValidationError as e:
                    where = ".".join(str(p) for p in e.path)
                    print(f"{what}: invalid for Kubernetes {v} at {where or '<root>'}: {e.message}", file=sys.stderr)
                    rc = 1
                except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as e:
                    print(f"{what}: no schema for Kubernetes {v}: {e}", file=sys.stderr)
                    rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
