#!/usr/bin/env bash
# Benchmark harness: every benchmark figure for the layer-level pipeline and Gantry's,
# on one generated workload, on this machine, in one command (issue 7).
#
# Usage (as root):
#   bash bench/run.sh [--quick] [--scale SIZE] [--update-mb N] [--runs N] [--gantry BIN] [--out FILE]
#
#   (default)  full scale: --scale 3.1GB --update-mb 50 --runs 1, writes BENCHMARKS.md's
#              harness section (between its BEGIN/END markers; the rest of the file stays),
#              the charts in benchmarks/*.svg next to it and the per-script results in
#              bench/results/harness-SCALE/. About an hour on 2 cores; needs ~20 GB of disk.
#   --quick    test scale for CI: --scale 60MB --update-mb 15, short registry runs; writes
#              $BENCH_DIR/gantry-bench-quick/BENCHMARKS.md (or --out) with its charts and
#              results next to it, and fails unless every figure was produced and Gantry's
#              bytes (figures 1 and 2) are below the layer-level ones. A few minutes once built.
#   --runs N   delivery repetitions (the side that goes first alternates: layer-level, gantry, ...;
#              the report takes medians) and bench/build.sh runs (it alternates inside).
#   --gantry BIN  use this gantry binary (e.g. the debug one `cargo test` built) instead of
#              `cargo build --release -p gantry-cli`.
#
# Steps: builds gantry (unless --gantry), bench/report and (in bench/registry.sh) bench/loadgen;
# generates the sample game once (`gantry sample-game --scale SIZE --seed 1` and a copy turned
# into v2 by `gantry sample-game --update --mb N`); then runs, each on that workload:
#   bench/registry.sh   figure 6 (docker-registry against gantry serve, loopback);
#   bench/abuse.sh      gantry serve's normal pulls alone and under slow clients, overlapping
#                       ranges and login floods (45 s per phase, 5 s with --quick);
#   bench/build.sh      figures 3 and 4 (buildah bud of the two-stage Dockerfile against
#                       gantry build), --workload;
#   bench/delivery.sh   figures 1, 2, 5 and 7 (buildah push to docker-registry and containerd
#                       pulling directly, against gantry push to gantry serve and containerd
#                       pulling through gantry agent; the node in its own network namespace,
#                       tc tbf on its link for the v2 pulls), --workload, --first layer-level|gantry;
# and bench/report turns their JSON into the table, the charts and the checks. The load
# average is sampled every 30 s during the run and reported (the machine is shared).
#
# Environment: BENCH_DIR (parent of the work dirs, default /tmp), CARGO (default cargo),
# CARGO_TARGET_DIR (default <repo>/target: gantry, loadgen and report are built there),
# GANTRY_REV (with --gantry: what the binary was built from, for the report).
# Requires what the three scripts require: buildah, containerd, docker-registry, skopeo,
# iproute2, busybox-static, jq, curl, cargo.
set -euo pipefail

QUICK=0
SCALE=""
UPDATE_MB=""
RUNS=1
GANTRY_BIN=""
OUT=""
SEED=1
ARGS=("$@")

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

while (($#)); do
  case "$1" in
    --quick) QUICK=1; shift ;;
    --scale) SCALE="$2"; shift 2 ;;
    --update-mb) UPDATE_MB="$2"; shift 2 ;;
    --runs) RUNS="$2"; shift 2 ;;
    --gantry) GANTRY_BIN="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "--runs wants a positive integer" >&2; exit 2; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_DIR="${BENCH_DIR:-/tmp}"
export PATH="${HOME:-/root}/.cargo/bin:${PATH}:/usr/local/sbin:/usr/sbin:/sbin"
if ((QUICK)); then
  SCALE="${SCALE:-60MB}"; UPDATE_MB="${UPDATE_MB:-15}"
  OUT="${OUT:-$BENCH_DIR/gantry-bench-quick/BENCHMARKS.md}"
else
  SCALE="${SCALE:-3.1GB}"; UPDATE_MB="${UPDATE_MB:-50}"
  OUT="${OUT:-$REPO/BENCHMARKS.md}"
fi
[[ "$UPDATE_MB" =~ ^[0-9]+$ ]] || { echo "--update-mb wants a whole number of MB" >&2; exit 2; }
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac
OUT_DIR="$(dirname "$OUT")"
mkdir -p "$OUT_DIR"
CHARTS="$OUT_DIR/benchmarks"
if [[ "$OUT" == "$REPO/BENCHMARKS.md" || -d "$OUT_DIR/bench/results" ]]; then
  # a repository's BENCHMARKS.md (also when run from a copy of bench/): results under bench/
  RESULTS="$OUT_DIR/bench/results/harness-$SCALE"
else
  RESULTS="$OUT_DIR/results-$SCALE"
fi
TGT="${CARGO_TARGET_DIR:-$REPO/target}"
CARGO="${CARGO:-cargo}"
COMMAND="bash bench/run.sh${ARGS[*]:+ ${ARGS[*]}}"

