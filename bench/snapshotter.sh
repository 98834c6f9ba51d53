#!/usr/bin/env bash
# Node-side update benchmark (benchmark figure 5): the time from CRI PullImage of v2 to a started
# container of v2 on a node that holds v1, four ways in one run:
#   layer   containerd 1.6 (CRI, its overlayfs snapshotter) pulling straight from CNCF
#           distribution (docker-registry): the layer-level way;
#   agent   the same containerd with `gantry agent` as its mirror (hosts.toml), upstream
#           `gantry serve`: chunk-level download, containerd still ingests and unpacks;
#   snapshotter  containerd with `gantry snapshotter` as CRI's snapshotter (proxy plugin) and
#           the agent: the fast path builds the changed layers from v1's files + new chunks;
#   podman  podman with zstd:chunked partial pulls (bench/podman-chunked.sh): the same game
#           files built by `buildah bud`, pushed with `podman push --compression-format
#           zstd:chunked` to the same docker-registry, pulled with enable_partial_images on the
#           same XFS (skip with --no-podman).
# Each way gets a fresh containerd (and agent, and snapshotter) whose state sits on one
# loop-mounted XFS with reflink (the node's disk); the bytes written to it during the v2 step
# come from the loop device's counters (after sync). The image is the same for every way:
# `gantry build` of the sample game (on a busybox base, so the container can run
# `sha256sum`), pushed by `gantry push` to gantry serve and by skopeo to docker-registry. The
# container checks the sha256 of a pak the update changed.
#
# With --rate (e.g. 200mbit) the registries run in a network namespace of their own, reached
# over a veth pair whose both ends are shaped by `tc tbf` to that rate (after the pushes):
# every byte a node takes from a registry crosses that link.
#
# Usage (as root): bash bench/snapshotter.sh [--scale 500MB] [--seed 9] [--update-mb 20]
#                                            [--paks split|single] [--rate 200mbit] [--no-podman]
#                                            [--out FILE.json] [--keep]
# --paks single: the sample game's assets in one large pak (tens of thousands of small
# entries); its update edits that pak throughout, shifting later entries.
# Prints a Markdown table; writes the JSON (default bench/results/snapshotter-<scale>.json).
# Needs: containerd, runc, docker-registry, skopeo, xfsprogs, jq, curl, busybox-static, cargo.
set -euo pipefail

SCALE=500MB; SEED=9; UPDATE_MB=20; OUT=""; KEEP=0; RATE=""; PODMAN=1; PAKS=split
ARGS=("$@")
while (($#)); do
  case "$1" in
    --scale) SCALE="$2"; shift 2 ;;
    --seed) SEED="$2"; shift 2 ;;
    --update-mb) UPDATE_MB="$2"; shift 2 ;;
    --paks) PAKS="$2"; shift 2 ;;
    --rate) RATE="$2"; shift 2 ;;
    --no-podman) PODMAN=0; shift ;;
    --out) OUT="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$PAKS" == split || "$PAKS" == single ]] || { echo "--paks is split or single, not $PAKS" >&2; exit 2; }
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHAPE_SUFFIX=""; [[ "$PAKS" == split ]] || SHAPE_SUFFIX="-$PAKS"
OUT="${OUT:-$REPO/bench/results/snapshotter-$SCALE$SHAPE_SUFFIX${RATE:+-$RATE}.json}"
export PATH="${HOME:-/root}/.cargo/bin:${PATH}:/usr/local/sbin:/usr/sbin:/sbin"
log() { printf '[snapshotter-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[snapshotter-bench] FAILED: %s\n' "$*" >&2; exit 1; }
[[ "$(id -u)" == 0 ]] || die "containerd, loop mounts and mounts need root"
for t in containerd ctr runc docker-registry skopeo mkfs.xfs jq curl losetup; do
  command -v "$t" > /dev/null || die "$t missing"
done
[[ -x /bin/busybox ]] || die "/bin/busybox missing (busybox-static)"
if ((PODMAN)); then
  for t in podman buildah; do
    command -v "$t" > /dev/null || die "$t missing (apt-get install podman buildah), or pass --no-podman"
  done
fi

log "building gantry and the CRI bench client (release)"
(cd "$REPO" && cargo build --release --quiet -p gantry-cli \
  && cargo build --release --quiet -p gantry-snapshotter --example cri_bench) || die "cargo build"
