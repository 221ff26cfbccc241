#!/bin/bash
# `import convscope` and `convscope --help` wall time, two checkouts interleaved (issue #30: the layer
# folders must not make either slower). Usage: bash benchmarks/bench_import_time.sh OLD_SRC NEW_SRC [ROUNDS]
# (OLD_SRC: the src/ folder of a checkout of the flat layout, e.g. `git worktree add ../old 0e3465d`).
# Prints one line per run; the medians are what benchmarks/results/import_time.md reports.
set -euo pipefail
OLD=$1; NEW=$2; ROUNDS=${3:-7}; PY=${PYTHON:-python}
for i in $(seq 1 "$ROUNDS"); do
  for v in old new; do
    if [ "$v" = old ]; then P=$OLD; HELP="-m convscope.cli.main"; else P=$NEW; HELP="-m convscope"; fi
    s=$(date +%s.%N); PYTHONPATH=$P $PY -c "import convscope"; e=$(date +%s.%N)
    s2=$(date +%s.%N); PYTHONPATH=$P $PY $HELP --help >/dev/null; e2=$(date +%s.%N)
    echo "$v import $(echo "$e - $s" | bc) help $(echo "$e2 - $s2" | bc)"
  done
done
