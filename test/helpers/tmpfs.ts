import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * A small real tmpfs, for honest disk-full and read-only faults. Needs permission to mount (root, as on the
 * project's machines and in CI).
 */
export class Tmpfs {
  readonly dir: string;
  #mounted = true;

  private constructor(dir: string) {
    this.dir = dir;
  }

  static mount(sizeKb: number): Tmpfs {
    const dir = mkdtempSync(join(tmpdir(), 'metering-tmpfs-'));
    try {
      execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${sizeKb}k`, 'tmpfs', dir], { stdio: 'pipe' });
    } catch (err) {
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`cannot mount a tmpfs for the storage fault tests (run them as root): ${String(err)}`);
    }
    return new Tmpfs(dir);
  }

  /** Fills the file system to the last byte with a filler file. */
  fill(): void {
    try {
      // 64 KiB writes until ENOSPC.
      const chunk = Buffer.alloc(64 * 1024, 1);
      for (let i = 0; ; i++) writeFileSync(join(this.dir, `filler-${i}`), chunk);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
    }
    // Whatever fits in the remaining bytes.
    for (const size of [16384, 4096, 1024, 256, 64, 1]) {
      try {
        for (let i = 0; ; i++)
          writeFileSync(join(this.dir, `filler-small-${size}-${i}`), Buffer.alloc(size, 1));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
      }
    }
  }

  /** Removes the filler files. */
  drain(): void {
    execFileSync('sh', ['-c', `rm -f "${this.dir}"/filler-*`]);
  }

  /** Remounts read-only (true) or read-write (false). */
  readOnly(on: boolean): void {
    execFileSync('mount', ['-o', `remount,${on ? 'ro' : 'rw'}`, this.dir], { stdio: 'pipe' });
  }

  unmount(): void {
    if (!this.#mounted) return;
    this.#mounted = false;
    execFileSync('umount', ['-l', this.dir], { stdio: 'pipe' });
    rmSync(this.dir, { recursive: true, force: true });
  }
}
