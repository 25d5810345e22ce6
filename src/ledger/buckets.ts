/**
 * The open hours' buckets: usage summed per (dimension, hour, tag set), with the limits every hour's record must
 * keep (AWS's tag limits, an exact total) and the placement of carried usage. Runs inside the ledger's
 * transactions; an operation that would break a limit throws {@link BatchRejected}, rolling its savepoint back.
 */
import { MAX_TAG_KEYS, MAX_TAG_SETS } from '../awsLimits.js';
import { HOUR_MS } from '../clock.js';
import { bucketTime, targetHour } from './hours.js';
import type { KeyStore } from './keyStore.js';
import { scale } from './units.js';
import { ledgerRejection, type LedgerRejection, type RecordResult } from './ledger.js';
import type { UsageBatch } from './usageBatch.js';
import type { Statements } from './statements.js';

/**
 * Largest total of one (dimension, hour) the ledger keeps: 2^53 - 1, the largest integer JavaScript numbers
 * hold exactly. SQLite's integers would go further, but the sealed record is computed in JavaScript, so usage
 * that would take an hour beyond this is refused rather than acknowledged and rounded (docs/metering.md).
 */
export const MAX_EXACT_TOTAL = Number.MAX_SAFE_INTEGER;

/** A limit a batch would break, as intake answers it. */
type LimitProblem = { code: LedgerRejection['code']; message: string };

/** Thrown inside a batch's savepoint to roll back just that batch. */
export class BatchRejected extends Error {
  constructor(readonly rejection: LedgerRejection) {
    super(rejection.message);
  }
}

/** Usage of one tag set, as carried usage and the cap's excess are placed. */
export interface CarriedAllocation {
  readonly tagsKey: string;
  readonly quantity: number;
}

/** The buckets of one ledger connection. */
export class Buckets {
  readonly #stmt: Statements;
  readonly #isSealed: (dimension: string, hourMs: number) => boolean;
  readonly #divisors: ReadonlyMap<string, number>;

  /**
   * `isSealed`: whether (dimension, hour) already has its record, so usage for it goes to a later hour.
   * `divisors`: the unit divisor of each scaled dimension (./units.ts); others count whole units.
   */
  constructor(
    stmt: Statements,
    isSealed: (dimension: string, hourMs: number) => boolean,
    divisors: ReadonlyMap<string, number> = new Map(),
  ) {
    this.#stmt = stmt;
    this.#isSealed = isSealed;
    this.#divisors = divisors;
  }

  /** The unit divisor of `dimension`: 1 unless it is scaled. */
  divisorOf(dimension: string): number {
    return this.#divisors.get(dimension) ?? 1;
  }

