/**
 * `metering-sidecar doctor` (docs/operations.md, "Doctor"): what the buyer's platform gives the sidecar, and the
 * mistakes that keep metering from working there, each with its fix. It reads the environment the way the AWS
 * SDK's default credential chain and Region resolution do (docs/aws-rules.md §4.3-§4.5), asks the ECS task
 * metadata endpoint where the task runs, and tries the Metering endpoint: a connection, and the time its answer
 * carries. It never signs or sends a request to AWS. The same findings are logged when startup fails.
 */
import { existsSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { connect } from 'node:net';
import { homedir } from 'node:os';
import { join } from 'node:path';
import type { PodIdentity } from './config.js';
import { platformIdentity, type PlatformIdentity } from './platform.js';

/** One problem found, with what to do about it. `error`: metering will not work as it is. */
export interface Finding {
  readonly code: string;
  readonly severity: 'error' | 'warning';
  readonly problem: string;
  readonly fix: string;
}

/** Which provider of the SDK's default chain would supply the credentials (docs/aws-rules.md §4.3). */
export type CredentialSource =
  | 'static-keys'
  | 'shared-config'
  | 'irsa'
  | 'ecs-task-role'
  | 'eks-pod-identity'
  | 'container-endpoint'
  | 'instance-role'
  | 'none';

/** What `doctor` found. */
export interface Diagnosis {
  readonly platform: PlatformIdentity;
  readonly credentials: CredentialSource;
  readonly region: string | undefined;
  /** The Metering endpoint the sidecar would call. */
  readonly endpoint: string | undefined;
  /** Milliseconds the local clock is ahead of the endpoint's (negative: behind), when it answered. */
  readonly clockOffsetMs: number | undefined;
  readonly findings: readonly Finding[];
}

/** What {@link diagnose} needs beyond the environment; tests point these at stand-ins. */
export interface DoctorOptions {
  readonly pod?: PodIdentity;
  /** Where `~/.aws` is looked for; the process's home directory by default. */
  readonly homeDir?: string;
  /** How long each network check may take. */
  readonly timeoutMs?: number;
  readonly now?: () => number;
}

/** A clock further off than this makes signed requests fail and records fall outside AWS's hour. */
export const MAX_CLOCK_OFFSET_MS = 5 * 60_000;

/** The IAM policy document the task role or the IRSA role needs (in the repository and the image's docs). */
const POLICY = 'ecs/task-role-policy.json (aws-marketplace:RegisterUsage and aws-marketplace:MeterUsage)';

/** The hosts of EKS Pod Identity's credential endpoint (docs/aws-rules.md §4.4). */
const POD_IDENTITY_HOSTS = new Set(['169.254.170.23', '[fd00:ec2::23]']);

type Env = Readonly<Record<string, string | undefined>>;

/**
 * Diagnoses the platform the sidecar runs on from `env` (normally `process.env`). Never rejects: what cannot be
 * checked is a finding.
 */
export async function diagnose(env: Env, options: DoctorOptions = {}): Promise<Diagnosis> {
  const timeoutMs = options.timeoutMs ?? 3000;
  const now = options.now ?? Date.now;
  const findings: Finding[] = [];
  const { identity: platform, problem } = await platformIdentity(env, options.pod ?? {});
  if (problem !== undefined) {
    findings.push({
      code: 'DOCTOR_TASK_METADATA',
      severity: 'warning',
      problem,
      fix: 'check that the task runs on a current ECS agent or Fargate platform version (task metadata v4)',
    });
  }
  const credentials = credentialSource(env, options.homeDir ?? homedir());
  findings.push(...environmentFindings(env, platform, options.homeDir ?? homedir()));
  const region = env['AWS_REGION']?.trim() || undefined;
  const override = endpointOverride(env);
  const endpoint =
    override?.url ??
    (region === undefined
      ? undefined
      : `https://metering.marketplace.${region}.amazonaws.com${region.startsWith('cn-') ? '.cn' : ''}`);

  let clockOffsetMs: number | undefined;
  let url: URL | undefined;
  try {
    url = endpoint === undefined ? undefined : new URL(endpoint);
  } catch {
    findings.push({
      code: 'DOCTOR_NO_ROUTE',
      severity: 'error',
      problem: `the endpoint ${withoutUserinfo(endpoint ?? '')} is not a URL`,
      fix: `set ${override?.variable ?? 'AWS_REGION'} right, or unset the override`,
    });
  }
  if (url !== undefined) {
    const port = Number(url.port || (url.protocol === 'https:' ? 443 : 80));
    try {
      await tcpConnect(url.hostname, port, timeoutMs);
      const serverMs = await serverDate(url, timeoutMs);
      if (serverMs !== undefined) clockOffsetMs = now() - serverMs;
    } catch (err) {
      findings.push({
        code: 'DOCTOR_NO_ROUTE',
        severity: 'error',
        problem: `cannot reach ${url.host} (${err instanceof Error ? err.message : String(err)})`,
        fix: `allow egress to ${url.host} on port ${port}: a NAT gateway, or a VPC interface endpoint for com.amazonaws.${region ?? 'REGION'}.metering.marketplace with private DNS, and security groups and network policies that let the pod or task out`,
      });
    }
  }
  if (clockOffsetMs !== undefined && Math.abs(clockOffsetMs) > MAX_CLOCK_OFFSET_MS) {
    findings.push({
      code: 'DOCTOR_CLOCK_OFF',
      severity: 'error',
      problem: `the clock is ${Math.round(Math.abs(clockOffsetMs) / 1000)} s ${clockOffsetMs > 0 ? 'ahead of' : 'behind'} the endpoint's`,
      fix: 'synchronise the host clock (chrony or NTP; on EC2 the Amazon Time Sync Service at 169.254.169.123): AWS refuses signed requests and records stamped that far off',
    });
  }
  return {
    platform,
    credentials,
    region,
    endpoint: endpoint === undefined ? undefined : withoutUserinfo(endpoint),
    clockOffsetMs,
    findings,
  };
}

/**
 * The findings the environment alone shows (no network): the credential source, the Region against the task's
 * zone, an endpoint override. Cheap enough for `/readyz`, which names them beside a failed entitlement check.
 */
export function environmentFindings(env: Env, platform: PlatformIdentity, homeDir: string): Finding[] {
  const findings = credentialFindings(credentialSource(env, homeDir), platform);
  const region = env['AWS_REGION']?.trim() || undefined;
  const platformRegion = regionOf(platform.availabilityZone);
  if (region === undefined) {
    findings.push({
      code: 'DOCTOR_NO_REGION',
      severity: 'error',
      problem: `AWS_REGION is not set${env['AWS_DEFAULT_REGION'] ? ' (the SDK does not read AWS_DEFAULT_REGION)' : ''}`,
      fix: `set AWS_REGION to the Region the task or pod runs in${platformRegion ? ` (${platformRegion})` : ''}: ECS sets it; on EKS the chart's sidecar.region, or the IRSA webhook's Region`,
    });
  } else if (platformRegion !== undefined && platformRegion !== region) {
    findings.push({
      code: 'DOCTOR_REGION_MISMATCH',
      severity: 'error',
      problem: `AWS_REGION is ${region}, but the task runs in ${platformRegion} (${platform.availabilityZone})`,
      fix: `set AWS_REGION=${platformRegion}: AWS Marketplace refuses metering from another Region (InvalidEndpointRegionException); never hard-code it`,
    });
  }
  const override = endpointOverride(env);
  if (override !== undefined) {
    findings.push({
      code: 'DOCTOR_ENDPOINT_OVERRIDE',
      severity: 'warning',
      problem: `${override.variable}=${withoutUserinfo(override.url)}: metering goes there instead of AWS Marketplace's regional endpoint`,
      fix: `unset ${override.variable} unless it names a VPC endpoint of Marketplace Metering (with private DNS none is needed); for local tests run --local`,
    });
  }
  return findings;
}

/** The provider the SDK's default chain would take, in the chain's order (docs/aws-rules.md §4.3). */
export function credentialSource(env: Env, homeDir: string): CredentialSource {
  const set = (name: string): boolean => (env[name]?.trim() ?? '') !== '';
  if (set('AWS_ACCESS_KEY_ID') && set('AWS_SECRET_ACCESS_KEY') && !set('AWS_PROFILE')) return 'static-keys';
  // A credentials file is taken before IRSA or the task role; a config file alone (a Region, say) is, only when
  // AWS_PROFILE names a profile that could hold a role or SSO settings. Otherwise the chain falls through.
  const credentialsFile = env['AWS_SHARED_CREDENTIALS_FILE'] ?? join(homeDir, '.aws', 'credentials');
  const configFile = env['AWS_CONFIG_FILE'] ?? join(homeDir, '.aws', 'config');
  if (existsSync(credentialsFile) || (set('AWS_PROFILE') && existsSync(configFile))) return 'shared-config';
  if (set('AWS_WEB_IDENTITY_TOKEN_FILE') && set('AWS_ROLE_ARN')) return 'irsa';
  if (set('AWS_CONTAINER_CREDENTIALS_RELATIVE_URI')) return 'ecs-task-role';
  const full = env['AWS_CONTAINER_CREDENTIALS_FULL_URI']?.trim();
  if (full) {
    let host = '';
    try {
      host = new URL(full).host;
    } catch {
      // not a URL: the SDK refuses it too
    }
    return POD_IDENTITY_HOSTS.has(host) ? 'eks-pod-identity' : 'container-endpoint';
  }
  if ((env['AWS_EC2_METADATA_DISABLED'] ?? '').toLowerCase() === 'true') return 'none';
  return 'instance-role';
}

function credentialFindings(source: CredentialSource, platform: PlatformIdentity): Finding[] {
  const ecs = 'give the task a task role (taskRoleArn, not the execution role)';
  const eks =
    "give the pod's ServiceAccount an IAM role with IRSA (annotation eks.amazonaws.com/role-arn, the chart's serviceAccount.roleArn; docs/deploy-eks.md)";
  const own = `${platform.platform === 'ecs' ? ecs : platform.platform === 'kubernetes' ? eks : `on ECS ${ecs}, on EKS ${eks}`}, with the policy ${POLICY}`;
  switch (source) {
    case 'static-keys':
      return [
        {
          code: 'DOCTOR_STATIC_KEYS',
          severity: 'error',
          problem:
            'AWS_ACCESS_KEY_ID is set: the SDK signs with long-term keys, which AWS Marketplace refuses for metering',
          fix: `remove AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from the task or pod, and ${own}`,
        },
      ];
    case 'shared-config':
      return [
        {
          code: 'DOCTOR_SHARED_CONFIG',
          severity: 'error',
          problem:
            'AWS_PROFILE or a shared credentials or config file (~/.aws) is present: the SDK takes it before the task role or IRSA',
          fix: `remove AWS_PROFILE and the ~/.aws files from the image or volume, and ${own}`,
        },
      ];
    case 'eks-pod-identity':
      return [
        {
          code: 'DOCTOR_POD_IDENTITY',
          severity: 'error',
          problem:
            'the credentials come from EKS Pod Identity, which AWS Marketplace does not accept for metering',
          fix: `delete the pod identity association for this ServiceAccount and ${own}`,
        },
      ];
    case 'instance-role':
      return [
        {
          code: 'DOCTOR_INSTANCE_ROLE',
          severity: 'error',
          problem:
            "no task or pod credentials: the SDK would fall back to the node's instance role, which AWS Marketplace refuses for metering",
          fix: own,
        },
      ];
    case 'none':
      return [
        {
          code: 'DOCTOR_NO_CREDENTIALS',
          severity: 'error',
          problem:
            'no credentials: nothing in the environment, and the instance metadata service is disabled',
          fix: own,
        },
      ];
    case 'container-endpoint':
      return [
        {
          code: 'DOCTOR_CONTAINER_ENDPOINT',
          severity: 'warning',
          problem:
            'the credentials come from AWS_CONTAINER_CREDENTIALS_FULL_URI, neither the ECS task role nor IRSA',
          fix: `make sure it serves the task's or pod's own role; otherwise ${own}`,
        },
      ];
    case 'irsa':
    case 'ecs-task-role':
      return [];
  }
}

/** `url` without a user name or password in it, for logs and answers. */
function withoutUserinfo(url: string): string {
  return url.replace(/^([a-z][a-z0-9+.-]*:\/\/)[^/@]*@/i, '$1');
}

/** The Region of an availability zone (`us-east-2b`, `use1-az1` has none). */
function regionOf(zone: string | undefined): string | undefined {
  const match = zone === undefined ? null : /^([a-z]{2}(-[a-z]+)+-\d+)[a-z]$/.exec(zone);
  return match?.[1];
}

/** The endpoint override the SDK or the sidecar would use, if any. */
function endpointOverride(env: Env): { variable: string; url: string } | undefined {
  for (const variable of ['AWS_ENDPOINT_URL_MARKETPLACE_METERING', 'AWS_ENDPOINT_URL']) {
    const url = env[variable]?.trim();
    if (url) return { variable, url };
  }
  return undefined;
}

function tcpConnect(host: string, port: number, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host, port });
    const timer = setTimeout(() => socket.destroy(new Error(`no connection in ${timeoutMs} ms`)), timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.destroy();
      resolve();
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

/** The `Date` of the endpoint's answer to an unsigned GET (AWS answers every request with one), if any. */
function serverDate(url: URL, timeoutMs: number): Promise<number | undefined> {
  return new Promise((resolve) => {
    const request = url.protocol === 'https:' ? httpsRequest : httpRequest;
    const req = request(url, { method: 'GET', timeout: timeoutMs }, (res) => {
      res.resume();
      const date = res.headers.date === undefined ? NaN : Date.parse(res.headers.date);
      resolve(Number.isFinite(date) ? date : undefined);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(undefined));
    req.end();
  });
}