TARGET="${CARGO_TARGET_DIR:-$REPO/target}"
WORK="$(mktemp -d "${BENCH_DIR:-/tmp}/gantry-snapbench.XXXXXX")"
mkdir -p "$WORK/bin" "$WORK/logs"
cp "$TARGET/release/gantry" "$TARGET/release/examples/cri_bench" "$WORK/bin/"
G="$WORK/bin/gantry"; CRI="$WORK/bin/cri_bench"
GIT_REV="$(git -C "$REPO" rev-parse --short HEAD)"
git -C "$REPO" diff --quiet HEAD -- crates Cargo.toml Cargo.lock || GIT_REV="$GIT_REV+work-tree-changes"
PIDS=()
stop_pid() {
  local p="$1" i
  kill -0 "$p" 2>/dev/null || return 0
  kill -TERM "$p" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}
cleanup() {
  local rc=$? p
  set +e
  for p in "${PIDS[@]}"; do stop_pid "$p"; done
  { findmnt -rn -o TARGET | grep -F "$WORK/" || true; } | sort -r | while read -r m; do umount -l "$m"; done
  if [[ -n "$RATE" ]]; then ip netns del "$NS" 2>/dev/null; ip link del "$VETH" 2>/dev/null; fi
  if ((KEEP)); then log "kept $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
free_port() {
  local p
  while :; do p=$((RANDOM % 30000 + 20000)); [[ -z "$(ss -Hltn "( sport = :$p )")" ]] && { echo "$p"; return; }; done
}
wait_http() { local i; for ((i = 0; i < 300; i++)); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done; return 1; }
metric_sum() {
  curl -sf "$1" | awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $NF } END { printf "%.0f\n", s + 0 }'
}
vmhwm() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }

# The sample game on a busybox base (a root filesystem tar as gantry.toml's [base]).
log "sample game --scale $SCALE --seed $SEED --paks $PAKS, busybox base"
BASE="$WORK/base"; mkdir -p "$BASE/bin" "$BASE/tmp" "$BASE/etc"
cp /bin/busybox "$BASE/bin/busybox"
for a in sh cat sha256sum ls sleep true; do ln -s busybox "$BASE/bin/$a"; done
chmod 1777 "$BASE/tmp"
tar -C "$BASE" --sort=name --mtime=@0 --owner=0 --group=0 -cf "$WORK/base.tar" .
GAME="$WORK/game"
"$G" sample-game "$GAME" --scale "$SCALE" --seed "$SEED" --paks "$PAKS" --json > "$WORK/sample.json"
add_base() { sed -i "s|^# no \[base\] table = scratch base|[base]\nrootfs = \"$WORK/base.tar\"|" "$GAME/gantry.toml"; }
add_base
"$G" build "$GAME" --output "$WORK/l1" --cache-dir "$WORK/cache" --json > "$WORK/build-v1.json"
cp -a "$GAME" "$WORK/game-v1"   # podman's build of v1
"$G" sample-game --update "$GAME" --mb "$UPDATE_MB" --json > "$WORK/update.json"
add_base
"$G" build "$GAME" --output "$WORK/l2" --cache-dir "$WORK/cache" --json > "$WORK/build-v2.json"
UPDATE_BYTES="$(jq .update_bytes "$WORK/update.json")"
CHANGED="$(jq -r '[.files_changed[] | select(startswith("paks/") and endswith(".pak"))][0]' "$WORK/update.json")"
[[ "$CHANGED" != null ]] || die "the update changed no pak"
CHECK_PATH="/BinLinux64.Dedicated/${CHANGED#paks/}"
CHECK_SHA="$(sha256sum "$GAME/$CHANGED" | cut -d' ' -f1)"

# Registries (on the host's disk, not the node's): gantry serve and docker-registry; with
# --rate in a namespace of their own behind a veth pair.
REG_IP=127.0.0.1; IN_NS=()
NS="gsnap$$"; VETH="gsn$$h"
if [[ -n "$RATE" ]]; then
  command -v tc > /dev/null || die "tc missing (iproute2)"
  ip netns add "$NS"
  ip link add "$VETH" type veth peer name "gsn$$r" netns "$NS"
  ip addr add 10.231.0.1/24 dev "$VETH"; ip link set "$VETH" up
  ip -n "$NS" addr add 10.231.0.2/24 dev "gsn$$r"
  ip -n "$NS" link set "gsn$$r" up; ip -n "$NS" link set lo up
  REG_IP=10.231.0.2; IN_NS=(ip netns exec "$NS")
