/**
 * The app API over HTTP, on a unix socket and on loopback TCP (never on another address). Requests are parsed
 * by the pure functions of `usage.ts`, handed to the ledger, and answered `202` only after the ledger has
 * committed them. A rejected request changes nothing. Bodies over 1 MiB are cut off as they stream in.
 * @see docs/api.md
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect } from 'node:net';
import { chmodSync, lstatSync, mkdirSync, unlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import { MAX_NONCE_LENGTH } from '../awsLimits.js';
import { isLoopbackHost, type ListenAddress } from '../address.js';
import { CODES, ListenError, StorageUnavailableError } from '../errors.js';
import type { UsageLedger } from '../ledger/ledger.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../observe/metrics.js';
import { type Body, listen as listenOn, readBody, sendJson } from '../http.js';
import { isObject, parseJson } from '../json.js';
import type { ProofResult } from '../entitlement/entitlement.js';
import {
  ERROR_STATUS,
  MAX_BODY_BYTES,
  UsageParser,
  idProblem,
  rejection,
  type ErrorCode,
  type Rejection,
} from './usage.js';

/**
 * Mode of the socket file: read and write for everyone. The app container usually runs as another user than
 * the sidecar; the socket lives on a volume shared only by the containers of one task or pod, so the volume
 * mount is the access control (see docs/api.md).
 */
export const SOCKET_MODE = 0o666;

/** A slow client gets this long to send its headers, and the whole request. */
const HEADERS_TIMEOUT_MS = 10_000;
const REQUEST_TIMEOUT_MS = 30_000;

/**
 * Most request bodies read at once: each may hold up to 1 MiB, so this bounds the memory a misbehaving local
 * client can tie up (64 MiB). Beyond it, requests are answered 429 at once.
 */
export const MAX_CONCURRENT_BODIES = 64;

/** Most open connections per listener; more are refused by the kernel queue, not buffered. */
const MAX_CONNECTIONS = 1024;

/** Longest that stop() waits, by default, for requests in flight before closing their connections. */
export const MAX_DRAIN_MS = 2_000;

/** Options of {@link IntakeServer}. */
export interface IntakeOptions {
  readonly socketPath: string | undefined;
  readonly listen: ListenAddress | undefined;
  readonly dimensions: readonly string[] | undefined;
  /** Unit divisors of the scaled dimensions (METERING_UNIT_DIVISORS); their reports count a finer unit. */
  readonly unitDivisors?: Readonly<Record<string, number>>;
  readonly ledger: UsageLedger;
  readonly logger: Logger;
  /** Undefined while usage may be accepted; otherwise the NotEntitled rejection to answer. */
  readonly gate: () => Promise<Rejection | undefined>;
  /** Body of `GET /v1/status`. */
  readonly status: () => Promise<unknown>;
  /** Body of `GET /v1/entitlement`. */
  readonly entitlement: () => unknown;
  /** `POST /v1/entitlement`: a fresh RegisterUsage with the app's nonce. */
  readonly proveEntitlement: (nonce: string) => Promise<ProofResult>;
  readonly metrics?: Metrics;
}

/** The app API server. `start()` opens every configured listener; `stop()` drains them. */
export class IntakeServer {
  readonly #options: IntakeOptions;
  readonly #parser: UsageParser;
  readonly #servers: Server[] = [];
  #tcpAddress: ListenAddress | undefined;
  #listening = false;
  /** Requests being handled, including ones whose client has gone away while their batch commits. */
  readonly #inFlight = new Set<Promise<void>>();
  /** Bodies being read right now. */
  #reading = 0;

  constructor(options: IntakeOptions) {
    this.#options = options;
    this.#parser = new UsageParser(options.dimensions, options.unitDivisors);
  }

  /** The TCP address actually bound (port 0 resolved), if TCP is on. */
  get tcpAddress(): ListenAddress | undefined {
    return this.#tcpAddress;
  }

  /** True while every configured listener accepts connections. */
  get listening(): boolean {
    return this.#listening;
  }