log() { printf '[run %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { printf '[run] FAILED: %s\n' "$*" >&2; exit 1; }

[[ "$(id -u)" == 0 ]] || die "the scripts need root (network namespaces, containerd, buildah storage)"
for tool in buildah containerd ctr docker-registry skopeo ip tc jq curl "$CARGO"; do
  command -v "$tool" > /dev/null || die "$tool missing (apt-get install -y buildah containerd docker-registry skopeo iproute2 busybox-static jq curl)"
done

T0="$(date +%s)"
DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"
WORK="$(mktemp -d "$BENCH_DIR/gantry-run.XXXXXX")"
SAMPLER=""
cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  [[ -n "$SAMPLER" ]] && kill "$SAMPLER" 2> /dev/null && wait "$SAMPLER" 2> /dev/null
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log "work dir $WORK; results in $RESULTS; report $OUT"

# The load average every 30 s (the machine is shared with other jobs).
LOAD_INTERVAL=30
(while :; do cut -d' ' -f1 /proc/loadavg >> "$WORK/load.txt"; sleep "$LOAD_INTERVAL"; done) &
SAMPLER=$!

# --- binaries ---------------------------------------------------------------------------------
mkdir -p "$WORK/bin"
if [[ -n "$GANTRY_BIN" ]]; then
  [[ -x "$GANTRY_BIN" ]] || die "--gantry $GANTRY_BIN is not executable"
  cp "$GANTRY_BIN" "$WORK/bin/gantry"
  GIT_REV="${GANTRY_REV:+$GANTRY_REV; }given binary $GANTRY_BIN, built $(date -u -r "$GANTRY_BIN" +%Y-%m-%dT%H:%MZ)"
else
  log "building gantry (cargo build --release -p gantry-cli, target dir $TGT)"
  (cd "$REPO" && CARGO_TARGET_DIR="$TGT" "$CARGO" build --release --quiet -p gantry-cli) || die "cargo build -p gantry-cli"
  cp "$TGT/release/gantry" "$WORK/bin/gantry"
  GIT_REV="$(git -C "$REPO" rev-parse --short HEAD 2> /dev/null || echo unknown)"
  git -C "$REPO" diff --quiet HEAD -- crates Cargo.toml Cargo.lock 2> /dev/null || GIT_REV="$GIT_REV+work-tree-changes"
fi
G="$WORK/bin/gantry"
"$G" --version > /dev/null || die "$G does not run"
log "building bench/report"
CARGO_TARGET_DIR="$TGT" "$CARGO" build --release --locked --quiet \
  --manifest-path "$REPO/bench/report/Cargo.toml" || die "cargo build bench/report"
cp "$TGT/release/report" "$WORK/bin/report"

# --- the workload, once -----------------------------------------------------------------------
WL="$WORK/workload"
mkdir -p "$WL"
log "generating the workload: gantry sample-game --scale $SCALE --seed $SEED, update --mb $UPDATE_MB"
"$G" sample-game "$WL/v1" --scale "$SCALE" --seed "$SEED" --json > "$WL/sample.json"
cp -a "$WL/v1" "$WL/v2"
"$G" sample-game --update "$WL/v2" --mb "$UPDATE_MB" --seed "$SEED" --json > "$WL/update.json"
log "  $(jq -r '"\(.total_bytes) bytes in \(.files_written) files"' "$WL/sample.json"); update's own size $(jq .update_bytes "$WL/update.json") bytes"

rm -rf "$RESULTS"
mkdir -p "$RESULTS"
QFLAG=(); ((QUICK)) && QFLAG=(--quick)

# --- figure 6: registry throughput ------------------------------------------------------------
log "bench/registry.sh ${QFLAG[*]} (figure 6)"
BENCH_DIR="$BENCH_DIR" CARGO_TARGET_DIR="$TGT" bash "$REPO/bench/registry.sh" "${QFLAG[@]}" \
  --gantry "$G" --out "$RESULTS/registry.json" > "$WORK/registry.stdout" 2> "$WORK/registry.log" \
  || { tail -n 40 "$WORK/registry.log" >&2; die "bench/registry.sh"; }

# --- abuse: slow clients, overlapping ranges, login floods beside normal pulls ----------------
ABUSE_SECONDS=45; ((QUICK)) && ABUSE_SECONDS=5
log "bench/abuse.sh --duration $ABUSE_SECONDS (normal pulls under attack)"
BENCH_DIR="$BENCH_DIR" CARGO_TARGET_DIR="$TGT" bash "$REPO/bench/abuse.sh" --duration "$ABUSE_SECONDS" \
  --gantry "$G" --out "$RESULTS/abuse.json" > "$WORK/abuse.stdout" 2> "$WORK/abuse.log" \
  || { tail -n 40 "$WORK/abuse.log" >&2; die "bench/abuse.sh"; }
log "  $(jq -r '"normal pulls p99 loaded/unloaded: manifest \(.verdict.manifest_p99_ratio * 100 | round / 100)×, blob \(.verdict.blob_p99_ratio * 100 | round / 100)×"' "$RESULTS/abuse.json")"

# --- figures 3 and 4: builds ------------------------------------------------------------------
log "bench/build.sh --runs $RUNS (figures 3 and 4)"
BENCH_DIR="$BENCH_DIR" bash "$REPO/bench/build.sh" --scale "$SCALE" --update-mb "$UPDATE_MB" \
  --runs "$RUNS" --gantry "$G" --workload "$WL" --out "$RESULTS/build.json" \
  > "$WORK/build.stdout" 2> "$WORK/build.log" \
  || { tail -n 40 "$WORK/build.log" >&2; die "bench/build.sh"; }

# --- figures 1, 2, 5 and 7: delivery, alternating which side goes first ------------------------
DELIVERY=()
for ((r = 1; r <= RUNS; r++)); do
  first=layer-level; ((r % 2)) || first=gantry
  log "bench/delivery.sh repetition $r/$RUNS, $first first (figures 1, 2, 5 and 7)"
  BENCH_DIR="$BENCH_DIR" bash "$REPO/bench/delivery.sh" "${QFLAG[@]}" --scale "$SCALE" \
    --update-mb "$UPDATE_MB" --gantry "$G" --workload "$WL" --first "$first" \
    --out "$RESULTS/delivery-$r.json" > "$WORK/delivery-$r.stdout" 2> "$WORK/delivery-$r.log" \
    || { tail -n 40 "$WORK/delivery-$r.log" >&2; die "bench/delivery.sh repetition $r"; }
  DELIVERY+=("$RESULTS/delivery-$r.json")
done

# --- report -----------------------------------------------------------------------------------
kill "$SAMPLER" 2> /dev/null; wait "$SAMPLER" 2> /dev/null || true; SAMPLER=""
cut -d' ' -f1 /proc/loadavg >> "$WORK/load.txt"
LOAD_SUMMARY="$(sort -n "$WORK/load.txt" | awk '{ v[NR] = $1 } END {
  printf "min %.1f, median %.1f, max %.1f over %d samples", v[1], v[int((NR + 1) / 2)], v[NR], NR }')"
