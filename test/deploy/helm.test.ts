/**
 * The Helm chart (helm/metering-sidecar) rendered by the real, pinned helm binary (scripts/helm.mjs) for the
 * lowest Kubernetes version it supports, with several value sets. Every rendered object is validated against the
 * Kubernetes schemas (kubernetes-models) or, for prometheus-operator kinds, by hand, and again strictly for each
 * Kubernetes version EKS supports (scripts/kube-api.mjs: unknown fields, required fields, types); then the deployment shape of
 * docs/design.md is asserted: a native sidecar gated by a startup probe on /readyz, the app wired to the socket, a grace
 * period longer than the sidecar's shutdown, IRSA, restricted security, emptyDir volumes, and only environment
 * variables the sidecar reads.
 */
import { generateKeyPairSync } from 'node:crypto';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { ENVIRONMENT_VARIABLES, loadConfig } from '../../src/config.js';
import {
  DEFAULT_IDEMPOTENCY_KEYS_MAX,
  DEFAULT_RETENTION_DAYS,
  IDEMPOTENCY_KEY_MAX_BYTES,
} from '../../src/ledger/keys.js';
import {
  CHART_DIR,
  KUBE_VERSION,
  at,
  ensureHelm,
  findOne,
  helm,
  helmWithValues,
  isRecord,
  listAt,
  parseManifests,
  loadKubeApi,
  render,
  strictErrors,
  strictKubeVersions,
  validateObject,
  type KubeApi,
  type KubeObject,
} from '../helpers/kube.js';

const ROLE_ARN = 'arn:aws:iam::123456789012:role/acme-metering';
const PRODUCT_CODE = 'cqcvf9f0ugw8rkbgmf1c9dxyz';
const MONITORING_API = 'monitoring.coreos.com/v1';
const REPO_ROOT = new URL('../../', import.meta.url);

/** The least a seller sets: product code, IRSA role, product image. */
const MINIMAL = {
  sidecar: { productCode: PRODUCT_CODE, dimensions: ['requests'] },
  serviceAccount: { roleArn: ROLE_ARN },
  app: { image: { repository: 'registry.example.com/acme/product', tag: '2.3.4' } },
};

const PUBLIC_KEY_PEM = generateKeyPairSync('rsa', { modulusLength: 2048 })
  .publicKey.export({ type: 'spki', format: 'pem' })
  .toString();

/** Every value of values.yaml set to something other than its default (checked by a test below). */
const FULL = {
  nameOverride: 'acme',
  fullnameOverride: 'acme-product',
  commonLabels: { team: 'billing' },
  app: {
    enabled: true,
    name: 'product',
    replicas: 3,
    image: {
      repository: 'registry.example.com/acme/product',
      tag: '2.3.4',
      digest: `sha256:${'a'.repeat(64)}`,
      pullPolicy: 'Always',
    },
    command: ['/usr/bin/product'],
    args: ['serve', '--port=8080'],
    env: [{ name: 'PRODUCT_MODE', value: 'production' }],
    envFrom: [{ configMapRef: { name: 'product-config' } }],
    ports: [{ name: 'http', containerPort: 8080, protocol: 'TCP' }],
    resources: { requests: { cpu: '250m', memory: '256Mi' }, limits: { memory: '512Mi' } },
    livenessProbe: { httpGet: { path: '/live', port: 'http' } },
    readinessProbe: { httpGet: { path: '/ready', port: 'http' } },
    startupProbe: { httpGet: { path: '/ready', port: 'http' }, failureThreshold: 30 },
    securityContext: {
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: false,
      capabilities: { drop: ['ALL'] },
    },
    volumeMounts: [{ name: 'tmp', mountPath: '/tmp' }],
    volumes: [{ name: 'tmp', emptyDir: {} }],
    strategy: { type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 0, maxSurge: 1 } },
    service: {
      enabled: true,
      type: 'LoadBalancer',
      ports: [{ name: 'http', port: 80, targetPort: 'http' }],
      annotations: { 'service.beta.kubernetes.io/aws-load-balancer-type': 'external' },
    },
  },
  pod: {
    annotations: { 'example.com/owner': 'acme' },
    labels: { tier: 'product' },
    securityContext: {
      runAsNonRoot: true,
      runAsUser: 10001,
      runAsGroup: 10001,
      fsGroup: 10001,
      fsGroupChangePolicy: 'OnRootMismatch',
      seccompProfile: { type: 'RuntimeDefault' },
    },
    terminationGracePeriodSeconds: 120,
    terminationGraceMarginSeconds: 45,
    automountServiceAccountToken: true,
    imagePullSecrets: [{ name: 'registry-credentials' }],
    nodeSelector: { 'kubernetes.io/arch': 'amd64' },
    tolerations: [{ key: 'dedicated', operator: 'Equal', value: 'product', effect: 'NoSchedule' }],
    affinity: {
      nodeAffinity: {
        requiredDuringSchedulingIgnoredDuringExecution: {
          nodeSelectorTerms: [
            { matchExpressions: [{ key: 'kubernetes.io/os', operator: 'In', values: ['linux'] }] },
          ],
        },
      },
    },
    topologySpreadConstraints: [
      {
        maxSkew: 1,
        topologyKey: 'topology.kubernetes.io/zone',
        whenUnsatisfiable: 'ScheduleAnyway',
        labelSelector: { matchLabels: { tier: 'product' } },
      },
    ],
    priorityClassName: 'product-critical',
  },
  sidecar: {
    image: {
      repository: '709825985650.dkr.ecr.us-east-1.amazonaws.com/acme/metering-sidecar',
      tag: '0.1.1',
      digest: `sha256:${'b'.repeat(64)}`,
      pullPolicy: 'Always',
    },
    productCode: PRODUCT_CODE,
    entitlement: 'dry-run',
    publicKeyVersion: 2,
    publicKey: { existingSecret: 'acme-product-key', key: 'key.pem', pem: '' },
    dimensions: ['requests', 'gb_stored'],
    unitDivisors: { gb_stored: 1073741824 },
    entitlementRetrySeconds: 600,
    schedule: '*/15 * * * *',
    sendJitterSeconds: 60,
    shutdownTimeoutSeconds: 40,
    idempotencyKeysMax: 300000,
    retentionDays: 60,
    logLevel: 'debug',
    dryRun: true,
    zeroUsage: true,
    listen: '127.0.0.1:18181',
    adminPort: 19181,
    region: 'eu-west-1',
    resources: { requests: { cpu: '50m', memory: '128Mi' }, limits: { memory: '300Mi' } },
    securityContext: {
      runAsNonRoot: true,
      runAsUser: 10001,
      runAsGroup: 10001,
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      capabilities: { drop: ['ALL'] },
      seccompProfile: { type: 'RuntimeDefault' },
    },
    startupProbe: { periodSeconds: 5, failureThreshold: 200 },
    readinessProbe: { periodSeconds: 15, failureThreshold: 4 },
    livenessProbe: { periodSeconds: 20, failureThreshold: 5 },
  },
  volumes: {
    socket: { medium: '', sizeLimit: '2Mi' },
    state: { medium: 'Memory', sizeLimit: '512Mi' },
  },
  handoff: { existingClaim: 'acme-metering-handoff', subPath: 'acme/product', scanSeconds: 120 },
  serviceAccount: {
    create: true,
    name: 'acme-metering',
    roleArn: ROLE_ARN,
    annotations: { 'eks.amazonaws.com/sts-regional-endpoints': 'true' },
  },
  monitoring: {
    podMonitor: {
      enabled: true,
      interval: '60s',
      scrapeTimeout: '15s',
      labels: { release: 'kube-prometheus-stack' },
      selector: { matchLabels: { tier: 'product' } },
    },
    prometheusRule: { enabled: true, labels: { release: 'kube-prometheus-stack' } },
  },
};

