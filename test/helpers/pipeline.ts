import { join } from 'node:path';
import type { MarketplaceMeteringClient } from '@aws-sdk/client-marketplace-metering';
import { SidecarClient } from '../../src/client/client.js';
import { MeteringEmulator } from '../../src/emulator/emulator.js';
import type { Rejection } from '../../src/intake/usage.js';
import { InProcessLedger } from '../../src/ledger/inProcessLedger.js';
import { SqliteLedger } from '../../src/ledger/sqliteLedger.js';
import { buildPipeline, pipelineMetrics } from '../../src/pipeline.js';
import { createSendClient, observeClient } from '../../src/send/client.js';
import { memoryLogger } from './logger.js';
import { ManualClock } from './manualClock.js';

/** Options of {@link startPipeline}. */
export interface PipelineOptions {
  readonly stateDir: string;
  readonly start?: string | number;
  readonly dimensions?: readonly string[];
  /** METERING_UNIT_DIVISORS, given to intake and the ledger alike. */
  readonly unitDivisors?: Readonly<Record<string, number>>;
  readonly dryRun?: boolean;
  readonly requestTimeoutMs?: number;
  readonly emulator?: MeteringEmulator;
  readonly clock?: ManualClock;
  /** METERING_SEND_JITTER_SECONDS (default 0); ticks are `scheduler.tick()`. */
  readonly sendJitterSeconds?: number;
  /** The random source of spread and backoff (default a constant 0.5). */
  readonly random?: () => number;
}

/**
 * The real pipeline, wired by the agent's own buildPipeline(), with an injected clock: intake on a unix socket
 * and loopback TCP, the SQLite ledger, the real SDK client against the emulator, and the scheduler driven by
 * runOnce().
 */
export async function startPipeline(options: PipelineOptions) {
  const clock = options.clock ?? new ManualClock(options.start ?? '2026-03-01T10:05:00Z');
  const emulator =
    options.emulator ??
    new MeteringEmulator({
      productCode: 'prod',
      now: () => clock.now(),
      ...(options.dimensions ? { dimensions: options.dimensions } : {}),
    });
  const endpoint = options.emulator ? emulator.url : await emulator.start();
  const { logger, lines } = memoryLogger();
  // The SQLite ledger itself, for tests to read synchronously; the components hold it as the agent gives it.
  const ledger = SqliteLedger.open({
    stateDir: options.stateDir,
    productCode: 'prod',
    dryRun: options.dryRun ?? false,
    clock,
    unitDivisors: new Map(Object.entries(options.unitDivisors ?? {})),
  });
  const client: MarketplaceMeteringClient = createSendClient({
    region: 'us-east-1',
    endpoint,
    credentials: { accessKeyId: 'TASK1', secretAccessKey: 'secret' },
    requestTimeoutMs: options.requestTimeoutMs ?? 2_000,
  });
  const metrics = pipelineMetrics({
    // Read on scrape only, once `wired` below exists.
    ledger: () => wired,
    files: () => ledger.files,
    entitlementState: () => 'disabled',
    clock,
  });
  observeClient(client, metrics, clock);
  let gate: Rejection | undefined;
  const socketPath = join(options.stateDir, 'app.sock');
  const {
    ledger: wired,
    scheduler,
    intake,
  } = buildPipeline({
    config: {
      schedule: undefined,
      sendJitterSeconds: options.sendJitterSeconds ?? 0,
      socketPath,
      listen: { host: '127.0.0.1', port: 0 },
      dimensions: options.dimensions,
      ...(options.unitDivisors ? { unitDivisors: options.unitDivisors } : {}),
    },
    ledger: new InProcessLedger(ledger),
    sendClient: client,
    access: {
      gate: () => Promise.resolve(gate),
      status: () => wired.status(clock.now()),
      entitlement: () => ({ state: 'disabled', mode: 'none' }),
      proveEntitlement: () => Promise.resolve({ kind: 'notApplicable', message: 'no entitlement in tests' }),
    },
    clock,
    logger,
    metrics,
    random: options.random ?? (() => 0.5),
  });
  await intake.start();
  const api = new SidecarClient({ socketPath });
  const tcpApi = new SidecarClient({ host: '127.0.0.1', port: intake.tcpAddress!.port });

  return {
    clock,
    emulator,
    ledger,
    scheduler,
    intake,
    api,
    tcpApi,
    socketPath,
    metrics,
    logLines: lines,
    setGate(rejection: Rejection | undefined): void {
      gate = rejection;
    },
    /** Closes everything except the emulator when it was passed in. */
    async close(): Promise<void> {
      await scheduler.stop();
      api.close();
      tcpApi.close();
      await intake.stop();
      ledger.close();
      client.destroy();
      if (!options.emulator) await emulator.stop();
    },
  };
}

export type Pipeline = Awaited<ReturnType<typeof startPipeline>>;

/** Advances the manual clock in 50 ms steps while `work` runs (its timers fire on the way); resolves its result. */
export async function driveClock<T>(p: { readonly clock: ManualClock }, work: Promise<T>): Promise<T> {
  let done = false;
  const result = work.finally(() => (done = true));
  while (!done) {
    await new Promise((resolve) => setTimeout(resolve, 1));
    if (!done) p.clock.advance(50);
  }
  return result;
}
