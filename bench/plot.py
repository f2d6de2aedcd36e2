#!/usr/bin/python3
"""Plots echo throughput against the number of connections, wsserver and node ws, from one
results file of bench/run.sh (the echo-c10, echo-c100 and echo-c1000 scenarios).

usage: /usr/bin/python3 bench/plot.py [RESULTS.json] [-o docs/performance.png]
Without RESULTS.json, the newest bench/results/*.json that is not a count file is used.
Needs matplotlib (Debian: apt-get install python3-matplotlib)."""
import argparse
import glob
import json
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENARIO = re.compile(r"^echo-c(\d+)$")
STYLE = {"wsserver": ("#1f77b4", "o", "wsserver (Lua echo app)"),
         "node": ("#d62728", "s", "node ws (reference)")}


def newest_results():
    files = [f for f in glob.glob(os.path.join(ROOT, "bench", "results", "*.json"))
             if not f.endswith("-count.json")]
    if not files:
        sys.exit("plot.py: no bench/results/*.json; run make bench first")
    return max(files, key=os.path.getmtime)


def series(doc, impl, key):
    """[(connections, median, min, max)] of KEY over the runs of IMPL, by connection count."""
    out = []
    for s in doc["scenarios"]:
        m = SCENARIO.match(s["name"])
        if not m or impl not in s:
            continue
        runs = [r["result"][key] for r in doc["raw"]
                if r["impl"] == impl and r["scenario"] == s["name"] and r["result"]
                and r["result"].get(key) is not None]
        if runs:
            runs.sort()
            out.append((int(m.group(1)), runs[len(runs) // 2] if len(runs) % 2 else
                        (runs[len(runs) // 2 - 1] + runs[len(runs) // 2]) / 2, runs[0], runs[-1]))
    return sorted(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="?")
    ap.add_argument("-o", "--output", default=os.path.join(ROOT, "docs", "performance.png"))
    args = ap.parse_args()
    path = args.results or newest_results()
    doc = json.load(open(path))

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for impl, (color, marker, label) in STYLE.items():
        for ax, key, scale in ((ax1, "msgs_per_s", 1e3), (ax2, "server_cpu_us_per_msg", 1)):
            pts = series(doc, impl, key)
            if not pts:
                continue
            x = [p[0] for p in pts]
            y = [p[1] / scale for p in pts]
            err = [[(p[1] - p[2]) / scale for p in pts], [(p[3] - p[1]) / scale for p in pts]]
            ax.errorbar(x, y, yerr=err, color=color, marker=marker, capsize=3, label=label)
    ax1.set_title("echo throughput, 32-byte messages, depth 1")
    ax1.set_ylabel("thousand messages/s (median, min-max)")
    ax2.set_title("server CPU per message")
    ax2.set_ylabel("microseconds of server CPU per message")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xlabel("connections")
        ax.set_ylim(bottom=0)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    m = doc["machine"]
    others = sorted(r["result"].get("other_cpu_pct", 0) for r in doc["raw"]
                    if r["result"] and SCENARIO.match(r["scenario"]))
    noise = f", other work used {others[len(others) // 2]:.0f}% CPU (200% = 2 CPUs)" if others else ""
    fig.suptitle(f"wsserver {doc['commit']} vs node {m.get('node')} ws {m.get('node_ws')} - "
                 f"{m['cpu_model']}, {m['nproc']} CPUs\nserver and wsbench pinned to one CPU each, "
                 f"median of {doc['config']['runs']} runs{noise}", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    fig.savefig(args.output, dpi=110)
    print(f"plot.py: {args.output} from {path}")


if __name__ == "__main__":
    main()