/** Value sets that switch on one feature each over MINIMAL. */
const MONITORING = {
  ...MINIMAL,
  monitoring: { podMonitor: { enabled: true }, prometheusRule: { enabled: true } },
};
const OWN_SECRET = {
  ...MINIMAL,
  sidecar: { ...MINIMAL.sidecar, publicKey: { existingSecret: 'acme-product-key', key: 'product.pem' } },
};
const INLINE_KEY = {
  ...MINIMAL,
  sidecar: { ...MINIMAL.sidecar, publicKey: { pem: PUBLIC_KEY_PEM } },
};

const HANDOFF = { ...MINIMAL, handoff: { existingClaim: 'metering-handoff-efs' } };

const VALUE_SETS: Record<string, { values: object; apiVersions?: string[] }> = {
  minimal: { values: MINIMAL },
  full: { values: FULL, apiVersions: [MONITORING_API] },
  monitoring: { values: MONITORING, apiVersions: [MONITORING_API] },
  'own public key Secret': { values: OWN_SECRET },
  'inline public key': { values: INLINE_KEY },
  handoff: { values: HANDOFF },
};

type Container = Record<string, unknown>;

function podSpec(deployment: KubeObject): Record<string, unknown> {
  const spec = at(deployment, 'spec', 'template', 'spec');
  if (!isRecord(spec)) throw new Error('Deployment has no pod spec');
  return spec;
}

function sidecarOf(spec: unknown): Container {
  const sidecar = listAt(spec, 'initContainers').find((c) => c['name'] === 'metering-sidecar');
  if (!sidecar) throw new Error('no metering-sidecar init container');
  return sidecar;
}