  /** The hour usage of `dimension` arriving at `arrivalMs` goes to: its own, or the next unsealed one. */
  hourFor(dimension: string, arrivalMs: number): number {
    return targetHour(arrivalMs, (h) => this.#isSealed(dimension, h));
  }

  /**
   * Adds one batch, arrived at `arrivalMs`, inside the batch's savepoint: keyed reports whose key is known (or
   * repeated in the batch) are counted as duplicates, the rest join the batch's sums per (dimension, tag set),
   * which go into the buckets of the hour of arrival (or the next unsealed one), then every limit is checked.
   * Dimensions and tag sets are applied in the order the request first names them, so a rejection names the
   * same report whichever way the batch was summed.
   * @throws BatchRejected when the batch would break a limit; the savepoint then rolls it back.
   */
  apply(batch: UsageBatch, arrivalMs: number, keys: KeyStore): RecordResult {
    const stmt = this.#stmt;
    const { sums, keyed } = batch;
    // One statement per bucket, not per report: the batch arrives summed, and keyed reports join the sums.
    const byDimension = new Map<string, Map<string, { quantity: number; index: number }>>();
    const add = (dimension: string, tagsKey: string, quantity: number, index: number): void => {
      let byTags = byDimension.get(dimension);
      if (byTags === undefined) {
        byTags = new Map<string, { quantity: number; index: number }>();
        byDimension.set(dimension, byTags);
      }
      const sum = byTags.get(tagsKey);
      if (sum === undefined) byTags.set(tagsKey, { quantity, index });
      else {
        sum.quantity += quantity;
        if (index < sum.index) sum.index = index;
      }
    };
    for (let i = 0; i < sums.dimension.length; i++)
      add(sums.dimension[i], sums.tagsKey[i], sums.quantity[i], sums.index[i]);
    // The hour each dimension's usage goes to, looked up once per dimension.
    const hours = new Map<string, number>();
    const hourOf = (dimension: string): number => {
      let hourMs = hours.get(dimension);
      if (hourMs === undefined) {
        hourMs = this.hourFor(dimension, arrivalMs);
        hours.set(dimension, hourMs);
      }
      return hourMs;
    };
    let duplicates = 0;
    if (keyed.id.length > 0) {
      const known = keys.known(keyed.id);
      const fresh: string[] = [];
      // What each fresh key counted, kept with it so that its report can be cancelled.
      const counted = { dimension: [] as string[], hourMs: [] as number[], tagsKey: [] as string[] };
      const quantities: number[] = [];
      const divisors: number[] = [];
      const seen = new Set<string>();
      for (let i = 0; i < keyed.id.length; i++) {
        const id = keyed.id[i];
        if (seen.has(id) || known.has(id)) {
          duplicates++;
          continue;
        }
        seen.add(id);
        fresh.push(id);
        const dimension = keyed.dimension[i];
        counted.dimension.push(dimension);
        counted.hourMs.push(hourOf(dimension));
        counted.tagsKey.push(keyed.tagsKey[i]);
        quantities.push(keyed.quantity[i]);
        divisors.push(this.divisorOf(dimension));
        add(dimension, keyed.tagsKey[i], keyed.quantity[i], keyed.index[i]);
      }
      keys.addAll(fresh, arrivalMs, { ...counted, quantity: quantities, divisor: divisors });
    }
    const byFirstIndex = <T>(m: Map<string, T>, indexOf: (v: T) => number): [string, T][] =>
      [...m].sort((a, b) => indexOf(a[1]) - indexOf(b[1]));
    const firstOf = (byTags: Map<string, { index: number }>): number => {
      let first = Infinity;
      for (const sum of byTags.values()) if (sum.index < first) first = sum.index;
      return first;
    };
    const counted = new Map<string, number>();
    for (const [dimension, byTags] of byFirstIndex(byDimension, firstOf)) {
      const hourMs = hourOf(dimension);
      const atMs = bucketTime(arrivalMs, hourMs);
      const divisor = this.divisorOf(dimension);
      let firstNewIndex: number | undefined;
      let firstIndex: number | undefined;
      let quantity = 0;
      for (const [tagsKey, sum] of byFirstIndex(byTags, (v) => v.index)) {
        firstIndex ??= sum.index;
        quantity += sum.quantity;
        const units =
          divisor === 1 ? sum.quantity : this.#scaled(dimension, tagsKey, sum, divisor, atMs, batch);
        // A scaled tag set whose usage completed no unit yet has only its remainder: no bucket, no tag set used.
        if (units === 0 && divisor !== 1) continue;
        if (stmt.addToBucket.run(units, atMs, dimension, hourMs, tagsKey).changes === 0) {
          stmt.insertBucket.run(dimension, hourMs, tagsKey, units, atMs);
          firstNewIndex ??= sum.index;
        }
      }
      this.#checkLimits(
        dimension,
        hourMs,
        firstNewIndex ?? firstIndex ?? 0,
        batch.size > 1,
        firstNewIndex !== undefined,
      );
      counted.set(dimension, quantity);
    }
    return { kind: 'recorded', accepted: batch.size - duplicates, duplicates, counted };
  }

