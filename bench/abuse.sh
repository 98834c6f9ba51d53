#!/usr/bin/env bash
# Abuse load test: `gantry serve` under slow clients, overlapping ranges and a login flood at
# the same time as a normal pull workload (issue: hardening).
#
# Usage:
#   bash bench/abuse.sh [--duration SECS] [--attacks slow,ranges,logins] [--out FILE.json]
#                       [--egress-limit BYTES_PER_S] [--gantry BIN] [--no-build] [--keep]
#   bash bench/abuse.sh --report FILE.json     (print the Markdown of an earlier result again)
#
# One `gantry serve` on loopback with `[auth]` (a user `ci`, `public/**` pullable anonymously)
# and otherwise its default limits: the defaults are what is measured, unless
# --egress-limit N sets `[limits] client_egress_bytes_per_second = N` (every client address
# gets N blob bytes a second, its downloads together; the normal pulls need 25 MiB/s per
# address, so N should be well above that). Two phases of
# DURATION s each (default 45, longer than the default 30 s header timeout, so slow clients
# are dropped inside the window):
#   1. unloaded: the normal pull workload alone, from 8 node addresses (127.0.1.1-8), an open
#      workload on a fixed schedule, as a fleet's pulls arrive: 4 clients GET a manifest by tag
#      50 times a second each, 4 GET a 1 MiB blob 25 times a second each (200 manifests and
#      100 MB a second; anonymous pulls);
#   2. loaded: the same workload, measured the same way, while three attacks run from their
#      own addresses, started 2 s before the window and stopped after it, back to back and
#      as fast as the server answers. The attack clients run at `nice -n 19`: on a network
#      they run on other machines, and what is measured is the server's work for them, not
#      theirs (on loopback the clients' own receiving costs as much CPU as the sending):
#      - slow clients: 1000 connections from 127.0.2.1-50 that send a request's headers one
#        byte a second and never finish (slowloris); each closed one is replaced;
#      - overlapping ranges: 2 clients from 127.0.3.1-2 asking for a 64 MiB blob with
#        `Range: bytes=0-,0-,…` (64 times), back to back;
#      - a login flood: 16 clients from 127.0.4.1-16 fetching /token with a wrong password
#        for `ci` (8) and for unknown users (8), back to back.
# Measured: the normal pulls' latency percentiles in each phase (send to last byte, every
# answer checked: 200 and the exact size), the registry's RSS sampled every 0.2 s in each phase
# and its VmHWM, what each attack got (answers by status, the largest body, how long slow
# connections were held). Pass marks, in the JSON and the table: p99 loaded ≤ 2× unloaded for
# both pulls; peak RSS loaded ≤ unloaded + 256 MiB; the largest range answer ≤ the blob; no
# slow connection held past the header timeout + 5 s.
#
# Environment: BENCH_DIR (parent of the work dir, default /tmp), CARGO (default cargo),
# CARGO_TARGET_DIR (default <repo>/target). Requires cargo, jq, curl.
set -euo pipefail

