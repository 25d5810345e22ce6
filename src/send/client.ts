/**
 * The one place the AWS Marketplace Metering client is built: region from AWS_REGION, the default credential
 * chain (ECS task role, IRSA), and AWS_ENDPOINT_URL_MARKETPLACE_METERING passed as `endpoint` (older SDK
 * endpoint resolvers mis-spell the variable, so the sidecar reads it itself; docs/aws-rules.md §1.7).
 */
import { MarketplaceMeteringClient } from '@aws-sdk/client-marketplace-metering';
import { defaultProvider } from '@aws-sdk/credential-provider-node';
import type { Clock } from '../clock.js';
import { errorName } from './awsErrors.js';
import { addConnectionEvidence, connectionAgents } from './connection.js';

/** Per-request deadline: a MeterUsage answer normally takes well under a second. */
export const REQUEST_TIMEOUT_MS = 10_000;

/** Deadline for opening the connection. */
export const CONNECTION_TIMEOUT_MS = 3_000;

/**
 * Attempts the SDK makes inside one send, with its own backoff for throttling and 5xx
 * (docs/aws-rules.md §1.6). The scheduler retries beyond that with its own backoff.
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
}

/** Builds the SDK client for entitlement checks (SDK retries, pooled connections). The caller destroys it. */
export function createMeteringClient(options: MeteringClientOptions): MarketplaceMeteringClient {
  return buildClient(options, options.maxAttempts ?? SDK_MAX_ATTEMPTS, undefined);
}

/**
 * Builds the SDK client for `MeteringSender`: one HTTP attempt per send (the scheduler retries), so the
 * outcome of every attempt is known, on a fresh connection each time, through agents that report whether the
 * connection was made (./connection.ts). A pooled connection the server had already closed would fail with a
 * reset that looks exactly like a request lost after it was written; sends are hourly, so a fresh connection
 * each costs nothing. The caller destroys the client when done.
 */
export function createSendClient(
  options: Omit<MeteringClientOptions, 'maxAttempts'>,
): MarketplaceMeteringClient {
  const client = buildClient(options, 1, connectionAgents());
  addConnectionEvidence(client);
  return client;
}

function buildClient(
  options: MeteringClientOptions,
  maxAttempts: number,
  agents: ReturnType<typeof connectionAgents> | undefined,
): MarketplaceMeteringClient {
  return new MarketplaceMeteringClient({
    region: options.region,
    ...(options.endpoint !== undefined ? { endpoint: options.endpoint } : {}),
    credentials: options.credentials ?? defaultProvider(),
    maxAttempts,
    requestHandler: {
      requestTimeout: options.requestTimeoutMs ?? REQUEST_TIMEOUT_MS,
      // The request timeout ends when the headers arrive; a body that stalls after them is ended by this.
      socketTimeout: options.requestTimeoutMs ?? REQUEST_TIMEOUT_MS,
      // Without this the handler only warns when the deadline passes and the call hangs on.
      throwOnRequestTimeout: true,
      connectionTimeout: CONNECTION_TIMEOUT_MS,
      ...(agents ?? {}),
    },
  });
}

/** One MeterUsage or RegisterUsage call as {@link observeClient} reports it (SDK retries included). */
export interface CallReport {
  readonly operation: string;
  readonly outcome: 'success' | 'error';
  /** The AWS error name or error code; `''` on success. */
  readonly error: string;
  readonly seconds: number;
  readonly dryRun: boolean;
}

/** What {@link observeClient} reports each call to. */
export interface CallObserver {
  call(report: CallReport): void;
}

/**
 * Observes every MeterUsage and RegisterUsage call of `client`, SDK retries included, for metrics: the
 * operation, its outcome, the AWS error name and the duration on `clock`. Adds one middleware at the initialize
 * step.
 */
export function observeClient(
  client: MarketplaceMeteringClient,
  observer: CallObserver,
  clock: Pick<Clock, 'monotonicMs'>,
): void {
  client.middlewareStack.add(
    (next, context) => async (args) => {
      const operation = (context.commandName ?? 'Unknown').replace(/Command$/, '');
      const dryRun = (args.input as { DryRun?: unknown }).DryRun === true;
      const started = clock.monotonicMs();
      const seconds = (): number => (clock.monotonicMs() - started) / 1000;
      try {
        const output = await next(args);
        observer.call({ operation, outcome: 'success', error: '', seconds: seconds(), dryRun });
        return output;
      } catch (err) {
        observer.call({ operation, outcome: 'error', error: errorName(err), seconds: seconds(), dryRun });
        throw err;
      }
    },
    { step: 'initialize', name: 'meteringSidecarObserver' },
  );
}
