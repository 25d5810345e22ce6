/**
 * A small typed client for the app API, for a seller's Node.js app and for the `report` and `status`
 * commands. It talks HTTP over the unix socket (or loopback TCP) with only `node:http`.
 */
import { Agent, request } from 'node:http';

/** One usage report. */
export interface UsageInput {
  readonly dimension: string;
  readonly quantity: number;
  readonly tags?: Readonly<Record<string, string>>;
  readonly id?: string;
}

/** Where the sidecar's app API listens: a unix socket path, or a loopback host and port. */
export type ApiAddress = { readonly socketPath: string } | { readonly host: string; readonly port: number };

/** A reply of the app API. */
export interface ApiReply<T = unknown> {
  readonly status: number;
  readonly body: T;
}

/** The reply to a cancellation (`DELETE /v1/usage/{id}`). */
export interface CancelReply {
  readonly id: string;
  readonly dimension: string;
  /** As reported (in the dimension's fine unit when it has a unit divisor). */
  readonly quantity: number;
  readonly tags: Readonly<Record<string, string>>;
  /** The hour the report was counted in, ISO 8601. */
  readonly hour: string;
  readonly reportedAt: string;
  readonly cancelledAt: string;
  /** True when the report was already cancelled: this call changed nothing. */
  readonly repeat: boolean;
}

/** The error body every non-2xx reply carries. */
export interface ApiErrorBody {
  readonly error: { readonly code: string; readonly message: string; readonly index?: number };
}

/**
 * Client for the sidecar's app API. Errors of the transport reject; API errors resolve with their status.
 * A transport error on `report` leaves it unknown whether the usage was stored: give records an `id` and
 * retry with the same ids, and the sidecar counts them once.
 */
export class SidecarClient {
  readonly #address: ApiAddress;
  readonly #timeoutMs: number;
  /** Own keep-alive pool, so connections are never shared with other clients in the process. */
  readonly #agent = new Agent({ keepAlive: true, maxSockets: 32 });

  constructor(address: ApiAddress, options: { timeoutMs?: number } = {}) {
    this.#address = address;
    this.#timeoutMs = options.timeoutMs ?? 10_000;
  }

  /** Closes the client's idle connections. */
  close(): void {
    this.#agent.destroy();
  }

  /** Reports one record or a batch. `202` means the usage is durable in the sidecar's ledger. */
  report(
    records: UsageInput | readonly UsageInput[],
  ): Promise<ApiReply<{ accepted: number; duplicates: number } | ApiErrorBody>> {
    const body = Array.isArray(records) ? { records } : records;
    return this.call('POST', '/v1/usage', body);
  }

  /**
   * Cancels the report sent with idempotency key `id` while its hour is not sealed (`DELETE /v1/usage/{id}`).
   * `200` means the cancellation is durable; a repeat answers `200` again with `repeat: true`. `404`
   * `UnknownUsageId` and `409` `HourSealed` or `NotCancellable` changed nothing.
   */
  cancel(id: string): Promise<ApiReply<CancelReply | ApiErrorBody>> {
    return this.call('DELETE', `/v1/usage/${encodeURIComponent(id)}`);
  }

  /** The entitlement state and the startup token (`GET /v1/entitlement`). */
  entitlement(): Promise<ApiReply> {
    return this.call('GET', '/v1/entitlement');
  }

  /**
   * A fresh RegisterUsage with the app's own nonce (`POST /v1/entitlement`). Verify the returned token with
   * `verifyEntitlementToken` and the product's public key: that proves the sidecar was not faked.
   */
  proveEntitlement(
    nonce: string,
  ): Promise<ApiReply<{ token: string; claims: Record<string, unknown>; verified: boolean } | ApiErrorBody>> {
    return this.call('POST', '/v1/entitlement', { nonce });
  }

  /** The sidecar's status (`GET /v1/status`). */
  status(): Promise<ApiReply> {
    return this.call('GET', '/v1/status');
  }

  /** Any call to the API; the body is sent as JSON and the reply parsed as JSON. */
  call<T = unknown>(method: string, path: string, body?: unknown): Promise<ApiReply<T>> {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    return new Promise((resolve, reject) => {
      const req = request(
        {
          ...this.#address,
          agent: this.#agent,
          method,
          path,
          timeout: this.#timeoutMs,
          headers:
            payload === undefined
              ? {}
              : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (chunk: Buffer) => chunks.push(chunk));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            try {
              resolve({
                status: res.statusCode ?? 0,
                body: (text === '' ? undefined : JSON.parse(text)) as T,
              });
            } catch (err) {
              reject(
                new Error(`the sidecar answered ${res.statusCode} with a body that is not JSON`, {
                  cause: err,
                }),
              );
            }
          });
          res.on('error', reject);
        },
      );
      req.on('timeout', () =>
        req.destroy(new Error(`no answer from the sidecar within ${this.#timeoutMs} ms`)),
      );
      req.on('error', reject);
      req.end(payload);
    });
  }
}
