#!/usr/bin/env bash
# Coverage-guided fuzzing of every reader with libFuzzer (README, "Fuzzing").
#   tools/fuzz.sh HARNESS [SECONDS]     HARNESS: gguf safetensors checkpoint tokenizer recipe state, or all;
#                                       SECONDS of the harness's CPU time (default 60)
#   tools/fuzz.sh all smoke             CI's smoke run: each harness, fixed seed, 1,000 inputs from the seeds, no corpus kept
# Builds the harness with the Swift toolchain's fuzzer and address sanitizers (release, into .build-fuzz), then runs
# it for SECONDS (default 60) on one core, starting from the committed seeds (Fuzz/corpus/HARNESS) and the
# repository's own fixtures of that format. The growing corpus stays in .build-fuzz/corpus/HARNESS (not
# committed); a crash, leak, timeout (25 s of wall time per input: the machine may be shared) or out-of-memory
# (4 GiB) input is saved as Fuzz/findings/HARNESS-* and the run exits non-zero. Replay one with the plain build: `.build/debug/fuzz-HARNESS FILE`.
set -euo pipefail
cd "$(dirname "$0")/.."
harness=${1:?usage: tools/fuzz.sh gguf|safetensors|checkpoint|tokenizer|recipe|state|all [SECONDS|smoke]}
seconds=${2:-60}
all=(gguf safetensors checkpoint tokenizer recipe state)
if [ "$harness" = all ]; then
    failed=()
    for h in "${all[@]}"; do "$0" "$h" "$seconds" || failed+=("$h"); done
    [ ${#failed[@]} -eq 0 ] || { echo "tools/fuzz.sh: findings or failures in: ${failed[*]}" >&2; exit 1; }
    exit 0
fi
case " ${all[*]} " in
    *" $harness "*) ;;
    *) echo "tools/fuzz.sh: unknown harness '$harness' (expected one of: ${all[*]} all)" >&2; exit 2 ;;
esac

# The fixtures of each format, used as seeds besides the committed corpus (paths relative to the repository).
seeds() {
    case "$1" in
        gguf) find Tests -name '*.gguf' ;;
        safetensors) find Tests -name '*.safetensors' -size -300k ;;
        tokenizer) find Tests -name 'tokenizer*.json' ;;
        recipe) find recipes Tests -name '*.json' -path '*recipe*' ;;
        *) ;;
    esac | sort | paste -sd, -
}

# SwiftPM's --sanitize=fuzzer makes libFuzzer supply main; the -Xswiftc list is what instruments the modules (two
# separate -sanitize flags would leave only the last one in effect).
status=0
mkdir -p .build-fuzz
log=.build-fuzz/build-$harness.log
binary=.build-fuzz/release/fuzz-$harness
# FUZZ_SKIP_BUILD=1 reuses the harness already built (a run resumed while the working tree changes).
if [ "${FUZZ_SKIP_BUILD:-}" = 1 ] && [ -x "$binary" ]; then
    echo "tools/fuzz.sh: reusing $binary (built $(date -r "$binary" '+%F %T'))" > "$log.skip"
    cat "$log.skip"
else
swift build -c release --sanitize=fuzzer -Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING -Xswiftc -enable-testing \
    --scratch-path .build-fuzz --product "fuzz-$harness" > "$log" 2>&1 || status=$?
grep -v "Cannot export local symbol" "$log" | grep -E "error:|Compiling fuzz|complete" || true
fi
[ "$status" -eq 0 ] && [ -x "$binary" ] || { echo "tools/fuzz.sh: the build of fuzz-$harness failed ($log)" >&2; exit 1; }
mkdir -p Fuzz/findings
options=(-timeout=25 -rss_limit_mb=4096 -malloc_limit_mb=4096 -print_final_stats=1 -artifact_prefix="Fuzz/findings/$harness-")
if [ "$seconds" = smoke ]; then
    corpus=$(mktemp -d)
    trap 'rm -rf "$corpus"' EXIT
    options+=(-seed=1 -runs=1000)
else
    corpus=.build-fuzz/corpus/$harness
    mkdir -p "$corpus"
fi
# The committed seeds, where the fixtures do not serve (git keeps no empty directory).
corpora=("$corpus")
[ -d "Fuzz/corpus/$harness" ] && corpora+=("Fuzz/corpus/$harness")
[ -f "Fuzz/dict/$harness.dict" ] && options+=(-dict="Fuzz/dict/$harness.dict")
extra=$(seeds "$harness")
[ -n "$extra" ] && options+=(-seed_inputs="$extra")
label="${seconds}s"
[ "$seconds" = smoke ] && label="a smoke run (1,000 inputs, seed 1)"
fixtures=0
[ -n "$extra" ] && fixtures=$(( $(tr -cd , <<<"$extra" | wc -c) + 1 ))
echo "tools/fuzz.sh: fuzz-$harness, $label on one core; corpus $corpus; seeds ${corpora[*]:1} and $fixtures fixtures"
# The Swift runtime's own backtracer would race libFuzzer's crash report; ASan reports leaks at exit.
export SWIFT_BACKTRACE=enable=no ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1
export LSAN_OPTIONS=suppressions=Fuzz/lsan.supp:print_suppressions=0
if [ "$seconds" = smoke ]; then
    exec "$binary" "${options[@]}" "${corpora[@]}"
fi
# SECONDS counts the harness's CPU time (user + system, from /proc), not the wall clock: on a shared machine the
# run takes longer, never less. At the limit it is interrupted (libFuzzer's exit code 72 then means "done").
"$binary" "${options[@]}" -max_total_time=$((seconds * 20)) "${corpora[@]}" &
pid=$!
tick=$(getconf CLK_TCK)
cpu=0
started=$(date +%s)
while kill -0 "$pid" 2>/dev/null; do
    sleep 2
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || break
    read -r -a fields <<<"${stat##*) }"
    cpu=$(( (fields[11] + fields[12]) / tick ))
    if [ "$cpu" -ge "$seconds" ]; then kill -INT "$pid" 2>/dev/null || true; fi
done
status=0
wait "$pid" || status=$?
echo "tools/fuzz.sh: fuzz-$harness used $cpu s of CPU in $(( $(date +%s) - started )) s (exit status $status)"
if [ "$status" -eq 72 ] && [ "$cpu" -ge "$seconds" ]; then status=0; fi
exit "$status"
