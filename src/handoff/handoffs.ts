/**
 * Handoff (METERING_HANDOFF_DIR): usage outlives the task or pod. At shutdown, what could not be delivered
 * before the deadline is published to the shared directory and taken out of the sidecar's own ledger; running
 * sidecars of the same product adopt it, at start and then periodically, as carried usage of their own open
 * hour. docs/design.md ("Handoff") walks through every crash point.
 *
 * The order of every step is chosen so that usage is never counted in two places that can both bill it:
 * - writing: publish the file (atomic), then take the usage out of the ledger in one transaction. A writer that
 *   dies in between either loses its volume with the ledger (the file alone holds the usage) or, restarted on
 *   the same volume, completes the handoff from the file before it sends anything ({@link Handoffs.recover});
 * - adopting: claim the file (one rename: one winner among racing adopters), carry its usage into the ledger
 *   in one transaction idempotent by handoff id, then turn the claim into a tombstone. An adopter restarted on
 *   its volume resumes its own claims.
 */
import { canonicalTags } from '../ledger/hours.js';
import type { HandoffEntry, HandoffSnapshot } from '../ledger/handoffStore.js';
import type { HandoffLedger, LedgerReader } from '../ledger/ledger.js';
import type { Clock } from '../clock.js';
import { CODES, StorageUnavailableError, describeError } from '../errors.js';
import type { Logger } from '../log.js';
import { HandoffDirectory } from './directory.js';
import { HANDOFF_FORMAT, HANDOFF_VERSION, decodeHandoff, type Handoff } from './format.js';

/** What handoffs report, for metrics (the sidecar's `Metrics` implements it). */
export interface HandoffObserver {
  /** A handoff was published and taken out of this ledger, or adopted into it; `quantity` billable units. */
  handoff(direction: 'written' | 'adopted', quantity: number): void;
}

/** Options of {@link Handoffs}. */
export interface HandoffsOptions {
  readonly directory: HandoffDirectory;
  readonly ledger: HandoffLedger & Pick<LedgerReader, 'ledgerId'>;
  readonly productCode: string;
  /** The dimension allow-list; a handoff with another dimension is left in place (its usage could not bill). */
  readonly dimensions: readonly string[] | undefined;
  readonly host: string;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly observer?: HandoffObserver;
}

/** What the last scan of the directory found. */
export interface DirectoryView {
  /** Handoffs waiting for an adopter, this sidecar's own skipped ones included. */
  readonly pending: number;
  /** Handoffs left in place: another product or version, or not readable as a handoff. */
  readonly ignored: number;
}

/** Handing off and adopting, for one sidecar. */
export class Handoffs {
  readonly #options: HandoffsOptions;
  /** Ids already reported as left in place, so each is warned about once. */
  readonly #ignored = new Map<string, string>();
  #view: DirectoryView = { pending: 0, ignored: 0 };
  #timer: NodeJS.Timeout | undefined;
  #scanning: Promise<unknown> | undefined;
  #stopped = false;

  constructor(options: HandoffsOptions) {
    this.#options = options;
  }

  /** What the last scan of the directory found. */
  get view(): DirectoryView {
    return this.#view;
  }

  /**
   * At start, before anything is sent or accepted: completes handoffs this ledger published but had not yet
   * recorded when its process died, and resumes adoptions it had claimed. Returns how many of each.
   */
  async recover(): Promise<{ completed: number; resumed: number }> {
    try {
      return await this.#recover();
    } catch (err) {
      // Without the directory it cannot be known whether a handoff of this ledger's usage was published; with
      // nothing in the ledger there is nothing such a handoff could hold twice, so metering may go on.
      const snapshot = await this.#options.ledger.handoffSnapshot();
      if (snapshot.recordIds.length > 0 || snapshot.bucketHours.length > 0) {
        throw new StorageUnavailableError(
          `the handoff directory ${this.#options.directory.path} cannot be read (${describeError(err)}) while the ledger holds usage a handoff may already carry; nothing is sent until it can be: check the METERING_HANDOFF_DIR volume`,
          { cause: err },
        );
      }
      this.#options.logger.error(
        { err, code: CODES.handoffFailed, directory: this.#options.directory.path },
        `the handoff directory cannot be read (${describeError(err)}); adopting retries at every scan`,
      );
      return { completed: 0, resumed: 0 };
    }
  }

