#!/usr/bin/env bash
# Registry throughput benchmark: `gantry serve` against `docker-registry` (CNCF distribution
# 2.8, Debian package), benchmark figure 6.
#
# Usage:
#   bash bench/registry.sh [--quick] [--out FILE.json] [--rev REV | --gantry BIN] [--no-build] [--keep]
#   bash bench/registry.sh --report FILE.json     (print the Markdown of an earlier result again)
#
# One run, both registries on this machine, storage in fresh temp dirs side by side under
# $BENCH_DIR (default /tmp, so the same disk), plain HTTP on free loopback ports, no auth:
#   1. builds `gantry` (cargo build --release -p gantry-cli) from the work tree, or with
#      --rev from a clean `git archive REV` snapshot (in $CARGO_TARGET_DIR/bench-src, so a
#      work tree that others are editing does not matter), or takes --gantry BIN as it is;
#      and builds the load client
#      (bench/loadgen, a standalone Cargo project: tokio + hyper, one keep-alive HTTP/1.1
#      connection per client);
#   2. pushes the same content to both: a small busybox image (Debian's busybox-static, one
#      layer, OCI manifest) with `skopeo copy --preserve-digests`, and incompressible blobs of
#      1 MiB and 64 MiB through the API (POST + PUT ?digest=); push throughput = a 256 MiB blob
#      pushed monolithically (POST + PUT with the whole body, acknowledged 201), REPS times,
#      a new blob each repetition, the server order alternating;
#   3. GET load: blob 1 MiB (requests/s), blob 64 MiB (MB/s), manifest by tag with the OCI
#      Accept header (requests/s), each at 1, 16 and 64 concurrent clients for DURATION s after
#      a WARMUP, the server that goes first alternating from one run to the next. Every
#      response is checked (status 200, exact body size); errors are counted and reported;
#   4. peak RSS of each server (VmHWM from /proc/PID/status, read just before it is stopped)
#      and the CPU time each server used in each run (/proc/PID/stat);
#   5. writes the JSON (--out, default bench/results/registry[-quick].json) and a Markdown
#      table next to it (.md), also printed on stdout. Steps go to stderr.
# Full: DURATION 10 s, WARMUP 1 s, 3 push repetitions (~4 min). --quick: 2 s, 0.5 s, 1 (< 1 min
# once built). 1 MB = 10^6 bytes in MB/s; blob sizes are MiB.
#
# Environment: BENCH_DIR (parent of the work dir, default /tmp), CARGO (default cargo),
# CARGO_TARGET_DIR (default <repo>/target; both binaries are built there).
# Requires: cargo, docker-registry, skopeo, busybox-static, jq, curl (apt-get install -y
# docker-registry skopeo busybox-static jq curl).
set -euo pipefail

QUICK=0
OUT=""
BUILD=1
KEEP=0
REV=""
GANTRY_BIN=""

REPORT=""
ARGS=("$@")

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --out) OUT="$2"; shift ;;
    --no-build) BUILD=0 ;;
    --rev) REV="$2"; shift ;;
    --gantry) GANTRY_BIN="$2"; shift ;;
    --keep) KEEP=1 ;;
    --report) REPORT="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

