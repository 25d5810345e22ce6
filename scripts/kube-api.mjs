/**
 * Strict, offline validation of Kubernetes objects against the API of each Kubernetes version the chart is
 * checked for: every field must exist in that version's API (an unknown or misspelt field is an error, as with
 * `kubectl --validate=strict`), every required field must be set, and every value must have the field's type
 * (integers, int-or-string, base64 bytes, timestamps, lists, maps and nested objects).
 *
 * The API of a version comes from the official JavaScript client, @kubernetes/client-node, whose models are
 * generated from that version's OpenAPI document (one client release per Kubernetes version; the npm registry is
 * the one registry we can reach). Each pinned release is fetched once with `npm pack` (no install, no scripts),
 * checked against its registry integrity, and its generated code is reduced to a table cached in `.tools/kube-api/`
 * (git-ignored): the kinds each group version serves from the API classes' create calls, field names, JSON types
 * and formats from the models' attribute maps, required fields from their type declarations.
 *
 * Usage:
 *   import { KUBE_APIS, loadKubeApi, kubeApiErrors } from '../../scripts/kube-api.mjs';   // from tests
 *   node scripts/helm.mjs template rel helm/metering-sidecar -f my-values.yaml | node scripts/kube-api.mjs   // all versions
 *   node scripts/kube-api.mjs 1.32 1.36 < manifests.yaml                                  // some versions
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { parseAllDocuments } from 'yaml';

const execFileAsync = promisify(execFile);

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const CACHE_DIR = join(ROOT, '.tools', 'kube-api');

/**
 * The Kubernetes versions objects are checked against: those Amazon EKS supports (standard or extended support;
 * 1.32 to 1.36 in December 2026, per its release calendar), each with the client-node release generated from its
 * OpenAPI document (the models name the spec version, which the loader checks). Kubernetes 1.35 has no client
 * release of its own: the stable APIs only ever add fields, so an object valid for both 1.34 and 1.36 is valid for
 * 1.35. Client releases before 1.0 do not name their spec, so older versions are not listed.
 * @type {readonly { kube: string, client: string, integrity: string }[]}
 */
export const KUBE_APIS = [
  {
    kube: '1.32',
    client: '1.1.2',
    integrity:
      'sha512-kkE0D8zB5rIQoR6SUwlHUyQtpLvrW0gXOd2MabQsql7I2oPnMA8pb50A1MWB4yH0eX29t45gxs7lOVlS0UPsiw==',
  },
  {
    kube: '1.33',
    client: '1.3.0',
    integrity:
      'sha512-IE0yrIpOT97YS5fg2QpzmPzm8Wmcdf4ueWMn+FiJSI3jgTTQT1u+LUhoYpdfhdHAVxdrNsaBg2C0UXSnOgMoCQ==',
  },
  {
    kube: '1.34',
    client: '1.4.0',
    integrity:
      'sha512-Zge3YvF7DJi264dU1b3wb/GmzR99JhUpqTvp+VGHfwZT+g7EOOYNScDJNZwXy9cszyIGPIs0VHr+kk8e95qqrA==',
  },
  {
    kube: '1.36',
    client: '2.0.1',
    integrity:
      'sha512-evJgmEtgArEYlj6DNkMGjK41IrFK/hEwb5lWVxx0VRBWybQpnvi+2TtA19mLgVfRHfqX5yjHObX6e9W7LEZBjw==',
  },
];

/**
 * One version's API: the model class of each kind it serves, by `apiVersion/kind` (`apps/v1/Deployment` ->
 * `V1Deployment`), and for each model class (`V1Container`, ...) its fields by JSON name.
 * @typedef {{ type: string, format: string, required: boolean }} KubeField
 * @typedef {{ kube: string, client: string, kinds: Record<string, string>,
 *   classes: Record<string, Record<string, KubeField>> }} KubeApi
 */

/** Bumped when the cached table's shape changes, so a stale cache is rebuilt. */
const TABLE_FORMAT = 2;

/** Loaded tables by Kubernetes version, per process. */
const loaded = new Map();

