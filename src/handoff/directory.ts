/**
 * The shared handoff directory (METERING_HANDOFF_DIR) and its file protocol. It must hold on NFS v4.1 (EFS)
 * as on a local disk, so it relies only on what NFS guarantees: exclusive create, fsync, close-to-open
 * consistency and an atomic rename within one directory. No SQLite, no locks, no appends.
 *
 * A handoff goes through these names, each step one rename, so that it is always in exactly one of them:
 *
 * ```
 *  .tmp-ID.json ──publish──▶ handoff-ID.json ──claim──▶ claimed-ID.LEDGER.json ──finish──▶ adopted-ID.json
 *  (being written)           (adoptable)               (one adopter's, merging)           (tombstone)
 * ```
 *
 * Publishing writes the whole file under a temporary name (exclusive create), fsyncs it and renames it, so a
 * reader never sees a partial handoff. Claiming is a rename too: of adopters racing for one handoff exactly one
 * rename succeeds, and the others find it gone. Tombstones keep the content for a week, so that a writer
 * restarted on its own volume can still tell that a handoff it published was taken over.
 */
import { randomUUID } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { open, readFile, readdir, rename, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { HOUR_MS } from '../clock.js';
import { errorCode } from '../errors.js';
import { encodeHandoff, type Handoff } from './format.js';

/** Tombstones are kept this long, far beyond any restart of a writer on its own volume. */
export const TOMBSTONE_RETENTION_MS = 7 * 24 * HOUR_MS;

/** A temporary file older than this was left by a writer that died before publishing it. */
const TEMP_RETENTION_MS = 24 * HOUR_MS;

/** A handoff id: the writer's ledger id, a dot, and 8 random hex digits (`HandoffDirectory.newId`). */
const ID = '[A-Za-z0-9-]{1,64}\\.[0-9a-f]{8}';
const NAME = new RegExp(`^(handoff|adopted)-(${ID})\\.json$`);
const CLAIM = new RegExp(`^claimed-(${ID})\\.([A-Za-z0-9-]{1,64})\\.json$`);
const TEMP = new RegExp(`^\\.tmp-${ID}\\.json$`);

/** What the directory holds, by name. */
export interface DirectoryListing {
  /** Handoffs waiting for an adopter. */
  readonly published: readonly string[];
  /** Handoffs an adopter claimed and is merging (or died merging). */
  readonly claimed: readonly { readonly id: string; readonly claimant: string }[];
  /** Handoffs adopted, kept as tombstones. */
  readonly adopted: readonly string[];
}

/** The handoff directory. */
export class HandoffDirectory {
  readonly #path: string;

  /** Creates the directory when it is missing (a local directory in tests; an EFS access point exists). */
  constructor(path: string) {
    this.#path = path;
    mkdirSync(path, { recursive: true });
  }

  get path(): string {
    return this.#path;
  }

  /**
   * Writes `handoff` durably and makes it adoptable: temporary file (exclusive create), fsync, rename to
   * `handoff-ID.json`, fsync of the directory. Once this resolves, the handoff survives the writer.
   */
  async publish(handoff: Handoff): Promise<void> {
    const temp = join(this.#path, `.tmp-${handoff.id}.json`);
    const file = await open(temp, 'wx', 0o640);
    try {
      await file.writeFile(encodeHandoff(handoff), 'utf8');
      await file.sync();
    } finally {
      await file.close();
    }
    await rename(temp, this.#file('handoff', handoff.id));
    await this.#syncDirectory();
  }

  /**
   * The directory's modification time, which moves whenever a handoff is published, claimed or finished (every
   * one is a rename in it); `undefined` when it cannot be read. On NFS the attribute may be cached for a while.
   */
  async changeMark(): Promise<number | undefined> {
    try {
      return (await stat(this.#path)).mtimeMs;
    } catch {
      return undefined;
    }
  }

  /** Lists the directory. Names it does not know are ignored. */
  async list(): Promise<DirectoryListing> {
    const published: string[] = [];
    const claimed: { id: string; claimant: string }[] = [];
    const adopted: string[] = [];
    for (const name of await readdir(this.#path)) {
      const named = NAME.exec(name);
      if (named?.[1] === 'handoff') published.push(named[2]);
      else if (named?.[1] === 'adopted') adopted.push(named[2]);
      const claim = CLAIM.exec(name);
      if (claim !== null) claimed.push({ id: claim[1], claimant: claim[2] });
    }
    return { published, claimed, adopted };
  }

  /** The text of a published handoff, a claim or a tombstone; `undefined` when it is gone. */
  async read(id: string, as: 'handoff' | 'adopted' | { claimant: string }): Promise<string | undefined> {
    const path = typeof as === 'string' ? this.#file(as, id) : this.#claimFile(id, as.claimant);
    try {
      return await readFile(path, 'utf8');
    } catch (err) {
      if (errorCode(err) === 'ENOENT') return undefined;
      throw err;
    }
  }

  /** Claims a published handoff for `claimant`. `false`: another adopter claimed it first. */
  async claim(id: string, claimant: string): Promise<boolean> {
    try {
      await rename(this.#file('handoff', id), this.#claimFile(id, claimant));
    } catch (err) {
      if (errorCode(err) === 'ENOENT') return false;
      throw err;
    }
    await this.#syncDirectory();
    return true;
  }

  /** Turns `claimant`'s claim into a tombstone once its usage is durable in the adopter's ledger. */
  async finish(id: string, claimant: string): Promise<void> {
    await rename(this.#claimFile(id, claimant), this.#file('adopted', id));
    await this.#syncDirectory();
  }

  /** Removes tombstones and abandoned temporary files past their retention. Returns how many it removed. */
  async prune(nowMs: number): Promise<number> {
    let removed = 0;
    for (const name of await readdir(this.#path)) {
      const retention =
        NAME.exec(name)?.[1] === 'adopted'
          ? TOMBSTONE_RETENTION_MS
          : TEMP.test(name)
            ? TEMP_RETENTION_MS
            : undefined;
      if (retention === undefined) continue;
      const path = join(this.#path, name);
      try {
        if (nowMs - (await stat(path)).mtimeMs > retention) {
          await unlink(path);
          removed++;
        }
      } catch (err) {
        if (errorCode(err) !== 'ENOENT') throw err; // another sidecar pruned it first
      }
    }
    return removed;
  }

  /**
   * A new handoff id for the writer `ledgerId`. The writer is part of the id, so a writer restarted on its own
   * volume finds the handoffs it published by their names alone, without reading the others.
   */
  static newId(ledgerId: string): string {
    return `${ledgerId}.${randomUUID().slice(0, 8)}`;
  }

  /** The ledger id of the writer of handoff `id`. */
  static writerOf(id: string): string {
    return id.slice(0, id.lastIndexOf('.'));
  }

  #file(kind: 'handoff' | 'adopted', id: string): string {
    return join(this.#path, `${kind}-${id}.json`);
  }

  #claimFile(id: string, claimant: string): string {
    return join(this.#path, `claimed-${id}.${claimant}.json`);
  }

  /** Makes the renames durable. Some file systems refuse fsync on a directory; there the rename already is. */
  async #syncDirectory(): Promise<void> {
    let dir;
    try {
      dir = await open(this.#path, 'r');
      await dir.sync();
    } catch (err) {
      if (!['EINVAL', 'EISDIR', 'EPERM', 'EBADF'].includes(errorCode(err) ?? '')) throw err;
    } finally {
      await dir?.close();
    }
  }
}
