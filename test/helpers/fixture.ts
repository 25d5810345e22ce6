import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MeteringEmulator, type EmulatorOptions } from '../../src/emulator/emulator.js';
import { faketimeEnv } from './faketime.js';
import { SidecarProcess, startCredentialsServer } from './sidecarProcess.js';

/** Cleanups a test file runs (in reverse) after each test or after all. */
export type Cleanups = (() => Promise<void> | void)[];

/** Options of {@link sidecarFixture}. */
export interface FixtureOptions {
  /** Names the product code (`prod-NAME`), the task identity and the temp directory. */
  readonly name: string;
  readonly emulator?: Partial<EmulatorOptions>;
  /** Environment on top of the defaults (empty string values unset nothing; they are passed as empty). */
  readonly env?: Record<string, string>;
  readonly stateDir?: string;
  /** The sidecar's clock offset (libfaketime), read at every spawn; the emulator runs on the same clock. */
  readonly clockOffsetMs?: () => number;
}

/**
 * What the process tests share: the emulator on loopback, task-role credentials served the way ECS serves
 * them, a temp directory, and the environment of a sidecar pointed at them. `spawn()` starts the built CLI
 * and registers its SIGKILL as a cleanup.
 */
export async function sidecarFixture(cleanups: Cleanups, options: FixtureOptions) {
  const dir = mkdtempSync(join(tmpdir(), `metering-${options.name}-`));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const offset = options.clockOffsetMs ?? (() => 0);
  const productCode = `prod-${options.name}`;
  const emulator = new MeteringEmulator({
    productCode,
    now: () => Date.now() + offset(),
    ...options.emulator,
  });
  const url = await emulator.start();
  cleanups.push(() => emulator.stop());
  const creds = await startCredentialsServer(
    `ASIATASK${options.name.toUpperCase().replace(/[^A-Z0-9]/g, '')}`,
  );
  cleanups.push(() => creds.close());
  const socketPath = join(dir, 'metering.sock');
  const stateDir = options.stateDir ?? join(dir, 'state');
  const env: Record<string, string> = {
    METERING_PRODUCT_CODE: productCode,
    METERING_PUBLIC_KEY: emulator.publicKeyPem,
    METERING_SOCKET: socketPath,
    METERING_LISTEN: 'off',
    METERING_ADMIN_LISTEN: 'off',
    METERING_STATE_DIR: stateDir,
    METERING_SEND_JITTER_SECONDS: '0',
    METERING_DIMENSIONS: 'requests,gb,nodes',
    AWS_REGION: 'us-east-1',
    AWS_ENDPOINT_URL_MARKETPLACE_METERING: url,
    AWS_CONTAINER_CREDENTIALS_FULL_URI: creds.url,
    ...options.env,
  };
  const spawn = (extra: Record<string, string> = {}, wrap: readonly string[] = []): SidecarProcess => {
    const offsetMs = offset();
    const sidecar = SidecarProcess.spawn(
      {
        ...env,
        ...extra,
        ...(offsetMs !== 0 ? faketimeEnv(offsetMs) : {}),
      },
      ['run'],
      wrap,
    );
    cleanups.push(() => {
      sidecar.child.kill('SIGKILL');
    });
    return sidecar;
  };
  return { dir, emulator, url, socketPath, stateDir, env, spawn, productCode };
}
