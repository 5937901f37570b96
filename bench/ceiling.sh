#!/usr/bin/env bash
# The SQL ceiling of this session (see ../shared/bench-ceiling/README.md):
# 3 pgbench runs of the minimal job lifecycle, jobs done per second each.
#     bash bench/ceiling.sh [folder with schema.sql and lifecycle.sql]
set -euo pipefail
folder="${1:-$(dirname "$0")/../../shared/bench-ceiling}"
db=bench_ceiling
export PGHOST=127.0.0.1 PGUSER=postgres
dropdb --if-exists "$db" && createdb "$db"
psql -q -d "$db" -f "$folder/schema.sql"
for run in 1 2 3; do
    psql -q -d "$db" -c "TRUNCATE ceiling_jobs" -c "CHECKPOINT"
    pgbench -n -M simple -c 4 -j 2 -T 10 -f "$folder/lifecycle.sql" "$db" >/dev/null 2>&1
    done=$(psql -qtA -d "$db" -c "SELECT count(*) FROM ceiling_jobs WHERE status = 'done'")
    echo "ceiling run $run: $((done / 10)) jobs/s"
done
dropdb "$db"
