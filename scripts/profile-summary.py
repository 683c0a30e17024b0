#!/usr/bin/env python3
"""Per-forward kernel time from scripts/gpu-profile.sh's ncu CSVs: for each
(who, batch), the kernels grouped by name, their GPU time per forward, and the
sum. A forward is counted by its first kernel's name (the one that appears
the fewest times is used as the marker: once per forward)."""
import collections, csv, glob, io, os, sys

def rows(path):
    text = open(path, errors="replace").read()
    start = text.find('"ID"')
    if start < 0:
        return []
    out = []
    for r in csv.DictReader(io.StringIO(text[start:])):
        if r.get("Metric Name") == "gpu__time_duration.sum":
            out.append((r["Kernel Name"], float(r["Metric Value"].replace(",", ""))))
    return out

d = sys.argv[1]
for path in sorted(glob.glob(os.path.join(d, "*-b*.csv"))):
    name = os.path.basename(path)[:-4]
    ks = rows(path)
    if not ks:
        print(f"## {name}: no kernels (see {name}.log)\n")
        continue
    count = collections.Counter(k for k, _ in ks)
    forwards = max(1, min(count.values()))
    tot = collections.defaultdict(float)
    for k, t in ks:
        tot[k] += t
    total = sum(tot.values())
    print(f"## {name}: {len(ks)} kernels, ~{forwards} forwards, {len(ks) / forwards:.0f} kernels and {total / forwards / 1e3:.1f} us of GPU time a forward\n")
    print("| kernel | launches a forward | us a forward | share |\n| --- | ---: | ---: | ---: |")
    for k, t in sorted(tot.items(), key=lambda kv: -kv[1])[:16]:
        print(f"| `{k[:90]}` | {count[k] / forwards:.1f} | {t / forwards / 1e3:.1f} | {100 * t / total:.1f}% |")
    print()