  /**
   * Opens the unix socket (replacing a stale socket file left by a crash) and the loopback listener.
   * @throws ListenError when a listener cannot be opened.
   */
  async start(): Promise<void> {
    const { socketPath, listen } = this.#options;
    if (socketPath !== undefined) {
      await prepareSocketPath(socketPath);
      // A unix socket cannot be reached from a web page: any Host header is fine there.
      const server = this.#createServer(false);
      await listenOn(server, { path: socketPath }, `unix socket ${socketPath}`);
      chmodSync(socketPath, SOCKET_MODE);
      this.#options.logger.info({ socket: socketPath }, 'app API listening on unix socket');
    }
    if (listen !== undefined) {
      const server = this.#createServer(true);
      await listenOn(server, { host: listen.host, port: listen.port }, `${listen.host}:${listen.port}`);
      const address = server.address();
      if (address !== null && typeof address === 'object')
        this.#tcpAddress = { host: listen.host, port: address.port };
      this.#options.logger.info({ address: this.#tcpAddress }, 'app API listening on loopback TCP');
    }
    this.#listening = true;
  }

  /**
   * Stops accepting, lets in-flight requests finish for up to `drainMs` (their batches commit and are
   * answered), then closes every connection: a request whose body has not arrived by then is cut off, never
   * acknowledged, so its client resends it. Resolves only once no handler is left running, so nothing reaches
   * the ledger after it; a batch already committing is always answered.
   */
  async stop(drainMs = MAX_DRAIN_MS): Promise<void> {
    this.#listening = false;
    const servers = this.#servers.splice(0);
    await Promise.all(
      servers.map(
        (server) =>
          new Promise<void>((resolve) => {
            const force = setTimeout(() => server.closeAllConnections(), drainMs);
            server.close(() => {
              clearTimeout(force);
              resolve();
            });
            server.closeIdleConnections();
          }),
      ),
    );
    // A client that hung up does not wait for its batch: the handler may still be committing it.
    while (this.#inFlight.size > 0) await Promise.all(this.#inFlight);
  }

  /** `loopbackHostOnly`: answer only requests addressed to a loopback host name (see {@link isLoopbackHost}). */
  #createServer(loopbackHostOnly: boolean): Server {
    const server = createServer((req, res) => {
      if (loopbackHostOnly && !isLoopbackHost(req.headers.host)) {
        return discardAndFail(
          req,
          res,
          rejection(
            'ForbiddenHost',
            `the app API answers only requests addressed to a loopback host (localhost, 127.0.0.1, [::1]), not Host: ${JSON.stringify(req.headers.host ?? '')}`,
          ),
        );
      }
      const handling: Promise<void> = this.#handle(req, res)
        .catch((err: unknown) => {
          this.#options.logger.error({ err, code: CODES.internal }, 'app API request failed');
          if (!res.headersSent)
            sendJson(res, 500, errorBody(rejection('Internal', 'internal error; see the sidecar log')));
          else res.destroy();
        })
        .finally(() => this.#inFlight.delete(handling));
      this.#inFlight.add(handling);
    });
    server.headersTimeout = HEADERS_TIMEOUT_MS;
    server.requestTimeout = REQUEST_TIMEOUT_MS;
    server.maxConnections = MAX_CONNECTIONS;
    this.#servers.push(server);
    return server;
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0];
    const cancelling = path.startsWith(USAGE_ITEM);
    const route = cancelling ? ['DELETE'] : ROUTES[path];
    if (route === undefined) return fail(res, rejection('NotFound', `no such endpoint: ${path}`));
    if (!route.includes(req.method ?? '')) {
      res.setHeader('allow', route.join(', '));
      return fail(
        res,
        rejection('MethodNotAllowed', `${req.method} is not allowed on ${path}; use ${route.join(' or ')}`),
      );
    }
    if (cancelling) return this.#deleteUsage(req, res, path.slice(USAGE_ITEM.length));
    if (path === '/v1/status') return sendJson(res, 200, await this.#options.status());
    if (path === '/v1/entitlement') {
      return req.method === 'GET'
        ? sendJson(res, 200, this.#options.entitlement())
        : this.#postEntitlement(req, res);
    }
    return this.#postUsage(req, res);
  }

  async #postEntitlement(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await this.#readJson(req, res);
    if (body === undefined) return;
    const nonce = isObject(body) ? body['nonce'] : undefined;
    if (
      !isObject(body) ||
      Object.keys(body).some((k) => k !== 'nonce') ||
      typeof nonce !== 'string' ||
      nonce.length === 0 ||
      nonce.length > MAX_NONCE_LENGTH
    ) {
      return fail(
        res,
        rejection('InvalidRequest', `send {"nonce": "..."} with a nonce of 1-${MAX_NONCE_LENGTH} characters`),
      );
    }
    const proof = await this.#options.proveEntitlement(nonce);
    if (proof.kind !== 'proved') return fail(res, rejection(PROOF_ERRORS[proof.kind], proof.message));
    const { token, claims, verified, checkedAt } = proof;
    return sendJson(res, 200, { token, claims, verified, nonce: proof.nonce, checkedAt });
  }

  /** Checks the content type and reads the body up to 1 MiB; answers the error itself and resolves undefined on failure. */
  async #readText(req: IncomingMessage, res: ServerResponse): Promise<string | undefined> {
    const type = (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
    if (type !== 'application/json') {
      discardAndFail(
        req,
        res,
        rejection('UnsupportedMediaType', 'send the body as JSON with Content-Type: application/json'),
      );
      return undefined;
    }
    if (this.#reading >= MAX_CONCURRENT_BODIES) {
      res.setHeader('retry-after', '1');
      discardAndFail(
        req,
        res,
        rejection('TooManyRequests', 'too many requests in progress; retry in a second'),
      );
      return undefined;
    }
    this.#reading++;
    let body: Body;
    try {
      body = await readBody(req, MAX_BODY_BYTES);
    } finally {
      this.#reading--;
    }
    if (body.kind === 'aborted') return undefined; // The connection is gone: nobody to answer.
    if (body.kind === 'tooLarge') {
      res.shouldKeepAlive = false;
      fail(res, rejection('TooLarge', `the body exceeds ${MAX_BODY_BYTES} bytes`));
      return undefined;
    }
    return body.text;
  }

  /** {@link #readText}, parsed as JSON. */
  async #readJson(req: IncomingMessage, res: ServerResponse): Promise<unknown> {
    const text = await this.#readText(req, res);
    if (text === undefined) return undefined;
    const parsed = parseJson(text);
    if (parsed.ok) return parsed.value;
    fail(res, rejection('InvalidJson', parsed.message));
    return undefined;
  }

