import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { platformIdentity } from '../../src/platform.js';

const servers: Server[] = [];

afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise((resolve) => s.close(resolve))));
});

/** A stand-in for the ECS task metadata endpoint (v4): `GET {uri}/task`. */
async function metadataEndpoint(
  answer: (path: string) => { status: number; body: string } | 'hang',
): Promise<string> {
  const server = createServer((req, res) => {
    const a = answer(req.url ?? '');
    if (a === 'hang') return;
    res.writeHead(a.status, { 'content-type': 'application/json' });
    res.end(a.body);
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}/v4/abc-123`;
}

const TASK = {
  Cluster: 'arn:aws:ecs:us-east-1:111122223333:cluster/shop',
  TaskARN: 'arn:aws:ecs:us-east-1:111122223333:task/shop/0123456789abcdef',
  LaunchType: 'FARGATE',
  Family: 'product',
};

describe('platformIdentity', () => {
  it('reads the task ARN, cluster and launch type from the ECS task metadata endpoint', async () => {
    const paths: string[] = [];
    const uri = await metadataEndpoint((path) => {
      paths.push(path);
      return { status: 200, body: JSON.stringify(TASK) };
    });
    const result = await platformIdentity({ ECS_CONTAINER_METADATA_URI_V4: uri }, {}, 'ip-10-0-0-1');
    expect(paths).toEqual(['/v4/abc-123/task']);
    expect(result).toEqual({
      identity: {
        platform: 'ecs',
        taskArn: TASK.TaskARN,
        cluster: TASK.Cluster,
        launchType: 'FARGATE',
        host: 'ip-10-0-0-1',
      },
    });
  });

  it('says why when the metadata endpoint fails, and still names the platform', async () => {
    const notFound = await metadataEndpoint(() => ({ status: 404, body: '{}' }));
    const failed = await platformIdentity({ ECS_CONTAINER_METADATA_URI_V4: notFound }, {}, 'h');
    expect(failed.identity).toEqual({ platform: 'ecs', host: 'h' });
    expect(failed.problem).toMatch(/did not answer \(HTTP 404\).*without the task ARN/);
    const garbage = await metadataEndpoint(() => ({ status: 200, body: 'not json' }));
    expect((await platformIdentity({ ECS_CONTAINER_METADATA_URI_V4: garbage }, {}, 'h')).problem).toMatch(
      /not JSON/,
    );
    const refused = 'http://127.0.0.1:1/v4/x';
    expect((await platformIdentity({ ECS_CONTAINER_METADATA_URI_V4: refused }, {}, 'h')).problem).toMatch(
      /ECONNREFUSED/,
    );
  });

  it('gives up on a metadata endpoint that does not answer within two seconds', async () => {
    const hanging = await metadataEndpoint(() => 'hang');
    const started = Date.now();
    const result = await platformIdentity({ ECS_CONTAINER_METADATA_URI_V4: hanging }, {}, 'h');
    expect(result.problem).toMatch(/no answer in 2000 ms/);
    expect(Date.now() - started).toBeGreaterThanOrEqual(1900);
  });

  it('gives up within two seconds on an endpoint that trickles its answer', async () => {
    const server = createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write('{"TaskARN":');
      const drip = setInterval(() => res.write(' '), 200);
      res.on('close', () => clearInterval(drip));
    });
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const uri = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v4/x`;
    const started = Date.now();
    const result = await platformIdentity({ ECS_CONTAINER_METADATA_URI_V4: uri }, {}, 'h');
    expect(result.problem).toMatch(/no answer in 2000 ms/);
    expect(Date.now() - started).toBeLessThan(3000);
  });

  it('names the pod from the downward API on Kubernetes', async () => {
    expect(
      await platformIdentity(
        { KUBERNETES_SERVICE_HOST: '10.96.0.1' },
        { namespace: 'shop', name: 'app-0', uid: '1f2e-uid' },
        'app-0',
      ),
    ).toEqual({
      identity: {
        platform: 'kubernetes',
        podNamespace: 'shop',
        podName: 'app-0',
        podUid: '1f2e-uid',
        host: 'app-0',
      },
    });
    // Inside a cluster without the chart's variables, the platform is still known.
    expect(await platformIdentity({ KUBERNETES_SERVICE_HOST: '10.96.0.1' }, {}, 'p')).toEqual({
      identity: { platform: 'kubernetes', host: 'p' },
    });
  });

  it('is "other" elsewhere', async () => {
    expect(await platformIdentity({}, {}, 'laptop')).toEqual({
      identity: { platform: 'other', host: 'laptop' },
    });
  });
});