DURATION=45
ATTACKS=slow,ranges,logins
EGRESS_LIMIT=0
OUT=""
BUILD=1
KEEP=0
GANTRY_BIN=""
REPORT=""

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --duration) DURATION="$2"; shift ;;
    --attacks) ATTACKS="$2"; shift ;;
    --egress-limit) EGRESS_LIMIT="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --no-build) BUILD=0 ;;
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
  def d(n): (. * pow(10; n) | round) / pow(10; n) | tostring;
  def ms: if . == null then "–" elif . >= 100 then (round | tostring) elif . >= 10 then d(1) else d(2) end;
  def mib: (. / 1048576 | d(1)) + " MiB";
  def ok: if . then "met" else "**not met**" end;
  "### Abuse: `gantry serve` (\(.gantry_rev)) under slow clients, overlapping ranges and a login flood",
  "",
  "\(.started), \(.params.duration_s) s per phase, loopback, default limits with `[auth]`\(if (.params.client_egress_bytes_per_second // 0) > 0 then " and `client_egress_bytes_per_second = \(.params.client_egress_bytes_per_second)` (\(.params.client_egress_bytes_per_second / 1048576 | d(0)) MiB/s per client address)" else "" end). Normal pulls, on a fixed schedule from 8 addresses: 200 manifests by tag and 100 blobs of 1 MiB a second, anonymous. Attack clients at nice 19, each as fast as it is answered.",
  "",
  "| normal pull | phase | requests | errors | p50 | p90 | p99 | max |",
  "|---|---|---:|---:|---:|---:|---:|---:|",
  (.phases[] as $ph | $ph.pulls[] |
    "| \(.name) | \($ph.name) | \(.ok_in_window) | \(.errors) | \(.latency_ms.p50 | ms) ms | \(.latency_ms.p90 | ms) ms | \(.latency_ms.p99 | ms) ms | \(.latency_ms.max | ms) ms |"),
  "",
  "| registry memory | unloaded | loaded |",
  "|---|---:|---:|",
  "| peak RSS (sampled every 0.2 s) | \(.phases[0].rss_peak_bytes | mib) | \(.phases[1].rss_peak_bytes | mib) |",
  "| VmHWM at the end of the phase | \(.phases[0].vmhwm_bytes | mib) | \(.phases[1].vmhwm_bytes | mib) |",
  "",
  "Attacks (loaded phase; \(.params.attacks)):",
  if .attacks.slow == null then empty else
  "- slow clients: \(.attacks.slow.connections) held open, \(.attacks.slow.opened) opened in all, \(.attacks.slow.closed_by_server) closed by the server, held at most \(.attacks.slow.max_held_s | d(1)) s (mean \(.attacks.slow.mean_held_s | d(1)) s);" end,
  if .attacks.ranges == null then empty else
  "- overlapping ranges: \(.attacks.ranges.requests) requests (\(.attacks.ranges.by_status | to_entries | map("\(.value)× \(.key)") | join(", "))), largest answer \(.attacks.ranges.max_body_bytes | mib) for a \(.params.large_blob_bytes | mib) blob, \(.attacks.ranges.body_bytes / 1e6 | round) MB sent in all;" end,
  if .attacks.logins_known == null then empty else
  "- login flood, user `ci`: \(.attacks.logins_known.requests) requests (\(.attacks.logins_known.by_status | to_entries | map("\(.value)× \(.key)") | join(", ")));",
  "- login flood, unknown users: \(.attacks.logins_unknown.requests) requests (\(.attacks.logins_unknown.by_status | to_entries | map("\(.value)× \(.key)") | join(", ")))." end,
  "",
  "Targets: p99 of the normal pulls loaded ≤ 2× unloaded — manifest \(.verdict.manifest_p99_ratio | d(2))×: \(.verdict.manifest_p99_ok | ok); blob \(.verdict.blob_p99_ratio | d(2))×: \(.verdict.blob_p99_ok | ok). Peak RSS loaded ≤ unloaded + 256 MiB: \(.verdict.rss_ok | ok). Largest range answer ≤ the blob: \(.verdict.ranges_ok | ok). No slow connection held past the header timeout + 5 s: \(.verdict.slow_ok | ok).",
  "",
  "Command: `\(.command)`"
  ' "$1"
}

if [[ -n "$REPORT" ]]; then
  print_report "$REPORT"
  exit 0
fi

die() { echo "abuse.sh: $*" >&2; exit 1; }
step() { echo "== $*" >&2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CARGO=${CARGO:-cargo}
TGT=${CARGO_TARGET_DIR:-$ROOT/target}
BENCH_DIR=${BENCH_DIR:-/tmp}
OUT=${OUT:-$ROOT/bench/results/abuse.json}
COMMAND="bash bench/abuse.sh --duration $DURATION --attacks $ATTACKS"
[[ $EGRESS_LIMIT =~ ^[0-9]+$ ]] || die "--egress-limit wants a number of bytes per second, not $EGRESS_LIMIT"
(( EGRESS_LIMIT > 0 )) && COMMAND+=" --egress-limit $EGRESS_LIMIT"
has() { [[ ",$ATTACKS," == *",$1,"* ]]; }
SMALL_SIZE=1048576
LARGE_SIZE=$((64 * 1048576))
HEADER_TIMEOUT_S=30 # gantry serve's default [connections] header_timeout
MANIFEST_ACCEPT="application/vnd.oci.image.manifest.v1+json"

for tool in jq curl "$CARGO"; do
  command -v "$tool" >/dev/null || die "$tool missing"
done

# --- build ------------------------------------------------------------------------------------
GANTRY_REV=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -n "$(cd "$ROOT" && git status --porcelain -- crates Cargo.toml Cargo.lock 2>/dev/null)" ]] && GANTRY_REV+="+work-tree-changes"
if [[ -n "$GANTRY_BIN" ]]; then
  GANTRY=$GANTRY_BIN
  GANTRY_REV="given binary $GANTRY_BIN"
