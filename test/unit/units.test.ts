import { describe, expect, it } from 'vitest';
import { seededRandom, testSeed } from '../helpers/seed.js';
import { scale, uncount } from '../../src/ledger/units.js';

describe('scale', () => {
  it('bills whole units and keeps what is left below one', () => {
    expect(scale(0, 2_500, 1_000)).toEqual({ whole: 2, remainder: 500 });
    expect(scale(500, 499, 1_000)).toEqual({ whole: 0, remainder: 999 });
    expect(scale(999, 1, 1_000)).toEqual({ whole: 1, remainder: 0 });
    expect(scale(0, 0, 1_000)).toEqual({ whole: 0, remainder: 0 });
    expect(scale(0, 7, 1)).toEqual({ whole: 7, remainder: 0 });
  });

  it('stays exact past 2^53 before dividing', () => {
    // 2^53 - 1 bytes plus a remainder of 2^30 - 1 is not a JavaScript number, but its GiB count is.
    const gib = 2 ** 30;
    const { whole, remainder } = scale(gib - 1, Number.MAX_SAFE_INTEGER, gib);
    const exact = BigInt(gib - 1) + BigInt(Number.MAX_SAFE_INTEGER);
    expect(BigInt(whole)).toBe(exact / BigInt(gib));
    expect(BigInt(remainder)).toBe(exact % BigInt(gib));
  });

  it('bills over any split of the same usage exactly what one report of it bills (property)', () => {
    const random = seededRandom(testSeed('scale property', 'UNITS_SEED'));
    for (let run = 0; run < 500; run++) {
      const divisor = 1 + Math.floor(random() * 5_000);
      const parts = Array.from({ length: 1 + Math.floor(random() * 20) }, () =>
        Math.floor(random() * 10_000),
      );
      let remainder = 0;
      let billed = 0;
      for (const part of parts) {
        const s = scale(remainder, part, divisor);
        billed += s.whole;
        remainder = s.remainder;
        expect(remainder).toBeLessThan(divisor);
      }
      const total = parts.reduce((a, b) => a + b, 0);
      expect(billed).toBe(Math.floor(total / divisor));
      expect(remainder).toBe(total % divisor);
    }
  });
});

describe('uncount', () => {
  it('takes the units back from the report’s own hour first', () => {
    const hours = [
      { hourMs: 10, units: 2 },
      { hourMs: 11, units: 3 },
    ];
    // 2×1000 + 3×1000 + 400 = 5,400 fine units; without a report of 1,500: 3,900, three units.
    expect(uncount(hours, 400, 1_500, 1_000, 10)).toEqual({
      take: [{ hourMs: 10, units: 2 }],
      remainder: 900,
    });
    expect(uncount(hours, 400, 1_500, 1_000, 11)).toEqual({
      take: [{ hourMs: 11, units: 2 }],
      remainder: 900,
    });
  });

  it('takes from later hours when a report’s usage had not completed a unit in its own', () => {
    // 700 reported in hour 10 (no unit), 500 in hour 11 (completed one): without the 700, nothing is billed.
    expect(uncount([{ hourMs: 11, units: 1 }], 200, 700, 1_000, 10)).toEqual({
      take: [{ hourMs: 11, units: 1 }],
      remainder: 500,
    });
    // Then earlier hours, newest first, when nothing later is left.
    expect(
      uncount(
        [
          { hourMs: 8, units: 1 },
          { hourMs: 9, units: 1 },
        ],
        0,
        1_000,
        1_000,
        10,
      ),
    ).toEqual({ take: [{ hourMs: 9, units: 1 }], remainder: 0 });
  });

  it('refuses to go below zero', () => {
    expect(uncount([{ hourMs: 10, units: 1 }], 0, 1_001, 1_000, 10)).toBeUndefined();
    expect(uncount([{ hourMs: 10, units: 4 }], 0, 5, 1, 10)).toBeUndefined();
    expect(uncount([], 0, 0, 1, 10)).toEqual({ take: [], remainder: 0 });
  });

  it('leaves billed units equal to floor(what stays / divisor), never more (property)', () => {
    const random = seededRandom(testSeed('uncount property', 'UNITS_SEED'));
    for (let run = 0; run < 500; run++) {
      const divisor = 1 + Math.floor(random() * 100);
      const hours = Array.from({ length: 1 + Math.floor(random() * 4) }, (_, i) => ({
        hourMs: i,
        units: Math.floor(random() * 5),
      }));
      const remainder = Math.floor(random() * divisor);
      const fine = hours.reduce((sum, h) => sum + h.units, 0) * divisor + remainder;
      const quantity = Math.floor(random() * (fine + 1));
      const plan = uncount(hours, remainder, quantity, divisor, Math.floor(random() * 4))!;
      const taken = plan.take.reduce((sum, t) => sum + t.units, 0);
      const units = hours.reduce((sum, h) => sum + h.units, 0) - taken;
      expect(units).toBe(Math.floor((fine - quantity) / divisor));
      expect(plan.remainder).toBe((fine - quantity) % divisor);
      for (const t of plan.take)
        expect(t.units).toBeLessThanOrEqual(hours.find((h) => h.hourMs === t.hourMs)!.units);
    }
  });
});
