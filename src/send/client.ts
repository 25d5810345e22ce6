/**
 * The one place the AWS Marketplace Metering client is built: region from AWS_REGION, the default credential
 * chain (ECS task role, IRSA), and AWS_ENDPOINT_URL_MARKETPLACE_METERING passed as `endpoint` (older SDK
 * endpoint resolvers mis-spell the variable, so the sidecar reads it itself; aws-metering-api.md §1.7).
 */
import { MarketplaceMeteringClient } from '@aws-sdk/client-marketplace-metering';
import { defaultProvider } from '@aws-sdk/credential-provider-node';
import { errorName } from './awsErrors.js';

/** Per-request deadline: a MeterUsage answer normally takes well under a second. */
export const REQUEST_TIMEOUT_MS = 10_000;

/** Deadline for opening the connection. */
export const CONNECTION_TIMEOUT_MS = 3_000;

/**
 * Attempts the SDK makes inside one send, with its own backoff for throttling and 5xx
 * (aws-metering-api.md §1.6). The scheduler retries beyond that with its own backoff.
 */
export const SDK_MAX_ATTEMPTS = 3;

/** Options of {@link createMeteringClient}. */
export interface MeteringClientOptions {
  readonly region: string;
  readonly endpoint: string | undefined;
  /** Fixed credentials (local mode and tests); otherwise the default chain. */
  readonly credentials?: { readonly accessKeyId: string; readonly secretAccessKey: string };
  readonly maxAttempts?: number;
  readonly requestTimeoutMs?: number;
  /**
   * Reuse connections (default true). The sender turns it off: a pooled connection the server has already
   * closed fails with a reset that looks exactly like a request lost after it was written, and such a record
   * must then be treated as maybe delivered. Sends are hourly, so a fresh connection each costs nothing.
   */
  readonly keepAlive?: boolean;
}

/** Builds the SDK client. The caller destroys it when done. */
export function createMeteringClient(options: MeteringClientOptions): MarketplaceMeteringClient {
  return new MarketplaceMeteringClient({
    region: options.region,
    ...(options.endpoint !== undefined ? { endpoint: options.endpoint } : {}),
    credentials: options.credentials ?? defaultProvider(),
    maxAttempts: options.maxAttempts ?? SDK_MAX_ATTEMPTS,
    requestHandler: {
      requestTimeout: options.requestTimeoutMs ?? REQUEST_TIMEOUT_MS,
      // The request timeout ends when the headers arrive; a body that stalls after them is ended by this.
      socketTimeout: options.requestTimeoutMs ?? REQUEST_TIMEOUT_MS,
      // Without this the handler only warns when the deadline passes and the call hangs on.
      throwOnRequestTimeout: true,
      connectionTimeout: CONNECTION_TIMEOUT_MS,
      ...(options.keepAlive === false
        ? { httpAgent: { keepAlive: false }, httpsAgent: { keepAlive: false } }
        : {}),
    },
  });
}

/** What {@link observeClient} reports for each call (SDK retries included). */
export interface CallObserver {
  call(
    operation: string,
    outcome: 'success' | 'error',
    error: string,
    seconds: number,
    dryRun: boolean,
  ): void;
}

/**
 * Observes every MeterUsage and RegisterUsage call of `client`, SDK retries included, for metrics: the
 * operation, its outcome, the AWS error name and the duration. Adds one middleware at the initialize step.
 */
export function observeClient(client: MarketplaceMeteringClient, observer: CallObserver): void {
  client.middlewareStack.add(
    (next, context) => async (args) => {
      const operation = (context.commandName ?? 'Unknown').replace(/Command$/, '');
      const dryRun = (args.input as { DryRun?: unknown }).DryRun === true;
      const started = performance.now();
      try {
        const output = await next(args);
        observer.call(operation, 'success', '', (performance.now() - started) / 1000, dryRun);
        return output;
      } catch (err) {
        observer.call(operation, 'error', errorName(err), (performance.now() - started) / 1000, dryRun);
        throw err;
      }
    },
    { step: 'initialize', name: 'meteringSidecarObserver' },
  );
}
