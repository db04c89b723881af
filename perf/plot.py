#!/usr/bin/python3
"""Bandwidth and latency against message size, zcx beside the raw tool, to PNG.

Input: JSON lines, from `perf/compare.sh` (perf/out/results.jsonl: zcx_perf --json lines tagged
with part/case/tool, and the raw tool's parsed numbers) and/or plain `zcx_perf --all --json`
output (tagged with --label, tool "zcx"). Raw-tool sweeps can be given as JSON lines
{"tool": "raw", "part": P, "test": T, "size": S, "metric": "bw"|"lat", "value": V}.
Units: MB/s = 10^6 B/s; latency in microseconds (write/send: one-way; read: round trip).

Usage: perf/plot.py (Debian python3 + python3-matplotlib) [-o OUT_DIR] [--label PART] FILE.jsonl [FILE.jsonl ...]
Writes OUT_DIR/zcx_<part>.png (default OUT_DIR: perf/).
"""
import argparse
import collections
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(paths, label):
    # (part, tool, kind, test) -> {size: value}
    series = collections.defaultdict(dict)
    for path in paths:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                d = json.loads(line)
                part = d.get("part", label)
                tool = d.get("tool", "zcx")
                if "src" in d:  # --mpi matrix lines
                    continue
                if tool == "raw":
                    kind = d.get("metric")
                    if kind not in ("bw", "lat") or "size" not in d:
                        continue
                    series[(part, tool, kind, d.get("test", "?"))][int(d["size"])] = float(d["value"])
                else:
                    test = d["test"]
                    kind = "lat" if test.endswith("_lat") else "bw"
                    value = d["lat_us"]["avg"] if kind == "lat" else d["bw_avg_MBps"]
                    if test.endswith("_bw") and d.get("batch", 1) > 1:
                        test += " batch%d" % d["batch"]
                    series[(part, tool, kind, test)][int(d["size"])] = float(value)
    return series


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("-o", "--out", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--label", default="zcx", help="part name for untagged zcx_perf lines")
    args = ap.parse_args()
    series = load(args.files, args.label)
    if not series:
        sys.exit("plot.py: no usable JSON lines in " + ", ".join(args.files))
    parts = sorted({k[0] for k in series})
    os.makedirs(args.out, exist_ok=True)
    for part in parts:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for ax, kind, ylabel in ((axes[0], "bw", "bandwidth (MB/s, 10^6 B/s)"), (axes[1], "lat", "latency (us)")):
            for (p, tool, k, test), pts in sorted(series.items()):
                if p != part or k != kind or not pts:
                    continue
                xs = sorted(pts)
                ax.plot(xs, [pts[x] for x in xs], marker="o" if tool == "zcx" else "s",
                        linestyle="-" if tool == "zcx" else "--", label="%s %s" % (tool, test))
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("message size (bytes)")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        fig.suptitle("zcx_perf vs raw tool: %s" % part)
        fig.tight_layout()
        out = os.path.join(args.out, "zcx_%s.png" % part)
        fig.savefig(out, dpi=100)
        plt.close(fig)
        print(out)


if __name__ == "__main__":
    main()
