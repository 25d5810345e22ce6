/**
 * scripts/kube-api.mjs as a seller runs it, a real child process reading manifests on stdin: what Kubernetes
 * accepts passes (numeric quantities, null fields), what it refuses fails with the field's path, custom resources are
 * skipped, and input that is not YAML or holds nothing fails instead of passing as "valid".
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { loadKubeApi } from '../helpers/kube.js';

const SCRIPT = fileURLToPath(new URL('../../scripts/kube-api.mjs', import.meta.url));

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

function kubeApi(args: readonly string[], stdin: string): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [SCRIPT, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(stdin);
  });
}

const manifests = (...objects: object[]): string => objects.map((o) => stringify(o)).join('---\n');

const pod = (container: object, volume: object = { name: 'v', emptyDir: {} }): object => ({
  apiVersion: 'v1',
  kind: 'Pod',
  metadata: { name: 'p' },
  spec: { containers: [{ name: 'app', image: 'example/app', ...container }], volumes: [volume] },
});

describe('scripts/kube-api.mjs on the command line', () => {
  beforeAll(async () => {
    await loadKubeApi('1.32'); // fetched once, before the child processes read the cache
  });

  it('passes what Kubernetes accepts: numeric quantities and null fields', async () => {
    const run = await kubeApi(
      ['1.32'],
      manifests(
        pod(
          { resources: { limits: { cpu: 1, memory: '512Mi' } }, command: null },
          { name: 'v', emptyDir: { sizeLimit: 1024 } },
        ),
      ),
    );

    expect(run.stderr).toBe('');
    expect(run.stdout).toBe('1.32 Pod p: valid\n');
    expect(run.code).toBe(0);
  });

  it('fails on a field, kind or value the version refuses, naming each', async () => {
    const run = await kubeApi(
      ['1.32'],
      manifests(pod({ resources: { limits: { cpu: true } }, restartPolicyRules: [] }), {
        apiVersion: 'batch/v1',
        kind: 'Deployment',
        metadata: { name: 'd' },
      }),
    );

    expect(run.stdout.split('\n').filter(Boolean)).toEqual([
      '1.32 Pod p: spec.containers[0].resources.limits["cpu"]: must be a quantity (a string or a number)',
      '1.32 Pod p: spec.containers[0].restartPolicyRules: unknown field (not in V1Container of Kubernetes 1.32)',
      '1.32 Deployment d: batch/v1 Deployment is not in the Kubernetes 1.32 API',
    ]);
    expect(run.code).toBe(1);
  });

  it('skips custom resources, also in a *.k8s.io group, and checks the rest', async () => {
    const run = await kubeApi(
      ['1.32'],
      manifests(
        { apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'r' } },
        { apiVersion: 'monitoring.coreos.com/v1', kind: 'PodMonitor', metadata: { name: 'm' } },
        pod({}),
      ),
    );

    expect(run.stdout).toBe(
      '1.32 HTTPRoute r: skipped (gateway.networking.k8s.io/v1 is not a built-in API group)\n' +
        '1.32 PodMonitor m: skipped (monitoring.coreos.com/v1 is not a built-in API group)\n' +
        '1.32 Pod p: valid\n',
    );
    expect(run.code).toBe(0);
  });

  it('fails on a kind of a group Kubernetes removed, instead of skipping it as a custom resource', async () => {
    const run = await kubeApi(
      ['1.32'],
      manifests({ apiVersion: 'extensions/v1beta1', kind: 'Deployment', metadata: { name: 'd' } }),
    );

    expect(run.stdout).toBe(
      '1.32 Deployment d: extensions/v1beta1 Deployment is not in the Kubernetes 1.32 API\n',
    );
    expect(run.code).toBe(1);
  });

  it('fails on input that is not YAML, has a key twice, or holds no object', async () => {
    const broken = await kubeApi(['1.32'], 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x\n');
    const twice = await kubeApi(['1.32'], 'apiVersion: v1\nkind: ConfigMap\ndata: {}\ndata: {}\n');
    const empty = await kubeApi(['1.32'], '');

    expect(broken.code).toBe(1);
    expect(broken.stderr).toContain('kube-api: invalid YAML');
    expect(twice.code).toBe(1);
    expect(twice.stderr).toContain('Map keys must be unique');
    expect(empty.code).toBe(1);
    expect(empty.stderr).toContain('no objects on stdin');
    expect(`${broken.stdout}${twice.stdout}${empty.stdout}`).toBe('');
  });

  it('refuses a version it has no API table for (exit 2)', async () => {
    const run = await kubeApi(['1.31'], manifests(pod({})));

    expect(run.code).toBe(2);
    expect(run.stderr).toBe('kube-api: unknown version 1.31; known: 1.32, 1.33, 1.34, 1.36\n');
  });
});
