import { mkdirSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { credentialSource, diagnose, type Diagnosis } from '../../src/doctor.js';
import { TempDirs } from '../helpers/tmp.js';

const dirs = new TempDirs();
const servers: Server[] = [];

afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise((resolve) => s.close(resolve))));
  dirs.cleanup();
});

/** A local HTTP server answering every request with `body` and a `Date` header `offsetMs` from now. */
async function standIn(body: string, offsetMs = 0): Promise<string> {
  const server = createServer((_req, res) => {
    res.writeHead(200, {
      'content-type': 'application/json',
      date: new Date(Date.now() + offsetMs).toUTCString(),
    });
    res.end(body);
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

/** The environment of an ECS task with a task role, in us-east-1, whose Metering endpoint is `endpoint`. */
async function ecsTask(zone = 'us-east-1a'): Promise<Record<string, string>> {
  const metadata = await standIn(JSON.stringify({ TaskARN: 'arn:aws:ecs:task/1', AvailabilityZone: zone }));
  return {
    ECS_CONTAINER_METADATA_URI_V4: `${metadata}/v4/c1`,
    AWS_CONTAINER_CREDENTIALS_RELATIVE_URI: '/v2/credentials/abc',
    AWS_REGION: 'us-east-1',
  };
}

const codes = (d: Diagnosis): string[] => d.findings.map((f) => f.code);

describe('credentialSource', () => {
  const home = (): string => dirs.make();

  it('follows the default chain: static keys, shared config, IRSA, task role, Pod Identity, instance role', () => {
    expect(credentialSource({ AWS_ACCESS_KEY_ID: 'AKIA', AWS_SECRET_ACCESS_KEY: 's' }, home())).toBe(
      'static-keys',
    );
    // A key id alone is not taken (the SDK needs the secret too), nor keys with AWS_PROFILE set.
    expect(credentialSource({ AWS_ACCESS_KEY_ID: 'AKIA' }, home())).toBe('instance-role');
    const withConfig = home();
    mkdirSync(join(withConfig, '.aws'));
    writeFileSync(join(withConfig, '.aws', 'config'), '[default]\nregion = us-east-1\n');
    expect(
      credentialSource(
        { AWS_ACCESS_KEY_ID: 'AKIA', AWS_SECRET_ACCESS_KEY: 's', AWS_PROFILE: 'p' },
        withConfig,
      ),
    ).toBe('shared-config');
    // A config file alone (a Region) leaves the chain to IRSA, as does a profile with no file to hold it.
    expect(credentialSource({ AWS_ROLE_ARN: 'arn', AWS_WEB_IDENTITY_TOKEN_FILE: '/t' }, withConfig)).toBe(
      'irsa',
    );
    expect(
      credentialSource({ AWS_PROFILE: 'p', AWS_ROLE_ARN: 'arn', AWS_WEB_IDENTITY_TOKEN_FILE: '/t' }, home()),
    ).toBe('irsa');
    const withFile = home();
    mkdirSync(join(withFile, '.aws'));
    writeFileSync(join(withFile, '.aws', 'credentials'), '[default]\n');
    expect(credentialSource({ AWS_ROLE_ARN: 'arn', AWS_WEB_IDENTITY_TOKEN_FILE: '/t' }, withFile)).toBe(
      'shared-config',
    );
    expect(credentialSource({ AWS_ROLE_ARN: 'arn', AWS_WEB_IDENTITY_TOKEN_FILE: '/t' }, home())).toBe('irsa');
    // With both, IRSA wins over Pod Identity, as the SDK's chain does.
    expect(
      credentialSource(
        {
          AWS_ROLE_ARN: 'arn',
          AWS_WEB_IDENTITY_TOKEN_FILE: '/t',
          AWS_CONTAINER_CREDENTIALS_FULL_URI: 'http://169.254.170.23/v1/credentials',
        },
        home(),
      ),
    ).toBe('irsa');
    expect(credentialSource({ AWS_CONTAINER_CREDENTIALS_RELATIVE_URI: '/v2/x' }, home())).toBe(
      'ecs-task-role',
    );
    expect(
      credentialSource(
        { AWS_CONTAINER_CREDENTIALS_FULL_URI: 'http://169.254.170.23/v1/credentials' },
        home(),
      ),
    ).toBe('eks-pod-identity');
    expect(
      credentialSource(
        { AWS_CONTAINER_CREDENTIALS_FULL_URI: 'http://[fd00:ec2::23]/v1/credentials' },
        home(),
      ),
    ).toBe('eks-pod-identity');
    expect(credentialSource({ AWS_CONTAINER_CREDENTIALS_FULL_URI: 'http://127.0.0.1:9/c' }, home())).toBe(
      'container-endpoint',
    );
    expect(credentialSource({}, home())).toBe('instance-role');
    expect(credentialSource({ AWS_EC2_METADATA_DISABLED: 'true' }, home())).toBe('none');
  });
});

describe('diagnose', () => {
  it('finds nothing wrong with an ECS task that has its role, its Region and a route to a true clock', async () => {
    const env = await ecsTask();
    const endpoint = await standIn('{}');
    // The endpoint override is how a test points it at a stand-in; it is itself a finding.
    const d = await diagnose(
      { ...env, AWS_ENDPOINT_URL_MARKETPLACE_METERING: endpoint },
      { homeDir: dirs.make() },
    );
    expect(d).toMatchObject({
      platform: { platform: 'ecs', taskArn: 'arn:aws:ecs:task/1', availabilityZone: 'us-east-1a' },
      credentials: 'ecs-task-role',
      region: 'us-east-1',
      endpoint,
    });
    expect(codes(d)).toEqual(['DOCTOR_ENDPOINT_OVERRIDE']);
    expect(Math.abs(d.clockOffsetMs!)).toBeLessThan(5000);
  });

  it.each([
    [
      { AWS_ACCESS_KEY_ID: 'AKIA', AWS_SECRET_ACCESS_KEY: 's' },
      'DOCTOR_STATIC_KEYS',
      /remove AWS_ACCESS_KEY_ID/,
    ],
    [
      {
        AWS_CONTAINER_CREDENTIALS_FULL_URI: 'http://169.254.170.23/v1/credentials',
        AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE:
          '/var/run/secrets/pods.eks.amazonaws.com/serviceaccount/token',
      },
      'DOCTOR_POD_IDENTITY',
      /delete the pod identity association.*eks\.amazonaws\.com\/role-arn.*task-role-policy\.json/,
    ],
    [{}, 'DOCTOR_INSTANCE_ROLE', /IRSA \(annotation eks\.amazonaws\.com\/role-arn/],
    [{ AWS_EC2_METADATA_DISABLED: 'true' }, 'DOCTOR_NO_CREDENTIALS', /IRSA/],
  ])('on Kubernetes, names %o as %s with its fix', async (credentials, code, fix) => {
    const endpoint = await standIn('{}');
    const d = await diagnose(
      {
        KUBERNETES_SERVICE_HOST: '10.0.0.1',
        AWS_REGION: 'eu-west-1',
        AWS_ENDPOINT_URL_MARKETPLACE_METERING: endpoint,
        ...credentials,
      },
      { homeDir: dirs.make(), pod: { namespace: 'shop', name: 'app-0' } },
    );
    expect(d.platform).toMatchObject({ platform: 'kubernetes', podName: 'app-0' });
    expect(codes(d)).toEqual([code, 'DOCTOR_ENDPOINT_OVERRIDE']);
    expect(d.findings[0]).toMatchObject({ severity: 'error', fix: expect.stringMatching(fix) as unknown });
  });

  it('names a credentials file in the image, which would win over IRSA', async () => {
    const home = dirs.make();
    mkdirSync(join(home, '.aws'));
    writeFileSync(join(home, '.aws', 'credentials'), '[default]\n');
    const endpoint = await standIn('{}');
    const d = await diagnose(
      {
        KUBERNETES_SERVICE_HOST: '10.0.0.1',
        AWS_REGION: 'eu-west-1',
        AWS_ROLE_ARN: 'arn:aws:iam::111122223333:role/metering',
        AWS_WEB_IDENTITY_TOKEN_FILE: '/var/run/secrets/eks.amazonaws.com/serviceaccount/token',
        AWS_ENDPOINT_URL_MARKETPLACE_METERING: endpoint,
      },
      { homeDir: home },
    );
    expect(d.credentials).toBe('shared-config');
    expect(d.findings[0]).toMatchObject({
      code: 'DOCTOR_SHARED_CONFIG',
      fix: expect.stringMatching(/~\/\.aws/) as unknown,
    });
  });

  it('never rejects, and never shows the user and password of an endpoint URL', async () => {
    const env = await ecsTask();
    const bad = await diagnose({ ...env, AWS_ENDPOINT_URL: 'not a url' }, { homeDir: dirs.make() });
    expect(codes(bad)).toEqual(['DOCTOR_ENDPOINT_OVERRIDE', 'DOCTOR_NO_ROUTE']);
    const secret = await diagnose(
      { ...env, AWS_ENDPOINT_URL: 'http://user:hunter2@127.0.0.1:1' },
      { homeDir: dirs.make(), timeoutMs: 500 },
    );
    expect(JSON.stringify(secret)).not.toContain('hunter2');
  });

  it('names the task role as the fix on ECS, and warns of a credential endpoint of another kind', async () => {
    const env = await ecsTask();
    const endpoint = await standIn('{}');
    const base = { ...env, AWS_ENDPOINT_URL_MARKETPLACE_METERING: endpoint };
    delete (base as Record<string, string | undefined>)['AWS_CONTAINER_CREDENTIALS_RELATIVE_URI'];
    const noRole = await diagnose(base, { homeDir: dirs.make() });
    expect(noRole.findings[0]).toMatchObject({
      code: 'DOCTOR_INSTANCE_ROLE',
      fix: expect.stringMatching(/taskRoleArn/) as unknown,
    });
    const custom = await diagnose(
      { ...base, AWS_CONTAINER_CREDENTIALS_FULL_URI: 'http://127.0.0.1:9/creds' },
      { homeDir: dirs.make() },
    );
    expect(custom.findings[0]).toMatchObject({ code: 'DOCTOR_CONTAINER_ENDPOINT', severity: 'warning' });
  });

  it('finds a missing Region, and one other than the task’s', async () => {
    const env = await ecsTask('eu-central-1b');
    const missing = await diagnose(
      { ...env, AWS_REGION: '', AWS_DEFAULT_REGION: 'eu-central-1' },
      { homeDir: dirs.make() },
    );
    expect(codes(missing)).toEqual(['DOCTOR_NO_REGION']);
    expect(missing.findings[0].problem).toContain('the SDK does not read AWS_DEFAULT_REGION');
    expect(missing.findings[0].fix).toContain('(eu-central-1)');
    expect(missing.endpoint).toBeUndefined();
    const endpoint = await standIn('{}');
    const other = await diagnose(
      { ...env, AWS_ENDPOINT_URL_MARKETPLACE_METERING: endpoint },
      { homeDir: dirs.make() },
    );
    expect(codes(other)).toEqual(['DOCTOR_REGION_MISMATCH', 'DOCTOR_ENDPOINT_OVERRIDE']);
    expect(other.findings[0].fix).toContain('AWS_REGION=eu-central-1');
  });

  it('finds no route to the endpoint', async () => {
    const env = await ecsTask();
    const d = await diagnose(
      { ...env, AWS_ENDPOINT_URL_MARKETPLACE_METERING: 'http://127.0.0.1:1' },
      { homeDir: dirs.make(), timeoutMs: 1000 },
    );
    expect(codes(d)).toEqual(['DOCTOR_ENDPOINT_OVERRIDE', 'DOCTOR_NO_ROUTE']);
    expect(d.findings[1].problem).toMatch(/ECONNREFUSED/);
    expect(d.findings[1].fix).toContain('com.amazonaws.us-east-1.metering.marketplace');
  });

  it('finds a clock more than five minutes off the endpoint’s, either way', async () => {
    const env = await ecsTask();
    for (const [offsetMs, word] of [
      [-10 * 60_000, 'ahead of'],
      [7 * 60_000, 'behind'],
    ] as const) {
      const endpoint = await standIn('{}', offsetMs);
      const d = await diagnose({ ...env, AWS_ENDPOINT_URL: endpoint }, { homeDir: dirs.make() });
      expect(codes(d)).toEqual(['DOCTOR_ENDPOINT_OVERRIDE', 'DOCTOR_CLOCK_OFF']);
      expect(d.findings[0].problem).toContain('AWS_ENDPOINT_URL=');
      expect(d.findings[1].problem).toContain(word);
    }
    const close = await standIn('{}', 60_000);
    expect(codes(await diagnose({ ...env, AWS_ENDPOINT_URL: close }, { homeDir: dirs.make() }))).toEqual([
      'DOCTOR_ENDPOINT_OVERRIDE',
    ]);
  });
});
