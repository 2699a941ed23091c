"""Report of bench/webhook-load.sh: medians over the rounds, and the budget checks.

Input: one line per run, "<server> key=value ...", servers baseline, default and relaxed.
"""

import statistics
import sys

BUDGET_RATIO, BUDGET_P99_MS, BUDGET_RSS_MIB = 0.60, 5.0, 40.0


def main(path, connections):
    runs = {}
    for line in open(path):
        name, *fields = line.split()
        r = {k: float(v) for k, v in (f.split("=") for f in fields)}
        if r["errors"] or r["non2xx"]:
            sys.exit(f"webhook-load: {name} had errors in a run: {r}")
        runs.setdefault(name, []).append(r)

    def med(name, key):
        return statistics.median(r[key] for r in runs[name])

    def peak_mib(name):
        return max(r["hwm_kib"] for r in runs[name]) / 1024

    rounds = len(runs["default"])
    print(f"\nwebhook load: 1 server core, {connections} TLS keep-alive connections, "
          f"pod with 3 secrets, warm caches; median of {rounds} interleaved rounds")
    print(f"{'server':<31}{'req/s':>7}{'p50 ms':>8}{'p99 ms':>8}{'handler ms':>11}"
          f"{'RSS MiB':>9}  req/s per round")
    rows = (("baseline (axum+rustls, fixed)", "baseline"),
            ("kura, built-in policy", "default"),
            ("kura, no plaintext/KMS rules", "relaxed"))
    for label, name in rows:
        handler = f"{med(name, 'handler_ms'):.3f}" if name != "baseline" else "-"
        each = " ".join(f"{r['rps']:.0f}" for r in runs[name])
        print(f"{label:<31}{med(name, 'rps'):>7.0f}{med(name, 'p50_ms'):>8.2f}"
              f"{med(name, 'p99_ms'):>8.2f}{handler:>11}{peak_mib(name):>9.1f}  {each}")

    ratio = med("default", "rps") / med("baseline", "rps")
    p99 = med("default", "p99_ms")
    rss = peak_mib("default")
    print()
    for what, got, budget, ok in (
        ("throughput vs baseline", f"{ratio:.0%}", ">= 60%", ratio >= BUDGET_RATIO),
        ("p99 latency", f"{p99:.2f} ms", "<= 5 ms", p99 <= BUDGET_P99_MS),
        ("RSS (peak, VmHWM)", f"{rss:.1f} MiB", "<= 40 MiB", rss <= BUDGET_RSS_MIB),
    ):
        print(f"{what:<24}{got:>10}  budget {budget:<10}{'ok' if ok else 'MISSED'}")
    handler = med("default", "handler_ms") / med("relaxed", "handler_ms") - 1
    p50 = med("default", "p50_ms") / med("relaxed", "p50_ms") - 1
    print(f"plaintext + KMS rules add {handler:+.1%} to the time in the handler, "
          f"{p50:+.1%} to p50 latency")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