OTHERS="$(ps -eo comm= | grep -cxE 'rustc|cargo|ld|cc1|cc1plus' || true)"
if [[ "$OTHERS" -gt 0 ]]; then
  NOTE="Shared machine: others were compiling at the same time ($OTHERS compiler processes at the end), so absolute times are noisy; both sides ran in the same run, alternating order, so read the ratios."
else
  NOTE="No compiler processes at the end; the load average above also counts the benchmark's own two sides. Both sides ran in the same run, alternating order."
fi
cpu_model="$(lscpu 2> /dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)"
jq -n --arg command "$COMMAND" --arg date "$DATE" --argjson took "$(($(date +%s) - T0))" \
  --argjson quick "$QUICK" --arg scale "$SCALE" --argjson update_mb "$UPDATE_MB" --argjson runs "$RUNS" \
  --argjson seed "$SEED" --argjson nproc "$(nproc)" --arg cpu "$cpu_model" \
  --arg mem "$(awk '/^MemTotal/ { printf "%.0f GiB RAM", $2 / 1048576 }' /proc/meminfo)" \
  --arg kernel "$(uname -r)" --arg load0 "$LOAD_START" --arg load1 "$(cut -d' ' -f1-3 /proc/loadavg)" \
  --argjson interval "$LOAD_INTERVAL" --arg load_summary "$LOAD_SUMMARY" --arg note "$NOTE" \
  --arg gantry "$("$G" --version)" --arg git "$GIT_REV" \
  --slurpfile sample "$WL/sample.json" --slurpfile update "$WL/update.json" \
  --arg build "$RESULTS/build.json" --arg registry "$RESULTS/registry.json" \
  --arg out "$OUT" --arg charts "$CHARTS" --args \
  '{command: $command, date: $date, took_s: $took, quick: ($quick == 1), scale: $scale,
    update_mb: $update_mb, runs: $runs, seed: $seed,
    machine: {nproc: $nproc, cpu: $cpu, mem: $mem, kernel: $kernel, loadavg_start: $load0,
              loadavg_end: $load1, load_interval_s: $interval, load_summary: $load_summary, note: $note},
    versions: {gantry: $gantry, git: $git},
    workload: {sample: ($sample[0] | del(.files, .dir)), update: ($update[0] | del(.dir))},
    build: $build, registry: $registry, delivery: $ARGS.positional, out: $out, charts_dir: $charts}' \
  "${DELIVERY[@]}" > "$RESULTS/harness.json" 2> "$WORK/jq.err" \
  || { cat "$WORK/jq.err" >&2; die "writing $RESULTS/harness.json"; }
log "bench/report $RESULTS/harness.json --check"
"$WORK/bin/report" "$RESULTS/harness.json" --check
log "done in $(($(date +%s) - T0)) s: $OUT, charts in $CHARTS, results in $RESULTS"