  async #recover(): Promise<{ completed: number; resumed: number }> {
    const { directory, ledger } = this.#options;
    const me = ledger.ledgerId;
    const listing = await directory.list();
    const ids = await ledger.handoffIds();
    let completed = 0;
    const mine = (id: string): boolean => HandoffDirectory.writerOf(id) === me && !ids.written.has(id);
    const sources: [string, 'handoff' | 'adopted' | { claimant: string }][] = [
      ...listing.published.filter(mine).map((id) => [id, 'handoff'] as [string, 'handoff']),
      ...listing.adopted.filter(mine).map((id) => [id, 'adopted'] as [string, 'adopted']),
      ...listing.claimed
        .filter((c) => mine(c.id))
        .map((c) => [c.id, { claimant: c.claimant }] as [string, { claimant: string }]),
    ];
    for (const [id, as] of sources) {
      const handoff = await this.#read(id, as);
      if (
        handoff !== undefined &&
        (await ledger.completeHandoff(toEntry(handoff), this.#options.clock.now()))
      ) {
        completed++;
        this.#options.logger.warn(
          { handoffId: id },
          'completed a handoff published before the process stopped',
        );
      }
    }
    let resumed = 0;
    for (const claim of listing.claimed.filter((c) => c.claimant === me)) {
      if (await this.#adoptClaimed(claim.id, ids.adopted)) resumed++;
    }
    return { completed, resumed };
  }

  /**
   * Publishes everything the ledger still holds and takes it out of the ledger. Returns the handoff, or
   * `undefined` when there was nothing to hand off or it failed (logged; the usage then stays in the ledger,
   * or, when the ledger could not record a published handoff, is completed from the file at the next start).
   */
  async handOff(): Promise<{ id: string; quantity: number; uncertain: number } | undefined> {
    try {
      return await this.#handOff();
    } catch (err) {
      this.#options.logger.error(
        { err, code: CODES.handoffFailed, directory: this.#options.directory.path },
        `could not hand off (${describeError(err)}); the usage stays in the ledger`,
      );
      return undefined;
    }
  }

  async #handOff(): Promise<{ id: string; quantity: number; uncertain: number } | undefined> {
    const { directory, ledger, clock } = this.#options;
    const snapshot = await ledger.handoffSnapshot();
    if (snapshot.recordIds.length === 0 && snapshot.bucketHours.length === 0) return undefined;
    const handoff = toHandoff(snapshot, {
      id: HandoffDirectory.newId(ledger.ledgerId),
      productCode: this.#options.productCode,
      origin: { ledgerId: ledger.ledgerId, host: this.#options.host, writtenAtMs: clock.now() },
    });
    await directory.publish(handoff);
    await ledger.completeHandoff(toEntry(handoff), clock.now());
    const quantity = quantityOf(handoff);
    this.#options.observer?.handoff('written', quantity);
    this.#options.logger.info(
      { handoffId: handoff.id, quantity, uncertain: handoff.uncertain.length, directory: directory.path },
      'usage handed off for another sidecar to bill',
    );
    return { id: handoff.id, quantity, uncertain: handoff.uncertain.length };
  }

