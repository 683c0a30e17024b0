#!/usr/bin/env bash
# Same-run A/B of two braid binaries on MiniLM over the CPU, robust to a
# loaded machine: R rounds, each running `braid embed --device cpu` with one
# text and with N texts (about 100 words each) for binary A, then B; reports
# the median of (time with N texts - time with one text), i.e. the forward
# work without process start and model load, and B/A.
#
#   scripts/cpu-ab.sh OLD_BRAID NEW_BRAID [N=64] [R=5]
#
# Needs models/all-MiniLM-L6-v2 (scripts/get-minilm.sh). No cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
a=${1:?usage: scripts/cpu-ab.sh OLD_BRAID NEW_BRAID [N] [R]}; b=${2:?}; n=${3:-64}; r=${4:-5}
mapfile -t texts < <(python3 - "$n" <<'PY'
import sys, random
random.seed(14)
words = "the a runtime model thread stream device kernel batch token sentence embedding fast slow memory cache core pool weight pack matrix vector answer question river mountain city music".split()
for i in range(int(sys.argv[1])):
    print(" ".join(random.choice(words) for _ in range(100)))
PY
)
t() { local s e; s=$(date +%s.%N); "$@" > /dev/null; e=$(date +%s.%N); python3 -c "print($e - $s)"; }
declare -A res
for i in $(seq "$r"); do
  for which in A B; do
    bin=$a; [ $which = B ] && bin=$b
    one=$(t "$bin" embed --device cpu "${texts[0]}")
    many=$(t "$bin" embed --device cpu "${texts[@]}")
    res[$which]+="$(python3 -c "print($many - $one)") "
    echo "round $i $which: 1 text ${one}s, $n texts ${many}s" >&2
  done
done
python3 - "${res[A]}" "${res[B]}" "$n" <<'PY'
import sys, statistics as st
a = [float(x) for x in sys.argv[1].split()]; b = [float(x) for x in sys.argv[2].split()]; n = int(sys.argv[3])
ma, mb = st.median(a), st.median(b)
print(f"{n - 1} extra texts: A median {ma*1000:.0f} ms ({(n-1)/ma:.1f} texts/s), B median {mb*1000:.0f} ms ({(n-1)/mb:.1f} texts/s), B speed / A speed {ma/mb:.2f}x")
print(f"A rounds (s): {' '.join(f'{x:.2f}' for x in a)}")
print(f"B rounds (s): {' '.join(f'{x:.2f}' for x in b)}")
PY