fi
SP="$(free_port)"; SERVE="$REG_IP:$SP"
"${IN_NS[@]}" "$G" serve --addr "$SERVE" --root "$WORK/serve" > "$WORK/logs/serve.log" 2>&1 & PIDS+=($!)
wait_http "http://$SERVE/v2/" || die "gantry serve did not start"
DP="$(free_port)"; DIST="$REG_IP:$DP"
mkdir -p "$WORK/dist"
printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n' \
  "$WORK/dist" "$DIST" > "$WORK/dist.yml"
"${IN_NS[@]}" docker-registry serve "$WORK/dist.yml" > "$WORK/logs/dist.log" 2>&1 & PIDS+=($!)
wait_http "http://$DIST/v2/" || die "docker-registry did not start"
for v in 1 2; do
  "$G" push "$WORK/l$v" "$SERVE/bench/game:v$v" --insecure > /dev/null 2>> "$WORK/logs/push.log" || die "gantry push v$v"
  skopeo copy --quiet --dest-tls-verify=false "oci:$WORK/l$v:v$v" "docker://$DIST/bench/game:v$v" || die "skopeo copy v$v"
done
# Layer-level bytes: the blobs of v2 that v1 does not have (config, layers) and the manifest.
LAYER_BYTES="$(jq -s '(.[0].layers | map(.digest)) as $old | [.[1].layers[] | select(.digest as $d | $old | index($d) | not) | .size] | add + .[1].config.size' \
  <(skopeo inspect --raw --tls-verify=false "docker://$DIST/bench/game:v1") \
  <(skopeo inspect --raw --tls-verify=false "docker://$DIST/bench/game:v2"))"
IMAGE_BYTES="$(jq '[.layers[].size] | add' <(skopeo inspect --raw --tls-verify=false "docker://$DIST/bench/game:v2"))"
if [[ -n "$RATE" ]]; then
  # Shape both directions of the link, now that the images are pushed.
  tc qdisc add dev "$VETH" root tbf rate "$RATE" burst 256kb latency 50ms
  ip netns exec "$NS" tc qdisc add dev "gsn$$r" root tbf rate "$RATE" burst 256kb latency 50ms
  log "registries at $REG_IP behind a $RATE link (tc tbf)"
fi

# The node's disk: a loop-mounted XFS with reflink.
truncate -s 40G "$WORK/node.img"
mkfs.xfs -q -f -m reflink=1 "$WORK/node.img"
mkdir -p "$WORK/node"
mount -o loop "$WORK/node.img" "$WORK/node"
LOOP="$(findmnt -n -o SOURCE --target "$WORK/node")"
DISK_STAT="/sys/block/$(basename "$LOOP")/stat"

