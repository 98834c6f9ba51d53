#!/usr/bin/env bash
# Delivery benchmark: push and pull of the next day's update, Gantry against the layer-level way
# (benchmark figures 1, 2, 5 and 7).
#
# Usage (as root):
#   bash bench/delivery.sh [--scale 3.1GB] [--update-mb 50] [--rate 200mbit] [--out FILE.json]
#                          [--gantry BIN] [--keep] [--workload DIR] [--first layer-level|gantry]
#   bash bench/delivery.sh --quick          (60MB sample, 15 MB update: a few minutes, for CI)
#   bash bench/delivery.sh --report FILE.json     (print the Markdown of an earlier result again)
#
# One generated sample game (seed 1), v1 and then v2 after `gantry sample-game --update --mb
# N`, built by `buildah bud --layers` of the sample's two-stage Dockerfile (busybox base made
# as bench/build.sh makes it; v2 built warm on v1's storage) and by `gantry build` (OCI
# layouts, the same base blob). To keep the disk peak down the layer-level side is built and
# pushed first and its storage removed; the sample is then generated again for Gantry's
# builds (deterministic from --seed: the two generation and update reports must be equal).
# Build times are recorded but are not the point here (bench/build.sh measures builds).
#
# The "node" (and the CI host that pushes) is a network namespace joined to the host by a
# veth pair; the registries run on the host side and listen on the host end's address, so
# every byte between node and registry crosses the veth. Bytes on the link are the veth's
# own counters (/sys/class/net/<host end>/statistics, rx = node to registry, tx = registry
# to node): whole Ethernet frames, i.e. payload plus HTTP, TCP, IP and Ethernet headers and
# ACKs. Nothing else uses that link. Registry-level payload figures are given next to them.
#
# A. Push of v2 after v1 (figure 2), each from the namespace (run A3, A1, A2):
#   A1 `gantry push L1 REF:v1`, then `gantry push L2 REF:v2 --delta-from v1` to `gantry serve`
#      (delta push); payload = increase of gantry_registry_bytes_received_total at /metrics.
#   A2 the same two `gantry push` to `docker-registry` (CNCF distribution, layer-level);
#      payload = growth of its docker/registry/v2/blobs directory (du -sb).
#   A3 `buildah push` of the buildah images v1 then v2 to a second docker-registry (gzip
#      layers, as buildah pushes by default); payload measured like A2. This registry stays
#      up for B2.
#   Each against the update's own size (update_bytes of `gantry sample-game --update --json`:
#   the gzip -6 size of what is new or changed in v2).
# B. Pull on a node that holds v1 (figures 1, 5 and 7). containerd runs inside
#   the namespace, private (own root, state, sockets and config in the work dir, CRI off, as
#   crates/test-support/src/containerd.rs does it), and so does `ctr` (the client does the
#   fetching in containerd 1.6):
#   B1 `gantry agent` on the node (in the namespace, 127.0.0.1), upstream `gantry serve` across
#      the link; hosts.toml from `gantry agent install-containerd-config`; `ctr images pull
#      --hosts-dir` v1, then v2. Payload = increase of gantry_agent_upstream_bytes_total.
#   B2 the layer-level way: a second containerd pulls the buildah images directly from the
#      docker-registry of A3 (`ctr images pull --plain-http`) v1, then v2. Payload = the
#      sizes of v2's blobs (layers, config) that v1 does not have, plus v2's manifest.
#   B2 runs first (then its registry is removed), B1 second (the other way round with --first gantry).
#   Before each v2 pull `tc qdisc ... tbf rate RATE` limits both ends of the veth; the v1
#   pulls run unlimited. Wall time = `ctr images pull` of v2 (fetch + unpack + metadata).
#   `gantry serve` is restarted on its storage before B, so its VmHWM (peak RSS, from
#   /proc/PID/status) covers the pulls only; the agent's is read after the v1 pull and again
#   at the end; docker-registry's are reported for comparison (figure 7: < 200 MB).
# The B1 node is torn down before B2 starts (disk: each node holds v1 and v2 unpacked).
#
# --first gantry runs Gantry's side first at each stage (builds and pushes A1/A2 before A3,
# the pull B1 before B2; the buildah images' registry then stays up through B1); the default is
# layer-level.
# bench/run.sh alternates it between repetitions. --workload DIR takes the sample from DIR
# (DIR/v1, DIR/v2, DIR/sample.json, DIR/update.json, made by bench/run.sh) instead of
# generating it: v1 is copied and the update applied file by file from DIR/v2 (as
# bench/build.sh does), so all the harness's scripts use the same bytes.
#
# Disk: about 4.5 × the scale at the peak (a node holding v1 and v2 unpacked plus what its
# agent holds plus both registries' storage; large intermediate state is removed as soon as it
# is no longer needed, the work dir at the end). Environment: BENCH_DIR (parent of
# the work dir, default /tmp), CARGO (default cargo), CARGO_TARGET_DIR (default <repo>/target;
# the binary is copied into the work dir before the runs, so later edits of the tree do not
# matter; --gantry BIN takes a given binary instead of building).
# Writes the JSON (--out, default bench/results/delivery-<scale>.json, delivery-quick.json
# with --quick) and prints a Markdown report on stdout (also saved next to the JSON as .md);
# step messages go to stderr. Requires: buildah, containerd (ctr), docker-registry, iproute2
# (ip, tc), busybox-static, jq, curl.
set -euo pipefail

SCALE=3.1GB
UPDATE_MB=50
RATE=200mbit
SEED=1
OUT=""
QUICK=0
KEEP=0
REPORT=""
GANTRY_BIN=""
WORKLOAD=""
FIRST=layer-level
ARGS=("$@")

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

