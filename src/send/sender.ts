/**
 * Sending sealed records with MeterUsage. {@link MeteringSender} turns every outcome into a `SendResult` value
 * through `classify` (./awsErrors.ts, the one place that knows AWS error names), so the dispatcher (../schedule/dispatcher.ts) decides
 * what happens to the record (sent, retried, carried or failed) without ever seeing an exception for a service error.
 */
import { MeterUsageCommand, type MarketplaceMeteringClient } from '@aws-sdk/client-marketplace-metering';
import type { MeterUsageRequest } from '../ledger/hours.js';
import { DRY_RUN_RECORD_ID, classify, type SendResult } from './awsErrors.js';
import { withConnectionEvidence } from './connection.js';

/** Options of one {@link Sender.send}. */
export interface SendOptions {
  readonly signal?: AbortSignal;
  /**
   * Called once the request is about to leave for AWS (credentials resolved, request signed); the request
   * waits for it, so what it stores is durable before any byte can reach AWS. Not called when the send fails
   * earlier. The dispatcher marks the record in flight here. What it throws ends the send and is rethrown.
   */
  readonly onRequest?: () => void | Promise<void>;
  /**
   * Called at most once, when the request has been written to its connection: a hint that the answer is now
   * awaited, for doing other work meanwhile. Not guaranteed to be called, even for a delivered request.
   */
  readonly onSent?: () => void;
}

/**
 * Sends one stored request. Never throws for service or network errors; resolves with a {@link SendResult}.
 * Rejects only with what `onRequest` threw.
 */
export interface Sender {
  send(request: MeterUsageRequest, options?: SendOptions): Promise<SendResult>;
}

/**
 * {@link Sender} over the real SDK client. The client must come from `createSendClient`: one HTTP attempt
 * per send on a fresh connection, through agents that report whether the connection was made, which is what
 * {@link classify} needs to tell an undelivered request from one AWS may have recorded.
 */
export class MeteringSender implements Sender {
  readonly #client: MarketplaceMeteringClient;
  readonly #onEvidenceLost: (() => void) | undefined;
  /** False once a send succeeded without a reported connection: then no failure is taken as undelivered. */
  #evidenceTrusted = true;

  /** @param onEvidenceLost Told once if connection reports stop arriving (a client not made for sending). */
  constructor(client: MarketplaceMeteringClient, onEvidenceLost?: () => void) {
    this.#client = client;
    this.#onEvidenceLost = onEvidenceLost;
  }

  async send(request: MeterUsageRequest, options: SendOptions = {}): Promise<SendResult> {
    const { signal, onRequest, onSent } = options;
    const command = new MeterUsageCommand({
      ProductCode: request.ProductCode,
      Timestamp: new Date(request.TimestampMs),
      UsageDimension: request.UsageDimension,
      UsageQuantity: request.UsageQuantity,
      ...(request.UsageAllocations
        ? {
            UsageAllocations: request.UsageAllocations.map((a) => ({
              AllocatedUsageQuantity: a.AllocatedUsageQuantity,
              ...(a.Tags ? { Tags: a.Tags.map((t) => ({ Key: t.Key, Value: t.Value })) } : {}),
            })),
          }
        : {}),
      ClientToken: request.ClientToken,
      ...(request.DryRun ? { DryRun: true } : {}),
    });
    let hookFailure: { error: unknown } | undefined;
    const outcome = await withConnectionEvidence(
      () => this.#client.send(command, signal ? { abortSignal: signal } : {}),
      onRequest &&
        (async (): Promise<void> => {
          try {
            await onRequest();
          } catch (error) {
            hookFailure = { error };
            throw error;
          }
        }),
      onSent,
    );
    if (hookFailure !== undefined) throw hookFailure.error;
    if (outcome.ok) {
      if (!outcome.connected) this.#loseEvidence();
      return {
        status: 'accepted',
        meteringRecordId: outcome.value.MeteringRecordId ?? (request.DryRun ? DRY_RUN_RECORD_ID : ''),
      };
    }
    const connected = outcome.connected || !this.#evidenceTrusted;
    return classify(outcome.error, { dryRun: request.DryRun === true, connected });
  }

  #loseEvidence(): void {
    if (!this.#evidenceTrusted) return;
    // A success proves a connection: without its report, a later failure could be a request AWS recorded.
    this.#evidenceTrusted = false;
    this.#onEvidenceLost?.();
  }
}
