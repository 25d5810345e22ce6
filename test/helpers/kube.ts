/**
 * Helpers for testing the Helm chart with the real, pinned helm binary (scripts/helm.mjs): run helm, render a
 * chart with a value set, parse the manifests, and validate each object against the Kubernetes schemas
 * (kubernetes-models, Kubernetes 1.27 OpenAPI plus the native-sidecar fields) or, for the prometheus-operator
 * kinds it does not model, against their structure checked by hand; and strictly, against the API of each
 * Kubernetes version EKS supports (scripts/kube-api.mjs).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Deployment } from 'kubernetes-models/apps/v1/Deployment';
import { Secret } from 'kubernetes-models/v1/Secret';
import { Service } from 'kubernetes-models/v1/Service';
import { ServiceAccount } from 'kubernetes-models/v1/ServiceAccount';
import { parseAllDocuments, stringify } from 'yaml';

/** The chart under test. */
export const CHART_DIR = fileURLToPath(new URL('../../helm/metering-sidecar', import.meta.url));

/** Kubernetes version the chart is rendered for: the lowest it supports (native sidecars). */
export const KUBE_VERSION = '1.29.0';

/** The outcome of one helm run; a non-zero code is a value, not an exception. */
export interface HelmResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** What scripts/helm.mjs exports (a plain .mjs script, so its types are declared here). */
interface HelmScript {
  ensureHelm(): Promise<string>;
  runHelm(args: readonly string[], options?: { cwd?: string }): Promise<HelmResult>;
}

const HELM_SCRIPT_URL = new URL('../../scripts/helm.mjs', import.meta.url).href;

async function helmScript(): Promise<HelmScript> {
  return (await import(HELM_SCRIPT_URL)) as HelmScript;
}

/** Fetches (once) and checks the pinned helm binary; returns its path. */
export async function ensureHelm(): Promise<string> {
  return (await helmScript()).ensureHelm();
}

/** Runs helm with `args`. */
export async function helm(args: readonly string[], options: { cwd?: string } = {}): Promise<HelmResult> {
  return (await helmScript()).runHelm(args, options);
}

/** A rendered Kubernetes object, loosely typed: tests read fields through {@link at}. */
export interface KubeObject {
  readonly apiVersion: string;
  readonly kind: string;
  readonly metadata: { readonly name: string; readonly [key: string]: unknown };
  readonly [key: string]: unknown;
}

/** Options of {@link helmWithValues}. */
export interface RenderOptions {
  /** Extra API versions the cluster is assumed to serve (e.g. monitoring.coreos.com/v1). */
  readonly apiVersions?: readonly string[];
  readonly release?: string;
  readonly chartDir?: string;
  /** The Kubernetes version helm renders for (`--kube-version`); {@link KUBE_VERSION} by default. */
  readonly kubeVersion?: string;
}

/**
 * Runs `helm template` (or `lint`) on the chart with `values` written to a temporary values file, the way a
 * seller passes `-f values.yaml`.
 */