# print_report FILE.json: the Markdown for BENCHMARKS.md, from a result file.
print_report() {
  jq -r '
  def d1: (. * 10 | round) as $t | "\($t / 10 | floor).\($t % 10)";
  def d2: (. * 100 | round) as $t | "\($t / 100 | floor).\($t % 100 | if . < 10 then "0\(.)" else tostring end)";
  def d3: (. * 1000 | round) / 1000 | tostring;
  def s: if . == null then "–" else (. | d2) + " s" end;
  def x: if . == null then "–" elif . >= 10 then (. | d1) + "×" else (. | d2) + "×" end;
  def mb: if . == null then "–" elif . == 0 then "0" elif . >= 1e6 then (. / 1e6 | d1) + " MB" else (. / 1e3 | d1) + " kB" end;
  def pct: if . == null then "–" else (. * 100 | d2) + " %" end;
  def mib: (. / 1024 | round | tostring) + " MiB";
  .update.update_bytes as $u |
  "### Delivery: push and pull of the \(.params.update_mb) MB update (\(.params.scale))",
  "",
  "Sample game: \(.sample.total_bytes | mb) in \(.sample.files_written) files (seed \(.params.seed)); update: \(.update.changed_bytes | mb) changed in \(.update.files_changed) files, **update'"'"'s own size \($u | mb)** (gzip -6 of what is new or changed). Images: gantry v2 \(.images.gantry_v2_bytes | mb) (\(.images.gantry_layers) layers), buildah v2 \(.images.buildah_v2_bytes | mb) (\(.images.buildah_layers) layers).",
  "",
  "Bytes on the link: the veth counters of the node'"'"'s link (Ethernet frames: payload + HTTP/TCP/IP headers + ACKs), both directions for a push, registry → node for a pull. × update = link bytes ÷ update'"'"'s own size.",
  "",
  "#### Push of v2 (v1 already in the registry) — figure 2",
  "",
  "| client → registry | v2 wall time | v2 bytes on the link (up + down) | v2 payload at the registry | × update (link) | × update (payload) | v1 wall time | v1 bytes on the link |",
  "|---|---:|---:|---:|---:|---:|---:|---:|",
  (.push[] | "| \(.label) | \(.v2.seconds | s) | \(.v2.link_bytes | mb) (\(.v2.link_up_bytes | mb) + \(.v2.link_down_bytes | mb)) | \(.v2.payload_bytes | mb) | \(.v2.link_bytes / $u | x) | \(.v2.payload_bytes / $u | x) | \(.v1.seconds | s) | \(.v1.link_bytes | mb) |"),
  "",
  "Payload: \(.push[0].payload_kind); \(.push[1].payload_kind). Delta push: gantry_registry_delta_reused_bytes_total grew by \(.push[0].v2.delta_reused_bytes | mb) (bytes assembled on the registry from blobs it held, not sent). buildah push v2 / gantry delta push v2: time \(.push[2].v2.seconds / .push[0].v2.seconds | x), link bytes \(.push[2].v2.link_bytes / .push[0].v2.link_bytes | x).",
  "",
  "#### Pull of v2 on a node that holds v1 — figures 1 and 5",
  "",
  "| node pulls from | bytes on the link (registry → node) | payload | × update (link) | × update (payload) | % of the image (link) | `ctr images pull` v2 at \(.params.rate) | of which: new layers in the content store after | v1 pull, unlimited |",
  "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  (.pull[] | "| \(.label) | \(.v2.link_down_bytes | mb) | \(.v2.payload_bytes | mb) | \(.v2.link_down_bytes / $u | x) | \(.v2.payload_bytes / $u | x) | \(.v2.link_down_bytes / .image_bytes | pct) | \(.v2.seconds | s) | \(.v2.new_layers_committed_s | s) | \(.v1.seconds | s) |"),
  "",
  "Payload: \(.pull[0].payload_kind); \(.pull[1].payload_kind). Pull wall time, layer-level ÷ Gantry: **\(.pull[1].v2.seconds / .pull[0].v2.seconds | x)**; until the new layers are in containerd'"'"'s content store (the download part; the rest is mostly containerd unpacking the changed layers, which both sides do alike): \(if .pull[0].v2.new_layers_committed_s and .pull[1].v2.new_layers_committed_s then (.pull[1].v2.new_layers_committed_s / .pull[0].v2.new_layers_committed_s | x) else "–" end); bytes on the link: \(.pull[1].v2.link_down_bytes / .pull[0].v2.link_down_bytes | x). The layer-level v2 pull averaged \(.pull[1].v2.link_down_bytes / .pull[1].v2.seconds | mb)/s on the link (the limit is \(.params.rate)), fetch and unpack together. For v2 the agent obtained \(.pull[0].agent_v2_blobs | length) blob(s) (\([.pull[0].agent_v2_blobs[] | .size] | add // 0 | mb)) in \([.pull[0].agent_v2_blobs[] | .seconds] | add // 0 | s) of assembly (its /status), fetching \(.pull[0].v2.payload_bytes | mb) upstream and reusing \(.pull[0].v2.reused_bytes | mb) from blobs the node held; it served \(.pull[0].v2.served_bytes | mb) to containerd, which then unpacked the layers.",
  "",
  "#### Memory (VmHWM, peak resident set) — figure 7",
  "",
  "| process | what it did | peak RSS |",
  "|---|---|---:|",
  (.rss[] | "| \(.process) | \(.during) | \(.vmhwm_kb | mib) |"),
  "",
  "Checks: " + (.checks | to_entries | map("\(.key) = \(.value)") | join(", ")) + ".",
  "",
  "Computed by `gantry diff oci:L1 oci:L2` (no network): whole image \(.diff.image_bytes | mb), layer-level \(.diff.layer_level_bytes | mb), chunk-level \(.diff.chunk_level_bytes | mb); buildah images, layer-level: \(.pull[1].v2.payload_bytes | mb).",
  "",
  "Builds (context only; bench/build.sh measures them): gantry v1 \(.builds.gantry_v1_s | s), v2 \(.builds.gantry_v2_s | s) (warm cache); buildah bud v1 \(.builds.buildah_v1_s | s), v2 \(.builds.buildah_v2_s | s) (--layers, warm).",
  "",
  "Machine: \(.machine.nproc) cores, \(.machine.cpu), kernel \(.machine.kernel); load average \(.machine.loadavg_at_start) at the start, \(.machine.loadavg_at_end) at the end (shared machine: other jobs may run). Link: veth pair, tc tbf \(.params.rate) (burst \(.params.tbf_burst), latency \(.params.tbf_latency)) on both ends during the v2 pulls only. Containerd snapshotter: \(.versions.snapshotter). Work dir (sample, builds, registries'"'"' storage, node state) in \(.params.bench_dir // "/tmp") (\(.params.bench_fs // "?")). Started \(.date), took \(.took_s | round) s after the build.",
  "",
  "Versions: \(.versions.gantry) (\(.versions.git)), \(.versions.buildah), containerd \(.versions.containerd), docker-registry \(.versions.distribution).",
  "",
  "Commands (REG = the registry host:port on the host end of the veth; L1/L2 = gantry layouts; S = buildah storage; every push and pull runs inside the node namespace):",
  "```",
  .invocation,
  (.commands[]),
  "```"
  ' "$1"
}

while (($#)); do
  case "$1" in
    --scale) SCALE="$2"; shift 2 ;;
    --scale=*) SCALE="${1#*=}"; shift ;;
    --update-mb) UPDATE_MB="$2"; shift 2 ;;
    --update-mb=*) UPDATE_MB="${1#*=}"; shift ;;
    --rate) RATE="$2"; shift 2 ;;
    --rate=*) RATE="${1#*=}"; shift ;;
    --out) OUT="$2"; shift 2 ;;
    --out=*) OUT="${1#*=}"; shift ;;
    --quick) QUICK=1; shift ;;
    --gantry) GANTRY_BIN="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --workload) WORKLOAD="$2"; shift 2 ;;
    --first) FIRST="$2"; shift 2 ;;
    --report) REPORT="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [[ -n "$REPORT" ]]; then print_report "$REPORT"; exit 0; fi
if ((QUICK)); then
  # --quick picks the small scale unless --scale / --update-mb were given explicitly
  [[ " ${ARGS[*]} " == *" --scale"* ]] || SCALE=60MB
  [[ " ${ARGS[*]} " == *" --update-mb"* ]] || UPDATE_MB=15
