/**
 * What a failed send proves: whether the MeterUsage request ever had a connection to AWS. A request can only
 * have reached AWS over a connection that was established (for HTTPS, one whose TLS handshake completed and
 * whose certificate verified), so a failure before that point (DNS, a refused or timed-out connect, a TLS
 * handshake or certificate error, or no request at all because credentials could not be fetched from STS or
 * the ECS agent) means the record was never delivered. The sender's client makes its connections through the
 * agents here, which note, for the send running in the current async context, that a connection was made.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { Agent as HttpAgent, type ClientRequestArgs } from 'node:http';
import { Agent as HttpsAgent, type RequestOptions } from 'node:https';
import type { Duplex } from 'node:stream';
import type { MarketplaceMeteringClient } from '@aws-sdk/client-marketplace-metering';

/** What is known of one send's way to AWS. */
export interface ConnectionEvidence {
  /** True once a connection for the request was established (TCP connected; for HTTPS, TLS verified). */
  connected: boolean;
  /**
   * Called once when the request is handed to the network (after credentials and signing, before any
   * connection is opened); the request waits for it, so whatever it stores is durable before a byte can reach
   * AWS.
   */
  readonly onRequest: (() => void | Promise<void>) | undefined;
  /**
   * Called at most once, when the request's bytes have all been handed to the connection (the kernel has them),
   * so the caller can do other work while the answer is on its way. Never called for a request that got no
   * connection, and not always for one that did: it is a hint for overlapping work, never evidence.
   */
  readonly onSent: (() => void) | undefined;
}

/** The evidence of the send running in this async context (set by {@link withConnectionEvidence}). */
const sendScope = new AsyncLocalStorage<ConnectionEvidence>();

/**
 * The evidence the agents report to: set only around the HTTP exchange of the request itself. Credentials are
 * resolved before it, and the SDK's STS client (IRSA) shares the request handler and its agents, so an STS
 * connection must not count as one to Marketplace Metering.
 */
const transportScope = new AsyncLocalStorage<ConnectionEvidence>();

/**
 * Runs `send` and tells whether its request got a connection: the client must carry
 * {@link addConnectionEvidence} and make its connections through {@link connectionAgents}, which keep no
 * connection alive between requests, so every request opens (and reports) its own.
 */
export async function withConnectionEvidence<T>(
  send: () => Promise<T>,
  onRequest?: () => void | Promise<void>,
  onSent?: () => void,
): Promise<{ ok: true; value: T; connected: boolean } | { ok: false; error: unknown; connected: boolean }> {
  const evidence: ConnectionEvidence = { connected: false, onRequest, onSent };
  try {
    const value = await sendScope.run(evidence, send);
    return { ok: true, value, connected: evidence.connected };
  } catch (error) {
    return { ok: false, error, connected: evidence.connected };
  }
}

/**
 * Adds the middleware that opens the transport scope around the request's HTTP exchange: the innermost step,
 * after serialising, credentials and signing, right before the request handler. It calls the send's
 * `onRequest` first, so a record is marked in flight only once its request is really on its way: a process
 * that dies while credentials are still being fetched has sent nothing.
 */
export function addConnectionEvidence(client: MarketplaceMeteringClient): void {
  client.middlewareStack.add(
    (next) => async (args) => {
      const evidence = sendScope.getStore();
      if (evidence === undefined) return next(args);
      await evidence.onRequest?.();
      return transportScope.run(evidence, () => next(args));
    },
    { step: 'deserialize', priority: 'low', name: 'meteringSidecarConnectionEvidence' },
  );
}

/**
 * Notes on the current request's evidence when `socket` emits `event` (its connection is established), and
 * tells its `onSent` once what the request queued on the socket while it connected has been written.
 */
function watch(socket: Duplex | null | undefined, event: 'connect' | 'secureConnect'): void {
  const evidence = transportScope.getStore();
  if (evidence === undefined || socket === null || socket === undefined) return;
  socket.once(event, () => {
    evidence.connected = true;
    const { onSent } = evidence;
    if (onSent === undefined) return;
    // The queued writes start on this event; by the next turn they are written or waiting for a drain.
    setImmediate(() => {
      if (socket.writableLength === 0) onSent();
      else socket.once('drain', onSent);
    });
  });
}

/** An HTTP agent with a fresh connection per request, reporting each one it establishes. */
class EvidenceHttpAgent extends HttpAgent {
  constructor() {
    super({ keepAlive: false });
  }

  override createConnection(
    options: ClientRequestArgs,
    callback?: (err: Error | null, stream: Duplex) => void,
  ): Duplex | null | undefined {
    const socket = super.createConnection(options, callback);
    watch(socket, 'connect');
    return socket;
  }
}

/** An HTTPS agent with a fresh connection per request, reporting each one whose TLS handshake verified. */
class EvidenceHttpsAgent extends HttpsAgent {
  constructor() {
    super({ keepAlive: false });
  }

  override createConnection(
    options: RequestOptions,
    callback?: (err: Error | null, stream: Duplex) => void,
  ): Duplex | null | undefined {
    const socket = super.createConnection(options, callback);
    watch(socket, 'secureConnect');
    return socket;
  }
}

/** A pair of agents for the SDK's request handler that report connections to {@link withConnectionEvidence}. */
export function connectionAgents(): { httpAgent: HttpAgent; httpsAgent: HttpsAgent } {
  return { httpAgent: new EvidenceHttpAgent(), httpsAgent: new EvidenceHttpsAgent() };
}
