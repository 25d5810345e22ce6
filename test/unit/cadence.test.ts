import { describe, expect, it } from 'vitest';
import { HOUR_MS } from '../../src/clock.js';
import { maxTickGapMs } from '../../src/ledger/hours.js';
import { longestTickGapMs } from '../../src/schedule/cadence.js';

describe('longestTickGapMs', () => {
  it.each([
    ['0 * * * *', HOUR_MS],
    ['*/15 * * * *', 15 * 60_000],
    ['*/10 * * * * *', 10_000],
    ['0 */8 * * *', 8 * HOUR_MS],
    ['30 1,2 * * *', 23 * HOUR_MS],
    ['0 9-17 * * *', 16 * HOUR_MS],
    // No ticks at the weekend: Friday 23:00 to Monday 00:00.
    ['0 * * * 1-5', 49 * HOUR_MS],
    // No 31st in most months: the 30th at 23:00 to the 1st at 00:00 two days on.
    ['0 * 1-30 * *', 25 * HOUR_MS],
    ['0 * 29 2 *', Infinity],
  ])('%s ticks at most %d ms apart', (expression, gapMs) => {
    expect(longestTickGapMs(expression)).toBe(gapMs);
  });
});

describe('maxTickGapMs', () => {
  it('leaves an hour of retries before the carry deadline after the hour, the gap and the jitter', () => {
    // 6 h window - 15 min margin - 1 h (the hour itself) - 1 h for retries - jitter.
    expect(maxTickGapMs(0)).toBe(3 * HOUR_MS + 45 * 60_000);
    expect(maxTickGapMs(300_000)).toBe(3 * HOUR_MS + 40 * 60_000);
  });
});
