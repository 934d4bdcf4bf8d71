#!/usr/bin/env bash
# Runs the fuzz targets one after another, each for N minutes (default 5):
#
#   fuzz/run.sh [minutes] [target...]        e.g. fuzz/run.sh 5, fuzz/run.sh 1 store_url
#
# Needs a nightly toolchain and cargo-fuzz (`rustup toolchain install nightly`,
# `cargo install cargo-fuzz`). Builds with debug assertions (integer overflow is a crash)
# and without a sanitizer (the library forbids unsafe code; the fuzzers run faster). Each
# target grows its corpus in fuzz/corpus/<target>/; every crash is written to
# fuzz/regressions/<target>/ and the run goes on (libFuzzer's fork mode with
# -ignore_crashes, one worker), so one run finds more than the first crash. At the end the
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
    -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
    -max_total_time=$((minutes * 60)) -timeout=20 -rss_limit_mb=3072 -print_final_stats=1 \
    -artifact_prefix="$here/regressions/$t/" "${dict[@]}" 2>&1 | tee "logs/$t.log" | grep -E "^#[0-9]+:|panicked|Test unit written|INFO: exiting" || true
  nice -n 10 cargo +nightly fuzz cmin --debug-assertions --sanitizer none "$t" "corpus/$t" > "logs/$t.cmin.log" 2>&1 || true
  # Fork mode prints `#<executions>: cov: ...` lines; the last one has the total.
  execs=$(grep -Eo '^#[0-9]+' "logs/$t.log" | tail -1 | tr -d '#')
  after=$(ls "regressions/$t" | wc -l)
  line="$t: ${minutes} min, ${execs:-?} executions, $(ls "corpus/$t" | wc -l) corpus files, $((after - before)) new crashes"
  echo "$line" | tee -a "$summary"
done