  /**
   * Adopts every handoff of this product waiting in the directory. Never rejects: a failure is logged and the
   * next scan tries again. Returns how many it adopted.
   */
  adoptAll(): Promise<number> {
    const scan = this.#scan().catch((err: unknown) => {
      this.#options.logger.error(
        { err, code: CODES.handoffFailed, directory: this.#options.directory.path },
        `could not adopt handoffs (${describeError(err)}); retrying at the next scan`,
      );
      return 0;
    });
    this.#scanning = scan;
    return scan;
  }

  /**
   * For a stopping sidecar: resolves a check that tells whether a handoff was published since now, which
   * during a shutdown means that a peer stopping with it ran out of quota (or time) and handed off. Call after
   * {@link stop}, so that this sidecar's own adoptions do not change the directory meanwhile.
   */
  async peerSignal(): Promise<() => Promise<boolean>> {
    const { directory } = this.#options;
    let mark = await directory.changeMark();
    const known = new Set(
      await directory.list().then(
        (l) => l.published,
        () => [],
      ),
    );
    let seen = false;
    return async () => {
      if (seen) return true;
      // One stat per send; the directory is listed only when it changed (claims and tombstones of running
      // adopters change it too, and only a handoff published since counts).
      const now = await directory.changeMark();
      if (now === undefined || now === mark) return false;
      mark = now;
      const published = await directory.list().then(
        (l) => l.published,
        () => [],
      );
      seen = published.some((id) => !known.has(id));
      return seen;
    };
  }

  /** Adopts every `intervalMs` (with up to 20% jitter) until {@link stop}. */
  start(intervalMs: number, random: () => number = Math.random): void {
    if (this.#stopped) return;
    const next = (): void => {
      this.#timer = setTimeout(
        () => {
          void this.adoptAll().then(() => {
            if (!this.#stopped) next();
          });
        },
        intervalMs * (0.8 + 0.4 * random()),
      );
      this.#timer.unref();
    };
    next();
  }

  /** Stops adopting, and waits for a scan in progress so the ledger is not closed under it. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    await this.#scanning;
  }

  async #scan(): Promise<number> {
    const { directory, ledger, clock } = this.#options;
    const listing = await directory.list();
    const ids = await ledger.handoffIds();
    let adopted = 0;
    // A claim of this sidecar's that an earlier scan could not finish (the ledger could not commit then).
    for (const claim of listing.claimed.filter((c) => c.claimant === ledger.ledgerId)) {
      if (await this.#adoptClaimed(claim.id, ids.adopted)) adopted++;
    }
    // Racing adopters start from different ends of the list, so most claims meet no competition.
    const order = [...listing.published].sort(() => Math.random() - 0.5);
    for (const id of order) {
      if (this.#stopped) break;
      if (this.#ignored.has(id)) continue;
      const handoff = await this.#read(id, 'handoff');
      if (handoff === undefined) continue; // claimed by another adopter meanwhile, or left in place
      if (!(await directory.claim(id, ledger.ledgerId))) continue;
      if (await this.#adopt(handoff, ids.adopted)) adopted++;
    }
    const after = await directory.list();
    this.#view = {
      pending: after.published.length,
      ignored: after.published.filter((id) => this.#ignored.has(id)).length,
    };
    await directory.prune(clock.now());
    return adopted;
  }

  async #adoptClaimed(id: string, adopted: Set<string>): Promise<boolean> {
    const handoff = await this.#read(id, { claimant: this.#options.ledger.ledgerId });
    return handoff !== undefined && (await this.#adopt(handoff, adopted));
  }

  /** Carries a claimed handoff into the ledger (idempotent), then turns the claim into a tombstone. */
  async #adopt(handoff: Handoff, adopted: Set<string>): Promise<boolean> {
    const { directory, ledger, clock, logger } = this.#options;
    const fresh = !adopted.has(handoff.id) && (await ledger.adoptHandoff(toEntry(handoff), clock.now()));
    await directory.finish(handoff.id, ledger.ledgerId);
    if (!fresh) return false;
    const quantity = quantityOf(handoff);
    this.#options.observer?.handoff('adopted', quantity);
    logger.info(
      {
        handoffId: handoff.id,
        from: handoff.origin.ledgerId,
        host: handoff.origin.host,
        quantity,
        uncertain: handoff.uncertain.length,
      },
      'handoff adopted: its usage is billed with this sidecar’s open hour',
    );
    if (handoff.uncertain.length > 0) {
      logger.warn(
        { code: CODES.handoffUncertain, handoffId: handoff.id, records: handoff.uncertain.length },
        'the handoff holds records that may already be billed under the stopped sidecar; they are not billed again: check the seller report',
      );
    }
    return true;
  }

  /** Reads and checks a handoff; one that is not this product's, or not readable, is left in place. */
  async #read(id: string, as: 'handoff' | 'adopted' | { claimant: string }): Promise<Handoff | undefined> {
    const text = await this.#options.directory.read(id, as);
    if (text === undefined) return undefined;
    const decoded = decodeHandoff(text, this.#options.productCode);
    let problem = decoded.kind === 'handoff' ? undefined : decoded.message;
    if (decoded.kind === 'handoff' && decoded.handoff.id !== id) problem = 'its id does not match its name';
    const dimensions = this.#options.dimensions;
    const unknown =
      decoded.kind === 'handoff' && dimensions !== undefined
        ? decoded.handoff.usage.find((u) => !dimensions.includes(u.dimension))
        : undefined;
    if (unknown !== undefined)
      problem = `dimension ${JSON.stringify(unknown.dimension)} is not in METERING_DIMENSIONS`;
    if (problem === undefined && decoded.kind === 'handoff') return decoded.handoff;
    if (!this.#ignored.has(id)) {
      this.#ignored.set(id, problem ?? 'unreadable');
      this.#options.logger.warn(
        { code: CODES.handoffIgnored, handoffId: id, directory: this.#options.directory.path },
        `handoff left in place: ${problem ?? 'unreadable'}`,
      );
    }
    return undefined;
  }
}

/** The file a ledger's snapshot becomes: tag sets as tag objects, with the handoff's id and origin. */
export function toHandoff(
  snapshot: HandoffSnapshot,
  identity: Pick<Handoff, 'id' | 'productCode' | 'origin'>,
): Handoff {
  return {
    format: HANDOFF_FORMAT,
    version: HANDOFF_VERSION,
    ...identity,
    usage: snapshot.usage.map((u) => ({
      dimension: u.dimension,
      hourMs: u.hourMs,
      allocations: u.allocations.map((a) => ({
        tags: JSON.parse(a.tagsKey) as Record<string, string>,
        quantity: a.quantity,
      })),
    })),
    uncertain: snapshot.uncertain,
    recordIds: snapshot.recordIds,
    bucketHours: snapshot.bucketHours,
  };
}

/** The ledger's view of a handoff file: tag objects as canonical tag-set text. */
export function toEntry(handoff: Handoff): HandoffEntry {
  return {
    id: handoff.id,
    originLedgerId: handoff.origin.ledgerId,
    originHost: handoff.origin.host,
    writtenAtMs: handoff.origin.writtenAtMs,
    usage: handoff.usage.map((u) => ({
      dimension: u.dimension,
      hourMs: u.hourMs,
      allocations: u.allocations.map((a) => ({ tagsKey: canonicalTags(a.tags), quantity: a.quantity })),
    })),
    uncertain: handoff.uncertain,
    recordIds: handoff.recordIds,
    bucketHours: handoff.bucketHours,
  };
}

function quantityOf(handoff: Handoff): number {
  return handoff.usage.reduce((sum, u) => sum + u.allocations.reduce((s, a) => s + a.quantity, 0), 0);
}