/** Bytes of a Kubernetes quantity such as `256Mi` or `1G`. */
function quantityBytes(quantity: string): number {
  const match = /^(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?$/.exec(quantity);
  if (!match) throw new Error(`unexpected quantity ${quantity}`);
  const units: Record<string, number> = {
    Ki: 2 ** 10,
    Mi: 2 ** 20,
    Gi: 2 ** 30,
    Ti: 2 ** 40,
    k: 1e3,
    M: 1e6,
    G: 1e9,
    T: 1e12,
  };
  return Number(match[1]) * (match[2] === undefined ? 1 : units[match[2]]);
}

/**
 * A container's environment by name. A variable from the downward API reads as `fieldRef:` and its field path
 * (`fieldRef:metadata.name`); every other one must have a string value.
 */
function envOf(container: Container): Map<string, string> {
  const env = new Map<string, string>();
  for (const entry of listAt(container, 'env')) {
    expect(env.has(String(entry['name'])), `duplicate env ${String(entry['name'])}`).toBe(false);
    const fieldPath = at(entry, 'valueFrom', 'fieldRef', 'fieldPath');
    if (fieldPath !== undefined) {
      expect(typeof fieldPath, `env ${String(entry['name'])} has a field path`).toBe('string');
      env.set(String(entry['name']), `fieldRef:${fieldPath as string}`);
      continue;
    }
    expect(typeof entry['value'], `env ${String(entry['name'])} has a string value`).toBe('string');
    env.set(String(entry['name']), String(entry['value']));
  }
  return env;
}

/** Every leaf path of a values object (`sidecar.image.tag`); empty maps and lists count as leaves. */
function leafPaths(value: unknown, prefix = ''): string[] {
  if (!isRecord(value) || Object.keys(value).length === 0) return [prefix];
  return Object.entries(value).flatMap(([k, v]) => leafPaths(v, prefix ? `${prefix}.${k}` : k));
}

/** The alert rules of docs/operations.md, the source the PrometheusRule copies. */
function documentedAlertGroups(): unknown {
  const text = readFileSync(new URL('docs/operations.md', REPO_ROOT), 'utf8');
  const block = [...text.matchAll(/```yaml\n([\s\S]*?)```/g)]
    .map((m) => m[1])
    .find((b) => b.includes('kind: PrometheusRule'));
  if (block === undefined) throw new Error('docs/operations.md has no PrometheusRule block');
  return at(parse(block), 'spec', 'groups');
}

/** The first yaml code block of docs/deploy-eks.md that contains `marker`. */
function docExample(marker: string): string {
  const text = readFileSync(new URL('docs/deploy-eks.md', REPO_ROOT), 'utf8');
  const block = [...text.matchAll(/```yaml\n([\s\S]*?)```/g)]
    .map((m) => m[1])
    .find((b) => b.includes(marker));
  if (block === undefined) throw new Error(`docs/deploy-eks.md has no yaml example with ${marker}`);
  return block;
}

beforeAll(async () => {
  await ensureHelm(); // first run: npm pack of the pinned helm (tens of MB); offline afterwards
}, 180_000);

describe('helm chart metering-sidecar: lint and values schema', () => {
  it("defaults the idempotency-key bound to the sidecar's own default", () => {
    const values = parse(readFileSync(join(CHART_DIR, 'values.yaml'), 'utf8')) as unknown;
    expect(at(values, 'sidecar', 'idempotencyKeysMax')).toBe(DEFAULT_IDEMPOTENCY_KEYS_MAX);
  });

  it("defaults the retention of settled records to the sidecar's own default", () => {
    const values = parse(readFileSync(join(CHART_DIR, 'values.yaml'), 'utf8')) as unknown;
    expect(at(values, 'sidecar', 'retentionDays')).toBe(DEFAULT_RETENTION_DAYS);
  });

  it('passes helm lint --strict with a valid value set', async () => {
    const result = await helmWithValues('lint', MINIMAL);

    expect(result.stderr + result.stdout).not.toMatch(/\[(ERROR|WARNING)\]/);
    expect(result.code).toBe(0);
  });

  it('passes helm lint --strict with every value set', async () => {
    // helm lint takes no --api-versions, so the prometheus-operator objects are left to the template tests.
    const result = await helmWithValues('lint', { ...FULL, monitoring: { podMonitor: { enabled: false } } });

    expect(result.stdout).toContain('0 chart(s) failed');
    expect(result.code).toBe(0);
  });

  it('fails lint and template without a product code', async () => {
    const values = { ...MINIMAL, sidecar: {} };

    const lint = await helmWithValues('lint', values);
    const template = await helmWithValues('template', values);

    expect(lint.code).not.toBe(0);
    expect(lint.stdout + lint.stderr).toContain('productCode is required');
    expect(template.code).not.toBe(0);
    expect(template.stderr).toContain('productCode is required');
  });

  it('fails on a product code AWS would refuse', async () => {
    const result = await helmWithValues('template', { ...MINIMAL, sidecar: { productCode: 'bad code!' } });

    expect(result.code).not.toBe(0);
    expect(result.stderr).toContain('sidecar.productCode');
  });

  it('fails on an unknown key, at the top level and nested', async () => {
    const nested = await helmWithValues('template', {
      ...MINIMAL,
      sidecar: { ...MINIMAL.sidecar, productcode: 'typo' },
    });
    const top = await helmWithValues('template', { ...MINIMAL, sidecars: {} });

    expect(nested.code).not.toBe(0);
    expect(nested.stderr).toContain('Additional property productcode is not allowed');
    expect(top.code).not.toBe(0);
    expect(top.stderr).toContain('Additional property sidecars is not allowed');
  });

  it.each(['register-usage', 'dry-run'])(
    'requires serviceAccount.roleArn with entitlement %s',
    async (mode) => {
      const values = {
        app: MINIMAL.app,
        sidecar: { productCode: PRODUCT_CODE, entitlement: mode, dimensions: ['requests'] },
      };

      const lint = await helmWithValues('lint', values);
      const template = await helmWithValues('template', values);

      expect(lint.code).not.toBe(0);
      expect(lint.stdout + lint.stderr).toContain('serviceAccount.roleArn');
      expect(template.code).not.toBe(0);
      expect(template.stderr).toContain('serviceAccount.roleArn');
    },
  );

  it('needs no IAM role with entitlement none (free product, development)', async () => {
    const objects = await render({
      app: MINIMAL.app,
      sidecar: { ...MINIMAL.sidecar, entitlement: 'none' },
    });

    expect(at(findOne(objects, 'ServiceAccount'), 'metadata', 'annotations')).toBeUndefined();
  });

  it('rejects bad enums and values the sidecar would refuse at startup', async () => {
    const cases: [object, string][] = [
      [{ entitlement: 'register' }, 'sidecar.entitlement'],
      [{ logLevel: 'verbose' }, 'sidecar.logLevel'],
      [{ listen: '0.0.0.0:8181' }, 'sidecar.listen'],
      [{ shutdownTimeoutSeconds: 0 }, 'sidecar.shutdownTimeoutSeconds'],
      [{ sendJitterSeconds: '300' }, 'sidecar.sendJitterSeconds'],
      [{ entitlement: 'dry-run', dimensions: [] }, 'dimensions'],
      // Regression: without an allow-list a typo'd dimension was acknowledged, then lost.
      [{ dimensions: [] }, 'sidecar.dimensions is required'],
      [{ adminPort: 8181 }, 'sidecar.adminPort must differ'],
      [{ unitDivisors: { requests: 1 } }, 'sidecar.unitDivisors'],
      [{ unitDivisors: { requests: '1000' } }, 'sidecar.unitDivisors'],
    ];
    for (const [sidecar, message] of cases) {
      const result = await helmWithValues('template', {
        ...MINIMAL,
        sidecar: { ...MINIMAL.sidecar, ...sidecar },
      });

      expect(result.code, JSON.stringify(sidecar)).not.toBe(0);
      expect(result.stderr, JSON.stringify(sidecar)).toContain(message);
    }
  });

  it('refuses a grace period that would kill the sidecar before its final send', async () => {
    const result = await helmWithValues('template', {
      ...MINIMAL,
      pod: { terminationGracePeriodSeconds: 20 },
    });

    expect(result.code).not.toBe(0);
    expect(result.stderr).toContain('must be longer than sidecar.shutdownTimeoutSeconds');
  });

  it('refuses both an existing Secret and an inline public key', async () => {
    const result = await helmWithValues('template', {
      ...MINIMAL,
      sidecar: { ...MINIMAL.sidecar, publicKey: { existingSecret: 'k', pem: PUBLIC_KEY_PEM } },
    });

    expect(result.code).not.toBe(0);
    expect(result.stderr).toContain('set either existingSecret or pem, not both');
  });

  // An EKS add-on is rendered without a cluster: a .Capabilities switch would render differently there.
  it('renders the monitoring objects from the values alone, whatever APIs the cluster reports', async () => {
    const without = await render(MONITORING);
    const withApi = await render(MONITORING, { apiVersions: [MONITORING_API] });

    expect(without.map((o) => o['kind'])).toContain('PodMonitor');
    expect(without.map((o) => o['kind'])).toContain('PrometheusRule');
    expect(without).toEqual(withApi);
  });

  it('is acceptable as an EKS add-on: no hooks, lookup or .Capabilities, only the release name and namespace', () => {
    const templates = readdirSync(join(CHART_DIR, 'templates')).map((f) => ({
      file: f,
      text: readFileSync(join(CHART_DIR, 'templates', f), 'utf8'),
    }));
    const problems = templates.flatMap(({ file, text }) => [
      ...(text.includes('helm.sh/hook') ? [`${file}: a hook`] : []),
      ...(/\blookup\b/.test(text) ? [`${file}: lookup`] : []),
      ...(/\.Capabilities\b/.test(text) ? [`${file}: .Capabilities`] : []),
      ...[...text.matchAll(/\.Release\.(\w+)/g)]
        .map((m) => m[1])
        .filter((field) => field !== 'Name' && field !== 'Namespace')
        .map((field) => `${file}: .Release.${field}`),
    ]);
    const chart = parse(readFileSync(join(CHART_DIR, 'Chart.yaml'), 'utf8')) as {
      dependencies?: { repository?: string }[];
    };
    const remote = (chart.dependencies ?? []).filter((d) => !(d.repository ?? '').startsWith('file://'));

    expect(templates.length).toBeGreaterThan(3);
    expect(problems).toEqual([]);
    expect(remote).toEqual([]);
  });

  it('declares additionalProperties: false on every object it defines', () => {
    const schema: unknown = JSON.parse(readFileSync(join(CHART_DIR, 'values.schema.json'), 'utf8'));
    const loose: string[] = [];
    const walk = (node: unknown, path: string): void => {
      if (!isRecord(node) || !isRecord(node['properties'])) return;
      if (node['additionalProperties'] !== false) loose.push(path || '(root)');
      for (const [key, child] of Object.entries(node['properties']))
        walk(child, path ? `${path}.${key}` : key);
    };
    walk(schema, '');

    expect(schema).toMatchObject({
      $schema: 'http://json-schema.org/draft-07/schema#',
      additionalProperties: false,
    });
    expect(loose).toEqual([]);
  });

  it('has a full value set that sets every key of values.yaml', () => {
    const defaults: unknown = parse(readFileSync(join(CHART_DIR, 'values.yaml'), 'utf8'));
    const full = new Set(leafPaths(FULL));

    const missing = leafPaths(defaults).filter(
      (p) => ![...full].some((f) => f === p || f.startsWith(`${p}.`)),
    );

    expect(missing).toEqual([]);
  });
});

describe.each(Object.entries(VALUE_SETS))(
  'helm chart metering-sidecar rendered with %s values',
  (_name, set) => {
    let objects: KubeObject[];
    let deployment: KubeObject;
    let spec: Record<string, unknown>;
    let sidecar: Container;

    beforeAll(async () => {
      objects = await render(set.values, set.apiVersions ? { apiVersions: set.apiVersions } : {});
      deployment = findOne(objects, 'Deployment');
      spec = podSpec(deployment);
      sidecar = sidecarOf(spec);
    });

    it('renders only objects valid against the Kubernetes schemas', () => {
      expect(objects.length).toBeGreaterThan(0);
      expect(objects.flatMap(validateObject)).toEqual([]);
    });

    it('runs the sidecar as a native sidecar gated by a startup probe on /readyz', () => {
      const adminPort = Number(envOf(sidecar).get('METERING_ADMIN_LISTEN')?.split(':')[1]);
      const ports = listAt(sidecar, 'ports');

      expect(sidecar['restartPolicy']).toBe('Always');
      expect(ports).toContainEqual({ name: 'metering-admin', containerPort: adminPort, protocol: 'TCP' });
      for (const [probe, path] of [
        ['startupProbe', '/readyz'],
        ['readinessProbe', '/readyz'],
        ['livenessProbe', '/healthz'],
      ] as const) {
        expect(at(sidecar, probe, 'httpGet'), probe).toEqual({ path, port: 'metering-admin' });
      }
      expect(listAt(spec, 'containers').map((c) => c['name'])).not.toContain('metering-sidecar');
    });

    it('gives the startup probe time for entitlement to retry throttling', () => {
      const env = envOf(sidecar);
      const probe = at(sidecar, 'startupProbe') as { periodSeconds: number; failureThreshold: number };

      expect(probe.periodSeconds * probe.failureThreshold).toBeGreaterThanOrEqual(
        Number(env.get('METERING_ENTITLEMENT_RETRY_SECONDS')),
      );
    });

    it('mounts the socket volume in every app container and tells it where the socket is', () => {
      const socketMount = listAt(sidecar, 'volumeMounts').find((m) => m['mountPath'] === '/run/metering');
      const socket = envOf(sidecar).get('METERING_SOCKET');

      expect(socketMount).toBeDefined();
      expect(socket).toBe('/run/metering/metering.sock');
      for (const app of listAt(spec, 'containers')) {
        expect(listAt(app, 'volumeMounts')).toContainEqual({
          name: socketMount!['name'],
          mountPath: '/run/metering',
        });
        expect(listAt(app, 'env')).toContainEqual({ name: 'METERING_SOCKET', value: socket });
      }
    });

    it('lets the sidecar finish its shutdown send within the grace period', () => {
      const shutdownSeconds = Number(envOf(sidecar).get('METERING_SHUTDOWN_TIMEOUT_SECONDS'));

      expect(spec['terminationGracePeriodSeconds']).toEqual(expect.any(Number));
      expect(spec['terminationGracePeriodSeconds'] as number).toBeGreaterThan(shutdownSeconds);
    });

    it('runs under the IRSA ServiceAccount', () => {
      const account = findOne(objects, 'ServiceAccount');

      expect(at(account, 'metadata', 'annotations', 'eks.amazonaws.com/role-arn')).toBe(ROLE_ARN);
      expect(spec['serviceAccountName']).toBe(account.metadata.name);
    });

    it('uses restricted pod and container security contexts', () => {
      expect(spec['securityContext']).toMatchObject({
        runAsNonRoot: true,
        runAsUser: 10001,
        runAsGroup: 10001,
        fsGroup: 10001,
        seccompProfile: { type: 'RuntimeDefault' },
      });
      expect(sidecar['securityContext']).toMatchObject({
        allowPrivilegeEscalation: false,
        readOnlyRootFilesystem: true,
        capabilities: { drop: ['ALL'] },
      });
      for (const app of listAt(spec, 'containers')) {
        expect(app['securityContext']).toMatchObject({
          allowPrivilegeEscalation: false,
          capabilities: { drop: ['ALL'] },
        });
      }
    });

    it('keeps socket and state on emptyDir volumes with a size limit', () => {
      const volumes = listAt(spec, 'volumes');
      for (const mountPath of ['/run/metering', '/var/lib/metering']) {
        const mount = listAt(sidecar, 'volumeMounts').find((m) => m['mountPath'] === mountPath);
        const volume = volumes.find((v) => v['name'] === mount?.['name']);

        expect(at(volume, 'emptyDir', 'sizeLimit'), mountPath).toEqual(expect.any(String));
      }
      expect(envOf(sidecar).get('METERING_STATE_DIR')).toBe('/var/lib/metering');
    });

    // Regression: the key store was bounded only by time, so a busy app filled the 256 Mi volume in a day and
    // the kubelet evicted the pod with its unsent usage.
    it('sizes the state volume for the idempotency-key bound, with room to spare', () => {
      const mount = listAt(sidecar, 'volumeMounts').find((m) => m['mountPath'] === '/var/lib/metering');
      const volume = listAt(spec, 'volumes').find((v) => v['name'] === mount?.['name']);
      const sizeLimit = String(at(volume, 'emptyDir', 'sizeLimit'));
      const keysMax = Number(envOf(sidecar).get('METERING_IDEMPOTENCY_KEYS_MAX'));

      expect(keysMax).toBeGreaterThanOrEqual(1000);
      // The keys, at their longest, take at most half the volume.
      expect(2 * keysMax * IDEMPOTENCY_KEY_MAX_BYTES).toBeLessThanOrEqual(quantityBytes(sizeLimit));
    });

    it('tells the sidecar its pod from the downward API, and how long to keep settled records', () => {
      const env = envOf(sidecar);
      expect(env.get('METERING_POD_NAMESPACE')).toBe('fieldRef:metadata.namespace');
      expect(env.get('METERING_POD_NAME')).toBe('fieldRef:metadata.name');
      expect(env.get('METERING_POD_UID')).toBe('fieldRef:metadata.uid');
      const retention =
        (at(set.values, 'sidecar', 'retentionDays') as number | undefined) ?? DEFAULT_RETENTION_DAYS;
      expect(env.get('METERING_RETENTION_DAYS')).toBe(String(retention));
    });

    it('sets only environment variables the sidecar reads', () => {
      const names = [...envOf(sidecar).keys()];

      expect(names.filter((n) => !ENVIRONMENT_VARIABLES.includes(n))).toEqual([]);
      expect(names).toContain('METERING_PRODUCT_CODE');
    });

    it('gives the sidecar a configuration it accepts', () => {
      // Prepare: what the pod's environment holds at start (the IRSA webhook adds AWS_REGION), and the mounted key.
      const env = Object.fromEntries(envOf(sidecar));
      const dir = mkdtempSync(join(tmpdir(), 'metering-helm-key-'));
      try {
        if (env['METERING_PUBLIC_KEY_FILE'] !== undefined) {
          env['METERING_PUBLIC_KEY_FILE'] = join(dir, 'product-key.pem');
          writeFileSync(env['METERING_PUBLIC_KEY_FILE'], PUBLIC_KEY_PEM);
        }
        env['AWS_REGION'] ??= 'us-east-1';

        // Act
        const config = loadConfig(env);

        // Assess
        expect(config.productCode).toBe(PRODUCT_CODE);
        expect(config.unitDivisors).toEqual(at(set.values, 'sidecar', 'unitDivisors') ?? {});
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  },
);

/** The Kubernetes versions EKS supports, each with its own API table (scripts/kube-api.mjs). */
const STRICT_VERSIONS = await strictKubeVersions();

describe.each(STRICT_VERSIONS)('helm chart metering-sidecar validated strictly for Kubernetes %s', (kube) => {
  let api: KubeApi;

  beforeAll(async () => {
    api = await loadKubeApi(kube);
  });

  it.each(Object.entries(VALUE_SETS))(
    'renders the %s values with only the fields, types and required fields of that API',
    async (_name, set) => {
      const objects = await render(set.values, {
        kubeVersion: `${kube}.0`,
        ...(set.apiVersions ? { apiVersions: set.apiVersions } : {}),
      });

      expect(objects.filter((o) => o.kind === 'Deployment')).toHaveLength(1);
      expect(await strictErrors(api, objects)).toEqual([]);
    },
  );

  it('refuses a misspelt field, a missing required field, a value of the wrong type and a removed API', async () => {
    const deployment = findOne(await render(FULL, { kubeVersion: `${kube}.0` }), 'Deployment');
    const broken = structuredClone(deployment) as unknown as Record<string, unknown>;
    const spec = podSpec(broken as unknown as KubeObject);
    const sidecar = sidecarOf(spec);
    sidecar['resouces'] = sidecar['resources'];
    delete sidecar['name'];
    spec['terminationGracePeriodSeconds'] = '90';
    listAt(spec, 'volumes')[0]['emptyDir'] = { medium: 'Memory', sizeLimt: '1Mi' };

    const removed = { ...deployment, apiVersion: 'extensions/v1beta1' }; // removed in Kubernetes 1.16
    const otherGroup = { ...deployment, apiVersion: 'batch/v1' }; // a group version that serves other kinds

    const errors = await strictErrors(api, [broken, removed, otherGroup]);

    expect([...errors].sort()).toEqual(
      [
        `Deployment ${deployment.metadata.name}: spec.template.spec.initContainers[0].resouces: unknown field (not in V1Container of Kubernetes ${kube})`,
        `Deployment ${deployment.metadata.name}: spec.template.spec.initContainers[0].name: required`,
        `Deployment ${deployment.metadata.name}: spec.template.spec.terminationGracePeriodSeconds: must be a number`,
        `Deployment ${deployment.metadata.name}: spec.template.spec.volumes[0].emptyDir.sizeLimt: unknown field (not in V1EmptyDirVolumeSource of Kubernetes ${kube})`,
        `Deployment ${deployment.metadata.name}: extensions/v1beta1 Deployment is not in the Kubernetes ${kube} API`,
        `Deployment ${deployment.metadata.name}: batch/v1 Deployment is not in the Kubernetes ${kube} API`,
      ].sort(),
    );
  });
});

// A field Kubernetes 1.34 added (container restart rules): what the chart would break on older clusters.
it('tells the Kubernetes versions apart: a field 1.34 added is refused by the versions before it', async () => {
  const deployment = findOne(await render(MINIMAL), 'Deployment');
  const withRules = structuredClone(deployment) as unknown as Record<string, unknown>;
  sidecarOf(podSpec(withRules as unknown as KubeObject))['restartPolicyRules'] = [
    { action: 'Restart', exitCodes: { operator: 'In', values: [42] } },
  ];

  const refusedBy: string[] = [];
  for (const kube of STRICT_VERSIONS) {
    if ((await strictErrors(await loadKubeApi(kube), [withRules])).length > 0) refusedBy.push(kube);
  }

  expect(STRICT_VERSIONS).toContain('1.34');
  expect(refusedBy).toEqual(STRICT_VERSIONS.filter((v) => Number(v.split('.')[1]) < 34));
  expect(refusedBy.length).toBeGreaterThan(0);
});

describe('helm chart metering-sidecar: NOTES.txt', () => {
  /**
   * helm template discards NOTES.txt (only install prints it, and install needs a cluster), so a copy of the
   * chart renders it into a ConfigMap with tpl, in the same scope.
   */
  async function renderNotes(values: object): Promise<string> {
    const dir = mkdtempSync(join(tmpdir(), 'metering-notes-'));
    try {
      const chart = join(dir, 'metering-sidecar');
      cpSync(CHART_DIR, chart, { recursive: true });
      cpSync(join(chart, 'templates', 'NOTES.txt'), join(chart, 'notes.txt'));
      writeFileSync(
        join(chart, 'templates', 'zz-notes.yaml'),
        'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: {{ tpl (.Files.Get "notes.txt") . | quote }}\n',
      );
      const result = await helmWithValues('template', values, { chartDir: chart });
      if (result.code !== 0) throw new Error(`helm template failed: ${result.stderr}`);
      return String(at(findOne(parseManifests(result.stdout), 'ConfigMap', 'notes'), 'data', 'notes'));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }

  it('tells how to check that metering works', async () => {
    const notes = await renderNotes(MINIMAL);

    expect(notes).toContain('kubectl -n products logs "$POD" -c metering-sidecar');
    expect(notes).toContain('kubectl -n products exec "$POD" -c metering-sidecar -- metering-sidecar status');
    expect(notes).toContain('port-forward "$POD" 9181:9181');
    expect(notes).toContain('curl -s http://127.0.0.1:9181/metrics');
    expect(notes).toContain('not EKS Pod Identity, node roles or static keys');
  });
});

describe('helm chart metering-sidecar: public key', () => {
  function keyFileSource(objects: KubeObject[]): { secretName: unknown; key: unknown; path: string } {
    const spec = podSpec(findOne(objects, 'Deployment'));
    const sidecar = sidecarOf(spec);
    const file = envOf(sidecar).get('METERING_PUBLIC_KEY_FILE');
    if (file === undefined) throw new Error('no METERING_PUBLIC_KEY_FILE');
    const mount = listAt(sidecar, 'volumeMounts').find((m) => file.startsWith(`${String(m['mountPath'])}/`));
    if (!mount) throw new Error(`no mount holds ${file}`);
    expect(mount['readOnly']).toBe(true);
    const volume = listAt(spec, 'volumes').find((v) => v['name'] === mount['name']);
    const item = listAt(volume, 'secret', 'items').find(
      (i) => `${String(mount['mountPath'])}/${String(i['path'])}` === file,
    );
    if (!item) throw new Error(`the Secret volume does not project ${file}`);
    return { secretName: at(volume, 'secret', 'secretName'), key: item['key'], path: file };
  }

  it('mounts an existing Secret key as METERING_PUBLIC_KEY_FILE', async () => {
    const objects = await render(OWN_SECRET);

    expect(keyFileSource(objects)).toMatchObject({ secretName: 'acme-product-key', key: 'product.pem' });
    expect(objects.filter((o) => o.kind === 'Secret')).toEqual([]);
  });

  it('creates a Secret for an inline PEM and mounts it as METERING_PUBLIC_KEY_FILE', async () => {
    const objects = await render(INLINE_KEY);
    const source = keyFileSource(objects);
    const secret = findOne(objects, 'Secret', String(source.secretName));

    const pem = Buffer.from(String(at(secret, 'data', String(source.key))), 'base64').toString('utf8');

    expect(pem).toBe(PUBLIC_KEY_PEM);
  });

  it('sets no key file without a key', async () => {
    const objects = await render(MINIMAL);

    expect(envOf(sidecarOf(podSpec(findOne(objects, 'Deployment')))).has('METERING_PUBLIC_KEY_FILE')).toBe(
      false,
    );
  });
});

describe('helm chart metering-sidecar: handoff', () => {
  it('mounts the existing ReadWriteMany claim into the sidecar only, as METERING_HANDOFF_DIR', async () => {
    const spec = podSpec(findOne(await render(FULL, { apiVersions: [MONITORING_API] }), 'Deployment'));
    const sidecar = sidecarOf(spec);
    const env = envOf(sidecar);
    const dir = env.get('METERING_HANDOFF_DIR');

    expect(env.get('METERING_HANDOFF_SCAN_SECONDS')).toBe('120');
    const mount = listAt(sidecar, 'volumeMounts').find((m) => m['mountPath'] === dir);
    expect(mount).toMatchObject({ subPath: 'acme/product' });
    expect(mount?.['readOnly']).toBeUndefined();
    const volume = listAt(spec, 'volumes').find((v) => v['name'] === mount?.['name']);
    expect(volume).toEqual({
      name: mount?.['name'],
      persistentVolumeClaim: { claimName: 'acme-metering-handoff' },
    });
    for (const app of listAt(spec, 'containers')) {
      expect(listAt(app, 'volumeMounts').map((m) => m['name'])).not.toContain(mount?.['name']);
    }
  });

  it('mounts the claim root without a subPath', async () => {
    const sidecar = sidecarOf(podSpec(findOne(await render(HANDOFF), 'Deployment')));
    const dir = envOf(sidecar).get('METERING_HANDOFF_DIR');

    expect(listAt(sidecar, 'volumeMounts').find((m) => m['mountPath'] === dir)).not.toHaveProperty('subPath');
    expect(envOf(sidecar).get('METERING_HANDOFF_SCAN_SECONDS')).toBe('300');
  });

  it('renders the values of the docs/deploy-eks.md example', async () => {
    const values = parse(docExample('existingClaim: my-product')) as object;
    const sidecar = sidecarOf(podSpec(findOne(await render({ ...MINIMAL, ...values }), 'Deployment')));

    expect(envOf(sidecar).get('METERING_HANDOFF_DIR')).toBe('/var/lib/metering-handoff');
  });

  it('has no handoff directory by default', async () => {
    const spec = podSpec(findOne(await render(MINIMAL), 'Deployment'));
    const env = envOf(sidecarOf(spec));

    expect(env.has('METERING_HANDOFF_DIR')).toBe(false);
    expect(env.has('METERING_HANDOFF_SCAN_SECONDS')).toBe(false);
    expect(listAt(spec, 'volumes').filter((v) => 'persistentVolumeClaim' in v)).toEqual([]);
  });

  it.each([
    [{ existingClaim: 'EFS_Claim' }, 'handoff.existingClaim'],
    [{ existingClaim: 'efs', subPath: '../other-product' }, 'handoff.subPath'],
    [{ existingClaim: 'efs', subPath: '/absolute' }, 'handoff.subPath'],
    [{ existingClaim: 'efs', scanSeconds: 0 }, 'handoff.scanSeconds'],
    [{ existingClaim: 'efs', claim: 'efs' }, 'Additional property claim is not allowed'],
  ])('refuses handoff values %j', async (handoff, message) => {
    const result = await helmWithValues('template', { ...MINIMAL, handoff });

    expect(result.code).not.toBe(0);
    expect(result.stderr).toContain(message);
  });
});

describe('helm chart metering-sidecar: monitoring', () => {
  let objects: KubeObject[];
  beforeAll(async () => {
    objects = await render(MONITORING, { apiVersions: [MONITORING_API] });
  });

  it('scrapes the admin port /metrics of the chart pods with a PodMonitor', () => {
    const monitor = findOne(objects, 'PodMonitor');
    const deployment = findOne(objects, 'Deployment');
    const podLabels = at(deployment, 'spec', 'template', 'metadata', 'labels');
    const adminPort = listAt(sidecarOf(podSpec(deployment)), 'ports')[0];

    expect(listAt(monitor, 'spec', 'podMetricsEndpoints')).toEqual([
      expect.objectContaining({ port: adminPort?.['name'], path: '/metrics' }),
    ]);
    expect(podLabels).toMatchObject(at(monitor, 'spec', 'selector', 'matchLabels') as object);
  });

  it('carries the alert rules of docs/operations.md, Prometheus templates intact', () => {
    const rule = findOne(objects, 'PrometheusRule');
    const groups = at(rule, 'spec', 'groups');

    expect(listAt(groups, 0, 'rules').map((r) => r['alert'])).toEqual([
      'MeteringStalled',
      'MeteringRecordsFailing',
      'MeteringEntitlementLost',
      'MeteringLedgerNotWritable',
      'MeteringOldestUnsentTooOld',
      'MeteringIdempotencyKeysEvicted',
      'MeteringFleetOverQuota',
      'MeteringHandoffUncertain',
      'MeteringHandoffsIgnored',
      'MeteringHandoffsWaiting',
      'MeteringEventLoopLagging',
    ]);
    expect(at(groups, 0, 'rules', 0, 'annotations', 'summary')).toBe(
      'Metering has not reached AWS for 2 hours ({{ $labels.pod }})',
    );
    expect(groups).toEqual(documentedAlertGroups());
  });

  it('renders no monitoring objects by default', async () => {
    const plain = await render(MINIMAL, { apiVersions: [MONITORING_API] });

    expect(plain.map((o) => o.kind).sort()).toEqual(['Deployment', 'ServiceAccount']);
  });
});

describe('helm chart metering-sidecar: named templates from a parent chart', () => {
  let parentDir: string;
  let objects: KubeObject[];

  beforeAll(async () => {
    // Prepare: a seller's chart depending on this one through file://, including the named templates.
    parentDir = mkdtempSync(join(tmpdir(), 'metering-parent-'));
    mkdirSync(join(parentDir, 'templates'));
    writeFileSync(
      join(parentDir, 'Chart.yaml'),
      stringify({
        apiVersion: 'v2',
        name: 'acme-product',
        version: '1.0.0',
        appVersion: '2.3.4',
        dependencies: [{ name: 'metering-sidecar', version: '0.1.0', repository: `file://${CHART_DIR}` }],
      }),
    );
    // The worked example of docs/deploy-eks.md: its values and its Deployment template, plus an inline key.
    const docValues = docExample('metering-sidecar:');
    const values = parse(docValues) as { 'metering-sidecar': { sidecar: Record<string, unknown> } };
    values['metering-sidecar'].sidecar['publicKey'] = { pem: PUBLIC_KEY_PEM };
    writeFileSync(join(parentDir, 'values.yaml'), stringify(values));
    writeFileSync(join(parentDir, 'templates', 'deployment.yaml'), docExample('kind: Deployment'));
    const update = await helm(['dependency', 'update', parentDir]);
    if (update.code !== 0) throw new Error(`helm dependency update failed: ${update.stderr}`);

    const result = await helm(['template', 'acme', parentDir, '--kube-version', KUBE_VERSION]);
    if (result.code !== 0) throw new Error(`helm template failed: ${result.stderr}`);
    objects = parseManifests(result.stdout);
  });

  afterAll(() => {
    rmSync(parentDir, { recursive: true, force: true });
  });

  it('renders a valid seller Deployment with the sidecar, its volumes and the app wiring', () => {
    const deployment = findOne(objects, 'Deployment', 'acme-acme');
    const spec = podSpec(deployment);
    const sidecar = sidecarOf(spec);

    expect(objects.flatMap(validateObject)).toEqual([]);
    expect(sidecar['restartPolicy']).toBe('Always');
    expect(sidecar['image']).toMatch(/\/metering-sidecar:0\.1\.0$/); // this chart's appVersion, not the parent's
    expect(at(sidecar, 'startupProbe', 'httpGet')).toEqual({ path: '/readyz', port: 'metering-admin' });
    expect(listAt(spec, 'containers', 0, 'volumeMounts')).toEqual([
      { name: 'metering-socket', mountPath: '/run/metering' },
    ]);
    expect(listAt(spec, 'containers', 0, 'env')).toEqual([
      { name: 'METERING_SOCKET', value: '/run/metering/metering.sock' },
    ]);
    expect(listAt(spec, 'volumes').map((v) => v['name'])).toEqual([
      'metering-socket',
      'metering-state',
      'metering-public-key',
    ]);
    expect([...envOf(sidecar).keys()].filter((n) => !ENVIRONMENT_VARIABLES.includes(n))).toEqual([]);
    expect(spec['terminationGracePeriodSeconds']).toBeGreaterThan(
      Number(envOf(sidecar).get('METERING_SHUTDOWN_TIMEOUT_SECONDS')),
    );
  });

  it.each(STRICT_VERSIONS)('renders objects valid for Kubernetes %s, strictly', async (kube) => {
    const result = await helm(['template', 'acme', parentDir, '--kube-version', `${kube}.0`]);
    if (result.code !== 0) throw new Error(`helm template failed: ${result.stderr}`);
    const rendered = parseManifests(result.stdout);

    expect(rendered.map((o) => o.kind).sort()).toEqual(['Deployment', 'Secret', 'ServiceAccount']);
    expect(await strictErrors(await loadKubeApi(kube), rendered)).toEqual([]);
  });

  it("creates the IRSA ServiceAccount and key Secret from the dependency, not this chart's Deployment", () => {
    const account = findOne(objects, 'ServiceAccount');
    const spec = podSpec(findOne(objects, 'Deployment'));

    expect(spec['serviceAccountName']).toBe(account.metadata.name);
    expect(at(account, 'metadata', 'annotations', 'eks.amazonaws.com/role-arn')).toMatch(
      /^arn:aws:iam::\d{12}:role\//,
    );
    expect(findOne(objects, 'Secret').metadata.name).toBe(
      at(listAt(spec, 'volumes')[2], 'secret', 'secretName'),
    );
    expect(objects.filter((o) => o.kind === 'Deployment')).toHaveLength(1);
  });

  it("enforces this chart's schema on the parent's values", async () => {
    const values = join(parentDir, 'bad-values.yaml');
    writeFileSync(
      values,
      stringify({ 'metering-sidecar': { sidecar: { entitlement: 'free', productcode: 'x' } } }),
    );

    const result = await helm(['template', 'acme', parentDir, '-f', values, '--kube-version', KUBE_VERSION]);

    expect(result.code).not.toBe(0);
    expect(result.stderr).toContain('sidecar.entitlement');
    expect(result.stderr).toContain('Additional property productcode is not allowed');
  });

  it('copies into charts/ as well as through helm dependency update', async () => {
    // Prepare: the other way a seller vendors the chart.
    const vendored = mkdtempSync(join(tmpdir(), 'metering-vendored-'));
    try {
      cpSync(parentDir, vendored, { recursive: true });
      rmSync(join(vendored, 'charts'), { recursive: true, force: true });
      rmSync(join(vendored, 'Chart.lock'), { force: true });
      cpSync(CHART_DIR, join(vendored, 'charts', 'metering-sidecar'), { recursive: true });

      // Act
      const result = await helm(['template', 'acme', vendored, '--kube-version', KUBE_VERSION]);

      // Assess
      expect(result.stderr).toBe('');
      expect(result.code).toBe(0);
      expect(parseManifests(result.stdout)).toEqual(objects);
    } finally {
      rmSync(vendored, { recursive: true, force: true });
    }
  });
});
