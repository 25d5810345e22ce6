# metering-sidecar image: build stage compiles TypeScript and better-sqlite3; the runtime stage has Node.js,
# the compiled code and production dependencies only, runs as a numeric non-root user, and works with a
# read-only root filesystem, all capabilities dropped and no-new-privileges.
ARG NODE_IMAGE=node:24-bookworm-slim

FROM ${NODE_IMAGE} AS build
WORKDIR /src
# better-sqlite3 is compiled from source against the image's own Node.js headers (/usr/local/include/node).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
ENV npm_config_nodedir=/usr/local npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false
COPY package.json package-lock.json ./
# An extra CA bundle for the npm registry can be passed as a build secret (id=extraca); without it Node only warns.
# --engine-strict refuses a base whose Node.js package.json's engines exclude: 24.19.0 to 24.21.x abort the process
# when a garbage collection frees a native addon's object (node::ObjectWrap's cleanup hooks, nodejs/node#65446),
# and better-sqlite3 is such an addon (docs/design.md, "Runtime").
RUN --mount=type=secret,id=extraca,target=/run/secrets/extraca \
    NODE_EXTRA_CA_CERTS=/run/secrets/extraca npm ci --engine-strict
COPY tsconfig.json tsconfig.build.json ./
COPY scripts/bundle.mjs ./scripts/bundle.mjs
COPY src ./src
# The software bill of materials of what ships, the production dependencies, as CycloneDX (npm's own sbom),
# made while the whole tree is installed (npm sbom refuses a tree with dependencies missing), then pruned to it.
RUN npm run build \
 && npm sbom --sbom-format cyclonedx --sbom-type application --omit dev > sbom.cdx.json \
 && npm prune --omit=dev && chmod 0755 dist/main.js

FROM ${NODE_IMAGE} AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="metering-sidecar" \
      org.opencontainers.image.description="AWS Marketplace metering sidecar: entitlement at startup, crash-safe hourly MeterUsage" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${NODE_IMAGE}" \
      io.cyclonedx.sbom.path="/app/sbom.cdx.json" \
      io.cyclonedx.sbom.format="CycloneDX JSON"
# No package managers at run time: npm, npx and corepack go; the Node.js headers too.
RUN rm -rf /usr/local/lib/node_modules /usr/local/bin/npm /usr/local/bin/npx /usr/local/bin/corepack \
           /usr/local/bin/yarn /usr/local/bin/yarnpkg /usr/local/include /opt/yarn* \
 && groupadd --gid 10001 metering \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin metering \
 && mkdir -p /var/lib/metering /run/metering \
 && chown 10001:10001 /var/lib/metering /run/metering
WORKDIR /app
COPY --from=build /src/package.json ./package.json
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY --from=build /src/sbom.cdx.json ./sbom.cdx.json
RUN ln -s /app/dist/main.js /usr/local/bin/metering-sidecar
ENV NODE_ENV=production \
    METERING_STATE_DIR=/var/lib/metering \
    METERING_SOCKET=/run/metering/metering.sock
VOLUME ["/var/lib/metering", "/run/metering"]
USER 10001:10001
EXPOSE 9181
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 CMD ["metering-sidecar", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["metering-sidecar"]
CMD ["run"]