else
  GANTRY=$TGT/release/gantry
  if [[ $BUILD == 1 ]]; then
    step "building gantry (cargo build --release -p gantry-cli, target dir $TGT)"
    (cd "$ROOT" && CARGO_TARGET_DIR="$TGT" "$CARGO" build --release -p gantry-cli) >&2
  fi
fi
if [[ $BUILD == 1 ]]; then
  step "building the load client (bench/loadgen)"
  CARGO_TARGET_DIR="$TGT" "$CARGO" build --release --locked \
    --manifest-path "$ROOT/bench/loadgen/Cargo.toml" >&2
fi
LOADGEN=$TGT/release/loadgen
[[ -x $GANTRY && -x $LOADGEN ]] || die "missing $GANTRY or $LOADGEN (run without --no-build)"
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)

# --- server -----------------------------------------------------------------------------------
WORK=$(mktemp -d "$BENCH_DIR/gantry-bench-abuse.XXXXXX")
G_PID=""
PIDS=()
cleanup() {
  local rc=$?
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  [[ -n "$G_PID" ]] && kill "$G_PID" 2>/dev/null && wait "$G_PID" 2>/dev/null
  if [[ $KEEP == 1 ]]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cp "$GANTRY" "$WORK/gantry-bin"
GANTRY=$WORK/gantry-bin

# The slow clients hold 1000 sockets; the server raises its own limit, this shell's children
# need theirs too.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

PORT=""
for _ in $(seq 200); do
  p=$((20000 + RANDOM % 40000))
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then PORT=$p; break; fi
done
[[ -n $PORT ]] || die "no free port"
BASE=http://127.0.0.1:$PORT
PASSWORD=abuse-bench-password

# start_server CONFIG: starts gantry serve in the background, sets G_PID, waits for /v2/.
start_server() {
  RUST_LOG=${RUST_LOG:-warn} "$GANTRY" serve --config "$1" >>"$WORK/gantry.log" 2>&1 &
  G_PID=$!
  for _ in $(seq 300); do
    kill -0 "$G_PID" 2>/dev/null || { cat "$WORK/gantry.log" >&2; die "gantry serve exited at start"; }
    code=$(curl -s -o /dev/null -w '%{http_code}' "$BASE/v2/" || true)
    [[ $code == 200 || $code == 401 ]] && return
    sleep 0.1
  done
  die "gantry serve did not answer on $BASE within 30 s"
}
stop_server() { kill "$G_PID" && wait "$G_PID" 2>/dev/null || true; G_PID=""; }

# Content first, without auth; then the same root with [auth].
cat >"$WORK/open.toml" <<EOF
addr = "127.0.0.1:$PORT"
root = "$WORK/root"
EOF
cat >"$WORK/auth.toml" <<EOF
addr = "127.0.0.1:$PORT"
root = "$WORK/root"

[limits]
client_egress_bytes_per_second = $EGRESS_LIMIT

[auth]
admins = ["ci"]

[[auth.access]]
repository = "public/**"
anonymous_pull = true
EOF
step "pushing the content (1 MiB and 64 MiB blobs, a manifest) to gantry serve on $BASE"
start_server "$WORK/open.toml"
SMALL=$("$LOADGEN" push "$BASE" public/bench --size $SMALL_SIZE --seed 1 | jq -r .digest)
LARGE=$("$LOADGEN" push "$BASE" public/bench --size $LARGE_SIZE --seed 2 | jq -r .digest)
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["%s"]}}' "$SMALL" >"$WORK/config.json"
CONFIG_DIGEST=sha256:$(sha256sum "$WORK/config.json" | cut -d' ' -f1)
loc=$(curl -fsS -X POST -o /dev/null -w '%{redirect_url}%header{location}' "$BASE/v2/public/bench/blobs/uploads/")
[[ $loc == http* ]] || loc=$BASE$loc
sep='?'; [[ $loc == *\?* ]] && sep='&'
curl -fsS -X PUT -H 'Content-Type: application/octet-stream' --data-binary @"$WORK/config.json" \
  "$loc${sep}digest=$CONFIG_DIGEST" -o /dev/null
