/**
 * The Clock contract, for both implementations: the real clock and the manual one the tests drive. A timer
 * fires once, at or after its instant; a cancelled timer never fires; the monotonic reading never goes back.
 */
import { describe, expect, it } from 'vitest';
import { sleepUntil, systemClock, type Clock } from '../../src/clock.js';
import { ManualClock } from '../helpers/manualClock.js';

/** A clock under test, and how to let `ms` pass on it. */
interface Subject {
  readonly clock: Clock;
  readonly pass: (ms: number) => Promise<void>;
}

const subjects: [string, () => Subject][] = [
  [
    'systemClock',
    () => ({
      clock: systemClock,
      pass: (ms) => new Promise((resolve) => setTimeout(resolve, ms + 5)),
    }),
  ],
  [
    'ManualClock',
    () => {
      const clock = new ManualClock('2026-03-01T10:00:00Z');
      return { clock, pass: (ms) => Promise.resolve(clock.advance(ms)) };
    },
  ],
];

describe.each(subjects)('Clock contract: %s', (_name, make) => {
  it('fires a timer once, at or after its instant', async () => {
    const { clock, pass } = make();
    // Wide margins: a loaded machine runs the real clock's timers late, never early.
    const atMs = clock.now() + 200;
    const fired: number[] = [];
    clock.setTimer(atMs, () => fired.push(clock.now()));
    await pass(50);
    expect(fired).toEqual([]);
    await pass(200);
    expect(fired).toHaveLength(1);
    expect(fired[0]).toBeGreaterThanOrEqual(atMs);
    await pass(20);
    expect(fired).toHaveLength(1);
  });

  it('never fires a cancelled timer', async () => {
    const { clock, pass } = make();
    let fired = false;
    const cancel = clock.setTimer(clock.now() + 10, () => (fired = true));
    cancel();
    cancel(); // idempotent
    await pass(30);
    expect(fired).toBe(false);
  });

  it('reads monotonic time that never goes back and moves with time passing', async () => {
    const { clock, pass } = make();
    const before = clock.monotonicMs();
    await pass(15);
    const after = clock.monotonicMs();
    expect(after).toBeGreaterThanOrEqual(before + 15);
  });

  it('sleeps until an instant, or until its signal aborts', async () => {
    const { clock, pass } = make();
    const controller = new AbortController();
    let woke = false;
    const sleeping = sleepUntil(clock, clock.now() + 60_000, controller.signal).then(() => (woke = true));
    await pass(5);
    expect(woke).toBe(false);
    controller.abort();
    await sleeping;
    expect(woke).toBe(true);
    const aborted = new AbortController();
    aborted.abort();
    await sleepUntil(clock, clock.now() + 60_000, aborted.signal); // resolves at once
  });
});
