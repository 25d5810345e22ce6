/**
 * A validated batch of usage reports in the shape the ledger commits it: reports without an idempotency key
 * already summed per (dimension, tag set) as intake parsed them, reports with a key listed one by one (whether
 * each counts depends on the keys the ledger knows). Columns of plain values, so a batch of 10,000 reports
 * crosses to the ledger's thread as a handful of arrays instead of 10,000 objects, and building it allocates
 * nothing per report beyond the slots of new tag sets.
 */
import type { UsageReport } from './ledger.js';

/** Rows of usage, one column per field; row `i` is `dimension[i]`, `tagsKey[i]`, `quantity[i]`, `index[i]`. */
export interface UsageColumns {
  readonly dimension: readonly string[];
  /** Canonical text of the tag set (`canonicalTags` in ./hours.ts). */
  readonly tagsKey: readonly string[];
  readonly quantity: readonly number[];
  /** Position in the request of the row's first report, for a rejection to name. */
  readonly index: readonly number[];
}

/** A batch, all or nothing for the ledger. */
export interface UsageBatch {
  /** Reports in the request. */
  readonly size: number;
  /** Reports without an idempotency key, one row per (dimension, tag set), in order of first appearance. */
  readonly sums: UsageColumns;
  /** Reports with an idempotency key, one row each, in request order; `id[i]` is row `i`'s key. */
  readonly keyed: UsageColumns & { readonly id: readonly string[] };
}

interface MutableColumns {
  dimension: string[];
  tagsKey: string[];
  quantity: number[];
  index: number[];
}

function columns(): MutableColumns {
  return { dimension: [], tagsKey: [], quantity: [], index: [] };
}

function push(to: MutableColumns, dimension: string, tagsKey: string, quantity: number, index: number): void {
  to.dimension.push(dimension);
  to.tagsKey.push(tagsKey);
  to.quantity.push(quantity);
  to.index.push(index);
}

/** Builds a {@link UsageBatch} report by report, in request order. */
export class UsageBatchBuilder {
  readonly #sums = columns();
  readonly #keyed = { ...columns(), id: [] as string[] };
  /** Row of each (dimension, tag set) in `#sums`. */
  readonly #rows = new Map<string, Map<string, number>>();
  #size = 0;

  /**
   * Adds the next report of the request. Quantities are integers of at most 2^31 - 1, so sums stay exact, except
   * for scaled dimensions (fine units), whose sums the ledger refuses past 2^53 - 1 (`Buckets` in ./buckets.ts).
   */
  add(dimension: string, tagsKey: string, quantity: number, id: string | undefined): void {
    const index = this.#size++;
    if (id !== undefined) {
      push(this.#keyed, dimension, tagsKey, quantity, index);
      this.#keyed.id.push(id);
      return;
    }
    let byTags = this.#rows.get(dimension);
    if (byTags === undefined) {
      byTags = new Map<string, number>();
      this.#rows.set(dimension, byTags);
    }
    const row = byTags.get(tagsKey);
    if (row === undefined) {
      byTags.set(tagsKey, this.#sums.quantity.length);
      push(this.#sums, dimension, tagsKey, quantity, index);
    } else {
      this.#sums.quantity[row] += quantity;
    }
  }

  /** Reports added so far. */
  get size(): number {
    return this.#size;
  }

  build(): UsageBatch {
    return { size: this.#size, sums: this.#sums, keyed: this.#keyed };
  }
}

/** The batch of these reports (as tests and tools build one). */
export function usageBatch(reports: readonly UsageReport[]): UsageBatch {
  const builder = new UsageBatchBuilder();
  for (const r of reports) builder.add(r.dimension, r.tagsKey, r.quantity, r.id);
  return builder.build();
}