# print_report FILE.json: the Markdown for BENCHMARKS.md, from a result file.
print_report() {
  jq -r '
  def d(n): if . == null then "–" else (. * pow(10; n) | round) / pow(10; n) | tostring end;
  def num: if . == null then "–" elif . >= 100 then (round | tostring) elif . >= 10 then d(1) else d(2) end;
  def ms: if . == null then "–" elif . >= 100 then (round | tostring) elif . >= 10 then d(1) elif . >= 1 then d(2) else d(3) end;
  def x: if . == null then "–" else d(2) + "×" end;
  def mib: (. / 1048576 | tostring) + " MiB";
  .params as $p |
  "### Registry: gantry serve vs docker-registry (CNCF distribution \(.machine.distribution_version)) — \(if $p.quick then "quick" else "full" end) run",
  "",
  "Loopback HTTP/1.1, no auth, filesystem storage in \($p.bench_dir) (both on the same disk: \(.machine.storage_fs)). GET runs: \($p.duration_s) s each after a \($p.warmup_s) s warm-up, one keep-alive connection per client, server order alternating; every response checked for status 200 and exact size. Push: \($p.push_size | mib) blob, POST + PUT (monolithic), \($p.push_reps) repetition(s), a new blob each, order alternating. Ratio: gantry ÷ distribution for throughput, distribution ÷ gantry for latency and memory, so above 1× means gantry is better.",
  "",
  "| measure | concurrency | docker-registry | gantry | ratio |",
  "|---|---:|---:|---:|---:|",
  def cell: if .value == null then "–" elif .unit == "ms" then "\(.value | ms) ms" else "\(.value | num) \(.unit)" end;
  (.table[] | "| \(.measure) | \(.concurrency // "–") | \(.distribution | cell) | \(.gantry | cell) | \(.ratio | x) |"),
  (if any(.table[]; .distribution.value == null or .gantry.value == null) then "", "–: no request both started and ended inside the window (each client moved fewer than about two blobs): run longer than --quick for these." else empty end),
  "",
  "Errors (bad status, wrong size or transport, over all GET runs incl. warm-up): docker-registry \(.errors.distribution), gantry \(.errors.gantry)." + (if (.errors.distribution + .errors.gantry) > 0 then " First: \(.errors.first | tostring)" else "" end),
  "",
  "Server CPU time per GET run (s of CPU over the whole run; the load client runs on the same \(.machine.nproc) cores):",
  "",
  "| measure | concurrency | docker-registry CPU s | gantry CPU s | docker-registry CPU ms / request | gantry CPU ms / request |",
  "|---|---:|---:|---:|---:|---:|",
  (.cpu[] | "| \(.measure) | \(.concurrency) | \(.distribution_cpu_s | num) | \(.gantry_cpu_s | num) | \(.distribution_cpu_ms_per_req | ms) | \(.gantry_cpu_ms_per_req | ms) |"),
  "",
  "Push \($p.push_size | mib) MB/s per repetition: docker-registry \(.push.distribution | map(num) | join(", ")); gantry \(.push.gantry | map(num) | join(", ")) (table: median).",
  "",
  "Target (figure 6): ≥ 2× requests/s and MB/s, p99 latency lower. " +
    ([.table[] | select(.kind == "throughput" and .concurrency != null)] as $t |
     [.table[] | select(.kind == "p99")] as $l |
     "Throughput rows at ≥ 2×: \([$t[] | select(.ratio >= 2)] | length) of \($t | length) (lowest \([$t[].ratio] | min | x)); p99 lower: \([$l[] | select(.ratio > 1)] | length) of \($l | length).") ,
  "",
  "Machine: \(.machine.nproc) cores, \(.machine.cpu), \(.machine.mem), kernel \(.machine.kernel); load average \(.machine.loadavg_at_start) at the start, \(.machine.loadavg_at_end) at the end. gantry \(.machine.gantry_rev), \(.machine.rustc); skopeo \(.machine.skopeo_version). Started \(.started), took \(.took_s | round) s after the build.",
  "",
  "Commands:",
  "```",
  (.commands[]),
  "```"
  ' "$1"
}

if [[ -n "$REPORT" ]]; then
  print_report "$REPORT"
  exit 0
fi