export async function helmWithValues(
  command: 'template' | 'lint',
  values: object,
  options: RenderOptions = {},
): Promise<HelmResult> {
  const dir = mkdtempSync(join(tmpdir(), 'metering-helm-'));
  try {
    const file = join(dir, 'values.yaml');
    writeFileSync(file, stringify(values));
    const chart = options.chartDir ?? CHART_DIR;
    const apiVersions = (options.apiVersions ?? []).flatMap((v) => ['--api-versions', v]);
    const args =
      command === 'lint'
        ? ['lint', '--strict', chart, '-f', file, '--kube-version', options.kubeVersion ?? KUBE_VERSION]
        : [
            'template',
            options.release ?? 'acme',
            chart,
            '--namespace',
            'products',
            '-f',
            file,
            '--kube-version',
            options.kubeVersion ?? KUBE_VERSION,
            ...apiVersions,
          ];
    return await helm(args);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Renders the chart and parses the manifests; throws with helm's message when rendering fails. */
export async function render(values: object, options: RenderOptions = {}): Promise<KubeObject[]> {
  const result = await helmWithValues('template', values, options);
  if (result.code !== 0) throw new Error(`helm template failed (${result.code}): ${result.stderr}`);
  return parseManifests(result.stdout);
}

/**
 * Parses multi-document YAML into objects, skipping empty documents. Duplicate keys and other YAML errors
 * throw (a template that emits a key twice is a bug even if Kubernetes would take the last one).
 */
export function parseManifests(text: string): KubeObject[] {
  const objects: KubeObject[] = [];
  for (const doc of parseAllDocuments(text)) {
    if (doc.errors.length > 0)
      throw new Error(`invalid YAML: ${doc.errors.map((e) => e.message).join('; ')}`);
    const value: unknown = doc.toJS();
    if (value === null || value === undefined) continue;
    if (!isRecord(value) || typeof value['apiVersion'] !== 'string' || typeof value['kind'] !== 'string') {
      throw new Error(`not a Kubernetes object: ${JSON.stringify(value).slice(0, 200)}`);
    }
    objects.push(value as unknown as KubeObject);
  }
  return objects;
}

/** The one object of `kind` (and `name`, when given); throws when there is not exactly one. */
export function findOne(objects: readonly KubeObject[], kind: string, name?: string): KubeObject {
  const found = objects.filter((o) => o.kind === kind && (name === undefined || o.metadata.name === name));
  if (found.length !== 1)
    throw new Error(`expected one ${kind}${name ? ` ${name}` : ''}, found ${found.length}`);
  return found[0];
}

/** Reads a nested field by path (`at(obj, 'spec', 'template', 'spec')`); undefined when absent. */
export function at(value: unknown, ...path: (string | number)[]): unknown {
  let current = value;
  for (const key of path) {
    if (Array.isArray(current) && typeof key === 'number') current = current[key];
    else if (isRecord(current) && typeof key === 'string') current = current[key];
    else return undefined;
  }
  return current;
}

/** Like {@link at}, for a field that must be an array of objects. */
export function listAt(value: unknown, ...path: (string | number)[]): Record<string, unknown>[] {
  const list = at(value, ...path);
  if (!Array.isArray(list) || !list.every(isRecord)) {
    throw new Error(`${path.join('.')} is not a list of objects: ${JSON.stringify(list)}`);
  }
  return list;
}

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** What scripts/kube-api.mjs exports (a plain .mjs script, so its types are declared here). */
interface KubeApiScript {
  readonly KUBE_APIS: readonly { readonly kube: string; readonly client: string }[];
  loadKubeApi(kube: string): Promise<KubeApi>;
  kubeApiErrors(api: KubeApi, object: unknown): string[];
  isBuiltInGroup(apis: readonly KubeApi[], apiVersion: string): boolean;
}

/** One Kubernetes version's API, as scripts/kube-api.mjs reduces it. */
export interface KubeApi {
  readonly kube: string;
  readonly client: string;
  /** The model class of each kind served, by `apiVersion/kind` (`apps/v1/Deployment` -> `V1Deployment`). */
  readonly kinds: Readonly<Record<string, string>>;
  readonly classes: Readonly<
    Record<string, Readonly<Record<string, { type: string; format: string; required: boolean }>>>
  >;
}

const KUBE_API_SCRIPT_URL = new URL('../../scripts/kube-api.mjs', import.meta.url).href;

async function kubeApiScript(): Promise<KubeApiScript> {
  return (await import(KUBE_API_SCRIPT_URL)) as KubeApiScript;
}

/** The Kubernetes versions objects are validated strictly for: those EKS supports ("1.32", ...). */
export async function strictKubeVersions(): Promise<string[]> {
  return (await kubeApiScript()).KUBE_APIS.map((p) => p.kube);
}

/** The API of Kubernetes `kube`, fetched once from the npm registry and cached under .tools/. */
export async function loadKubeApi(kube: string): Promise<KubeApi> {
  return (await kubeApiScript()).loadKubeApi(kube);
}

/**
 * Strict problems of `objects` for `api`: unknown fields, missing required fields, wrong types, kinds the version
 * does not serve. Objects of a group that is not Kubernetes' own are custom resources (the prometheus-operator's),
 * which these tables do not describe: {@link validateObject} checks those.
 */
export async function strictErrors(api: KubeApi, objects: readonly unknown[]): Promise<string[]> {
  const script = await kubeApiScript();
  return objects
    .filter((o) => !(isRecord(o) && !script.isBuiltInGroup([api], String(o['apiVersion']))))
    .flatMap((o) =>
      script
        .kubeApiErrors(api, o)
        .map((e) => `${String(at(o, 'kind'))} ${String(at(o, 'metadata', 'name'))}: ${e}`),
    );
}

type Validator = (object: KubeObject) => string[];

/** Runs a kubernetes-models validate(); returns its complaint, if any. */
function modelErrors(validate: () => void): string[] {
  try {
    validate();
    return [];
  } catch (err) {
    return [err instanceof Error ? err.message : String(err)];
  }
}

/** Validators by `apiVersion/kind` for every kind the chart can render. */
const VALIDATORS: Readonly<Record<string, Validator>> = {
  'apps/v1/Deployment': (o) => modelErrors(() => new Deployment(o).validate()),
  'v1/ServiceAccount': (o) => modelErrors(() => new ServiceAccount(o).validate()),
  'v1/Secret': (o) => modelErrors(() => new Secret(o).validate()),
  'v1/Service': (o) => modelErrors(() => new Service(o).validate()),
  'monitoring.coreos.com/v1/PodMonitor': podMonitorErrors,
  'monitoring.coreos.com/v1/PrometheusRule': prometheusRuleErrors,
};

/**
 * Validates one rendered object: against the Kubernetes schema for core kinds, by hand for the
 * prometheus-operator kinds. An unknown apiVersion/kind is an error: every kind the chart renders must be checked.
 */
export function validateObject(object: KubeObject): string[] {
  const key = `${object.apiVersion}/${object.kind}`;
  const validator = VALIDATORS[key];
  if (!validator) return [`no validator for ${key}`];
  const errors = validator(object);
  if (
    typeof object.metadata?.name !== 'string' ||
    !/^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/.test(object.metadata.name)
  ) {
    errors.push(`metadata.name ${JSON.stringify(object.metadata?.name)} is not a DNS subdomain name`);
  }
  return errors.map((e) => `${key} ${String(object.metadata?.name)}: ${e}`);
}

/** Keys a field may have; reports the others (the CRDs reject unknown fields, kubernetes-models does not). */
function unknownKeys(value: Record<string, unknown>, allowed: readonly string[], where: string): string[] {
  return Object.keys(value)
    .filter((k) => !allowed.includes(k))
    .map((k) => `${where}: unknown field ${k}`);
}

function isStringMap(value: unknown): boolean {
  return isRecord(value) && Object.values(value).every((v) => typeof v === 'string');
}

const DURATION = /^(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?$/;

/** PodMonitor (monitoring.coreos.com/v1): the fields this chart uses, checked as the CRD's schema does. */
function podMonitorErrors(o: KubeObject): string[] {
  const errors = unknownKeys(o, ['apiVersion', 'kind', 'metadata', 'spec'], '');
  const spec = o['spec'];
  if (!isRecord(spec)) return [...errors, 'spec must be an object'];
  errors.push(
    ...unknownKeys(spec, ['selector', 'podMetricsEndpoints', 'namespaceSelector', 'jobLabel'], 'spec'),
  );
  const selector = spec['selector'];
  if (!isRecord(selector)) errors.push('spec.selector is required');
  else {
    errors.push(...unknownKeys(selector, ['matchLabels', 'matchExpressions'], 'spec.selector'));
    if (selector['matchLabels'] !== undefined && !isStringMap(selector['matchLabels'])) {
      errors.push('spec.selector.matchLabels must map strings to strings');
    }
  }
  const endpoints = spec['podMetricsEndpoints'];
  if (!Array.isArray(endpoints) || endpoints.length === 0)
    errors.push('spec.podMetricsEndpoints must be a non-empty list');
  else {
    endpoints.forEach((endpoint: unknown, i) => {
      const where = `spec.podMetricsEndpoints[${i}]`;
      if (!isRecord(endpoint)) {
        errors.push(`${where} must be an object`);
        return;
      }
      errors.push(...unknownKeys(endpoint, ['port', 'path', 'interval', 'scrapeTimeout', 'scheme'], where));
      if (typeof endpoint['port'] !== 'string') errors.push(`${where}.port must be a port name`);
      if (typeof endpoint['path'] !== 'string' || !endpoint['path'].startsWith('/'))
        errors.push(`${where}.path must be a path`);
      for (const field of ['interval', 'scrapeTimeout']) {
        const value = endpoint[field];
        if (value !== undefined && (typeof value !== 'string' || !DURATION.test(value) || value === '')) {
          errors.push(`${where}.${field} must be a Prometheus duration`);
        }
      }
    });
  }
  return errors;
}

/** PrometheusRule (monitoring.coreos.com/v1): groups of alerting rules, checked as the CRD's schema does. */
function prometheusRuleErrors(o: KubeObject): string[] {
  const errors = unknownKeys(o, ['apiVersion', 'kind', 'metadata', 'spec'], '');
  const groups = at(o, 'spec', 'groups');
  if (!Array.isArray(groups) || groups.length === 0)
    return [...errors, 'spec.groups must be a non-empty list'];
  groups.forEach((group: unknown, g) => {
    const where = `spec.groups[${g}]`;
    if (!isRecord(group)) {
      errors.push(`${where} must be an object`);
      return;
    }
    errors.push(...unknownKeys(group, ['name', 'interval', 'rules'], where));
    if (typeof group['name'] !== 'string' || group['name'] === '') errors.push(`${where}.name is required`);
    const rules = group['rules'];
    if (!Array.isArray(rules)) {
      errors.push(`${where}.rules must be a list`);
      return;
    }
    rules.forEach((rule: unknown, r) => {
      const place = `${where}.rules[${r}]`;
      if (!isRecord(rule)) {
        errors.push(`${place} must be an object`);
        return;
      }
      errors.push(...unknownKeys(rule, ['alert', 'record', 'expr', 'for', 'labels', 'annotations'], place));
      if (typeof rule['alert'] !== 'string' && typeof rule['record'] !== 'string')
        errors.push(`${place} needs alert or record`);
      if (typeof rule['expr'] !== 'string' || rule['expr'] === '')
        errors.push(`${place}.expr must be a PromQL string`);
      if (rule['for'] !== undefined && (typeof rule['for'] !== 'string' || !DURATION.test(rule['for']))) {
        errors.push(`${place}.for must be a Prometheus duration`);
      }
      for (const field of ['labels', 'annotations']) {
        if (rule[field] !== undefined && !isStringMap(rule[field]))
          errors.push(`${place}.${field} must map strings to strings`);
      }
    });
  });
  return errors;
}
