#!/usr/bin/env bash
# All benchmarks, pgdurable and its peers side by side on the same Postgres.
# Needs the dev install (.venv) and a server at PGDURABLE_BENCH_DSN
# (default postgresql://postgres@127.0.0.1:5432/postgres).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PEERS=bench/peers/.venv-peers
if [ ! -x "$PEERS/bin/python" ]; then
    python3 -m venv "$PEERS"
    "$PEERS/bin/pip" install --quiet -r bench/peers/requirements.txt
fi
echo "machine: nproc=$(nproc)"
$PY bench/w1_drain.py --threads 8 --prefetch 1000
"$PEERS/bin/python" bench/peers/pgqueuer_bench.py
"$PEERS/bin/python" bench/peers/procrastinate_bench.py
$PY bench/w2_latency.py
$PY bench/claim_cost.py
$PY bench/w3_steps.py --threads 64 --prefetch 1000
$PY bench/w4_sleep.py
$PY bench/w5_wake.py