jq -cn --arg cd "$CONFIG_DIGEST" --argjson cs "$(stat -c %s "$WORK/config.json")" \
  --arg ld "$SMALL" --argjson ls $SMALL_SIZE --arg md "$MANIFEST_ACCEPT" \
  '{schemaVersion: 2, mediaType: $md,
    config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $cd, size: $cs},
    layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar", digest: $ld, size: $ls}]}' \
  >"$WORK/manifest.json"
curl -fsS -X PUT -H "Content-Type: $MANIFEST_ACCEPT" --data-binary @"$WORK/manifest.json" \
  "$BASE/v2/public/bench/manifests/latest" -o /dev/null
MANIFEST_SIZE=$(stat -c %s "$WORK/manifest.json")
stop_server
printf '%s\n' "$PASSWORD" | "$GANTRY" user add ci --file "$WORK/root/auth/users" --password-stdin >&2
start_server "$WORK/auth.toml"
# The anonymous pull works, and a wrong password is refused, before anything is measured.
curl -fsS -o /dev/null -H "Accept: $MANIFEST_ACCEPT" "$BASE/v2/public/bench/manifests/latest" \
  || die "anonymous pull of public/bench:latest refused"
code=$(curl -s -o /dev/null -w '%{http_code}' -u ci:wrong "$BASE/token?service=gantry&scope=repository:public/bench:pull")
[[ $code == 401 ]] || die "a wrong password at /token got $code, expected 401"

