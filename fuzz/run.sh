#!/usr/bin/env bash
# Fuzzes every decoder of what another machine sends, with libFuzzer through cargo fuzz, from
# the committed corpus (fuzz/corpus/TARGET), SECONDS each (default 60), and prints for each
# target the executions per second, the coverage reached and whether anything crashed.
# New inputs libFuzzer finds go to a temporary folder, so the committed corpus stays small;
# a crash is written to fuzz/artifacts/TARGET/ and the run stops with its input named.
#
#   fuzz/run.sh          # 60 s per target
#   fuzz/run.sh 600      # 10 minutes per target
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# cargo fuzz passes -Z flags to rustc; this lets the stable toolchain accept them.
export RUSTC_BOOTSTRAP=1
# Build once, first: a build failure is not a finding.
cargo fuzz build -s none --fuzz-dir fuzz
for target in feed_page wire_json usb_bundle; do
  found=$(mktemp -d)
  log=$(mktemp)
  status=0
  # -s none: the code under test is safe Rust, so a sanitizer adds cost and finds nothing a
  # panic would not; -rss_limit_mb bounds memory as the limits in the code should.
  cargo fuzz run -s none --fuzz-dir fuzz "$target" "$found" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 || status=$?
  runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo 0)
  per_s=$(grep -oE 'stat::average_exec_per_sec: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo 0)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 || true)
  if [ "$status" -eq 0 ]; then verdict="nothing found"; else verdict="FOUND A CRASH (exit $status): see $log and fuzz/artifacts/$target/"; fi
  echo "$target: $runs runs in ${seconds} s, $per_s exec/s, $cov, $(ls "$found" | wc -l) new corpus inputs: $verdict"
  rm -rf "$found"
done