fi
[[ "$UPDATE_MB" =~ ^[0-9]+$ ]] || { echo "--update-mb wants a whole number of MB" >&2; exit 2; }
[[ "$FIRST" == layer-level || "$FIRST" == gantry ]] || { echo "--first wants layer-level or gantry" >&2; exit 2; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
INVOCATION="${BENCH_DIR:+BENCH_DIR=$BENCH_DIR }bash bench/delivery.sh${ARGS[*]:+ ${ARGS[*]}}"
if [[ -z "$OUT" ]]; then
  if ((QUICK)); then OUT="$REPO/bench/results/delivery-quick.json"
  else OUT="$REPO/bench/results/delivery-$SCALE.json"; fi
fi
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac

export PATH="${HOME:-/root}/.cargo/bin:${PATH}:/usr/local/sbin:/usr/sbin:/sbin"
export BUILDAH_ISOLATION=chroot

log() { printf '[delivery %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[delivery] FAILED: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }

[[ "$(id -u)" == 0 ]] || die "network namespaces, containerd and buildah's private storage need root"
for tool in buildah containerd ctr docker-registry ip tc jq curl du findmnt; do
  command -v "$tool" >/dev/null || die "$tool missing (apt-get install -y buildah containerd docker-registry iproute2 busybox-static jq curl)"
done
BUSYBOX=/bin/busybox
[[ -x "$BUSYBOX" ]] || die "$BUSYBOX missing (apt-get install -y busybox-static)"

# Rough disk check: the peak is about 4.5 × the scale (see above).
scale_bytes="$(awk -v s="$SCALE" 'BEGIN { n = s + 0; u = toupper(s); sub(/^[0-9.]+/, "", u);
  m = (u == "GB") ? 1e9 : (u == "MB") ? 1e6 : (u == "KB") ? 1e3 : 1; printf "%.0f", n * m }')"
avail="$(df -B1 --output=avail "${BENCH_DIR:-/tmp}" | tail -n1 | tr -d ' ')"
if ((avail < scale_bytes * 9 / 2)); then
  die "about $((scale_bytes * 9 / 2000000000)) GB of free disk needed under ${BENCH_DIR:-/tmp}, $((avail / 1000000000)) GB available"
fi
BENCH_FS="$(findmnt -n -o FSTYPE --target "${BENCH_DIR:-/tmp}" 2>/dev/null | head -n1)"
if [[ "$BENCH_FS" == tmpfs ]]; then
  # in RAM: leave room for everything else on the machine
  mem_avail="$(awk '/^MemAvailable:/ { printf "%.0f", $2 * 1024 }' /proc/meminfo)"
  if ((mem_avail < scale_bytes * 9 / 2 + 4000000000)); then
    die "BENCH_DIR ${BENCH_DIR:-/tmp} is tmpfs: about $(((scale_bytes * 9 / 2 + 4000000000) / 1000000000)) GB of available memory needed, $((mem_avail / 1000000000)) GB available"
  fi
fi

# ---------------------------------------------------------------------------------------------
# The binary: built once, then copied into the work dir (the tree may be edited meanwhile).
LOADAVG_START="$(cut -d' ' -f1-3 /proc/loadavg)"
WORK="$(mktemp -d "${BENCH_DIR:-/tmp}/gantry-delivery.XXXXXX")"
NS="gdelivery-$$"
VH="gdv$$h"; VN="gdv$$n"
PIDS=()
CTD_DIRS=()

stop_pid() {  # stop_pid PID: SIGTERM, up to 10 s, then SIGKILL
  local p="$1" i
  kill -0 "$p" 2>/dev/null || return 0
  kill -TERM "$p" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}

unmount_under() {  # lazily unmount everything at or below DIR (host mount namespace)
  { findmnt -rn -o TARGET 2>/dev/null | grep -F "$1/" || true; } | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
}

cleanup() {
  local rc=$? p
  set +e
  trap - EXIT INT TERM
  for p in "${PIDS[@]}"; do stop_pid "$p"; done
  ip netns del "$NS" 2>/dev/null      # removes the veth pair (and its qdiscs) with it
  ip link del "$VH" 2>/dev/null
  if ((KEEP)); then
    log "kept the work dir $WORK (--keep)"
  else
    unmount_under "$WORK"
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log "work dir $WORK"
mkdir -p "$WORK/bin" "$WORK/res" "$WORK/logs" "$WORK/tmp"
# buildah's commit stages a whole layer in $TMPDIR (default /var/tmp): keep it in the work dir
export TMPDIR="$WORK/tmp"
RES="$WORK/res"; LOGS="$WORK/logs"

if [[ -n "$GANTRY_BIN" ]]; then
  [[ -x "$GANTRY_BIN" ]] || die "--gantry $GANTRY_BIN is not executable"
  cp "$GANTRY_BIN" "$WORK/bin/gantry"
  GIT_REV="given binary $GANTRY_BIN, built $(date -u -r "$GANTRY_BIN" +%Y-%m-%dT%H:%MZ); HEAD then $(git -C "$REPO" log -1 --before="$(date -u -r "$GANTRY_BIN" +%Y-%m-%dT%H:%M:%SZ)" --format=%h 2>/dev/null || echo unknown)"
else
  log "building gantry (cargo build --release -p gantry-cli)"
  tries=0
  until (cd "$REPO" && "${CARGO:-cargo}" build --release --quiet -p gantry-cli); do
    tries=$((tries + 1))
    ((tries < 5)) || die "cargo build failed $tries times"
    log "build failed (the tree may be mid-edit); retrying in 60 s"
    sleep 60
  done
  cp "${CARGO_TARGET_DIR:-$REPO/target}/release/gantry" "$WORK/bin/gantry"
  GIT_REV="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  git -C "$REPO" diff --quiet HEAD -- crates Cargo.toml Cargo.lock 2>/dev/null || GIT_REV="$GIT_REV+work-tree-changes"
fi
G="$WORK/bin/gantry"
"$G" --version >/dev/null || die "$G does not run"
T_START="$(now)"

# ---------------------------------------------------------------------------------------------
# The node: a network namespace and a veth pair; the registries listen on the host end.
for ((i = 0; i < 50; i++)); do
  oct=$((RANDOM % 250 + 1))
  ip -4 addr show | grep -q "inet 10\.231\.$oct\." || break
done
HOST_IP="10.231.$oct.1"; NODE_IP="10.231.$oct.2"
log "node namespace $NS, link $VH ($HOST_IP) <-> $VN ($NODE_IP)"
ip netns add "$NS"
ip link add "$VH" type veth peer name "$VN"
ip link set "$VN" netns "$NS"
ip addr add "$HOST_IP/30" dev "$VH"
ip link set "$VH" up
ip netns exec "$NS" ip addr add "$NODE_IP/30" dev "$VN"
ip netns exec "$NS" ip link set "$VN" up
ip netns exec "$NS" ip link set lo up
innode() { ip netns exec "$NS" "$@"; }

TBF_BURST=256kb; TBF_LATENCY=50ms
limit_link() {
  tc qdisc replace dev "$VH" root tbf rate "$RATE" burst "$TBF_BURST" latency "$TBF_LATENCY"
  innode tc qdisc replace dev "$VN" root tbf rate "$RATE" burst "$TBF_BURST" latency "$TBF_LATENCY"
}
unlimit_link() {
  tc qdisc del dev "$VH" root 2>/dev/null || true
  innode tc qdisc del dev "$VN" root 2>/dev/null || true
}
# host end counters: tx = registry -> node, rx = node -> registry
link_tx() { cat "/sys/class/net/$VH/statistics/tx_bytes"; }
link_rx() { cat "/sys/class/net/$VH/statistics/rx_bytes"; }

free_port() {
  local p
  while :; do
    p=$((RANDOM % 30000 + 20000))
    [[ -z "$(ss -Hltn "( sport = :$p )")" ]] && { echo "$p"; return; }
  done
}

wait_http() {  # wait_http URL [innode]: until GET URL answers (any HTTP status)
  local url="$1" i
  for ((i = 0; i < 300; i++)); do
    if [[ "${2:-}" == innode ]]; then innode curl -s -o /dev/null "$url" && return 0
    else curl -s -o /dev/null "$url" && return 0; fi
    sleep 0.1
  done
  return 1
}

# metric_sum URL NAME [innode]: the sum of a Prometheus counter over its label sets
metric_sum() {
  local body
  if [[ "${3:-}" == innode ]]; then body="$(innode curl -sf "$1")"; else body="$(curl -sf "$1")"; fi
  awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $NF } END { printf "%.0f\n", s + 0 }' <<< "$body"
}
# expect_comm PID NAME: the pid we track is the program itself (a wrapper's pid would make
# the RSS figures and the cleanup wrong)
expect_comm() {
  local i
  for ((i = 0; i < 50; i++)); do  # right after `&` the child may not have exec'd yet
    [[ "$(cat "/proc/$1/comm" 2>/dev/null)" == "$2" ]] && return 0
    sleep 0.1
  done
  die "pid $1 is not $2 ($(cat "/proc/$1/comm" 2>/dev/null))"
}
vmhwm() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }
blobs_bytes() { du -sb "$1/docker/registry/v2/blobs" 2>/dev/null | cut -f1 || echo 0; }

