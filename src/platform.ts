/**
 * Where the sidecar runs, as the platform tells it: on ECS, the task's ARN, cluster and launch type from the
 * task metadata endpoint (ECS_CONTAINER_METADATA_URI_V4, which ECS sets in every container); on Kubernetes, the
 * pod's namespace, name and UID from the downward API (the chart sets METERING_POD_NAMESPACE, METERING_POD_NAME
 * and METERING_POD_UID, read by ./config.ts). Each record the sidecar seals carries it, so the reconciliation export can say which
 * task or pod billed what (docs/operations.md, "Reconciliation export").
 */
import { request } from 'node:http';
import { hostname } from 'node:os';
import type { PodIdentity } from './config.js';

/** The platform identity of one sidecar. Fields the platform does not tell are absent. */
export interface PlatformIdentity {
  readonly platform: 'ecs' | 'kubernetes' | 'other';
  /** ECS: `FARGATE` or `EC2`, as the task metadata says. */
  readonly launchType?: string;
  readonly taskArn?: string;
  readonly cluster?: string;
  /** ECS: the availability zone the task runs in (its Region is the zone without the final letter). */
  readonly availabilityZone?: string;
  readonly podNamespace?: string;
  readonly podName?: string;
  readonly podUid?: string;
  /** The host name (on ECS and Kubernetes, the task's or pod's). */
  readonly host: string;
}

/** How long the task metadata endpoint may take; it answers in milliseconds on a healthy task. */
const METADATA_TIMEOUT_MS = 2000;

type Env = Readonly<Record<string, string | undefined>>;

/**
 * The platform identity: on ECS from the task metadata endpoint that `env` names, on Kubernetes from `pod` (the
 * configuration's METERING_POD_* variables). Never rejects: what cannot be read is left out, and `problem` says
 * why (for a warning).
 */
export async function platformIdentity(
  env: Env,
  pod: PodIdentity,
  host: string = hostname(),
): Promise<{ identity: PlatformIdentity; problem?: string }> {
  const metadataUri = env['ECS_CONTAINER_METADATA_URI_V4']?.trim();
  if (metadataUri) {
    try {
      const task = await getJson(`${metadataUri.replace(/\/$/, '')}/task`, METADATA_TIMEOUT_MS);
      return { identity: { platform: 'ecs', ...ecsFields(task), host } };
    } catch (err) {
      return {
        identity: { platform: 'ecs', host },
        problem: `the ECS task metadata endpoint did not answer (${err instanceof Error ? err.message : String(err)}); records are exported without the task ARN`,
      };
    }
  }
  const fields = {
    ...field('podNamespace', pod.namespace),
    ...field('podName', pod.name),
    ...field('podUid', pod.uid),
  };
  if (env['KUBERNETES_SERVICE_HOST'] !== undefined || Object.keys(fields).length > 0) {
    return { identity: { platform: 'kubernetes', ...fields, host } };
  }
  return { identity: { platform: 'other', host } };
}

/** The fields of an ECS task metadata (v4) `/task` answer that identify the task. */
function ecsFields(task: unknown): Partial<PlatformIdentity> {
  if (typeof task !== 'object' || task === null) return {};
  const t = task as Record<string, unknown>;
  return {
    ...field('taskArn', t['TaskARN']),
    ...field('cluster', t['Cluster']),
    ...field('launchType', t['LaunchType']),
    ...field('availabilityZone', t['AvailabilityZone']),
  };
}

function field<K extends string>(name: K, value: unknown): Partial<Record<K, string>> {
  return typeof value === 'string' && value.trim() !== ''
    ? ({ [name]: value.trim() } as Record<K, string>)
    : {};
}

/** Largest task metadata answer read; a real one is a few kilobytes. */
const METADATA_MAX_BYTES = 1024 * 1024;

/**
 * GET of a JSON document over plain HTTP (the metadata endpoint is link-local, never TLS), answered whole within
 * `timeoutMs`, however slowly it trickles in.
 */
function getJson(url: string, timeoutMs: number): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const deadline = setTimeout(() => req.destroy(new Error(`no answer in ${timeoutMs} ms`)), timeoutMs);
    const req = request(url, { method: 'GET' }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        body += chunk;
        if (body.length > METADATA_MAX_BYTES) req.destroy(new Error('answer over 1 MiB'));
      });
      res.on('end', () => {
        if (res.statusCode !== 200) return reject(new Error(`HTTP ${res.statusCode}`));
        try {
          resolve(JSON.parse(body));
        } catch {
          reject(new Error('not JSON'));
        }
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.on('close', () => clearTimeout(deadline));
    req.end();
  });
}
