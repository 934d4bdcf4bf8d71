#!/usr/bin/env bash
# Runs the fuzz targets one after another, each for N minutes (default 5):
#
#   fuzz/run.sh [minutes] [target...]        e.g. fuzz/run.sh 5, fuzz/run.sh 1 store_url
#
# Needs a nightly toolchain and cargo-fuzz (`rustup toolchain install nightly`,
# `cargo install cargo-fuzz`). Builds with debug assertions (integer overflow is a crash)
# and without a sanitizer (the library forbids unsafe code; the fuzzers run faster). Each
# target grows its corpus in fuzz/corpus/<target>/; a crash is written to
# fuzz/regressions/<target>/ and stops that target (the others still run). At the end the
# corpus is minimized (`cargo fuzz cmin`) so that what is committed stays small, and a
# summary line per target (time, executions, corpus files, crashes) is printed and kept in
# fuzz/logs/summary.txt. Runs at `nice -n 10`: the fuzzer takes one core.
set -uo pipefail

minutes="${1:-5}"
shift || true
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
if [ "$#" -gt 0 ]; then targets=("$@"); else targets=(store_url request_spec redis_codec http_api); fi
mkdir -p logs
summary="logs/summary.txt"
: > "$summary"

for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "regressions/$t"
  before=$(ls "regressions/$t" | wc -l)
  dict=()
  if [ -f "dicts/$t.dict" ]; then dict=("-dict=$here/dicts/$t.dict"); fi
  echo "== $t: ${minutes} min"
  nice -n 10 cargo +nightly fuzz run --debug-assertions --sanitizer none "$t" "corpus/$t" -- \
    -max_total_time=$((minutes * 60)) -timeout=20 -rss_limit_mb=3072 -print_final_stats=1 \
    -artifact_prefix="$here/regressions/$t/" "${dict[@]}" 2>&1 | tee "logs/$t.log" | grep -E "^#[0-9]+.*(pulse|DONE)|panicked|SUMMARY|Test unit written" || true
  nice -n 10 cargo +nightly fuzz cmin --debug-assertions --sanitizer none "$t" "corpus/$t" > "logs/$t.cmin.log" 2>&1 || true
  execs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "logs/$t.log" | grep -Eo '[0-9]+$' | tail -1)
  if [ -z "$execs" ]; then execs=$(grep -Eo '^#[0-9]+' "logs/$t.log" | tail -1 | tr -d '#'); fi
  after=$(ls "regressions/$t" | wc -l)
  line="$t: ${minutes} min, ${execs:-?} executions, $(ls "corpus/$t" | wc -l) corpus files, $((after - before)) new crashes"
  echo "$line" | tee -a "$summary"
done