die() { echo "registry.sh: $*" >&2; exit 1; }
step() { echo "== $*" >&2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CARGO=${CARGO:-cargo}
TGT=${CARGO_TARGET_DIR:-$ROOT/target}
BENCH_DIR=${BENCH_DIR:-/tmp}

if [[ $QUICK == 1 ]]; then
  DURATION=2; WARMUP=0.5; PUSH_REPS=1
  OUT=${OUT:-$ROOT/bench/results/registry-quick.json}
else
  DURATION=10; WARMUP=1; PUSH_REPS=3
  OUT=${OUT:-$ROOT/bench/results/registry.json}
fi
CONCURRENCY=(1 16 64)
PUSH_SIZE=$((256 * 1048576))
SMALL_SIZE=1048576
LARGE_SIZE=$((64 * 1048576))
MANIFEST_ACCEPT="application/vnd.oci.image.manifest.v1+json"

for tool in docker-registry skopeo jq curl "$CARGO"; do
  command -v "$tool" >/dev/null || die "$tool missing (apt-get install -y docker-registry skopeo busybox-static jq curl)"
done
[[ -x /bin/busybox ]] || die "/bin/busybox missing (apt-get install -y busybox-static)"


# --- build ------------------------------------------------------------------------------------
SRC=$ROOT
GANTRY_REV=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -n "$(cd "$ROOT" && git status --porcelain -- crates Cargo.toml Cargo.lock 2>/dev/null)" ]] && GANTRY_REV+="+work-tree-changes"
if [[ -n "$GANTRY_BIN" ]]; then
  GANTRY=$GANTRY_BIN
  GANTRY_REV="given binary $GANTRY_BIN"
elif [[ -n "$REV" ]]; then
  GANTRY_REV=$(cd "$ROOT" && git rev-parse --short "$REV^{commit}") || die "no such revision: $REV"
  GANTRY=$TGT/bench-gantry-$GANTRY_REV
  if [[ ! -x $GANTRY ]]; then
    SRC=$TGT/bench-src
    step "building gantry from a snapshot of $REV ($GANTRY_REV) in $SRC (target dir $TGT)"
    rm -rf "$SRC" && mkdir -p "$SRC"
    (cd "$ROOT" && git archive --format=tar "$GANTRY_REV") | tar -x -C "$SRC"
    # Cargo keys workspace crates by their path inside the workspace and trusts mtimes: make
    # the snapshot newer than whatever the shared target dir built from another tree.
    find "$SRC" -type f -exec touch {} +
    (cd "$SRC" && CARGO_TARGET_DIR="$TGT" "$CARGO" build --release -p gantry-cli) >&2
    cp "$TGT/release/gantry" "$GANTRY.tmp" && mv "$GANTRY.tmp" "$GANTRY"
  fi
elif [[ $BUILD == 1 ]]; then
  step "building gantry (cargo build --release -p gantry-cli in $SRC, target dir $TGT)"
  (cd "$SRC" && CARGO_TARGET_DIR="$TGT" "$CARGO" build --release -p gantry-cli) >&2
  GANTRY=$TGT/release/gantry
else
  GANTRY=$TGT/release/gantry
fi
if [[ $BUILD == 1 ]]; then
  step "building the load client (bench/loadgen)"
  CARGO_TARGET_DIR="$TGT" "$CARGO" build --release --locked \
    --manifest-path "$ROOT/bench/loadgen/Cargo.toml" >&2
fi
LOADGEN=$TGT/release/loadgen
[[ -x $GANTRY && -x $LOADGEN ]] || die "missing $GANTRY or $LOADGEN (run without --no-build)"

STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
T_START=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# --- servers ----------------------------------------------------------------------------------
WORK=$(mktemp -d "$BENCH_DIR/gantry-bench-registry.XXXXXX")
D_PID=""; G_PID=""
cleanup() {
  local rc=$?
  set +e
  [[ -n "$D_PID" ]] && kill "$D_PID" 2>/dev/null && wait "$D_PID" 2>/dev/null
  [[ -n "$G_PID" ]] && kill "$G_PID" 2>/dev/null && wait "$G_PID" 2>/dev/null
  if [[ $KEEP == 1 ]]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# A private copy: a later build in the same target dir cannot swap the binary mid-run.
cp "$GANTRY" "$WORK/gantry-bin"
GANTRY=$WORK/gantry-bin

# A free loopback port: nothing answers a connect to it (and not one handed out already).
USED_PORTS=" "
free_port() {
  local p
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 40000))
    [[ $USED_PORTS == *" $p "* ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      USED_PORTS+="$p "
      echo "$p"
      return
    fi
  done
  die "no free port"
}

# wait_ready PID PORT NAME LOG
wait_ready() {
  for _ in $(seq 300); do
    kill -0 "$1" 2>/dev/null || { cat "$4" >&2; die "$3 exited at start"; }
    if curl -fsS -o /dev/null "http://127.0.0.1:$2/v2/" 2>/dev/null; then return; fi
    sleep 0.1
  done
  cat "$4" >&2
  die "$3 did not answer on 127.0.0.1:$2 within 30 s"
}

D_PORT=$(free_port)
G_PORT=$(free_port)
mkdir -p "$WORK/distribution" "$WORK/gantry"
cat >"$WORK/distribution.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/distribution
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$D_PORT
EOF
D_CMD="docker-registry serve $WORK/distribution.yml"
G_CMD="$GANTRY serve --addr 127.0.0.1:$G_PORT --root $WORK/gantry"
step "starting docker-registry on 127.0.0.1:$D_PORT and gantry serve on 127.0.0.1:$G_PORT (work dir $WORK)"
$D_CMD >"$WORK/distribution.log" 2>&1 &
D_PID=$!
RUST_LOG=${RUST_LOG:-warn} $G_CMD >"$WORK/gantry.log" 2>&1 &
G_PID=$!
wait_ready "$D_PID" "$D_PORT" docker-registry "$WORK/distribution.log"
wait_ready "$G_PID" "$G_PORT" "gantry serve" "$WORK/gantry.log"

declare -A PORT=([distribution]=$D_PORT [gantry]=$G_PORT)
declare -A PID=([distribution]=$D_PID [gantry]=$G_PID)
SERVERS=(distribution gantry)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
CLK_TCK=$(getconf CLK_TCK)

# --- content ----------------------------------------------------------------------------------
step "building the busybox image (OCI layout) and pushing it to both with skopeo"
LAYOUT=$WORK/busybox-oci
ROOTFS=$WORK/rootfs
mkdir -p "$ROOTFS/bin" "$LAYOUT/blobs/sha256"
cp /bin/busybox "$ROOTFS/bin/busybox"
for a in sh ls cat echo; do ln -s busybox "$ROOTFS/bin/$a"; done
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$ROOTFS" -cf "$WORK/layer.tar" bin
DIFF_ID=sha256:$(sha256sum "$WORK/layer.tar" | cut -d' ' -f1)
gzip -n -6 -c "$WORK/layer.tar" >"$WORK/layer.tar.gz"
put_blob() { # FILE -> prints the digest, stores the file in the layout
  local d; d=$(sha256sum "$1" | cut -d' ' -f1)
  cp "$1" "$LAYOUT/blobs/sha256/$d"
  echo "sha256:$d"
}
LAYER_DIGEST=$(put_blob "$WORK/layer.tar.gz")
jq -cn --arg diff "$DIFF_ID" '{architecture: "amd64", os: "linux",
  config: {Cmd: ["/bin/sh"]}, rootfs: {type: "layers", diff_ids: [$diff]}}' >"$WORK/config.json"
CONFIG_DIGEST=$(put_blob "$WORK/config.json")
jq -cn --arg cd "$CONFIG_DIGEST" --argjson cs "$(stat -c %s "$WORK/config.json")" \
  --arg ld "$LAYER_DIGEST" --argjson ls "$(stat -c %s "$WORK/layer.tar.gz")" \
  '{schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
    config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $cd, size: $cs},
    layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: $ld, size: $ls}]}' \
  >"$WORK/manifest.json"
MANIFEST_DIGEST=$(put_blob "$WORK/manifest.json")
MANIFEST_SIZE=$(stat -c %s "$WORK/manifest.json")
jq -cn --arg md "$MANIFEST_DIGEST" --argjson ms "$MANIFEST_SIZE" \
  '{schemaVersion: 2, manifests: [{mediaType: "application/vnd.oci.image.manifest.v1+json",
    digest: $md, size: $ms, annotations: {"org.opencontainers.image.ref.name": "latest"}}]}' \
  >"$LAYOUT/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$LAYOUT/oci-layout"

