#!/usr/bin/env bash
# Where a benchmark's CPU goes: the machine's busy CPU time during one run
# (from /proc/stat), the benchmark process's own (user + system), and the
# rest, which on a machine doing nothing else is Postgres's.
#
#     bash bench/cpu_split.sh python bench/w3_steps.py --runs 10000 --threads 4 --prefetch 16
set -euo pipefail
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
ticks=$(getconf CLK_TCK)
times=$(mktemp)
before=$(busy)
/usr/bin/time -f "%U %S %e" -o "$times" "$@" | tail -1
after=$(busy)
read -r user system wall < "$times"
rm -f "$times"
python3 -c "
machine = ($after - $before) / $ticks; own = $user + $system
print(f'wall {$wall:.2f} s; machine CPU {machine:.2f} s of {$(nproc) * $wall:.2f} s on $(nproc) cores; '
      f'the process {own:.2f} s; the rest (Postgres) {machine - own:.2f} s')"
