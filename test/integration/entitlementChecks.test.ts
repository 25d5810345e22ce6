/**
 * The EntitlementCheck contract, for both checks (RegisterUsage with a verified token, MeterUsage DryRun per
 * dimension), over the real SDK against the emulator: an entitled buyer is `entitled`; a wrong product is
 * `notEntitled`; throttling is `unavailable`; and no AWS or network error is ever thrown.
 */
import type { MarketplaceMeteringClient } from '@aws-sdk/client-marketplace-metering';
import { afterEach, describe, expect, it } from 'vitest';
import { MeteringEmulator } from '../../src/emulator/emulator.js';
import { DryRunCheck, RegisterUsageCheck, type EntitlementCheck } from '../../src/entitlement/check.js';
import { createMeteringClient } from '../../src/send/client.js';
import { ManualClock } from '../helpers/manualClock.js';

const closers: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close();
});

async function setup(): Promise<{ emulator: MeteringEmulator; client: MarketplaceMeteringClient }> {
  const emulator = new MeteringEmulator({ productCode: 'prod', dimensions: ['requests', 'gb'] });
  const endpoint = await emulator.start();
  closers.push(() => emulator.stop());
  const client = createMeteringClient({
    region: 'us-east-1',
    endpoint,
    credentials: { accessKeyId: 'TASK1', secretAccessKey: 'secret' },
    maxAttempts: 1,
  });
  closers.push(() => client.destroy());
  return { emulator, client };
}

type Make = (
  client: MarketplaceMeteringClient,
  emulator: MeteringEmulator,
  productCode: string,
) => EntitlementCheck;

const checks: [string, string, Make][] = [
  [
    'RegisterUsageCheck',
    'RegisterUsage',
    (client, emulator, productCode) =>
      new RegisterUsageCheck(client, {
        productCode,
        publicKeyVersion: 1,
        publicKeyPem: emulator.publicKeyPem,
      }),
  ],
  [
    'DryRunCheck',
    'MeterUsage',
    (client, _emulator, productCode) =>
      new DryRunCheck(client, {
        productCode,
        dimensions: ['requests', 'gb'],
        clock: new ManualClock(Date.now()),
      }),
  ],
];

describe.each(checks)('EntitlementCheck contract: %s', (_name, operation, make) => {
  it('answers entitled when AWS entitles the buyer', async () => {
    const { emulator, client } = await setup();
    expect(await make(client, emulator, 'prod').check()).toMatchObject({ kind: 'entitled' });
  });

  it('answers notEntitled, without throwing, when AWS refuses the product', async () => {
    const { emulator, client } = await setup();
    expect(await make(client, emulator, 'other-product').check()).toMatchObject({
      kind: 'notEntitled',
      code: 'InvalidProductCodeException',
    });
  });

  it('answers unavailable, without throwing, when AWS throttles or cannot be reached', async () => {
    const { emulator, client } = await setup();
    emulator.failNext(operation, 'ThrottlingException', 1);
    expect(await make(client, emulator, 'prod').check()).toMatchObject({
      kind: 'unavailable',
      code: 'ThrottlingException',
    });
    await emulator.stop();
    expect(await make(client, emulator, 'prod').check()).toMatchObject({ kind: 'unavailable' });
  });
});