SKOPEO_CMD="skopeo copy --quiet --preserve-digests --dest-tls-verify=false oci:$LAYOUT:latest docker://127.0.0.1:PORT/bench/busybox:latest"
for s in "${SERVERS[@]}"; do
  skopeo copy --quiet --preserve-digests --dest-tls-verify=false \
    "oci:$LAYOUT:latest" "docker://127.0.0.1:${PORT[$s]}/bench/busybox:latest" >&2
  # Both must serve the very same manifest by tag.
  got=$(curl -fsS -D "$WORK/h" -H "Accept: $MANIFEST_ACCEPT" \
    "http://127.0.0.1:${PORT[$s]}/v2/bench/busybox/manifests/latest" | sha256sum | cut -d' ' -f1)
  [[ "sha256:$got" == "$MANIFEST_DIGEST" ]] || die "$s serves another manifest for bench/busybox:latest"
  grep -qi "^content-type: $MANIFEST_ACCEPT" "$WORK/h" || die "$s: manifest content type: $(grep -i '^content-type' "$WORK/h")"
done

step "pushing the 1 MiB and 64 MiB blobs to both"
RUNS=$WORK/runs.jsonl
: >"$RUNS"
declare -A BLOB
for spec in small:$SMALL_SIZE:1 large:$LARGE_SIZE:2; do
  IFS=: read -r name size seed <<<"$spec"
  for s in "${SERVERS[@]}"; do
    r=$("$LOADGEN" push "http://127.0.0.1:${PORT[$s]}" bench/blobs --size "$size" --seed "$seed")
    BLOB[$name]=$(jq -r .digest <<<"$r")
  done
done

# --- push throughput --------------------------------------------------------------------------
step "push throughput: $((PUSH_SIZE / 1048576)) MiB, $PUSH_REPS repetition(s)"
for rep in $(seq "$PUSH_REPS"); do
  if (( rep % 2 == 1 )); then order=(distribution gantry); else order=(gantry distribution); fi
  for s in "${order[@]}"; do
    r=$("$LOADGEN" push "http://127.0.0.1:${PORT[$s]}" bench/push --size "$PUSH_SIZE" --seed $((100 + rep)))
    jq -c --arg s "$s" --argjson rep "$rep" '{kind: "push", server: $s, rep: $rep} + .' <<<"$r" >>"$RUNS"
    echo "   push rep $rep $s: $(jq -r '.mb_s | round' <<<"$r") MB/s" >&2
  done
done

# --- GET load ---------------------------------------------------------------------------------
# measure name | path | expected size | accept
MEASURES=(
  "blob-1mib|/v2/bench/blobs/blobs/${BLOB[small]}|$SMALL_SIZE|"
  "blob-64mib|/v2/bench/blobs/blobs/${BLOB[large]}|$LARGE_SIZE|"
  "manifest|/v2/bench/busybox/manifests/latest|$MANIFEST_SIZE|$MANIFEST_ACCEPT"
)
LOADGEN_CMD="loadgen get http://127.0.0.1:PORT<path> --concurrency C --duration $DURATION --warmup $WARMUP --expect-size BYTES [--accept $MANIFEST_ACCEPT]"
k=0
for m in "${MEASURES[@]}"; do
  IFS='|' read -r name path size accept <<<"$m"
  for c in "${CONCURRENCY[@]}"; do
    if (( k % 2 == 0 )); then order=(distribution gantry); else order=(gantry distribution); fi
    k=$((k + 1))
    for s in "${order[@]}"; do
      extra=()
      [[ -n "$accept" ]] && extra=(--accept "$accept")
      t0=$(cpu_ticks "${PID[$s]}")
      r=$("$LOADGEN" get "http://127.0.0.1:${PORT[$s]}$path" --concurrency "$c" \
        --duration "$DURATION" --warmup "$WARMUP" --expect-size "$size" "${extra[@]}")
      t1=$(cpu_ticks "${PID[$s]}")
      jq -c --arg s "$s" --arg m "$name" --argjson first "$([[ $s == "${order[0]}" ]] && echo true || echo false)" \
        --argjson cpu "$(awk -v a="$t0" -v b="$t1" -v h="$CLK_TCK" 'BEGIN{print (b - a) / h}')" \
        '{kind: "get", server: $s, measure: $m, first: $first, server_cpu_s: $cpu} + .' <<<"$r" >>"$RUNS"
      echo "   $name c=$c $s: $(jq -r '"\(.rps | round) req/s, \(.mb_s | round) MB/s, p50 \(.latency_ms.p50) ms, p99 \(.latency_ms.p99) ms, errors \(.errors)"' <<<"$r")" >&2
    done
  done
