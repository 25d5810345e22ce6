import { describe, expect, it } from 'vitest';
import {
  ENTITLEMENT_RETRY_MAX_MS,
  awaitEntitlement,
  type EntitlementCheck,
  type EntitlementResult,
} from '../../src/entitlement/check.js';
import { AwsUnavailableError, NotEntitledError } from '../../src/errors.js';
import { classifyStartupError } from '../../src/send/awsErrors.js';
import { ManualClock } from '../helpers/manualClock.js';

/** A check that answers from a script, recording when it was asked. */
class ScriptedCheck implements EntitlementCheck {
  readonly askedAtMs: number[] = [];
  constructor(
    private readonly clock: ManualClock,
    private readonly script: EntitlementResult[],
  ) {}

  check(): Promise<EntitlementResult> {
    this.askedAtMs.push(this.clock.now());
    return Promise.resolve(
      this.script.shift() ??
        this.script.at(-1) ?? { kind: 'unavailable', code: 'ThrottlingException', message: 'slow down' },
    );
  }
}

const THROTTLED: EntitlementResult = {
  kind: 'unavailable',
  code: 'ThrottlingException',
  message: 'slow down',
};
const ENTITLED: EntitlementResult = { kind: 'entitled', proof: undefined };

/** Runs `promise` while moving the clock to each timer it sets. */
async function drive<T>(clock: ManualClock, promise: Promise<T>): Promise<T> {
  let settled = false;
  const tracked = promise.finally(() => (settled = true));
  tracked.catch(() => undefined);
  while (!settled) {
    await new Promise((resolve) => setImmediate(resolve));
    const next = clock.pendingTimers[0];
    if (next !== undefined) clock.set(next);
  }
  return tracked;
}

describe('awaitEntitlement', () => {
  it('retries throttling with exponential backoff and full jitter until entitled', async () => {
    const clock = new ManualClock(0);
    const check = new ScriptedCheck(clock, [THROTTLED, THROTTLED, THROTTLED, ENTITLED]);
    const retries: number[] = [];
    const result = await drive(
      clock,
      awaitEntitlement(check, {
        clock,
        budgetMs: 1_800_000,
        random: () => 0.999,
        onRetry: (_r, attempt) => retries.push(attempt),
      }),
    );
    expect(result.kind).toBe('entitled');
    expect(retries).toEqual([1, 2, 3]);
    // Ceilings 1 s, 2 s, 4 s (random just under 1).
    expect(check.askedAtMs).toEqual([0, 999, 999 + 1998, 999 + 1998 + 3996]);
  });

  it('caps the delay at one minute', async () => {
    const clock = new ManualClock(0);
    const check = new ScriptedCheck(clock, [...Array<EntitlementResult>(12).fill(THROTTLED), ENTITLED]);
    await drive(clock, awaitEntitlement(check, { clock, budgetMs: 1_800_000, random: () => 0.999 }));
    const gaps = check.askedAtMs.slice(1).map((t, i) => t - check.askedAtMs[i]);
    expect(Math.max(...gaps)).toBeLessThanOrEqual(ENTITLEMENT_RETRY_MAX_MS);
    expect(gaps.at(-1)).toBe(Math.floor(0.999 * ENTITLEMENT_RETRY_MAX_MS));
  });

  it('gives up with AwsUnavailableError when the next attempt would pass the budget', async () => {
    const clock = new ManualClock(0);
    const check = new ScriptedCheck(clock, [THROTTLED]);
    const outcome = drive(clock, awaitEntitlement(check, { clock, budgetMs: 30_000, random: () => 0.999 }));
    await expect(outcome).rejects.toBeInstanceOf(AwsUnavailableError);
    expect(clock.now()).toBeLessThanOrEqual(30_000);
    expect(check.askedAtMs.length).toBeGreaterThan(3);
  });

  it('stops at once with NotEntitledError on a refusal, naming what to check', async () => {
    const clock = new ManualClock(0);
    const check = new ScriptedCheck(clock, [
      THROTTLED,
      { kind: 'notEntitled', code: 'CustomerNotEntitledException', message: 'no subscription' },
    ]);
    const outcome = drive(clock, awaitEntitlement(check, { clock, budgetMs: 1_800_000 }));
    await expect(outcome).rejects.toBeInstanceOf(NotEntitledError);
    await expect(outcome).rejects.toThrow(/CustomerNotEntitledException.*subscription.*IRSA.*AWS_REGION/);
    expect(check.askedAtMs).toHaveLength(2);
  });

  it('ends when aborted', async () => {
    const clock = new ManualClock(0);
    const controller = new AbortController();
    const check = new ScriptedCheck(clock, [THROTTLED]);
    const outcome = awaitEntitlement(check, { clock, budgetMs: 1_800_000, signal: controller.signal });
    await new Promise((resolve) => setImmediate(resolve));
    controller.abort();
    await expect(outcome).rejects.toThrow(/interrupted/);
  });
});

describe('classifyStartupError', () => {
  const awsError = (name: string, status: number): Error =>
    Object.assign(new Error(`${name} message`), { name, $metadata: { httpStatusCode: status } });

  it.each([
    [awsError('ThrottlingException', 400), 'unavailable'],
    [awsError('InternalServiceErrorException', 500), 'unavailable'],
    [awsError('ServiceUnavailable', 503), 'unavailable'],
    [Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }), 'unavailable'],
    [Object.assign(new Error('timed out'), { name: 'TimeoutError' }), 'unavailable'],
    [awsError('CustomerNotEntitledException', 400), 'notEntitled'],
    [awsError('PlatformNotSupportedException', 400), 'notEntitled'],
    [awsError('InvalidRegionException', 400), 'notEntitled'],
    [awsError('InvalidProductCodeException', 400), 'notEntitled'],
    [awsError('InvalidPublicKeyVersionException', 400), 'notEntitled'],
    [awsError('DisabledApiException', 400), 'notEntitled'],
    [awsError('AccessDeniedException', 403), 'notEntitled'],
    [
      Object.assign(new Error('Could not load credentials from any providers'), {
        name: 'CredentialsProviderError',
      }),
      'unavailable',
    ],
  ])('%s → %s', (err, kind) => {
    expect(classifyStartupError(err).kind).toBe(kind);
  });
});

describe('awaitEntitlement and aborts', () => {
  it('stops at once when aborted while a check is in flight', async () => {
    // Regression: an abort during the check came back as a network error and the loop waited out a backoff
    // of up to a minute on an already-aborted signal.
    const clock = new ManualClock(0);
    const controller = new AbortController();
    const check: EntitlementCheck = {
      check: () => {
        controller.abort();
        return Promise.resolve({ kind: 'unavailable', code: 'AbortError', message: 'aborted' });
      },
    };
    await expect(
      awaitEntitlement(check, { clock, budgetMs: 1_800_000, signal: controller.signal }),
    ).rejects.toThrow(/interrupted/);
    expect(clock.pendingTimers).toEqual([]);
  });
});