  async #postUsage(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const metrics = this.#options.metrics;
    res.once('finish', () => {
      const code =
        res.statusCode === 202 ? '' : ((res.getHeader('x-error-code') as string | undefined) ?? 'Unknown');
      metrics?.intakeRequests.inc({ result: res.statusCode === 202 ? 'accepted' : 'rejected', code });
    });
    const gate = await this.#options.gate();
    if (gate !== undefined) return discardAndFail(req, res, gate);
    const body = await this.#readText(req, res);
    if (body === undefined) return;
    const batch = this.#parser.parse(body);
    if ('kind' in batch) return fail(res, batch);
    let result;
    try {
      result = await this.#options.ledger.record(batch);
    } catch (err) {
      if (!(err instanceof StorageUnavailableError)) throw err;
      this.#options.logger.error({ err, code: err.code }, 'usage refused: the ledger cannot commit');
      metrics?.errors.inc({ code: err.code });
      return fail(
        res,
        rejection('StorageUnavailable', 'the sidecar cannot store usage right now; retry later'),
      );
    }
    if (result.kind === 'rejection') return fail(res, result);
    if (metrics !== undefined) {
      for (const [dimension, quantity] of result.counted) {
        metrics.usageQuantity.inc({ dimension: metrics.dimension(dimension) }, quantity);
      }
    }
    return sendJson(res, 202, { accepted: result.accepted, duplicates: result.duplicates });
  }

  /**
   * `DELETE /v1/usage/{id}`: cancels the report sent with idempotency key `id` (percent-encoded in the path)
   * while its hour is not sealed. Answers 200 only once the cancellation is durable; a repeat answers 200 again
   * with `repeat: true`. A refusal changes nothing.
   */
  async #deleteUsage(req: IncomingMessage, res: ServerResponse, encoded: string): Promise<void> {
    req.resume(); // A body, if any, means nothing here.
    let id: string;
    try {
      id = decodeURIComponent(encoded);
    } catch {
      return fail(res, rejection('InvalidRequest', 'the id in the path is not valid percent-encoded UTF-8'));
    }
    const problem = idProblem(id);
    if (problem !== undefined)
      return fail(res, rejection('InvalidRequest', `${problem} in DELETE /v1/usage/{id}`));
    const gate = await this.#options.gate();
    if (gate !== undefined) return fail(res, gate);
    let result;
    try {
      result = await this.#options.ledger.cancel(id);
    } catch (err) {
      if (!(err instanceof StorageUnavailableError)) throw err;
      this.#options.logger.error({ err, code: err.code }, 'cancellation refused: the ledger cannot commit');
      this.#options.metrics?.errors.inc({ code: err.code });
      return fail(
        res,
        rejection('StorageUnavailable', 'the sidecar cannot store the cancellation right now; retry later'),
      );
    }
    if (result.kind === 'refused') return fail(res, rejection(result.code, result.message));
    const c = result.cancellation;
    if (!result.repeat) {
      const metrics = this.#options.metrics;
      metrics?.usageCancelled.inc({ dimension: metrics.dimension(c.dimension) }, c.quantity);
      this.#options.logger.info(
        {
          id: c.id,
          dimension: c.dimension,
          quantity: c.quantity,
          hour: new Date(c.hourStartMs).toISOString(),
        },
        'usage cancelled before its hour was sealed',
      );
    }
    return sendJson(res, 200, {
      id: c.id,
      dimension: c.dimension,
      quantity: c.quantity,
      tags: JSON.parse(c.tagsKey) as unknown,
      hour: new Date(c.hourStartMs).toISOString(),
      reportedAt: new Date(c.reportedAtMs).toISOString(),
      cancelledAt: new Date(c.cancelledAtMs).toISOString(),
      repeat: result.repeat,
    });
  }
}

