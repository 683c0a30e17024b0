#!/usr/bin/env python3
"""Draw OUTDIR/memory.png from OUTDIR/memory.csv (written by
scripts/serve-soak.py): host RSS and device memory (MB) against time, with
requests answered on a second axis. Needs matplotlib (pip install
matplotlib); exits 2 without it, so a soak on a machine without network
can be plotted afterwards where pip works:

    python3 scripts/serve-soak-plot.py OUTDIR
"""
import csv
import sys


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: serve-soak-plot.py OUTDIR")
    out = sys.argv[1]
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        sys.exit(2)
    t, rss, dev, ok, err = [], [], [], [], []
    with open(f"{out}/memory.csv") as f:
        for r in csv.DictReader(f):
            t.append(float(r["seconds"]))
            rss.append(float(r["rss_mb"]))
            dev.append(float(r["device_mb"]) if r["device_mb"] else None)
            ok.append(int(r["requests_ok"]))
            err.append(int(r["errors"]))
    if not t:
        sys.exit(f"{out}/memory.csv has no samples")
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.plot(t, rss, label="host RSS (MB)", color="tab:blue")
    if any(d is not None for d in dev):
        ax.plot([x for x, d in zip(t, dev) if d is not None], [d for d in dev if d is not None], label="device memory (MB, nvidia-smi)", color="tab:red")
    ax.set_xlabel("seconds")
    ax.set_ylabel("MB")
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    ax2.plot(t, ok, label="requests answered", color="tab:gray", linestyle=":")
    ax2.set_ylabel("requests answered")
    ax2.set_ylim(bottom=0)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="lower right")
    ax.set_title(f"braid serve soak: {t[-1]:.0f} s, {ok[-1]} requests, {err[-1]} errors")
    fig.tight_layout()
    fig.savefig(f"{out}/memory.png", dpi=100)
    print(f"written: {out}/memory.png")


if __name__ == "__main__":
    main()