done

# --- memory, machine --------------------------------------------------------------------------
declare -A HWM RSS
for s in "${SERVERS[@]}"; do
  kill -0 "${PID[$s]}" 2>/dev/null || die "$s died during the run"
  HWM[$s]=$(awk '/^VmHWM/ {print $2 * 1024}' "/proc/${PID[$s]}/status")
  RSS[$s]=$(awk '/^VmRSS/ {print $2 * 1024}' "/proc/${PID[$s]}/status")
done
STORAGE_FS=$(df -PT "$WORK" | awk 'NR == 2 {print $2 " on " $1 ", mounted at " $7}')
CMDLINE="bash bench/registry.sh${ARGS[*]:+ ${ARGS[*]}}"

mkdir -p "$(dirname "$OUT")"
jq -s \
  --arg started "$STARTED" --argjson took "$(( $(date +%s) - T_START ))" \
  --argjson quick "$([[ $QUICK == 1 ]] && echo true || echo false)" \
  --argjson duration "$DURATION" --argjson warmup "$WARMUP" --argjson reps "$PUSH_REPS" \
  --argjson push_size "$PUSH_SIZE" --argjson small "$SMALL_SIZE" --argjson large "$LARGE_SIZE" \
  --argjson manifest_size "$MANIFEST_SIZE" --arg manifest_digest "$MANIFEST_DIGEST" \
  --arg bench_dir "$BENCH_DIR" \
  --argjson d_hwm "${HWM[distribution]}" --argjson g_hwm "${HWM[gantry]}" \
  --argjson d_rss "${RSS[distribution]}" --argjson g_rss "${RSS[gantry]}" \
  --arg nproc "$(nproc)" --arg cpu "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)" \
  --arg mem "$(awk '/^MemTotal/ {printf "%.0f GiB RAM", $2 / 1048576}' /proc/meminfo)" \
  --arg kernel "$(uname -r)" --arg load_start "$LOAD_START" --arg load_end "$(cut -d' ' -f1-3 /proc/loadavg)" \
  --arg dver "$(docker-registry --version | awk '{print $3}')" --arg skver "$(skopeo --version | awk '{print $3}')" \
  --arg rustc "$(rustc --version 2>/dev/null || echo rustc?)" --arg rev "$GANTRY_REV" --arg fs "$STORAGE_FS" \
  --arg c1 "$CMDLINE" --arg c2 "$D_CMD" --arg c3 "$G_CMD" --arg c4 "$SKOPEO_CMD" --arg c5 "$LOADGEN_CMD" \
  --arg c6 "loadgen push http://127.0.0.1:PORT bench/push --size $PUSH_SIZE --seed 100+REP" \
  '
  def median: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  def ratio($a; $b): if $a == null or $b == null or $b == 0 then null else $a / $b end;
  . as $runs |
  [$runs[] | select(.kind == "get")] as $gets |
  [$runs[] | select(.kind == "push")] as $pushes |
  def run($s; $m; $c): first($gets[] | select(.server == $s and .measure == $m and .concurrency == $c));
  def lat($r; $q): if $r.latency_samples > 0 then $r.latency_ms[$q] else null end;
  def rows($m; $lbl; $metric):
    [1, 16, 64][] as $c | run("distribution"; $m; $c) as $d | run("gantry"; $m; $c) as $g |
    (if $metric == "rps" then {measure: "\($lbl) requests/s", kind: "throughput", unit: "req/s", dv: $d.rps, gv: $g.rps}
     elif $metric == "mbs" then {measure: "\($lbl) MB/s", kind: "throughput", unit: "MB/s", dv: $d.mb_s, gv: $g.mb_s}
     else {measure: "\($lbl) \($metric) latency", kind: $metric, unit: "ms", dv: lat($d; $metric), gv: lat($g; $metric)} end) |
    {measure, kind, concurrency: $c, distribution: {value: .dv, unit}, gantry: {value: .gv, unit},
     ratio: (if .kind == "throughput" then ratio(.gv; .dv) else ratio(.dv; .gv) end)};
  ([$pushes[] | select(.server == "distribution") | .mb_s]) as $dp |
  ([$pushes[] | select(.server == "gantry") | .mb_s]) as $gp |
  {
    started: $started, took_s: $took,
    params: {quick: $quick, duration_s: $duration, warmup_s: $warmup, push_reps: $reps,
             push_size: $push_size, blob_small: $small, blob_large: $large,
             manifest_size: $manifest_size, manifest_digest: $manifest_digest,
             concurrency: [1, 16, 64], bench_dir: $bench_dir},
    machine: {nproc: $nproc, cpu: $cpu, mem: $mem, kernel: $kernel, loadavg_at_start: $load_start,
              loadavg_at_end: $load_end, distribution_version: $dver, skopeo_version: $skver,
              rustc: $rustc, gantry_rev: $rev, storage_fs: $fs},
    commands: [$c1, $c2, $c3, $c4, $c5, $c6],
    table: (
      [rows("blob-1mib"; "blob GET 1 MiB"; "rps"), rows("blob-1mib"; "blob GET 1 MiB"; "p50"), rows("blob-1mib"; "blob GET 1 MiB"; "p99"),
       rows("blob-64mib"; "blob GET 64 MiB"; "mbs"), rows("blob-64mib"; "blob GET 64 MiB"; "p50"), rows("blob-64mib"; "blob GET 64 MiB"; "p99"),
       rows("manifest"; "manifest GET by tag"; "rps"), rows("manifest"; "manifest GET by tag"; "p50"), rows("manifest"; "manifest GET by tag"; "p99")]
      + [{measure: "push 256 MiB blob MB/s (median)", kind: "throughput", concurrency: null,
          distribution: {value: ($dp | median), unit: "MB/s"}, gantry: {value: ($gp | median), unit: "MB/s"},
          ratio: ratio($gp | median; $dp | median)},
         {measure: "peak RSS (VmHWM) over the run", kind: "memory", concurrency: null,
          distribution: {value: ($d_hwm / 1048576), unit: "MiB"}, gantry: {value: ($g_hwm / 1048576), unit: "MiB"},
          ratio: ratio($d_hwm; $g_hwm)}]),
    push: {distribution: $dp, gantry: $gp},
    memory: {distribution: {vmhwm_bytes: $d_hwm, vmrss_end_bytes: $d_rss}, gantry: {vmhwm_bytes: $g_hwm, vmrss_end_bytes: $g_rss}},
    cpu: [["blob-1mib", "blob-64mib", "manifest"][] as $m | [1, 16, 64][] as $c |
          run("distribution"; $m; $c) as $d | run("gantry"; $m; $c) as $g |
          {measure: $m, concurrency: $c, distribution_cpu_s: $d.server_cpu_s, gantry_cpu_s: $g.server_cpu_s,
           distribution_cpu_ms_per_req: (if $d.requests > 0 then $d.server_cpu_s * 1000 / $d.requests else null end),
           gantry_cpu_ms_per_req: (if $g.requests > 0 then $g.server_cpu_s * 1000 / $g.requests else null end)}],
    errors: {distribution: ([$gets[] | select(.server == "distribution") | .errors] | add),
             gantry: ([$gets[] | select(.server == "gantry") | .errors] | add),
             first: [$gets[] | select(.errors > 0) | {server, measure, concurrency, first_error}][0]},
    runs: $runs
  }' "$RUNS" >"$OUT"

MD=${OUT%.json}.md
print_report "$OUT" | tee "$MD"
step "wrote $OUT and $MD"
