/**
 * The standalone emulator driven by a client nobody here wrote: Debian's AWS CLI (`awscli`, with its own
 * botocore and model of the Metering API), over the four operations, the signing Region and DryRun.
 */
import { constants, verify } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { awsCli, installAwsCli } from '../helpers/awscli.js';
import { processTestScope } from '../helpers/scope.js';
import { SidecarProcess } from '../helpers/sidecarProcess.js';

const { cleanups } = processTestScope('metering-awscli-');

async function startEmulator(args: readonly string[]): Promise<string> {
  const emulator = SidecarProcess.spawn({}, ['emulator', '--port', '0', '--product-code', 'p1', ...args]);
  cleanups.push(() => {
    emulator.child.kill('SIGKILL');
  });
  while (!/listening on (http:\/\/\S+)/.test(emulator.stdout)) await new Promise((r) => setTimeout(r, 10));
  return /listening on (http:\/\/\S+)/.exec(emulator.stdout)![1];
}

/** `aws meteringmarketplace meter-usage` for product p1 at this instant, with `extra` arguments. */
function meterUsage(dimension: string, ...extra: string[]): string[] {
  return [
    'meteringmarketplace',
    'meter-usage',
    '--product-code',
    'p1',
    '--timestamp',
    new Date().toISOString(),
    '--usage-dimension',
    dimension,
    ...extra,
  ];
}

function parsed(stdout: string): Record<string, unknown> {
  return JSON.parse(stdout) as Record<string, unknown>;
}

describe('the emulator with the AWS CLI', () => {
  beforeAll(() => {
    installAwsCli();
  });

  it('serves MeterUsage, RegisterUsage, ResolveCustomer and BatchMeterUsage, in its own Region only', async () => {
    // Prepare
    const endpoint = await startEmulator(['--region', 'eu-west-1', '--dry-run-response', 'success']);
    const options = { endpoint, region: 'eu-west-1' };
    const now = new Date().toISOString();

    // Act
    const meter = await awsCli(meterUsage('a', '--usage-quantity', '3'), options);
    const dryRun = await awsCli(meterUsage('b', '--dry-run'), options);
    const hardCoded = await awsCli(meterUsage('b'), { endpoint, region: 'us-east-1' });
    const register = await awsCli(
      [
        'meteringmarketplace',
        'register-usage',
        '--product-code',
        'p1',
        '--public-key-version',
        '1',
        '--nonce',
        'n-1',
      ],
      options,
    );
    const publicKey = await (await fetch(`${endpoint}/emulator/public-key`)).text();
    const grant = (await (
      await fetch(`${endpoint}/emulator/registration-tokens`, {
        method: 'POST',
        body: JSON.stringify({ customerIdentifier: 'cust-1', customerAWSAccountId: '111122223333' }),
      })
    ).json()) as { registrationToken: string };
    const resolve = [
      'meteringmarketplace',
      'resolve-customer',
      '--registration-token',
      grant.registrationToken,
    ];
    const resolved = await awsCli(resolve, options);
    const resubmitted = await awsCli(resolve, options);
    const batch = await awsCli(
      [
        'meteringmarketplace',
        'batch-meter-usage',
        '--product-code',
        'p1',
        '--usage-records',
        `Timestamp=${now},CustomerIdentifier=cust-1,Dimension=b,Quantity=4`,
      ],
      options,
    );
    const records = (await (await fetch(`${endpoint}/emulator/records`)).json()) as {
      records: { dimension: string; quantity: number; identity: string }[];
      batchRecords: { dimension: string; quantity: number; customerIdentifier: string }[];
    };

    // Assess
    expect(meter.code, meter.stderr).toBe(0);
    expect(parsed(meter.stdout)['MeteringRecordId']).toMatch(/^[0-9a-f-]{36}$/);
    expect(dryRun.code, dryRun.stderr).toBe(0);
    expect(hardCoded.code).not.toBe(0);
    expect(hardCoded.stderr).toContain('InvalidEndpointRegionException');
    expect(register.code, register.stderr).toBe(0);
    const [header = '', payload = '', signature = ''] = String(parsed(register.stdout)['Signature']).split(
      '.',
    );
    expect(JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'))).toMatchObject({
      ProductCode: 'p1',
      Nonce: 'n-1',
    });
    expect(
      verify(
        'sha256',
        Buffer.from(`${header}.${payload}`),
        { key: publicKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 },
        Buffer.from(signature, 'base64url'),
      ),
    ).toBe(true);
    expect(resolved.code, resolved.stderr).toBe(0);
    expect(parsed(resolved.stdout)).toMatchObject({
      CustomerIdentifier: 'cust-1',
      CustomerAWSAccountId: '111122223333',
      ProductCode: 'p1',
    });
    expect(resubmitted.stderr).toContain('ExpiredTokenException');
    expect(batch.code, batch.stderr).toBe(0);
    expect(parsed(batch.stdout)).toMatchObject({
      Results: [
        { Status: 'Success', UsageRecord: { CustomerIdentifier: 'cust-1', Dimension: 'b', Quantity: 4 } },
      ],
      UnprocessedRecords: [],
    });
    expect(records.records).toMatchObject([{ dimension: 'a', quantity: 3, identity: 'AWSCLITEST' }]);
    expect(records.batchRecords).toMatchObject([
      { dimension: 'b', quantity: 4, customerIdentifier: 'cust-1' },
    ]);
  });

  it("answers a passing DryRun with AWS's DryRunOperation error by default", async () => {
    const endpoint = await startEmulator([]);

    const dryRun = await awsCli(meterUsage('a', '--dry-run'), { endpoint, region: 'us-east-1' });

    expect(dryRun.code).not.toBe(0);
    expect(dryRun.stderr).toContain('DryRunOperation');
  });
});
