import { join } from 'node:path';
import { afterEach } from 'vitest';
import type { Cleanups } from './fixture.js';
import { SidecarProcess } from './sidecarProcess.js';
import { TempDirs } from './tmp.js';

/** What {@link processTestScope} gives a test file. */
export interface ProcessTestScope {
  readonly cleanups: Cleanups;
  readonly tempDir: () => string;
  /**
   * Starts `run --local` (the embedded emulator, no entitlement check) with its state and socket in `dir`, and
   * `extra` on top; killed at cleanup unless the test stops it.
   */
  readonly localSidecar: (dir: string, extra?: Record<string, string>) => SidecarProcess;
}

/**
 * What a process test file holds for the length of each test: cleanups (killing the processes it started, run in
 * reverse after each test) and temporary directories, removed after them. Call once at the top of the file.
 */
export function processTestScope(prefix: string): ProcessTestScope {
  const cleanups: Cleanups = [];
  const dirs = new TempDirs();
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
    dirs.cleanup();
  });
  const localSidecar = (dir: string, extra: Record<string, string> = {}): SidecarProcess => {
    const sidecar = SidecarProcess.spawn(
      {
        METERING_ENTITLEMENT: 'none',
        METERING_STATE_DIR: join(dir, 'state'),
        METERING_SOCKET: join(dir, 'metering.sock'),
        METERING_LISTEN: 'off',
        METERING_ADMIN_LISTEN: 'off',
        ...extra,
      },
      ['run', '--local'],
    );
    cleanups.push(() => {
      sidecar.child.kill('SIGKILL');
    });
    return sidecar;
  };
  return { cleanups, tempDir: () => dirs.make(prefix), localSidecar };
}