# ---------------------------------------------------------------------------------------------
# Servers
start_serve() {  # start_serve ROOT PORT: gantry serve on the host end; sets SERVE_PID
  "$G" serve --addr "$HOST_IP:$2" --root "$1" >> "$LOGS/serve.log" 2>&1 &
  SERVE_PID=$!; PIDS+=("$SERVE_PID")
  expect_comm "$SERVE_PID" gantry
  wait_http "http://$HOST_IP:$2/v2/" || { tail -n 20 "$LOGS/serve.log" >&2; die "gantry serve did not start"; }
}

start_distribution() {  # start_distribution NAME PORT: docker-registry; sets DIST_PID, DIST_DATA
  local dir="$WORK/$1"
  mkdir -p "$dir/data"
  cat > "$dir/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: $HOST_IP:$2
EOF
  docker-registry serve "$dir/config.yml" > "$LOGS/$1.log" 2>&1 &
  DIST_PID=$!; PIDS+=("$DIST_PID"); DIST_DATA="$dir/data"
  expect_comm "$DIST_PID" docker-registry
  wait_http "http://$HOST_IP:$2/v2/" || { tail -n 20 "$LOGS/$1.log" >&2; die "docker-registry $1 did not start"; }
}

# start_containerd NAME: a private containerd inside the node namespace; sets CTD_PID, CTD_SOCK,
# CTD_DIR, CTD_SNAP. No CRI, its own root/state/sockets/opt dir.
start_containerd() {
  CTD_DIR="$WORK/$1"
  mkdir -p "$CTD_DIR/root" "$CTD_DIR/state" "$CTD_DIR/opt" "$CTD_DIR/hosts"
  CTD_SOCK="$CTD_DIR/containerd.sock"
  ((${#CTD_SOCK} < 95)) || die "containerd socket path too long: $CTD_SOCK (set BENCH_DIR shorter)"
  cat > "$CTD_DIR/config.toml" <<EOF
# generated by bench/delivery.sh: private paths, no CRI
version = 2
root = "$CTD_DIR/root"
state = "$CTD_DIR/state"
oom_score = 0
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]
[grpc]
  address = "$CTD_SOCK"
  uid = 0
  gid = 0
[ttrpc]
  address = "$CTD_SOCK.ttrpc"
[debug]
  address = ""
  level = "info"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$CTD_DIR/opt"
EOF
  # not through the innode function: $! must be containerd itself (ip netns exec execs it)
  ip netns exec "$NS" containerd --config "$CTD_DIR/config.toml" > "$CTD_DIR/containerd.log" 2>&1 &
  CTD_PID=$!; PIDS+=("$CTD_PID"); CTD_DIRS+=("$CTD_DIR")
  expect_comm "$CTD_PID" containerd
  local i
  for ((i = 0; i < 600; i++)); do
    kill -0 "$CTD_PID" 2>/dev/null || { tail -n 30 "$CTD_DIR/containerd.log" >&2; die "containerd exited at start"; }
    ctr --address "$CTD_SOCK" version > /dev/null 2>&1 && break
    sleep 0.1
  done
  ctr --address "$CTD_SOCK" version > /dev/null 2>&1 || die "containerd did not answer within 60 s"
  if ctr --address "$CTD_SOCK" plugins ls | awk '$1 == "io.containerd.snapshotter.v1" && $2 == "overlayfs" && $NF == "ok" { f = 1 } END { exit !f }'; then
    CTD_SNAP=overlayfs
  else
    CTD_SNAP=native
  fi
}
# nctr ARGS: ctr against the current containerd, run inside the node namespace
nctr() { innode env CONTAINERD_SNAPSHOTTER="$CTD_SNAP" ctr --address "$CTD_SOCK" --namespace bench "$@"; }
ctr_digest() { nctr images ls | awk -v r="$1" '$1 == r { print $3 }'; }
stop_containerd() {
  stop_pid "$CTD_PID"
  unmount_under "$CTD_DIR"
  rm -rf "$CTD_DIR"
}

# ---------------------------------------------------------------------------------------------
# The busybox base (as bench/build.sh makes it): one tree, committed into buildah's storage and
# pushed once to an OCI layout for gantry's [base], so both images carry the same base blob.
BASE_NAME=localhost/gantry-bench-base:latest
DRIVER=overlay
ROOTFS="$WORK/base-rootfs"
mkdir -p "$ROOTFS/bin" "$ROOTFS/tmp" "$ROOTFS/etc"
cp "$BUSYBOX" "$ROOTFS/bin/busybox"
for applet in sh ash cat tar gzip gunzip zcat rm mkdir rmdir cp mv ln ls chmod chown echo true \
  false test env find head tail sed grep sleep touch wc sha256sum; do
  ln -s busybox "$ROOTFS/bin/$applet"
done
chmod 1777 "$ROOTFS/tmp"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$ROOTFS/etc/passwd"
printf 'root:x:0:\n' > "$ROOTFS/etc/group"
touch -d @0 "$ROOTFS" "$ROOTFS"/bin "$ROOTFS"/tmp "$ROOTFS"/etc "$ROOTFS"/etc/* "$ROOTFS/bin/busybox"
find "$ROOTFS" -type l -exec touch -h -d @0 {} +

S="$WORK/buildah"
bah() { # shellcheck disable=SC2046
  buildah --root "$S/root" --runroot "$S/run" --storage-driver "$DRIVER" "$@"; }
mkdir -p "$S"
if ! c="$(bah from --quiet scratch 2> "$LOGS/buildah-from.err")"; then
  log "overlay storage failed ($(tr '\n' ' ' < "$LOGS/buildah-from.err")); using vfs"
  DRIVER=vfs; rm -rf "$S"; mkdir -p "$S"
  c="$(bah from --quiet scratch)"
fi
bah copy --quiet "$c" "$ROOTFS/" / > /dev/null
bah config --env PATH=/bin --cmd /bin/sh "$c"
bah commit --quiet --rm "$c" "$BASE_NAME" > /dev/null
BASE_LAYOUT="$WORK/base-layout"
bah push --quiet --compression-format gzip "$BASE_NAME" "oci:$BASE_LAYOUT:latest" > /dev/null

# ---------------------------------------------------------------------------------------------
# The layer-level side first: build v1, the update, v2 with buildah, push both (A3); then its
# storage goes (disk), the sample is generated again — deterministic from --seed, checked below —
# and Gantry's side builds and pushes the same two versions (A1, A2).
GAME="$WORK/game"; SPEC="$WORK/gantry.bench.toml"; CACHE="$WORK/gantry-cache"
L1="$WORK/layout-v1"; L2="$WORK/layout-v2"
write_spec() {
  { cat "$GAME/gantry.toml"
    printf '\n# added by bench/delivery.sh: the busybox base buildah builds FROM\n'
    printf '[base]\nlayout = "%s"\ntag = "latest"\n' "$BASE_LAYOUT"
  } > "$SPEC"
}
gantry_build() {  # gantry_build LAYOUT NAME
  write_spec
  local t; t="$(now)"
  "$G" build "$GAME" -f "$SPEC" --output "$1" --cache-dir "$CACHE" --json > "$RES/build-$2.json" 2> "$LOGS/build-$2.log" \
    || { tail -n 30 "$LOGS/build-$2.log" >&2; die "gantry build $2"; }
  since "$t"
}
buildah_build() {  # buildah_build TAG
  local t; t="$(now)"
  bah bud --layers --isolation chroot --pull=never --build-arg "BASE=$BASE_NAME" \
    -t "localhost/game:$1" -f "$GAME/Dockerfile" "$GAME" > "$LOGS/bud-$1.log" 2>&1 \
    || { tail -n 30 "$LOGS/bud-$1.log" >&2; die "buildah bud $1"; }
  since "$t"
}
new_sample() {  # new_sample NAME: the v1 tree in $GAME
  rm -rf "$GAME"
  if [[ -n "$WORKLOAD" ]]; then
    log "copying the sample game from $WORKLOAD/v1"
    cp -a "$WORKLOAD/v1" "$GAME"
    jq '.dir = null' "$WORKLOAD/sample.json" > "$RES/sample-$1.json"
    return
  fi
  log "generating the sample game (--scale $SCALE --seed $SEED)"
  "$G" sample-game "$GAME" --scale "$SCALE" --seed "$SEED" --json > "$RES/sample-$1.json"
}
update_sample() {  # update_sample NAME: v1 -> v2 in place
  local f
  if [[ -n "$WORKLOAD" ]]; then
    log "applying the update from $WORKLOAD/v2 (files listed in update.json)"
    while IFS= read -r f; do
      mkdir -p "$(dirname "$GAME/$f")"
      cp -a --remove-destination "$WORKLOAD/v2/$f" "$GAME/$f"
    done < <(jq -r '(.files_changed // []) + (.files_added // []) | .[]' "$WORKLOAD/update.json")
    while IFS= read -r f; do rm -f "$GAME/$f"; done \
      < <(jq -r '(.files_removed // []) | .[]' "$WORKLOAD/update.json")
    jq '.dir = null' "$WORKLOAD/update.json" > "$RES/update-$1.json"
  else
    log "gantry sample-game --update --mb $UPDATE_MB"
    "$G" sample-game --update "$GAME" --mb "$UPDATE_MB" --seed "$SEED" --json > "$RES/update-$1.json"
  fi
  log "  update's own size: $(jq .update_bytes "$RES/update-$1.json") bytes"
}

# push_step OUT CMD...: runs CMD inside the node namespace; {seconds, link_up_bytes, ...}
push_step() {
  local out="$1" t rx0 tx0 s; shift
  rx0="$(link_rx)"; tx0="$(link_tx)"; t="$(now)"
  innode "$@" > "$out.stdout" 2> "$out.stderr" || { tail -n 30 "$out.stderr" >&2; die "push: $*"; }
  s="$(since "$t")"
  jq -n --argjson s "$s" --argjson up "$(($(link_rx) - rx0))" --argjson down "$(($(link_tx) - tx0))" \
    '{seconds: $s, link_up_bytes: $up, link_down_bytes: $down, link_bytes: ($up + $down)}' > "$out"
}

# The layer-level side: build v1 and v2 with buildah, then A3.
stage_layer_push() {
new_sample buildah
log "buildah bud v1"; BB1="$(buildah_build v1)"
update_sample buildah
log "buildah bud v2 (warm, on v1's storage)"; BB2="$(buildah_build v2)"
log "builds: buildah $BB1 s / $BB2 s"
rm -rf "$GAME"

# A3: buildah push -> docker-registry (stays up for B2)
D2_PORT="$(free_port)"
start_distribution dist-buildah "$D2_PORT"
D2_PID="$DIST_PID"; D2_DATA="$DIST_DATA"
REG_D2="$HOST_IP:$D2_PORT"
for v in v1 v2; do
  log "A3: buildah push $v -> docker-registry"
  b0="$(blobs_bytes "$D2_DATA")"
  push_step "$RES/a3-$v.json" buildah --root "$S/root" --runroot "$S/run" --storage-driver "$DRIVER" \
    push --tls-verify=false --compression-format gzip --digestfile "$RES/a3-$v.digest" \
    "localhost/game:$v" "docker://$REG_D2/game:$v"
  b1="$(blobs_bytes "$D2_DATA")"
  jq --argjson p "$((b1 - b0))" --arg digest "$(cat "$RES/a3-$v.digest")" \
    '. + {payload_bytes: $p, manifest_digest: $digest}' "$RES/a3-$v.json" > "$RES/a3-$v.j2"
  mv "$RES/a3-$v.j2" "$RES/a3-$v.json"
  log "  $(jq -c '{seconds, link_bytes, payload_bytes}' "$RES/a3-$v.json")"
done
B_V2_DIGEST="$(cat "$RES/a3-v2.digest")"
BUILDAH_VERSION="$(buildah --version)"
if ((!KEEP)); then unmount_under "$S"; rm -rf "$S"; fi
}

# Gantry's side: build v1 and v2 (same sample, generated again or copied again), A1 and A2.
stage_gantry_push() {
new_sample gantry
log "gantry build v1"; GB1="$(gantry_build "$L1" v1)"
update_sample gantry
log "gantry build v2 (warm cache)"; GB2="$(gantry_build "$L2" v2)"
log "builds: gantry $GB1 s / $GB2 s"
((KEEP)) || rm -rf "$GAME" "$CACHE"
}

# the stage functions above and below use and set globals: they are the script's steps, in
# functions only so that --first can change their order
stage_compare_samples() {
SAME_SAMPLE="$(jq -n --slurpfile a "$RES/sample-buildah.json" --slurpfile b "$RES/sample-gantry.json" \
  --slurpfile c "$RES/update-buildah.json" --slurpfile d "$RES/update-gantry.json" \
  '($a[0] | del(.dir)) == ($b[0] | del(.dir)) and ($c[0] | del(.dir)) == ($d[0] | del(.dir))')"
[[ "$SAME_SAMPLE" == true ]] || die "the sample generated twice differs (sample-*.json / update-*.json in $RES)"
cp "$RES/sample-gantry.json" "$RES/sample.json"; cp "$RES/update-gantry.json" "$RES/update.json"
}

stage_gantry_push_a12() {
# what the two layouts differ by, computed (before A2 removes them)
"$G" diff "oci:$L1" "oci:$L2" --no-update-size --json > "$RES/diff.json" 2> "$LOGS/diff.log" \
  || { tail -n 20 "$LOGS/diff.log" >&2; die "gantry diff"; }
# A1: gantry push -> gantry serve (delta push for v2)
SERVE_ROOT="$WORK/serve"; SERVE_PORT="$(free_port)"
start_serve "$SERVE_ROOT" "$SERVE_PORT"
REG_G="$HOST_IP:$SERVE_PORT"
M_G="http://$REG_G/metrics"
for v in v1 v2; do
  L="$L1"; extra=(); [[ $v == v2 ]] && { L="$L2"; extra=(--delta-from v1); }
  log "A1: gantry push $v -> gantry serve ${extra[*]}"
  r0="$(metric_sum "$M_G" gantry_registry_bytes_received_total)"
  d0="$(metric_sum "$M_G" gantry_registry_delta_reused_bytes_total)"
  push_step "$RES/a1-$v.json" "$G" push "oci:$L" "http://$REG_G/game:$v" "${extra[@]}" --json
  r1="$(metric_sum "$M_G" gantry_registry_bytes_received_total)"
  d1="$(metric_sum "$M_G" gantry_registry_delta_reused_bytes_total)"
  jq --argjson p "$((r1 - r0))" --argjson d "$((d1 - d0))" --slurpfile rep "$RES/a1-$v.json.stdout" \
    '. + {payload_bytes: $p, delta_reused_bytes: $d, report: $rep[0]}' "$RES/a1-$v.json" > "$RES/a1-$v.j2"
  mv "$RES/a1-$v.j2" "$RES/a1-$v.json"
  log "  $(jq -c '{seconds, link_bytes, payload_bytes, delta_reused_bytes}' "$RES/a1-$v.json")"
done
G_V2_DIGEST="$(jq -r '.report.manifest_digest // .report.digest // empty' "$RES/a1-v2.json")"
SERVE_PUSH_HWM="$(vmhwm "$SERVE_PID")"

# A2: gantry push -> docker-registry (layer-level)
D1_PORT="$(free_port)"
start_distribution dist-gantry "$D1_PORT"
REG_D1="$HOST_IP:$D1_PORT"
for v in v1 v2; do
  L="$L1"; [[ $v == v2 ]] && L="$L2"
  log "A2: gantry push $v -> docker-registry"
  b0="$(blobs_bytes "$DIST_DATA")"
  push_step "$RES/a2-$v.json" "$G" push "oci:$L" "http://$REG_D1/game:$v" --json
  b1="$(blobs_bytes "$DIST_DATA")"
  jq --argjson p "$((b1 - b0))" '. + {payload_bytes: $p}' "$RES/a2-$v.json" > "$RES/a2-$v.j2"
  mv "$RES/a2-$v.j2" "$RES/a2-$v.json"
  log "  $(jq -c '{seconds, link_bytes, payload_bytes}' "$RES/a2-$v.json")"
done
D1_HWM="$(vmhwm "$DIST_PID")"
stop_pid "$DIST_PID"
((KEEP)) || rm -rf "$WORK/dist-gantry" "$L1" "$L2"
}

if [[ "$FIRST" == layer-level ]]; then
  stage_layer_push; stage_gantry_push; stage_compare_samples; stage_gantry_push_a12
else
  stage_gantry_push; stage_gantry_push_a12; stage_layer_push; stage_compare_samples
fi

# ---------------------------------------------------------------------------------------------
# B. Pull. gantry serve restarted on the same storage: its VmHWM then covers the pulls only.
# The layer-level node first (then its registry goes, for disk), then Gantry's.
stop_pid "$SERVE_PID"
start_serve "$SERVE_ROOT" "$SERVE_PORT"

# new_blobs REG REPO OLD_TAG|"" NEW_TAG: the layer digests of NEW that OLD lacks, one a line
ACCEPT='application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json'
new_blobs() {
  local old='{"layers": []}'
  [[ -n "$3" ]] && old="$(curl -sf -H "Accept: $ACCEPT" "http://$1/v2/$2/manifests/$3")"
  jq -rn --argjson a "$old" --argjson b "$(curl -sf -H "Accept: $ACCEPT" "http://$1/v2/$2/manifests/$4")" \
    '[$a.layers[].digest] as $o | $b.layers[].digest | select(. as $d | $o | index($d) | not)'
}

# pull_step OUT REF WATCH [CTR PULL FLAGS...]: times `ctr images pull` of REF inside the node
# namespace. While it runs, the content store is polled (every 0.2 s) for the digests listed in
# the file WATCH (the layers the node lacks): fetched_s = when the last of them was committed,
# i.e. the download part; the rest of the pull is mostly unpacking.
pull_step() {
  local out="$1" ref="$2" watch="$3" t rx0 tx0 s pid fetched=null want have; shift 3
  want="$(grep -c . "$watch" || true)"
  rx0="$(link_rx)"; tx0="$(link_tx)"; t="$(now)"
  nctr images pull "$@" "$ref" > "$out.log" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    if [[ $fetched == null ]]; then
      have="$(nctr content ls -q 2>/dev/null | grep -cxFf - "$watch" || true)"
      ((have < want)) || fetched="$(since "$t")"
    fi
    sleep 0.2
  done
  wait "$pid" || { tail -n 30 "$out.log" >&2; tail -n 30 "$CTD_DIR/containerd.log" >&2; die "ctr images pull $ref"; }
  s="$(since "$t")"
  jq -n --argjson s "$s" --argjson up "$(($(link_rx) - rx0))" --argjson down "$(($(link_tx) - tx0))" \
    --arg digest "$(ctr_digest "$ref")" --argjson fetched "$fetched" --argjson watched "$want" \
    '{seconds: $s, link_up_bytes: $up, link_down_bytes: $down, containerd_digest: $digest,
      new_layers_committed_s: $fetched, new_layers: $watched}' > "$out"
}

# B2: the layer-level way — containerd directly from docker-registry (buildah images)
stage_layer_pull() {
start_containerd ctd-layer
SNAPSHOTTER="$CTD_SNAP"
for v in v1 v2; do
  if [[ $v == v2 ]]; then log "B2: limiting the link to $RATE"; limit_link; fi
  log "B2: ctr images pull --plain-http $v from docker-registry"
  old=""; [[ $v == v2 ]] && old=v1
  new_blobs "$REG_D2" game "$old" "$v" > "$RES/b2-$v.watch"
  pull_step "$RES/b2-$v.json" "$REG_D2/game:$v" "$RES/b2-$v.watch" --plain-http
  log "  $(jq -c '{seconds, new_layers_committed_s, link_down_bytes}' "$RES/b2-$v.json")"
done
unlimit_link
D2_HWM="$(vmhwm "$D2_PID")"
# payload: v2's blobs that v1 lacks (layers + config) plus v2's manifest, from the manifests
curl -sf -H "Accept: $ACCEPT" "http://$REG_D2/v2/game/manifests/v1" > "$RES/b-m1.json"
curl -sf -H "Accept: $ACCEPT" "http://$REG_D2/v2/game/manifests/v2" > "$RES/b-m2.json"
jq -n --slurpfile a "$RES/b-m1.json" --slurpfile b "$RES/b-m2.json" --argjson mlen "$(stat -c %s "$RES/b-m2.json")" '
  ([$a[0].layers[].digest, $a[0].config.digest]) as $old |
  ([$b[0].layers[], $b[0].config] | map(select(.digest as $d | $old | index($d) | not)) | map(.size) | add // 0) as $new |
  {payload_bytes: ($new + $mlen), new_layers: ([$b[0].layers[] | select(.digest as $d | $old | index($d) | not)] | length),
   image_bytes: ([$b[0].layers[].size] | add), layers: ($b[0].layers | length)}' > "$RES/b2-payload.json"
jq --slurpfile p "$RES/b2-payload.json" '. + {payload_bytes: $p[0].payload_bytes}' "$RES/b2-v2.json" > "$RES/b2-v2.j2"
mv "$RES/b2-v2.j2" "$RES/b2-v2.json"
stop_containerd
stop_pid "$D2_PID"
((KEEP)) || rm -rf "$WORK/dist-buildah"
}

# B1: Gantry — containerd -> gantry agent (on the node) -> gantry serve
stage_gantry_pull() {
AGENT_PORT="$(free_port)"
AGENT_ROOT="$WORK/agent"
ip netns exec "$NS" "$G" agent --addr "127.0.0.1:$AGENT_PORT" --root "$AGENT_ROOT" \
  --upstream "$REG_G=http://$REG_G" > "$LOGS/agent.log" 2>&1 &
AGENT_PID=$!; PIDS+=("$AGENT_PID")
expect_comm "$AGENT_PID" gantry
wait_http "http://127.0.0.1:$AGENT_PORT/metrics" innode || { tail -n 20 "$LOGS/agent.log" >&2; die "gantry agent did not start"; }
M_A="http://127.0.0.1:$AGENT_PORT/metrics"
start_containerd ctd-gantry
"$G" agent install-containerd-config --hosts-dir "$CTD_DIR/hosts" --registry "$REG_G" \
  --agent "http://127.0.0.1:$AGENT_PORT" --plain-http > "$LOGS/install-config.log" 2>&1 \
  || { cat "$LOGS/install-config.log" >&2; die "gantry agent install-containerd-config"; }
HOSTS_TOML="$(cat "$CTD_DIR/hosts/$REG_G/hosts.toml")"
for v in v1 v2; do
  if [[ $v == v2 ]]; then log "B1: limiting the link to $RATE"; limit_link; fi
  log "B1: ctr images pull $v through gantry agent"
  u0="$(metric_sum "$M_A" gantry_agent_upstream_bytes_total innode)"
  re0="$(metric_sum "$M_A" gantry_agent_reused_bytes_total innode)"
  se0="$(metric_sum "$M_A" gantry_agent_served_bytes_total innode)"
  old=""; [[ $v == v2 ]] && old=v1
  new_blobs "$REG_G" game "$old" "$v" > "$RES/b1-$v.watch"
  pull_step "$RES/b1-$v.json" "$REG_G/game:$v" "$RES/b1-$v.watch" --hosts-dir "$CTD_DIR/hosts"
  u1="$(metric_sum "$M_A" gantry_agent_upstream_bytes_total innode)"
  re1="$(metric_sum "$M_A" gantry_agent_reused_bytes_total innode)"
  se1="$(metric_sum "$M_A" gantry_agent_served_bytes_total innode)"
  jq --argjson p "$((u1 - u0))" --argjson re "$((re1 - re0))" --argjson se "$((se1 - se0))" \
    '. + {payload_bytes: $p, reused_bytes: $re, served_bytes: $se}' "$RES/b1-$v.json" > "$RES/b1-$v.j2"
  mv "$RES/b1-$v.j2" "$RES/b1-$v.json"
  log "  $(jq -c '{seconds, new_layers_committed_s, link_down_bytes, payload_bytes, reused_bytes}' "$RES/b1-$v.json")"
  innode curl -sf "http://127.0.0.1:$AGENT_PORT/status" > "$RES/agent-status-$v.json" || echo '{}' > "$RES/agent-status-$v.json"
  if [[ $v == v1 ]]; then
    SERVE_V1PULL_HWM="$(vmhwm "$SERVE_PID")"; AGENT_V1PULL_HWM="$(vmhwm "$AGENT_PID")"
  fi
done
# the blobs the agent obtained for v2 (in its status after v2, not after v1)
jq -n --slurpfile a "$RES/agent-status-v1.json" --slurpfile b "$RES/agent-status-v2.json" '
  ([$a[0].blobs[]?.digest]) as $old | [$b[0].blobs[]? | select(.digest as $d | $old | index($d) | not)]' \
  > "$RES/agent-v2-blobs.json"
unlimit_link
SERVE_PULL_HWM="$(vmhwm "$SERVE_PID")"; AGENT_HWM="$(vmhwm "$AGENT_PID")"
stop_containerd
stop_pid "$AGENT_PID"; ((KEEP)) || rm -rf "$AGENT_ROOT"
}

if [[ "$FIRST" == layer-level ]]; then
  stage_layer_pull; stage_gantry_pull
else
  stage_gantry_pull; stage_layer_pull
fi
SERVE_HWM_END="$(vmhwm "$SERVE_PID")"
TOOK="$(since "$T_START")"

# ---------------------------------------------------------------------------------------------
log "writing $OUT"
mkdir -p "$(dirname "$OUT")"
cpu_model="$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)"
G_IMAGE_BYTES="$(jq '.image_bytes' "$RES/diff.json")"
G_LAYERS="$(jq '.layers | length' "$RES/diff.json")"

COMMANDS=(
  "gantry build GAME -f gantry.bench.toml --output L1|L2 --cache-dir CACHE --json   (GAME/gantry.toml + [base] layout = the busybox base)"
  "buildah --root S/root --runroot S/run --storage-driver $DRIVER bud --layers --isolation chroot --pull=never --build-arg BASE=$BASE_NAME -t localhost/game:v1|v2 -f GAME/Dockerfile GAME"
  "gantry push oci:L1 http://REG/game:v1 --json; gantry push oci:L2 http://REG/game:v2 --delta-from v1 --json     # gantry serve"
  "gantry push oci:L1 http://REG/game:v1 --json; gantry push oci:L2 http://REG/game:v2 --json                     # docker-registry"
  "buildah --root S/root --runroot S/run push --tls-verify=false --compression-format gzip localhost/game:v1|v2 docker://REG/game:v1|v2"
  "gantry agent --addr 127.0.0.1:PORT --root AGENT --upstream REG=http://REG                             # in the node namespace"
  "gantry agent install-containerd-config --hosts-dir HOSTS --registry REG --agent http://127.0.0.1:PORT --plain-http"
  "ctr --address SOCK --namespace bench images pull --hosts-dir HOSTS REG/game:v1, then :v2          # Gantry"
  "ctr --address SOCK --namespace bench images pull --plain-http REG/game:v1, then :v2               # layer-level"
  "tc qdisc replace dev VETH root tbf rate $RATE burst $TBF_BURST latency $TBF_LATENCY   # both ends, before the v2 pulls"
)
printf '%s\n' "${COMMANDS[@]}" | jq -R . | jq -s . > "$RES/commands.json"

jq -n \
  --arg invocation "$INVOCATION" --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --argjson took "$TOOK" \
  --arg scale "$SCALE" --argjson update_mb "$UPDATE_MB" --argjson seed "$SEED" --arg rate "$RATE" \
  --argjson quick "$QUICK" --arg first "$FIRST" --arg workload "$WORKLOAD" --arg bench_dir "${BENCH_DIR:-/tmp}" --arg bench_fs "$BENCH_FS" --arg burst "$TBF_BURST" --arg latency "$TBF_LATENCY" \
  --argjson nproc "$(nproc)" --arg cpu "$cpu_model" --arg kernel "$(uname -r)" \
  --arg loadavg0 "$LOADAVG_START" --arg loadavg "$(cut -d' ' -f1-3 /proc/loadavg)" \
  --arg gantry_version "$("$G" --version)" --arg git_rev "$GIT_REV" --arg buildah_version "$BUILDAH_VERSION" \
  --arg containerd_version "$(containerd --version | awk '{ print $3 }')" \
  --arg distribution_version "$(dpkg-query -W -f='${Version}' docker-registry 2>/dev/null || echo unknown)" \
  --arg snapshotter "$SNAPSHOTTER" --arg hosts_toml "$HOSTS_TOML" \
  --slurpfile sample "$RES/sample.json" --slurpfile update "$RES/update.json" --slurpfile diff "$RES/diff.json" \
  --slurpfile a1v1 "$RES/a1-v1.json" --slurpfile a1v2 "$RES/a1-v2.json" \
  --slurpfile a2v1 "$RES/a2-v1.json" --slurpfile a2v2 "$RES/a2-v2.json" \
  --slurpfile a3v1 "$RES/a3-v1.json" --slurpfile a3v2 "$RES/a3-v2.json" \
  --slurpfile b1v1 "$RES/b1-v1.json" --slurpfile b1v2 "$RES/b1-v2.json" \
  --slurpfile b2v1 "$RES/b2-v1.json" --slurpfile b2v2 "$RES/b2-v2.json" \
  --slurpfile b2p "$RES/b2-payload.json" --slurpfile agent_v2_blobs "$RES/agent-v2-blobs.json" \
  --slurpfile commands "$RES/commands.json" \
  --argjson gb1 "$GB1" --argjson gb2 "$GB2" --argjson bb1 "$BB1" --argjson bb2 "$BB2" \
  --argjson g_image "${G_IMAGE_BYTES:-null}" --argjson g_layers "${G_LAYERS:-0}" \
  --arg g_v2_digest "$G_V2_DIGEST" --arg b_v2_digest "$B_V2_DIGEST" \
  --argjson serve_push_hwm "$SERVE_PUSH_HWM" --argjson serve_v1pull_hwm "$SERVE_V1PULL_HWM" \
  --argjson serve_pull_hwm "$SERVE_PULL_HWM" --argjson serve_end_hwm "$SERVE_HWM_END" \
  --argjson agent_v1_hwm "$AGENT_V1PULL_HWM" --argjson agent_hwm "$AGENT_HWM" \
  --argjson d1_hwm "$D1_HWM" --argjson d2_hwm "$D2_HWM" \
  '{benchmark: "delivery", invocation: $invocation, date: $date, took_s: $took,
    params: {scale: $scale, update_mb: $update_mb, seed: $seed, rate: $rate, quick: ($quick == 1),
             first: $first, workload: (if $workload == "" then null else $workload end),
             bench_dir: $bench_dir, bench_fs: $bench_fs,
             tbf_burst: $burst, tbf_latency: $latency},
    machine: {nproc: $nproc, cpu: $cpu, kernel: $kernel, loadavg_at_start: $loadavg0, loadavg_at_end: $loadavg},
    versions: {gantry: $gantry_version, git: $git_rev, buildah: $buildah_version,
               containerd: $containerd_version, distribution: $distribution_version,
               snapshotter: $snapshotter},
    sample: ($sample[0] | del(.files)),
    update: ($update[0] | {kind, requested_bytes, changed_bytes, update_bytes,
                           files_changed: ((.files_changed // []) | length),
                           entries_added: ((.entries_added // []) | length),
                           entries_removed: ((.entries_removed // []) | length)}),
    images: {gantry_v2_bytes: $g_image, gantry_layers: $g_layers,
             buildah_v2_bytes: $b2p[0].image_bytes, buildah_layers: $b2p[0].layers},
    builds: {gantry_v1_s: $gb1, gantry_v2_s: $gb2, buildah_v1_s: $bb1, buildah_v2_s: $bb2},
    diff: $diff[0],
    push: [
      {label: "gantry push → gantry serve (delta push)", v1: $a1v1[0], v2: $a1v2[0],
       payload_kind: "gantry serve: increase of gantry_registry_bytes_received_total (upload and manifest bodies)"},
      {label: "gantry push → docker-registry (layer-level)", v1: $a2v1[0], v2: $a2v2[0],
       payload_kind: "docker-registry: growth of docker/registry/v2/blobs (du -sb: blobs, manifests and link files as stored)"},
      {label: "buildah push → docker-registry (layer-level: buildah image)", v1: $a3v1[0], v2: $a3v2[0],
       payload_kind: "same"}],
    pull: [
      {label: "gantry agent on the node ← gantry serve", v1: $b1v1[0], v2: $b1v2[0],
       image_bytes: $g_image, expected_v2_digest: $g_v2_digest,
       payload_kind: "Gantry: increase of gantry_agent_upstream_bytes_total (chunk and whole-blob bodies and chunk indexes the agent fetched; not manifests)",
       hosts_toml: $hosts_toml, agent_v2_blobs: $agent_v2_blobs[0]},
      {label: "docker-registry directly (layer-level: buildah image)", v1: $b2v1[0], v2: $b2v2[0],
       image_bytes: $b2p[0].image_bytes, expected_v2_digest: $b_v2_digest, new_layers: $b2p[0].new_layers,
       payload_kind: "layer-level: sizes of the blobs of v2 (layers + config) that v1 lacks, plus the v2 manifest"}],
    rss: [
      {process: "gantry serve", during: "gantry push v1, delta push v2", vmhwm_kb: $serve_push_hwm},
      {process: "gantry serve (restarted)", during: "the v1 pull through the agent", vmhwm_kb: $serve_v1pull_hwm},
      {process: "gantry serve (restarted)", during: "v1 and v2 pulls through the agent", vmhwm_kb: $serve_pull_hwm},
      {process: "gantry agent", during: "the v1 pull (whole image)", vmhwm_kb: $agent_v1_hwm},
      {process: "gantry agent", during: "v1 and v2 pulls", vmhwm_kb: $agent_hwm},
      {process: "docker-registry", during: "gantry pushes v1 + v2", vmhwm_kb: $d1_hwm},
      {process: "docker-registry", during: "buildah pushes v1 + v2, containerd pulls v1 + v2", vmhwm_kb: $d2_hwm}],
    checks: {
      gantry_containerd_v2_digest_matches_push: ($b1v2[0].containerd_digest == $g_v2_digest),
      buildah_containerd_v2_digest_matches_push: ($b2v2[0].containerd_digest == $b_v2_digest),
      rss_under_200MB: ([$serve_pull_hwm, $agent_hwm, $serve_push_hwm] | max < 200 * 1024)},
    commands: $commands[0]}' > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"

print_report "$OUT" | tee "${OUT%.json}.md"
log "done: $OUT (Markdown also in ${OUT%.json}.md)"
