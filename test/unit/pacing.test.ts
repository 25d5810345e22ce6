/**
 * The send pacer: the AWS SDK's adaptive rate limiter on the sidecar's injected clock. It must do exactly the
 * SDK's arithmetic (compared with a stock limiter on a faked Date), never wait in real time, and plan every
 * wait on the injected clock.
 */
import { DefaultRateLimiter } from '@smithy/core/retry';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { PACING_BETA, PACING_MIN_RATE, SendPacer } from '../../src/send/pacing.js';
import { ManualClock } from '../helpers/manualClock.js';

const START = Date.parse('2026-03-01T10:00:00Z');

afterEach(() => {
  vi.useRealTimers();
});

describe('SendPacer', () => {
  it('stays out of the way until the first throttle', async () => {
    const clock = new ManualClock(START);
    const pacer = new SendPacer(clock, () => 0.5);
    for (let i = 0; i < 50; i++) {
      expect(pacer.readyAtMs()).toBe(clock.now());
      await pacer.take();
      pacer.answered(false);
    }
    expect(pacer.ratePerSecond).toBeUndefined();
    expect(pacer.throttles).toBe(0);
  });

  it('after a throttle lets one send go at once, then spaces sends at the slowed rate', async () => {
    const clock = new ManualClock(START);
    const pacer = new SendPacer(clock, () => 0);
    clock.advance(60_000); // a sidecar that has been up a minute: its bucket holds its one token
    pacer.answered(true);
    expect(pacer.throttles).toBe(1);
    expect(pacer.ratePerSecond).toBe(PACING_MIN_RATE);

    expect(pacer.readyAtMs()).toBe(clock.now());
    await pacer.take();
    const readyAtMs = pacer.readyAtMs();
    expect(readyAtMs - clock.now()).toBe(1000 / PACING_MIN_RATE + 1);
    // Too early: nothing is taken, and the time to wait for stays the same.
    expect(await pacer.take()).toBe(false);
    expect(pacer.readyAtMs()).toBe(readyAtMs);

    clock.set(readyAtMs);
    expect(pacer.readyAtMs()).toBe(clock.now());
    await pacer.take();
  });

  it('holds a throttled record back for at least one token at the slowed rate', () => {
    const clock = new ManualClock(START);
    const pacer = new SendPacer(clock, () => 0);
    expect(pacer.throttledRetryAtMs()).toBe(clock.now());
    clock.advance(60_000);
    pacer.answered(true);
    // The bucket still holds a token, but another record may take it first.
    expect(pacer.readyAtMs()).toBe(clock.now());
    expect(pacer.throttledRetryAtMs()).toBe(clock.now() + 1000 / PACING_MIN_RATE);
  });

  it('stretches waits by a random share drawn at each throttle, never below the limiter’s own', async () => {
    const waits = await Promise.all(
      [0, 0.5, 0.999].map(async (draw) => {
        const clock = new ManualClock(START);
        const pacer = new SendPacer(clock, () => draw);
        clock.advance(60_000);
        pacer.answered(true);
        await pacer.take();
        return pacer.readyAtMs() - clock.now();
      }),
    );
    const own = 1000 / PACING_MIN_RATE;
    expect(waits).toEqual([own + 1, own * 1.25 + 1, Math.ceil(own * 1.4995) + 1]);
  });

  it('slows down on repeated throttles to its floor, and recovers as sends succeed', async () => {
    const clock = new ManualClock(START);
    const pacer = new SendPacer(clock, () => 0);
    // A busy sidecar: ten sends a second for ten seconds, all accepted.
    for (let i = 0; i < 100; i++) {
      clock.advance(100);
      pacer.answered(false);
    }
    pacer.answered(true);
    const slowed = pacer.ratePerSecond!;
    expect(slowed).toBeGreaterThan(PACING_MIN_RATE);
    expect(slowed).toBeLessThan(10);
    const rates = [slowed];
    for (let i = 0; i < 8; i++) {
      clock.set(pacer.readyAtMs());
      await pacer.take();
      pacer.answered(true);
      rates.push(pacer.ratePerSecond!);
    }
    expect(rates.at(-1)).toBe(PACING_MIN_RATE);
    for (let i = 1; i < rates.length; i++) expect(rates[i]).toBeLessThanOrEqual(rates[i - 1]);

    for (let i = 0; i < 60; i++) {
      clock.set(pacer.readyAtMs());
      await pacer.take();
      pacer.answered(false);
    }
    expect(pacer.ratePerSecond).toBeGreaterThan(PACING_MIN_RATE);
  });

  it('computes the same rates as the SDK’s own limiter on the same answers', () => {
    // The stock limiter reads Date.now(); the pacer reads the manual clock as 1 s + its monotonic time.
    const seed = Math.floor(Math.random() * 100_000) + 1;
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(1000);
    const clock = new ManualClock(START);
    const pacer = new SendPacer(clock, () => 0);
    const stock = new DefaultRateLimiter({ beta: PACING_BETA, minFillRate: PACING_MIN_RATE });
    (stock as unknown as { refillTokenBucket(): void }).refillTokenBucket();
    let state = seed;
    const next = (): number => (state = (state * 48271) % 2147483647) / 2147483647;
    console.log(`pacer equivalence seed ${seed}`);
    for (let i = 0; i < 300; i++) {
      const stepMs = Math.floor(next() * 900) + 10;
      clock.advance(stepMs);
      vi.setSystemTime(1000 + clock.monotonicMs());
      const throttled = next() < 0.2;
      pacer.answered(throttled);
      stock.updateClientSendingRate(throttled ? { errorType: 'THROTTLING' } : {});
      const stockRate = (stock as unknown as { enabled: boolean; fillRate: number }).fillRate;
      expect(pacer.ratePerSecond, `step ${i}`).toBe(pacer.throttles > 0 ? stockRate : undefined);
    }
    expect(pacer.throttles).toBeGreaterThan(10);
  });
});
