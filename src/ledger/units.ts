/**
 * Unit scaling (METERING_UNIT_DIVISORS, docs/metering.md "Unit scaling"): a dimension may take usage in a finer
 * unit than it bills (bytes for a GB dimension, vCPU-seconds for a vCPU-hour one). Usage is summed per
 * (dimension, tag set) in the fine unit; every whole unit goes into the bucket of the hour it completes in, and
 * what is left below one unit is carried, durably, into later hours, never rounded up. Pure functions; the
 * arithmetic is exact (BigInt), since a fine-unit total may pass 2^53 before it is divided.
 */

/** Largest divisor a dimension may declare: a petabyte in bytes. The smallest is 2 (1 would change nothing). */
export const MAX_UNIT_DIVISOR = 1_000_000_000_000_000;

/** Fine usage turned into billed units: `whole` units to bill, `remainder` fine units (< divisor) to carry. */
export interface Scaled {
  readonly whole: number;
  readonly remainder: number;
}

/**
 * Adds `quantity` fine units to a tag set's carried `remainder` and splits the sum into whole units and what is
 * left: `whole = floor((remainder + quantity) / divisor)`. Inputs are safe integers, `remainder < divisor`.
 */
export function scale(remainder: number, quantity: number, divisor: number): Scaled {
  if (divisor === 1) return { whole: remainder + quantity, remainder: 0 };
  const total = BigInt(remainder) + BigInt(quantity);
  const d = BigInt(divisor);
  return { whole: Number(total / d), remainder: Number(total % d) };
}

/** Whole units of one hour of a tag set, as a cancellation takes them back. */
export interface HourUnits {
  readonly hourMs: number;
  /** Units the app's own usage put in the hour's bucket (carried usage excluded). */
  readonly units: number;
}

/** What a cancellation does to a scaled tag set: units to take from each hour's bucket, and the new remainder. */
export interface Uncount {
  readonly take: readonly HourUnits[];
  readonly remainder: number;
}

/**
 * Takes `quantity` fine units back from a tag set whose unsealed hours hold `hours` whole units and which
 * carries `remainder` fine units. The tag set's usage not yet sealed is `remainder + units × divisor`; without
 * the cancelled report it is `quantity` less, and its whole units are taken back from the report's own hour
 * (`fromHourMs`) first, then from later hours, then from earlier ones, so billed units never exceed the usage
 * that stays. `undefined` when that usage is less than `quantity`: nothing may go below zero.
 */
export function uncount(
  hours: readonly HourUnits[],
  remainder: number,
  quantity: number,
  divisor: number,
  fromHourMs: number,
): Uncount | undefined {
  const d = BigInt(divisor);
  const units = hours.reduce((sum, h) => sum + BigInt(h.units), 0n);
  const left = BigInt(remainder) + units * d - BigInt(quantity);
  if (left < 0n) return undefined;
  let owed = units - left / d;
  const order = [...hours].sort((a, b) => {
    const rank = (h: HourUnits): number => (h.hourMs === fromHourMs ? 0 : h.hourMs > fromHourMs ? 1 : 2);
    return rank(a) - rank(b) || (rank(a) === 2 ? b.hourMs - a.hourMs : a.hourMs - b.hourMs);
  });
  const take: HourUnits[] = [];
  for (const h of order) {
    if (owed === 0n) break;
    const n = BigInt(h.units) < owed ? BigInt(h.units) : owed;
    if (n > 0n) take.push({ hourMs: h.hourMs, units: Number(n) });
    owed -= n;
  }
  return { take, remainder: Number(left % d) };
}