  /**
   * Adds a batch's fine-unit usage of one scaled tag set to its carried remainder and keeps what is left below
   * one unit; returns the whole units for the hour's bucket.
   * @throws BatchRejected when the batch's usage of the tag set is beyond what is kept exact.
   */
  #scaled(
    dimension: string,
    tagsKey: string,
    sum: { quantity: number; index: number },
    divisor: number,
    atMs: number,
    batch: UsageBatch,
  ): number {
    if (sum.quantity > MAX_EXACT_TOTAL) {
      throw new BatchRejected(
        ledgerRejection(
          'InvalidQuantity',
          `dimension ${JSON.stringify(dimension)} would count more than ${MAX_EXACT_TOTAL} of its fine unit for one tag set in this batch, beyond what is kept exact`,
          batch.size > 1 ? sum.index : undefined,
        ),
      );
    }
    const carried = (this.#stmt.remainderOf.get(dimension, tagsKey, divisor) as number | undefined) ?? 0;
    const { whole, remainder } = scale(carried, sum.quantity, divisor);
    this.setRemainder(dimension, tagsKey, divisor, remainder, atMs);
    return whole;
  }

  /** Keeps `remainder` fine units of a scaled tag set (none: the row goes). */
  setRemainder(dimension: string, tagsKey: string, divisor: number, remainder: number, atMs: number): void {
    if (remainder === 0) this.#stmt.deleteRemainder.run(dimension, tagsKey, divisor);
    else this.#stmt.setRemainder.run(dimension, tagsKey, divisor, remainder, atMs);
  }

  /**
   * Refuses a batch that would give one record more tag sets or tag keys than AWS accepts. Usage carried into
   * the hour never causes the refusal: if the hour is over a limit and holds carried usage with tags, that usage
   * is folded into the hour's untagged allocation (same quantity, billed in the same hour, without its tags);
   * if the app's own usage needs even that allocation's place (2,500 tag sets of its own), the carried usage
   * moves on to the next hour that can take it. Then the limits are checked again. The same holds for the
   * hour's total, kept at most {@link MAX_EXACT_TOTAL} so that it stays exact in JavaScript numbers.
   */
  #checkLimits(dimension: string, hourMs: number, index: number, batch: boolean, newTagSets: boolean): void {
    const check = (): LimitProblem | undefined =>
      this.#totalProblem(dimension, hourMs) ??
      (newTagSets ? this.#tagLimitProblem(dimension, hourMs) : undefined);
    let problem = check();
    if (problem !== undefined && this.#foldCarried(dimension, hourMs)) problem = check();
    if (problem !== undefined && this.#moveCarried(dimension, hourMs)) problem = check();
    if (problem !== undefined)
      throw new BatchRejected(ledgerRejection(problem.code, problem.message, batch ? index : undefined));
  }

  /** The hour's total over {@link MAX_EXACT_TOTAL}. */
  #totalProblem(dimension: string, hourMs: number): LimitProblem | undefined {
    const total = this.#stmt.hourTotal.get(dimension, hourMs) as number;
    if (total <= MAX_EXACT_TOTAL) return undefined;
    return {
      code: 'InvalidQuantity',
      message: `dimension ${JSON.stringify(dimension)} would total more than ${MAX_EXACT_TOTAL} this hour, beyond what is kept exact (AWS bills at most 2,147,483,647 a record; the rest is carried hour after hour)`,
    };
  }

  #tagLimitProblem(dimension: string, hourMs: number): LimitProblem | undefined {
    const tagSets = this.#stmt.countTagSets.get(dimension, hourMs) as number;
    if (tagSets > MAX_TAG_SETS) {
      return {
        code: 'TooManyTagSets',
        message: `dimension ${JSON.stringify(dimension)} would have ${tagSets} tag sets this hour; AWS accepts at most ${MAX_TAG_SETS} per record`,
      };
    }
    const tagKeys = this.#stmt.countTagKeys.get(dimension, hourMs) as number;
    if (tagKeys > MAX_TAG_KEYS) {
      return {
        code: 'InvalidTags',
        message: `dimension ${JSON.stringify(dimension)} would use ${tagKeys} distinct tag keys this hour; AWS accepts at most ${MAX_TAG_KEYS} per record`,
      };
    }
    return undefined;
  }

  /**
   * Moves the tagged usage carried into (dimension, hour) to the hour's untagged bucket, freeing the tag sets and
   * keys it held for the app. Returns whether anything moved. Runs inside the batch's savepoint, so a batch
   * refused all the same leaves the carried usage as it was.
   */
  #foldCarried(dimension: string, hourMs: number): boolean {
    const stmt = this.#stmt;
    const carried = stmt.carriedTagged.all(dimension, hourMs) as {
      tags: string;
      carried_quantity: number;
      first_at_ms: number;
    }[];
    for (const bucket of carried) {
      stmt.takeCarried.run(dimension, hourMs, bucket.tags);
      stmt.deleteEmptyBucket.run(dimension, hourMs, bucket.tags);
      this.#addCarried(dimension, hourMs, '{}', bucket.carried_quantity, bucket.first_at_ms);
    }
    return carried.length > 0;
  }

  /** Moves the carried usage left in (dimension, hour), untagged by now, to a later hour. Returns whether any. */
  #moveCarried(dimension: string, hourMs: number): boolean {
    const quantity = this.#stmt.carriedOf.get(dimension, hourMs, '{}') as number | undefined;
    if (quantity === undefined || quantity === 0) return false;
    this.#stmt.takeCarried.run(dimension, hourMs, '{}');
    this.#stmt.deleteEmptyBucket.run(dimension, hourMs, '{}');
    this.placeCarried(dimension, hourMs + HOUR_MS, [{ tagsKey: '{}', quantity }]);
    return true;
  }

  /** Adds carried usage to a bucket, marking it as carried. */
  #addCarried(dimension: string, hourMs: number, tagsKey: string, quantity: number, atMs: number): void {
    if (this.#stmt.addCarried.run(quantity, quantity, atMs, dimension, hourMs, tagsKey).changes === 0) {
      this.#stmt.insertCarried.run(dimension, hourMs, tagsKey, quantity, quantity, atMs);
    }
  }

  /**
   * Adds carried usage (per tag set) to the first unsealed hour from `fromMs` on whose record would still be
   * within AWS's tag limits (2,500 tag sets, 5 tag keys), so a carry never produces a record AWS refuses, and
   * whose total stays exact. Returns the hour. An hour with no usage always fits, because the carried usage
   * came from one valid record.
   */
  placeCarried(dimension: string, fromMs: number, allocations: readonly CarriedAllocation[]): number {
    let hourMs = targetHour(fromMs, (h) => this.#isSealed(dimension, h));
    while (!this.#fits(dimension, hourMs, allocations)) {
      hourMs = targetHour(hourMs + HOUR_MS, (h) => this.#isSealed(dimension, h));
    }
    const atMs = bucketTime(fromMs, hourMs);
    for (const { tagsKey, quantity } of allocations)
      this.#addCarried(dimension, hourMs, tagsKey, quantity, atMs);
    return hourMs;
  }

  /**
   * Whether adding these allocations to (dimension, hour) keeps its record within AWS's tag limits, and its
   * total within {@link MAX_EXACT_TOTAL}.
   */
  #fits(dimension: string, hourMs: number, allocations: readonly CarriedAllocation[]): boolean {
    const adding = allocations.reduce((sum, a) => sum + a.quantity, 0);
    if ((this.#stmt.hourTotal.get(dimension, hourMs) as number) + adding > MAX_EXACT_TOTAL) return false;
    const tagsKeys = allocations.map((a) => a.tagsKey);
    const sets = new Set(this.#stmt.tagsOf.all(dimension, hourMs) as string[]);
    for (const key of tagsKeys) sets.add(key);
    if (sets.size > MAX_TAG_SETS) return false;
    const keys = new Set<string>();
    for (const set of sets) for (const key of Object.keys(JSON.parse(set) as object)) keys.add(key);
    return keys.size <= MAX_TAG_KEYS;
  }
}
