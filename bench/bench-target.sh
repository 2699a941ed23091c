#!/usr/bin/env bash
# Builds the example $1 (a program a bench script runs) with profile $2 and prints its executable's path (cargo names it
# with a hash). Used by the bench scripts.
set -euo pipefail
cargo build --profile "$2" --example "$1" --message-format=json 2>/dev/null |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable"):
        print(m["executable"])' "$1"
