#!/usr/bin/env bash
# Fuzzes the KV wire decoder (tests/fuzz/fuzz_kv_wire.cpp) for a bounded time.
#
#   tests/fuzz/run_fuzz.sh [seconds=60]
#
# Configures build-fuzz/ with clang-14 (libFuzzer + ASan + UBSan on every kvbridge target; warnings
# are not errors there, since clang warns about other things than g++), builds only fuzz_kv_wire,
# seeds a scratch corpus from tests/fuzz/corpus/ and runs the fuzzer. Exits non-zero when the
# build fails or the fuzzer finds a crash, a sanitizer report, a leak, a timeout or an OOM; the
# offending input is left in build-fuzz/fuzz-artifacts/. Environment: KVB_FUZZ_BUILD_DIR (default
# <repo>/build-fuzz), KVB_FUZZ_JOBS (build parallelism, default 2), KVBRIDGE_MODELS (as the tests).
set -euo pipefail

secs="${1:-60}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${KVB_FUZZ_BUILD_DIR:-$root/build-fuzz}"
jobs="${KVB_FUZZ_JOBS:-2}"

mkdir -p "$build"
cmake -S "$root" -B "$build" -G Ninja \
  -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DKVBRIDGE_CUDA=OFF -DKVBRIDGE_BENCH=OFF -DKVBRIDGE_TESTS=ON -DKVBRIDGE_FUZZ=ON -DKVBRIDGE_WERROR=OFF \
  -DKVBRIDGE_SANITIZE=address,undefined,fuzzer-no-link >"$build/configure.log" 2>&1 \
  || { cat "$build/configure.log"; exit 1; }
cmake --build "$build" -j"$jobs" --target fuzz_kv_wire

corpus="$build/fuzz-corpus"
artifacts="$build/fuzz-artifacts"
mkdir -p "$corpus" "$artifacts"
cp -n "$root"/tests/fuzz/corpus/* "$corpus"/ 2>/dev/null || true

export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
exec "$build/tests/fuzz_kv_wire" -max_total_time="$secs" -timeout=20 -rss_limit_mb=2048 \
  -print_final_stats=1 -artifact_prefix="$artifacts/" "$corpus"