# rss_sampler PID OUTFILE: peak VmRSS in bytes, sampled every 0.2 s until killed.
rss_sampler() {
  local peak=0 v
  trap 'echo "$peak" >"$2"; exit 0' TERM
  while :; do
    v=$(awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$1/status" 2>/dev/null || echo 0)
    (( v > peak )) && peak=$v
    echo "$peak" >"$2"
    sleep 0.2
  done
}
vmhwm() { awk '/^VmHWM:/ {print $2 * 1024}' "/proc/$G_PID/status"; }

# pulls NAME: the measured normal workload, in parallel, JSON to $WORK/NAME-*.json.
pulls() {
  "$LOADGEN" get "$BASE/v2/public/bench/manifests/latest" --accept "$MANIFEST_ACCEPT" \
    --concurrency 4 --rate 50 --duration "$DURATION" --warmup 1 --expect-size "$MANIFEST_SIZE" \
    --sources 127.0.1.1/4 >"$WORK/$1-manifest.json" &
  local m=$!
  "$LOADGEN" get "$BASE/v2/public/bench/blobs/$SMALL" \
    --concurrency 4 --rate 25 --duration "$DURATION" --warmup 1 --expect-size $SMALL_SIZE \
    --sources 127.0.1.5/4 >"$WORK/$1-blob.json" &
  local b=$!
  wait "$m" "$b"
}

phase() { # NAME
  rss_sampler "$G_PID" "$WORK/$1-rss" &
  local s=$!
  pulls "$1"
  kill -TERM "$s"; wait "$s" 2>/dev/null || true
  vmhwm >"$WORK/$1-hwm"
}

step "phase 1: the normal pull workload alone ($DURATION s)"
phase unloaded

step "phase 2: the same with slow clients, overlapping ranges and a login flood ($DURATION s)"
ATTACK=$((DURATION + 4))
RANGE=$(printf '0-,%.0s' $(seq 64)); RANGE=bytes=${RANGE%,}
# An attack left out (--attacks) is recorded as null.
for f in slow ranges logins-known logins-unknown; do echo null >"$WORK/$f.json"; done
if has slow; then
  nice -n 19 "$LOADGEN" slow "$BASE/v2/" --connections 1000 --duration "$ATTACK" \
    --sources 127.0.2.1/50 >"$WORK/slow.json" &
  PIDS+=($!)
fi
if has ranges; then
  nice -n 19 "$LOADGEN" hammer "$BASE/v2/public/bench/blobs/$LARGE" --concurrency 2 --duration "$ATTACK" \
    --header "Range: $RANGE" --sources 127.0.3.1/2 >"$WORK/ranges.json" &
  PIDS+=($!)
fi
if has logins; then
  nice -n 19 "$LOADGEN" hammer "$BASE/token?service=gantry&scope=repository:public/bench:pull" \
    --concurrency 8 --duration "$ATTACK" --sources 127.0.4.1/8 \
    --header "Authorization: Basic $(printf 'ci:wrong' | base64)" >"$WORK/logins-known.json" &
  PIDS+=($!)
  nice -n 19 "$LOADGEN" hammer "$BASE/token?service=gantry&scope=repository:public/bench:pull" \
    --concurrency 8 --duration "$ATTACK" --sources 127.0.4.9/8 \
    --header "Authorization: Basic $(printf 'nobody-here:wrong' | base64)" >"$WORK/logins-unknown.json" &
  PIDS+=($!)
fi
sleep 2
phase loaded
for p in "${PIDS[@]}"; do wait "$p" || die "an attack client failed (see $WORK)"; done
PIDS=()
kill -0 "$G_PID" 2>/dev/null || die "gantry serve died under the attacks"
curl -fsS -o /dev/null "$BASE/v2/public/bench/blobs/$SMALL" || die "gantry serve does not answer after the attacks"

# --- result -----------------------------------------------------------------------------------
mkdir -p "$(dirname "$OUT")"
jq -n \
  --arg started "$STARTED" --arg rev "$GANTRY_REV" --arg command "$COMMAND" \
  --argjson duration "$DURATION" --argjson egress "$EGRESS_LIMIT" --argjson large $LARGE_SIZE --argjson hto $HEADER_TIMEOUT_S \
  --slurpfile um "$WORK/unloaded-manifest.json" --slurpfile ub "$WORK/unloaded-blob.json" \
  --slurpfile lm "$WORK/loaded-manifest.json" --slurpfile lb "$WORK/loaded-blob.json" \
  --argjson urss "$(cat "$WORK/unloaded-rss")" --argjson lrss "$(cat "$WORK/loaded-rss")" \
  --argjson uhwm "$(cat "$WORK/unloaded-hwm")" --argjson lhwm "$(cat "$WORK/loaded-hwm")" \
  --slurpfile slow "$WORK/slow.json" --slurpfile ranges "$WORK/ranges.json" \
  --slurpfile lk "$WORK/logins-known.json" --slurpfile lu "$WORK/logins-unknown.json" \
  --arg machine "$(nproc) cores, $(uname -r)" --arg attacks "$ATTACKS" '
  def named(n): {name: n} + .;
  {
    started: $started, gantry_rev: $rev, command: $command, machine: $machine,
    params: {duration_s: $duration, attacks: $attacks, client_egress_bytes_per_second: $egress, large_blob_bytes: $large, header_timeout_s: $hto},
    phases: [
      {name: "unloaded", pulls: [($um[0] | named("manifest by tag")), ($ub[0] | named("blob 1 MiB"))],
       rss_peak_bytes: $urss, vmhwm_bytes: $uhwm},
      {name: "loaded", pulls: [($lm[0] | named("manifest by tag")), ($lb[0] | named("blob 1 MiB"))],
       rss_peak_bytes: $lrss, vmhwm_bytes: $lhwm}
    ],
    attacks: {slow: $slow[0], ranges: $ranges[0], logins_known: $lk[0], logins_unknown: $lu[0]}
  }
  | .verdict = {
      manifest_p99_ratio: ($lm[0].latency_ms.p99 / $um[0].latency_ms.p99),
      blob_p99_ratio: ($lb[0].latency_ms.p99 / $ub[0].latency_ms.p99),
      rss_ok: ($lrss <= $urss + 268435456),
      ranges_ok: ($ranges[0] == null or $ranges[0].max_body_bytes <= $large),
      slow_ok: ($slow[0] == null or $slow[0].max_held_s <= $hto + 5),
      pulls_error_free: ($um[0].errors + $ub[0].errors + $lm[0].errors + $lb[0].errors == 0)
    }
  | .verdict.manifest_p99_ok = (.verdict.manifest_p99_ratio <= 2)
  | .verdict.blob_p99_ok = (.verdict.blob_p99_ratio <= 2)
  ' >"$OUT"
print_report "$OUT" | tee "${OUT%.json}.md"
jq -e '.verdict.pulls_error_free' "$OUT" >/dev/null || die "normal pulls had errors (see $OUT)"