/** Prefix of one report's path: `DELETE /v1/usage/{id}` cancels the report sent with that idempotency key. */
const USAGE_ITEM = '/v1/usage/';

/** The error code of each way a proof can fail. */
const PROOF_ERRORS: Readonly<Record<Exclude<ProofResult['kind'], 'proved'>, ErrorCode>> = {
  notApplicable: 'EntitlementNotApplicable',
  notEntitled: 'NotEntitled',
  tooSoon: 'TooManyRequests',
  unavailable: 'EntitlementUnavailable',
  refused: 'EntitlementRefused',
};

const ROUTES: Readonly<Record<string, readonly string[]>> = {
  '/v1/usage': ['POST'],
  '/v1/status': ['GET'],
  '/v1/entitlement': ['GET', 'POST'],
};

function discardAndFail(req: IncomingMessage, res: ServerResponse, problem: Rejection): void {
  req.resume();
  fail(res, problem);
}

function fail(res: ServerResponse, problem: Rejection): void {
  res.setHeader('x-error-code', problem.code);
  sendJson(res, ERROR_STATUS[problem.code], errorBody(problem));
}

function errorBody(problem: Rejection): unknown {
  return {
    error: {
      code: problem.code,
      message: problem.message,
      ...(problem.index !== undefined ? { index: problem.index } : {}),
    },
  };
}

/**
 * Makes the socket path usable: creates its directory, and removes a socket file left by a crashed process
 * (nobody answers on it). A live socket or any other kind of file at the path is an error, not deleted.
 */
async function prepareSocketPath(path: string): Promise<void> {
  mkdirSync(dirname(path), { recursive: true });
  let stat;
  try {
    stat = lstatSync(path);
  } catch {
    return; // Nothing there: the usual case.
  }
  if (!stat.isSocket()) {
    throw new ListenError(
      `${path} exists and is not a socket; remove it or set METERING_SOCKET to another path`,
    );
  }
  const alive = await new Promise<boolean>((resolve) => {
    const probe = connect(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (alive) throw new ListenError(`another process is listening on ${path}; is a second sidecar running?`);
  unlinkSync(path);
}
