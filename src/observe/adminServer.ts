/**
 * The admin listener (METERING_ADMIN_LISTEN): read-only health, readiness and metrics for the orchestrator and
 * Prometheus. It listens beyond loopback (the kubelet and Prometheus reach it over the pod network), so it
 * tells no more than health: no entitlement token, no ledger id (ClientTokens derive from it), no per-tag data.
 * The full status is on the app API only (socket and loopback). Nothing on it changes state: every route is a
 * GET (HEAD is answered too), anything else is 405.
 */
import { createServer, type Server, type ServerResponse } from 'node:http';
import type { ListenAddress } from '../config.js';
import { CODES } from '../errors.js';
import { closeServer, listen, sendJson } from '../http.js';
import type { ReadinessCheck } from './readiness.js';
import type { Logger } from '../log.js';

/** Options of {@link AdminServer}. */
export interface AdminOptions {
  readonly listen: ListenAddress;
  readonly logger: Logger;
  /** The readiness checks by name; ready when all are ok. */
  readonly readiness: () => Promise<Readonly<Record<string, ReadinessCheck>>>;
  /** `GET /metrics`: the Prometheus text exposition. */
  readonly metrics: () => Promise<{ contentType: string; body: string }>;
}

/** The admin HTTP server. */
export class AdminServer {
  readonly #options: AdminOptions;
  #server: Server | undefined;
  #port: number | undefined;

  constructor(options: AdminOptions) {
    this.#options = options;
  }

  /** The bound port (port 0 resolved). */
  get port(): number | undefined {
    return this.#port;
  }

  /** @throws ListenError when the address cannot be bound. */
  async start(): Promise<void> {
    const server = createServer((req, res) => {
      req.resume();
      this.#handle(req.method ?? 'GET', (req.url ?? '/').split('?')[0] ?? '/', res).catch((err: unknown) => {
        this.#options.logger.error({ err, code: CODES.internal }, 'admin request failed');
        if (!res.headersSent)
          sendJson(res, 500, { error: { code: 'Internal', message: 'internal error; see the sidecar log' } });
        else res.destroy();
      });
    });
    server.headersTimeout = 10_000;
    server.requestTimeout = 10_000;
    const { host, port } = this.#options.listen;
    await listen(server, { host, port }, `${host}:${port} for the admin API`);
    const address = server.address();
    this.#port = address !== null && typeof address === 'object' ? address.port : undefined;
    this.#server = server;
    this.#options.logger.info({ address: { host, port: this.#port } }, 'admin API listening');
  }

  async #handle(method: string, path: string, res: ServerResponse): Promise<void> {
    if (!ROUTES.has(path)) {
      const message =
        path === '/v1/status'
          ? 'the status is on the app API only (the unix socket or loopback): metering-sidecar status'
          : `no such endpoint: ${path}`;
      return sendJson(res, 404, { error: { code: 'NotFound', message } });
    }
    if (method !== 'GET' && method !== 'HEAD') {
      res.setHeader('allow', 'GET, HEAD');
      return sendJson(res, 405, {
        error: { code: 'MethodNotAllowed', message: 'the admin API is read-only' },
      });
    }
    switch (path) {
      case '/healthz':
        return sendJson(res, 200, { status: 'ok' });
      case '/readyz': {
        const checks = await this.#options.readiness();
        const ready = Object.values(checks).every((c) => c.ok);
        return sendJson(res, ready ? 200 : 503, { ready, checks });
      }
      case '/metrics': {
        const { contentType, body } = await this.#options.metrics();
        res.writeHead(200, { 'content-type': contentType, 'content-length': Buffer.byteLength(body) });
        res.end(body);
        return;
      }
    }
  }

  /** Closes the listener and its connections. Idempotent. */
  async stop(): Promise<void> {
    const server = this.#server;
    this.#server = undefined;
    if (server === undefined) return;
    await closeServer(server);
  }
}

const ROUTES = new Set(['/healthz', '/readyz', '/metrics']);