RESULTS=()
for way in layer agent snapshotter; do
  log "way: $way"
  NODE="$WORK/node/$way"; mkdir -p "$NODE/tmp"
  extra=(); agent_pid=""; snap_pid=""
  if [[ $way != layer ]]; then
    AP="$(free_port)"; AGENT="http://127.0.0.1:$AP"
    "$G" agent --upstream "$SERVE=http://$SERVE" --addr "127.0.0.1:$AP" --root "$NODE/agent" \
      > "$WORK/logs/agent-$way.log" 2>&1 & agent_pid=$!; PIDS+=("$agent_pid")
    wait_http "$AGENT/v2/" || die "gantry agent did not start"
    extra+=(--agent "$AGENT")
  fi
  if [[ $way == snapshotter ]]; then
    MP="$(free_port)"; SOCK="$NODE/snap.sock"
    "$G" snapshotter --root "$NODE/snapshotter" --address "$SOCK" --agent "$AGENT" \
      --metrics-addr "127.0.0.1:$MP" > "$WORK/logs/snapshotter.log" 2>&1 & snap_pid=$!; PIDS+=("$snap_pid")
    for ((i = 0; i < 300; i++)); do [[ -S "$SOCK" ]] && break; sleep 0.1; done
    [[ -S "$SOCK" ]] || die "gantry snapshotter did not start"
    extra+=(--snapshotter-socket "$SOCK")
  fi
  registry="$SERVE"; [[ $way == layer ]] && registry="$DIST"
  metrics=""
  [[ -n "$agent_pid" ]] && metrics="$AGENT/metrics|gantry_agent_upstream_bytes_total"
  [[ -n "$snap_pid" ]] && metrics="$metrics,http://127.0.0.1:$MP/metrics|gantry_snapshotter_reused_bytes_total,http://127.0.0.1:$MP/metrics|gantry_snapshotter_copied_bytes_total,http://127.0.0.1:$MP/metrics|gantry_snapshotter_written_bytes_total,http://127.0.0.1:$MP/metrics|gantry_snapshotter_fetched_bytes_total"
  [[ -n "$metrics" ]] && extra+=(--metrics "$metrics")
  out="$(TMPDIR="$NODE/tmp" "$CRI" --way "$way" --registry "$registry" \
    --v1 "$registry/bench/game:v1" --v2 "$registry/bench/game:v2" \
    --check "$CHECK_PATH=$CHECK_SHA" --disk-stat "$DISK_STAT" "${extra[@]}" 2> "$WORK/logs/cri-$way.log")" \
    || { tail -n 30 "$WORK/logs/cri-$way.log" >&2; die "cri_bench $way"; }
  extra_json='{}'
  if [[ -n "$agent_pid" ]]; then
    # upstream bytes for v2 only: the agent's /status lists each blob it obtained
    st="$(curl -sf "$AGENT/metrics")"
    up="$(awk '$1 ~ /^gantry_agent_upstream_bytes_total/ { s += $NF } END { printf "%.0f", s }' <<< "$st")"
    extra_json="$(jq -n --argjson up "$up" --argjson rss "$(vmhwm "$agent_pid")" \
      '{agent_upstream_bytes_v1_and_v2: $up, agent_vmhwm_kb: $rss}')"
  fi
  if [[ -n "$snap_pid" ]]; then
    m="$(curl -sf "http://127.0.0.1:$MP/metrics")"
    get() { awk -v n="$1" '$1 == n { print $NF }' <<< "$m"; }
    extra_json="$(jq -n --argjson base "$extra_json" \
      --argjson fast "$(awk '$1 == "gantry_snapshotter_layers_total{path=\"fast\"}" { print $NF }' <<< "$m")" \
      --argjson normal "$(awk '$1 == "gantry_snapshotter_layers_total{path=\"normal\"}" { print $NF }' <<< "$m")" \
      --argjson fb "$(get gantry_snapshotter_fast_path_fallbacks_total)" \
      --argjson reused "$(get gantry_snapshotter_reused_bytes_total)" \
      --argjson copied "$(get gantry_snapshotter_copied_bytes_total)" \
      --argjson written "$(get gantry_snapshotter_written_bytes_total)" \
      --argjson fetched "$(get gantry_snapshotter_fetched_bytes_total)" \
      --argjson rss "$(vmhwm "$snap_pid")" \
      '$base + {fast_layers: $fast, normal_layers: $normal, fallbacks: $fb, reflinked_bytes: $reused,
        copied_bytes: $copied, written_from_chunks_bytes: $written, fetched_bytes: $fetched,
        snapshotter_vmhwm_kb: $rss}')"
  fi
  RESULTS+=("$(jq -c --argjson x "$extra_json" '. + $x' <<< "$out")")
  [[ -n "$snap_pid" ]] && stop_pid "$snap_pid"
  [[ -n "$agent_pid" ]] && stop_pid "$agent_pid"
  { findmnt -rn -o TARGET | grep -F "$NODE/" || true; } | sort -r | while read -r m; do umount -l "$m"; done
  rm -rf "$NODE"
done

if ((PODMAN)); then
  log "way: podman (zstd:chunked)"
  NODE="$WORK/node/podman"; mkdir -p "$NODE"
  pj="$(bash "$REPO/bench/podman-chunked.sh" --game-v1 "$WORK/game-v1" --game-v2 "$GAME" \
    --base-tar "$WORK/base.tar" --registry "$DIST" --node "$NODE" --disk-stat "$DISK_STAT" \
    --check "$CHECK_PATH=$CHECK_SHA" --work "$WORK/podman" 2> "$WORK/logs/podman.log")" \
    || { tail -n 30 "$WORK/logs/podman.log" >&2; die "podman way"; }
  RESULTS+=("$(jq -c '{way: "podman", v1_pull_seconds: .v1_seconds, v2_pull_seconds,
    v2_started_seconds: .v2_seconds, v2_disk_written_bytes: .written_bytes_v2,
    registry_bytes_v2, reflinked_bytes_v2, podman: .}' <<< "$pj")")
  rm -rf "$NODE" "$WORK/podman"
fi