/**
 * The API of Kubernetes `kube` (one of {@link KUBE_APIS}), fetching and reducing its client release on first use
 * (needs the npm registry once; afterwards it works offline). Safe to call many times and concurrently.
 * @param {string} kube e.g. "1.32"
 * @returns {Promise<KubeApi>}
 */
export async function loadKubeApi(kube) {
  const pin = KUBE_APIS.find((p) => p.kube === kube);
  if (!pin) {
    throw new Error(`no API table for Kubernetes ${kube}; known: ${KUBE_APIS.map((p) => p.kube).join(', ')}`);
  }
  let table = loaded.get(kube);
  if (!table) {
    table = prepare(pin).catch((err) => {
      loaded.delete(kube); // let a later call try again (e.g. after the registry came back)
      throw err;
    });
    loaded.set(kube, table);
  }
  return table;
}

/**
 * @param {{ kube: string, client: string, integrity: string }} pin
 * @returns {Promise<KubeApi>}
 */
async function prepare(pin) {
  const file = join(CACHE_DIR, `kubernetes-${pin.kube}-client-node-${pin.client}.json`);
  try {
    const cached = JSON.parse(await readFile(file, 'utf8'));
    if (cached.format === TABLE_FORMAT && cached.client === pin.client) return cached.api;
  } catch {
    // not cached yet (or unreadable): build it below
  }
  await mkdir(CACHE_DIR, { recursive: true });
  // A private directory, renamed results: concurrent or interrupted runs never see a half-written table.
  const work = await mkdtemp(join(CACHE_DIR, 'fetch-'));
  try {
    const spec = `@kubernetes/client-node@${pin.client}`;
    let stdout;
    try {
      ({ stdout } = await execFileAsync('npm', ['pack', '--loglevel=error', spec], { cwd: work }));
    } catch (err) {
      const detail = /** @type {{ stderr?: string }} */ (err).stderr?.trim();
      throw new Error(
        `npm pack ${spec} failed: ${detail || (err instanceof Error ? err.message : String(err))}`,
      );
    }
    const tgz = join(work, stdout.trim().split('\n').pop() ?? '');
    const integrity = `sha512-${createHash('sha512')
      .update(await readFile(tgz))
      .digest('base64')}`;
    if (integrity !== pin.integrity) {
      throw new Error(`${spec} has integrity ${integrity}, expected ${pin.integrity}`);
    }
    await execFileAsync('tar', ['-xzf', tgz, '-C', work, 'package/dist/gen/models', 'package/dist/gen/apis']);
    const api = await reduceModels(work, pin);
    const tmp = join(work, 'table.json');
    await writeFile(tmp, JSON.stringify({ format: TABLE_FORMAT, client: pin.client, api }));
    await rename(tmp, file);
    return api;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/**
 * Reduces the generated models (`dist/gen/models`) and API classes (`dist/gen/apis`) to the version's table.
 * @param {string} work where the package was extracted
 * @param {{ kube: string, client: string }} pin
 * @returns {Promise<KubeApi>}
 */
async function reduceModels(work, pin) {
  const dir = join(work, 'package', 'dist', 'gen', 'models');
  const names = await readdir(dir);
  /** @type {Record<string, Record<string, KubeField>>} */
  const classes = {};
  for (const name of names.filter((n) => n.endsWith('.js'))) {
    const js = await readFile(join(dir, name), 'utf8');
    // Each model names the spec it was generated from. A release also carries models left over from earlier
    // generations (kinds since removed, such as old alpha versions): those are not this version's API.
    const spec = /OpenAPI spec version: v?(?:release-)?(\d+\.\d+)/.exec(js);
    if (!spec || spec[1] !== pin.kube) continue;
    const map = /^(\w+)\.attributeTypeMap = (\[[\s\S]*?\n\]);$/m.exec(js);
    if (!map) continue; // not a model class (enums, helpers)
    const declaration = await readFile(join(dir, name.replace(/\.js$/, '.d.ts')), 'utf8');
    const required = requiredFields(declaration, map[1]);
    /** @type {{ name: string, baseName: string, type: string, format?: string }[]} */
    const attributes = JSON.parse(map[2]);
    classes[map[1]] = Object.fromEntries(
      attributes.map((a) => [
        a.baseName,
        { type: a.type, format: a.format ?? '', required: required.has(a.name) },
      ]),
    );
  }
  const kinds = await servedKinds(join(work, 'package', 'dist', 'gen', 'apis'), classes);
  if (kinds['apps/v1/Deployment'] !== 'V1Deployment' || !classes['V1Container']) {
    throw new Error(`client-node ${pin.client} has no models generated from Kubernetes ${pin.kube} (${dir})`);
  }
  return { kube: pin.kube, client: pin.client, kinds, classes };
}

/**
 * The kinds served, from the API classes' create calls: a POST to a collection (`/api/v1/namespaces/{namespace}/
 * services`, `/apis/apps/v1/deployments`; subresources such as `.../pods/{name}/eviction` are not kinds) whose body
 * is a model of this version. API classes carry no spec version, so one left over from an earlier generation counts
 * only through a model this version still has.
 * @param {string} dir
 * @param {Record<string, Record<string, KubeField>>} classes
 * @returns {Promise<Record<string, string>>} model class by `apiVersion/kind`
 */
async function servedKinds(dir, classes) {
  /** @type {Record<string, string>} */
  const kinds = {};
  for (const name of (await readdir(dir)).filter((n) => n.endsWith('Api.js'))) {
    const js = await readFile(join(dir, name), 'utf8');
    for (const call of js.split(/(?=const localVarPath = ')/).slice(1)) {
      const path =
        /^const localVarPath = '\/(?:api\/(v1)|apis\/([a-z0-9.-]+\/[a-z0-9]+))(?:\/namespaces\/\{namespace\})?\/[a-z]+'/.exec(
          call,
        );
      const body = /ObjectSerializer\.serialize\(body, "(\w+)"/.exec(call);
      if (!path || !body || !/HttpMethod\.POST\b/.test(call) || !classes[body[1]]) continue;
      const kind = /^[A-Za-z]*?V\d+(?:(?:alpha|beta)\d+)?(?=[A-Z])(\w+)$/.exec(body[1]);
      if (kind) kinds[`${path[1] ?? path[2]}/${kind[1]}`] = body[1];
    }
  }
  return kinds;
}

/**
 * The properties a generated class declares without `?`: `'name': string;` is required, `'image'?: string;` is not.
 * @param {string} declaration the class's .d.ts
 * @param {string} className
 * @returns {Set<string>}
 */
function requiredFields(declaration, className) {
  const start = declaration.indexOf(`export declare class ${className} {`);
  if (start < 0) throw new Error(`no declaration of ${className}`);
  const body = declaration.slice(start).replace(/\/\*[\s\S]*?\*\//g, '');
  const required = new Set();
  // Properties are the class body's lines indented by exactly four spaces; nested map types indent deeper.
  for (const match of body.matchAll(/^ {4}'([^']+)'(\?)?:/gm)) {
    if (match[2] === undefined) required.add(match[1]);
  }
  return required;
}

/**
 * What is wrong with `object` for Kubernetes `api.kube`: one message per problem, with the field's path.
 * An apiVersion/kind the version does not serve is a problem too.
 * @param {KubeApi} api
 * @param {unknown} object a parsed manifest
 * @returns {string[]}
 */
export function kubeApiErrors(api, object) {
  if (!isRecord(object) || typeof object['apiVersion'] !== 'string' || typeof object['kind'] !== 'string') {
    return ['not a Kubernetes object (no apiVersion and kind)'];
  }
  const className = api.kinds[`${object['apiVersion']}/${object['kind']}`];
  if (!className) {
    return [`${object['apiVersion']} ${object['kind']} is not in the Kubernetes ${api.kube} API`];
  }
  const errors = [];
  checkValue(api, className, '', object, '', errors);
  return errors;
}

/**
 * Fields holding resource quantities. The client types a quantity as a string, but Kubernetes also takes a JSON
 * number (`cpu: 1`), as its OpenAPI v3 document says (string or number).
 */
const QUANTITY_FIELDS = new Set([
  'V1ResourceRequirements.limits',
  'V1ResourceRequirements.requests',
  'V1VolumeResourceRequirements.limits',
  'V1VolumeResourceRequirements.requests',
  'V1EmptyDirVolumeSource.sizeLimit',
  'V1LimitRangeItem.default',
  'V1LimitRangeItem.defaultRequest',
  'V1LimitRangeItem.max',
  'V1LimitRangeItem.min',
  'V1LimitRangeItem.maxLimitRequestRatio',
  'V1ResourceQuotaSpec.hard',
  'V1PodSpec.overhead',
  'V1PersistentVolumeSpec.capacity',
  'V1CSIStorageCapacity.capacity',
  'V1CSIStorageCapacity.maximumVolumeSize',
]);

const INTEGER_FORMATS = new Set(['int32', 'int64']);
const DATE_FORMATS = new Set(['date-time', 'date-time-micro']);
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/**
 * Checks `value` against the generated type `type` (with the field's `format`), appending problems to `errors`.
 * @param {KubeApi} api
 * @param {string} type e.g. "Array<V1Container>", "{ [key: string]: string; }", "IntOrString", "V1PodSpec"
 * @param {string} format e.g. "int32", "byte", ""
 * @param {unknown} value
 * @param {string} path
 * @param {string[]} errors
 */
function checkValue(api, type, format, value, path, errors) {
  const where = path || '(root)';
  if (value === null || value === undefined) {
    errors.push(`${where}: null`);
    return;
  }
  const array = /^Array<(.+)>$/.exec(type);
  const map = /^\{ \[key: string\]: (.+); \}$/.exec(type);
  if (array) {
    if (!Array.isArray(value)) errors.push(`${where}: must be a list`);
    else value.forEach((item, i) => checkValue(api, array[1], format, item, `${path}[${i}]`, errors));
  } else if (map) {
    if (!isRecord(value)) errors.push(`${where}: must be a map`);
    else {
      for (const [key, item] of Object.entries(value)) {
        checkValue(api, map[1], format, item, `${path}[${JSON.stringify(key)}]`, errors);
      }
    }
  } else if (type === 'Quantity') {
    if (typeof value !== 'string' && (typeof value !== 'number' || !Number.isFinite(value)))
      errors.push(`${where}: must be a quantity (a string or a number)`);
  } else if (type === 'string' || DATE_FORMATS.has(format)) {
    if (typeof value !== 'string') errors.push(`${where}: must be a string, not ${JSON.stringify(value)}`);
    else if (format === 'byte' && !BASE64.test(value)) errors.push(`${where}: must be base64`);
    else if (DATE_FORMATS.has(format) && Number.isNaN(Date.parse(value)))
      errors.push(`${where}: must be a timestamp`);
  } else if (type === 'Date' || type === 'V1MicroTime') {
    if (typeof value !== 'string' || Number.isNaN(Date.parse(value)))
      errors.push(`${where}: must be a timestamp`);
  } else if (type === 'number') {
    if (typeof value !== 'number' || !Number.isFinite(value)) errors.push(`${where}: must be a number`);
    else if (INTEGER_FORMATS.has(format) && !Number.isInteger(value))
      errors.push(`${where}: must be an integer`);
  } else if (type === 'boolean') {
    if (typeof value !== 'boolean')
      errors.push(`${where}: must be true or false, not ${JSON.stringify(value)}`);
  } else if (type === 'IntOrString') {
    if (typeof value !== 'string' && !Number.isInteger(value))
      errors.push(`${where}: must be an integer or a string`);
  } else if (type === 'object') {
    if (!isRecord(value)) errors.push(`${where}: must be an object`);
  } else if (type === 'any') {
    // free-form (RawExtension and the like)
  } else {
    const fields = api.classes[type];
    if (!fields) throw new Error(`Kubernetes ${api.kube} API table: unknown type ${type} at ${where}`);
    if (!isRecord(value)) {
      errors.push(`${where}: must be an object (${type})`);
      return;
    }
    for (const [key, item] of Object.entries(value)) {
      const field = fields[key];
      const at = path ? `${path}.${key}` : key;
      if (!field) errors.push(`${at}: unknown field (not in ${type} of Kubernetes ${api.kube})`);
      else if (item === null)
        continue; // Kubernetes reads a null field as one not set
      else {
        const fieldType = QUANTITY_FIELDS.has(`${type}.${key}`)
          ? field.type.replace(/string(?=(?:; \})?$)/, 'Quantity')
          : field.type;
        checkValue(api, fieldType, field.format, item, at, errors);
      }
    }
    for (const [key, field] of Object.entries(fields)) {
      if (field.required && (value[key] === undefined || value[key] === null))
        errors.push(`${path ? `${path}.${key}` : key}: required`);
    }
  }
}

/**
 * @param {unknown} value
 * @returns {value is Record<string, unknown>}
 */
function isRecord(value) {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * Whether the group of `apiVersion` (`apps/v1` -> `apps`, `v1` -> the core group) is Kubernetes' own: one of `apis`
 * serves it, or it has no dot, which a custom resource's group must have (so `extensions`, removed in 1.16, is still
 * told apart). Objects of other groups are custom resources, which these tables do not describe.
 * @param {readonly KubeApi[]} apis
 * @param {string} apiVersion
 * @returns {boolean}
 */
export function isBuiltInGroup(apis, apiVersion) {
  const group = apiVersion.includes('/') ? apiVersion.slice(0, apiVersion.indexOf('/')) : '';
  if (!group.includes('.')) return true;
  return apis.some((api) => Object.keys(api.kinds).some((key) => key.startsWith(`${group}/`)));
}

/**
 * Command line: validates the manifests on stdin for the versions named (all of {@link KUBE_APIS} without any).
 * Objects of a group that is not Kubernetes' own (custom resources, such as the prometheus-operator's) are
 * reported as skipped. Exits 1 when any object is invalid for any version, or the input is not YAML or holds no object; 2 on
 * bad arguments; 3 when a version's API cannot be loaded (the npm registry unreachable on first use).
 * @param {string[]} argv
 */
async function main(argv) {
  const versions = argv.length > 0 ? argv : KUBE_APIS.map((p) => p.kube);
  for (const v of versions) {
    if (!KUBE_APIS.some((p) => p.kube === v)) {
      process.stderr.write(
        `kube-api: unknown version ${v}; known: ${KUBE_APIS.map((p) => p.kube).join(', ')}\n`,
      );
      process.exitCode = 2;
      return;
    }
  }
  const documents = parseAllDocuments(readFileSync(0, 'utf8'));
  const yamlErrors = documents.flatMap((doc) => doc.errors.map((e) => e.message));
  if (yamlErrors.length > 0) {
    process.stderr.write(yamlErrors.map((e) => `kube-api: invalid YAML: ${e}\n`).join(''));
    process.exitCode = 1;
    return;
  }
  const objects = documents.map((doc) => doc.toJS()).filter((o) => o !== null && o !== undefined);
  if (objects.length === 0) {
    process.stderr.write('kube-api: no objects on stdin (did the command before the pipe fail?)\n');
    process.exitCode = 1;
    return;
  }
  let apis;
  try {
    apis = await Promise.all(versions.map((v) => loadKubeApi(v)));
  } catch (err) {
    process.stderr.write(`kube-api: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 3;
    return;
  }
  let invalid = 0;
  for (const api of apis) {
    for (const object of objects) {
      const name = `${object?.kind ?? '?'} ${object?.metadata?.name ?? '?'}`;
      if (typeof object?.apiVersion === 'string' && !isBuiltInGroup(apis, object.apiVersion)) {
        process.stdout.write(
          `${api.kube} ${name}: skipped (${object.apiVersion} is not a built-in API group)\n`,
        );
        continue;
      }
      const errors = kubeApiErrors(api, object);
      invalid += errors.length > 0 ? 1 : 0;
      process.stdout.write(
        errors.length === 0
          ? `${api.kube} ${name}: valid\n`
          : errors.map((e) => `${api.kube} ${name}: ${e}\n`).join(''),
      );
    }
  }
  process.exitCode = invalid > 0 ? 1 : 0;
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  main(process.argv.slice(2)).catch((err) => {
    process.stderr.write(`kube-api: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  });
}
