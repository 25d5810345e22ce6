#!/usr/bin/env bash
# npm run test:image — builds the image with a local Docker engine and runs it as a hardened container:
# --read-only, --cap-drop=ALL, no-new-privileges, in --local mode (embedded emulator). Sends usage through
# the socket from the host, checks the image's health check, stops it with SIGTERM and checks that the usage
# was metered and the exit code is 0. Prints the image size. Cleans up every container, process and mount it
# created. Where registries other than npm and Debian cannot be reached, scripts/image-engine.sh provides the
# engine and the base image.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
# shellcheck source=scripts/image-engine.sh
source scripts/image-engine.sh

IMAGE="metering-sidecar:test"
WORK="$(mktemp -d /tmp/metering-image.XXXXXX)"
CONTAINER=""
fail() { log "FAIL: $*"; exit 1; }
cleanup() {
  local status=$?
  if [ -n "$CONTAINER" ]; then "${DOCKER[@]}" rm -f "$CONTAINER" >/dev/null 2>&1 || true; fi
  engine_stop
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT

engine_start
base_image

log "building $IMAGE"
started=$(date +%s)
secret=()
if [ -n "${NODE_EXTRA_CA_CERTS:-}" ] && [ -f "$NODE_EXTRA_CA_CERTS" ]; then secret=(--secret "id=extraca,src=$NODE_EXTRA_CA_CERTS"); fi
DOCKER_BUILDKIT=1 "${DOCKER[@]}" build --network=host "${secret[@]}" -t "$IMAGE" . >"$WORK/build.log" 2>&1 \
  || { tail -40 "$WORK/build.log" >&2; fail "docker build failed"; }
log "built in $(($(date +%s) - started)) s"

# Volumes for the socket and the state, owned by the image's user.
mkdir -p "$WORK/run" "$WORK/state"
chown 10001:10001 "$WORK/run" "$WORK/state"
ADMIN_PORT=19181
APP_PORT=18181
CONTAINER=$("${DOCKER[@]}" run -d --network=host --read-only --cap-drop=ALL --security-opt no-new-privileges \
  --health-interval=1s --health-start-period=30s \
  -v "$WORK/run:/run/metering" -v "$WORK/state:/var/lib/metering" \
  -e METERING_ADMIN_LISTEN="127.0.0.1:$ADMIN_PORT" -e METERING_LISTEN="127.0.0.1:$APP_PORT" \
  "$IMAGE" run --local)

log "waiting for the health check"
health=""
for _ in $(seq 1 60); do
  health=$("${DOCKER[@]}" inspect --format '{{.State.Health.Status}}' "$CONTAINER")
  [ "$health" = "healthy" ] && break
  [ "$("${DOCKER[@]}" inspect --format '{{.State.Running}}' "$CONTAINER")" = "true" ] || break
  sleep 0.5
done
[ "$health" = "healthy" ] || { "${DOCKER[@]}" logs "$CONTAINER" >&2; fail "container not healthy: $health"; }
"${DOCKER[@]}" exec "$CONTAINER" metering-sidecar healthcheck >/dev/null || fail "healthcheck command failed inside the container"
[ "$("${DOCKER[@]}" inspect --format '{{.Config.User}}' "$IMAGE")" = "10001:10001" ] || fail "image user is not 10001:10001"

log "checking the SBOM"
[ "$("${DOCKER[@]}" inspect --format '{{index .Config.Labels "io.cyclonedx.sbom.path"}}' "$IMAGE")" = "/app/sbom.cdx.json" ] \
  || fail "image not labelled with its SBOM"
"${DOCKER[@]}" exec "$CONTAINER" cat /app/sbom.cdx.json >"$WORK/sbom.cdx.json" || fail "no SBOM in the image"
node -e '
  const bom = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  const names = new Set((bom.components ?? []).map((c) => (c.group ? `${c.group}/${c.name}` : c.name)));
  const want = ["better-sqlite3", "pino", "prom-client", "@aws-sdk/client-marketplace-metering"];
  const missing = want.filter((n) => !names.has(n));
  const dev = ["vitest", "typescript", "eslint"].filter((n) => names.has(n));
  if (bom.bomFormat !== "CycloneDX" || missing.length > 0 || dev.length > 0) {
    console.error(`bad SBOM: format ${bom.bomFormat}, missing ${missing}, dev dependencies ${dev}`);
    process.exit(1);
  }
  console.log(`SBOM: CycloneDX ${bom.specVersion}, ${names.size} components`);
' "$WORK/sbom.cdx.json" || fail "SBOM does not list the production dependencies alone"

log "sending usage through the socket from the host"
SOCKET="$WORK/run/metering.sock"
METERING_SOCKET="$SOCKET" node dist/main.js report requests 5 --tag tenant=acme --id image-1 | grep -q '"accepted":1' || fail "report 1"
METERING_SOCKET="$SOCKET" node dist/main.js report requests 5 --tag tenant=acme --id image-1 >/dev/null 2>&1 || true
METERING_SOCKET="$SOCKET" node dist/main.js report gb 7 | grep -q '"accepted":1' || fail "report gb"
METERING_SOCKET="$SOCKET" node dist/main.js status --json | grep -q '"state": "entitled"' || fail "not entitled"

log "stopping with SIGTERM"
"${DOCKER[@]}" stop --time 30 "$CONTAINER" >/dev/null
exit_code=$("${DOCKER[@]}" inspect --format '{{.State.ExitCode}}' "$CONTAINER")
"${DOCKER[@]}" logs "$CONTAINER" >"$WORK/container.log" 2>&1
[ "$exit_code" = "0" ] || { tail -20 "$WORK/container.log" >&2; fail "exit code $exit_code, expected 0"; }
grep '"msg":"usage metered"' "$WORK/container.log" | grep -q '"dimension":"requests".*"quantity":5' || fail "requests 5 not metered"
grep '"msg":"usage metered"' "$WORK/container.log" | grep -q '"dimension":"gb".*"quantity":7' || fail "gb 7 not metered"
[ "$(grep -c '"msg":"usage metered"' "$WORK/container.log")" = "2" ] || fail "expected exactly two metered records"

size=$("${DOCKER[@]}" image inspect --format '{{.Size}}' "$IMAGE")
log "PASS: healthy, usage metered once per dimension, exit code 0; image size $((size / 1024 / 1024)) MiB"
echo "image size: $((size / 1024 / 1024)) MiB ($size bytes)"