mkdir -p "$(dirname "$OUT")"
printf '%s\n' "${RESULTS[@]}" | jq -s \
  --arg scale "$SCALE" --arg seed "$SEED" --arg mb "$UPDATE_MB" --argjson upd "$UPDATE_BYTES" \
  --argjson layer_bytes "$LAYER_BYTES" --argjson image "$IMAGE_BYTES" --arg rev "$GIT_REV" \
  --arg cpu "$(nproc) cores, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)" \
  --arg kernel "$(uname -r)" --arg ctd "$(containerd --version | awk '{ print $3 }')" \
  --arg cmd "bash bench/snapshotter.sh${ARGS[*]:+ ${ARGS[*]}}" --arg date "$(date -u +%FT%TZ)" \
  --arg link "${RATE:+registries behind a $RATE link (tc tbf)}" \
  --arg paks "$PAKS" \
  '{params: {scale: $scale, seed: $seed, update_mb: $mb, paks: $paks, link: (if $link == "" then "loopback" else $link end)}, update_bytes: $upd,
    layer_level_bytes: $layer_bytes, image_bytes: $image, git: $rev, machine: $cpu,
    kernel: $kernel, containerd: $ctd, command: $cmd, date: $date, ways: .}' > "$OUT"
log "results in $OUT"
jq -r '
  def d2: (. * 100 | round) / 100 | tostring;
  def mb: if . == null then "–" else (. / 1e6 * 10 | round / 10 | tostring) + " MB" end;
  .ways as $w | ($w[] | select(.way == "layer") | .v2_started_seconds) as $base |
  .layer_level_bytes as $lb | .update_bytes as $u |
  "### Node update: CRI PullImage of v2 to a started container (\(.params.scale), seed \(.params.seed), \(.params.paks // "split") paks, \(.params.update_mb) MB update; \(.params.link))",
  "",
  "Update'"'"'s own size \(.update_bytes | mb); layer-level download \(.layer_level_bytes | mb); image \(.image_bytes | mb). Node disk: loop-mounted XFS with reflink. \(.machine), kernel \(.kernel), containerd \(.containerd), gantry \(.git), \(.date).",
  "",
  "| way | PullImage v2 → container started | × faster than layer-level | PullImage v2 | registry bytes for v2 | × update | written to the node'"'"'s disk (v2 step) | reflinked (v2) | cold v1 pull |",
  "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ($w[] | (if .way == "layer" then $lb elif .way == "podman" then .registry_bytes_v2
            else .v2_metrics.gantry_agent_upstream_bytes_total end) as $rb |
    (if .way == "podman" then .reflinked_bytes_v2
     else .v2_metrics.gantry_snapshotter_reused_bytes_total end) as $rl |
    "| \(.way) | \(.v2_started_seconds | d2) s | \($base / .v2_started_seconds | d2)× | \(.v2_pull_seconds | d2) s | \($rb | mb) | \($rb / $u | d2)× | \(.v2_disk_written_bytes | mb) | \($rl | mb) | \(.v1_pull_seconds | d2) s |"),
  "",
  ([$w[] | select(.way == "podman")] | if length == 0 then "podman zstd:chunked: not run (--no-podman)."
   else .[0] | "podman zstd:chunked: \(.podman.partial_blobs) partial blob(s) (\"Retrieved partial blob\" in its debug log), podman \(.podman.podman_version), buildah \(.podman.buildah_version); its own image (buildah bud: base, engine, start.sh, paks) is \(.podman.image_bytes | mb)." end),
  ([$w[] | select(.way == "podman")] as $p | [$w[] | select(.way == "snapshotter")] as $s |
   if ($p | length) > 0 and ($s | length) > 0 then
     "Snapshotter against podman zstd:chunked: \($p[0].v2_started_seconds / $s[0].v2_started_seconds | d2)× faster (v2 step)."
   else empty end),
  "",
  ($w[] | select(.way == "snapshotter") | "Snapshotter: \(.fast_layers) layers by the fast path, \(.normal_layers) by the normal path, \(.fallbacks) fallbacks; chunks fetched through the agent \(.fetched_bytes | mb) (v1 and v2); file data reflinked \(.reflinked_bytes | mb), copied \(.copied_bytes | mb), written from new chunks \(.written_from_chunks_bytes | mb) (v1 and v2); peak RSS snapshotter \(.snapshotter_vmhwm_kb / 1024 | round) MiB, agent \(.agent_vmhwm_kb / 1024 | round) MiB."),
  "",
  "Command: `\(.command)`"
' "$OUT"
