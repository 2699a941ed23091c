# What the bench scripts share; sourced from the repository root after the script's own
# settings. Sets $work (a scratch dir, kept when KEEP is set) and $pids (killed on exit), and
# defines free_port, wait_port PORT (fails when nothing listens on it within 60 s) and
# kura_binary PROFILE, which prints where cargo put the kura binary of PROFILE
# ($CARGO_TARGET_DIR honoured), or $KURA_BIN when set (to compare another build).
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 1 600); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$1 after 60 s" >&2
    return 1
}
kura_binary() {
    if [ -n "${KURA_BIN:-}" ]; then echo "$KURA_BIN"; return; fi
    echo "${CARGO_TARGET_DIR:-$PWD/target}/$([ "$1" = dev ] && echo debug || echo "$1")/kura"
}
