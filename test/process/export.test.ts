/**
 * `metering-sidecar export` as a seller's finance team runs it: on the ledger of a stopped sidecar and beside a
 * running one, with the task or pod identity the platform told, as CSV, JSON lines and the daily rollup.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cli, jsonLines } from '../helpers/cli.js';
import { processTestScope } from '../helpers/scope.js';
import type { SidecarProcess } from '../helpers/sidecarProcess.js';

const { cleanups, tempDir, localSidecar } = processTestScope('metering-export-');

/** A local sidecar on `dir`, ready; stopped by the test or at cleanup. */
async function readySidecar(dir: string, extra: Record<string, string> = {}): Promise<SidecarProcess> {
  const sidecar = localSidecar(dir, extra);
  await sidecar.ready();
  return sidecar;
}

describe('metering-sidecar export', () => {
  it('exports what a pod sent, with the pod’s identity and AWS’s record ids, after it stopped and beside its successor', async () => {
    // Prepare: a pod meters two dimensions and stops (its final flush sends them).
    const dir = tempDir();
    const pod = {
      METERING_POD_NAMESPACE: 'shop',
      METERING_POD_NAME: 'app-5c7d-abcde',
      METERING_POD_UID: '6f1e0c2a-uid',
    };
    const first = await readySidecar(dir, pod);
    const socket = { METERING_SOCKET: join(dir, 'metering.sock') };
    expect((await cli(['report', 'requests', '5', '--tag', 'tenant=acme'], socket)).code).toBe(0);
    expect((await cli(['report', 'gb', '7'], socket)).code).toBe(0);
    expect((await first.stop('SIGTERM')).code).toBe(0);
    const metered = new Map(
      first
        .logLines()
        .filter((l) => l['msg'] === 'usage metered')
        .map((l) => [l['dimension'], l['meteringRecordId']]),
    );
    expect(metered.size).toBe(2);
    const state = { METERING_STATE_DIR: join(dir, 'state') };

    // Act: export the stopped sidecar's ledger, then again while a new sidecar runs on it.
    const stopped = await cli(['export', '--format', 'jsonl'], state);
    const csv = await cli(['export'], state);
    const daily = await cli(['export', '--daily'], state);
    const second = await readySidecar(dir);
    const running = await cli(['export', '--format', 'jsonl'], state);
    // A dimension not sealed in this hour yet: `requests` was, so its usage would wait for the next hour.
    const afterExport = await cli(['report', 'api', '1'], socket);
    expect((await second.stop('SIGTERM')).code).toBe(0);
    const later = await cli(['export', '--format', 'jsonl'], state);

    // Assess
    expect(stopped.code, stopped.stderr).toBe(0);
    expect(daily.code, daily.stderr).toBe(0);
    const rows = jsonLines(stopped.stdout);
    expect(rows.map((r) => [r['dimension'], r['state'], r['quantity']])).toEqual([
      ['gb', 'sent', 7],
      ['requests', 'sent', 5],
    ]);
    for (const row of rows) {
      expect(row).toMatchObject({
        source: 'ledger',
        metering_record_id: metered.get(row['dimension']),
        platform: 'kubernetes',
        pod_namespace: 'shop',
        pod_name: 'app-5c7d-abcde',
        pod_uid: '6f1e0c2a-uid',
        attempts: 1,
      });
    }
    expect(rows[1]['allocations']).toEqual([{ tags: { tenant: 'acme' }, quantity: 5 }]);
    expect(csv.code).toBe(0);
    const csvLines = csv.stdout.split('\r\n').filter((l) => l !== '');
    expect(csvLines[0]).toMatch(/^ledger_id,source,dimension,hour,timestamp,quantity,state,/);
    expect(csvLines).toHaveLength(3);
    const today = new Date().toISOString().slice(0, 10);
    expect(daily.stdout, `exit ${daily.code}: ${daily.stderr}`).toBe(
      `usage_date,dimension_key,usage_quantity,records,uncertain_quantity,pending_quantity,dry_run_quantity\r\n` +
        `${today},gb,7,1,0,0,0\r\n${today},requests,5,1,0,0,0\r\n`,
    );
    // Beside a running sidecar: the same records, and the sidecar goes on taking usage.
    expect(running.code).toBe(0);
    expect(jsonLines(running.stdout)).toEqual(rows);
    expect(afterExport.code).toBe(0);
    // The successor's record sits beside the first pod's, each with its own identity.
    const all = jsonLines(later.stdout);
    expect(all).toHaveLength(3);
    const successor = all.find((r) => r['pod_name'] === null)!;
    expect(successor).toMatchObject({ dimension: 'api', quantity: 1, state: 'sent', platform: 'other' });
    expect(successor['ledger_id']).toBe(rows[0]['ledger_id']);
  });

  it('names the ECS task that sealed each record, from the task metadata endpoint', async () => {
    const taskArn = 'arn:aws:ecs:us-east-1:111122223333:task/shop/0123456789abcdef';
    const metadata = createServer((req, res) => {
      res.writeHead(req.url === '/v4/container-1/task' ? 200 : 404, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ TaskARN: taskArn, Cluster: 'shop', LaunchType: 'FARGATE' }));
    });
    await new Promise<void>((resolve) => metadata.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => new Promise<void>((resolve) => metadata.close(() => resolve())));
    const uri = `http://127.0.0.1:${(metadata.address() as AddressInfo).port}/v4/container-1`;
    const dir = tempDir();
    const sidecar = await readySidecar(dir, { ECS_CONTAINER_METADATA_URI_V4: uri });
    expect(
      (await cli(['report', 'requests', '3'], { METERING_SOCKET: join(dir, 'metering.sock') })).code,
    ).toBe(0);
    expect((await sidecar.stop('SIGTERM')).code).toBe(0);

    const result = await cli(['export', '--format', 'jsonl', '--state-dir', join(dir, 'state')], {});
    expect(jsonLines(result.stdout)).toEqual([
      expect.objectContaining({
        dimension: 'requests',
        state: 'sent',
        platform: 'ecs',
        task_arn: taskArn,
        pod_name: null,
      }),
    ]);
  });

  it('refuses bad options with exit 64 and a missing ledger with exit 78, each with a clear message', async () => {
    const dir = tempDir();
    const badFormat = await cli(['export', '--format', 'xml'], { METERING_STATE_DIR: dir });
    expect(badFormat).toMatchObject({ code: 64, stdout: '' });
    expect(badFormat.stderr).toContain('--format must be csv or jsonl, got "xml"');
    const badTime = await cli(['export', '--since', '2026-11-01T10:00'], { METERING_STATE_DIR: dir });
    expect(badTime.code).toBe(64);
    expect(badTime.stderr).toContain('--since takes an ISO 8601 date (2026-11-01) or a time with its zone');
    const noSuchDay = await cli(['export', '--until', '2026-02-30'], { METERING_STATE_DIR: dir });
    expect(noSuchDay.code).toBe(64);
    expect(noSuchDay.stderr).toContain('got "2026-02-30"');
    const backwards = await cli(['export', '--since', '2026-11-02', '--until', '2026-11-01'], {
      METERING_STATE_DIR: dir,
    });
    expect(backwards.code).toBe(64);
    expect(backwards.stderr).toContain('--since must be before --until');
    const twoViews = await cli(['export', '--daily', '--remainders'], { METERING_STATE_DIR: dir });
    expect(twoViews.code).toBe(64);
    expect(twoViews.stderr).toContain('choose one of --daily, --cancellations and --remainders');
    const missing = await cli(['export'], { METERING_STATE_DIR: join(dir, 'none') });
    expect(missing).toMatchObject({ code: 78, stdout: '' });
    expect(missing.stderr).toContain(`there is no ledger at ${join(dir, 'none', 'ledger.db')}`);
  });
});
