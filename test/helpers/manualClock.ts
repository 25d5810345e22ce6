import type { CancelTimer, Clock } from '../../src/clock.js';

/** A {@link Clock} that moves only when told to, firing timers due on the way (ubbagent's NewTimerAt idea). */
export class ManualClock implements Clock {
  #nowMs: number;
  #monotonicMs = 0;
  #timers: { atMs: number; fn: () => void; id: number }[] = [];
  #nextId = 0;

  constructor(start: string | number) {
    this.#nowMs = typeof start === 'number' ? start : Date.parse(start);
  }

  now(): number {
    return this.#nowMs;
  }

  monotonicMs(): number {
    return this.#monotonicMs;
  }

  setTimer(atMs: number, fn: () => void): CancelTimer {
    const id = this.#nextId++;
    this.#timers.push({ atMs, fn, id });
    return () => {
      this.#timers = this.#timers.filter((t) => t.id !== id);
    };
  }

  /**
   * Moves to an absolute instant (ISO text or epoch ms), firing every timer due by then in order. Time moving
   * forward also passes on the monotonic clock; a move back does not (as when NTP steps a wall clock back).
   */
  set(to: string | number): void {
    const targetMs = typeof to === 'number' ? to : Date.parse(to);
    this.#monotonicMs += Math.max(0, targetMs - this.#nowMs);
    for (;;) {
      const due = this.#timers.filter((t) => t.atMs <= targetMs).sort((a, b) => a.atMs - b.atMs)[0];
      if (due === undefined) break;
      this.#timers = this.#timers.filter((t) => t.id !== due.id);
      this.#nowMs = Math.max(this.#nowMs, due.atMs);
      due.fn();
    }
    this.#nowMs = targetMs;
  }

  /** Steps the wall clock to an instant without any time passing (a wrong clock, or one corrected). */
  jump(to: string | number): void {
    this.#nowMs = typeof to === 'number' ? to : Date.parse(to);
  }

  /** Moves forward by `ms`. */
  advance(ms: number): void {
    this.set(this.#nowMs + ms);
  }

  /** Instants of pending timers. */
  get pendingTimers(): number[] {
    return this.#timers.map((t) => t.atMs).sort((a, b) => a - b);
  }
}
