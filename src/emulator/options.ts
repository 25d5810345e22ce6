/**
 * The emulator's options: what a test or the CLI may configure, the checks that refuse a bad value with a
 * `TypeError` naming it, and the RegisterUsage signing key (given, or generated on first use).
 *
 * References: `§` numbers are sections of docs/aws-rules.md, the AWS rules with their public sources.
 * @see docs/aws-rules.md §2.1, §3.6-3.7 (RegisterUsage and its token)
 */
import { KeyObject, createPublicKey, generateKeyPairSync } from 'node:crypto';

import type { EmulatorCall } from './emulator.js';
import { AWS_QUOTAS, quotaProblem, type QuotaRates } from './quota.js';
import {
  EMULATOR_ENTITLEMENTS,
  MAX_PUBLIC_KEY_VERSION,
  MIN_PUBLIC_KEY_VERSION,
  isEmulatorEntitlement,
  signJwt,
} from './registerUsage.js';
import type { EmulatorEntitlement } from './registerUsage.js';

/**
 * Size of the RSA key the emulator generates when no `signingKey` is given: 2048 bits, the smallest size
 * common JWT libraries (e.g. `jose`) accept for PS256, so a sidecar may verify with any of them.
 * @see docs/aws-rules.md §3.7
 */
const SIGNING_KEY_BITS = 2048;

/** The Region an emulator stands for when none is given. */
export const DEFAULT_REGION = 'us-east-1';

/** A Region name: `us-east-1`, `eu-central-2`, `us-gov-west-1`, `cn-northwest-1`. */
const REGION_NAME = /^[a-z]{2}(-[a-z]+)+-\d{1,2}$/;

/** Options of {@link MeteringEmulator}. */
export interface EmulatorOptions {
  /** The product code the emulated product was published with; any other gets `InvalidProductCodeException`. */
  productCode: string;
  /**
   * Dimension allow-list, for MeterUsage and BatchMeterUsage alike (list a container product's and a SaaS
   * listing's dimensions together); `undefined` accepts any dimension (1..255 characters).
   */
  dimensions?: readonly string[];
  /**
   * The Region the emulator stands for (default `us-east-1`): a request signed for another Region is refused
   * as AWS refuses a hard-coded Region (`InvalidEndpointRegionException` for MeterUsage, `InvalidRegionException`
   * for RegisterUsage, 403 `InvalidSignatureException` for the SaaS operations).
   * @see docs/aws-rules.md §3.9
   */
  region?: string;
  /** Emulator clock in epoch ms, used for the timestamp window and `atMs`; default `Date.now`. */
  now?: () => number;
  /**
   * How a DryRun that passes every check is answered: `'error'` (default) = 400 `DryRunOperation`,
   * `'success'` = 200 `{}`. AWS's choice is ambiguous (§3.4), so a sidecar must accept both.
   */
  dryRunResponse?: 'error' | 'success';
  /**
   * Called after each AWS-path call is answered (or, for the `'Timeout'` fault, once it has been decided
   * never to answer). Runs synchronously on the server's event-loop turn; if it throws, the error is
   * reported as a process warning and the emulator carries on.
   */
  onCall?: (call: EmulatorCall) => void;
  /**
   * The product's current public key version (an integer 1..2^31-1, default 1). RegisterUsage with any
   * other `PublicKeyVersion` gets `InvalidPublicKeyVersionException`, and tokens carry this version.
   * @see docs/aws-rules.md §2.1, §3.7
   */
  publicKeyVersion?: number;
  /**
   * Entitlement state at start (default `'entitled'`); change it at run time with
   * {@link MeteringEmulator.setEntitlement} or `POST /emulator/entitlement`. Unlike AWS, which throws the
   * entitlement errors only on the first call of a task or pod (§3.6), the emulator applies the current
   * state to every RegisterUsage call, so a test can flip it and call again with the same credentials.
   * @see docs/aws-rules.md §3.6
   */
  entitlement?: EmulatorEntitlement;
  /**
   * When set (epoch ms, finite), every successful RegisterUsage also answers
   * `PublicKeyRotationTimestamp` (epoch seconds on the wire, a `Date` in the SDK), as AWS does once the
   * key version has expired. When unset, the field is omitted, as AWS does for a current key.
   * @see docs/aws-rules.md §2.1, §1.4, §3.7
   */
  publicKeyRotatedAtMs?: number;
  /**
   * Private RSA key (`rsa` or `rsa-pss` `KeyObject`) that signs RegisterUsage tokens, for tests that need
   * a known key pair. When absent, the emulator generates its own {@link SIGNING_KEY_BITS}-bit RSA key on
   * first use (first successful RegisterUsage or first read of `publicKeyPem`) and keeps it for its lifetime.
   * @see docs/aws-rules.md §3.7
   */
  signingKey?: KeyObject;
  /**
   * The account's request quota in calls per second per operation (e.g. `AWS_QUOTAS`, or `{ MeterUsage: 1 }`
   * to put a small fleet under a large fleet's pressure); default none. Change it at run time with
   * {@link MeteringEmulator.setQuota} or `POST /emulator/quota`.
   * @see docs/aws-rules.md §3.5
   */
  quota?: QuotaRates;
}

/** The options after their checks, with defaults applied. */
export interface EmulatorSettings {
  readonly productCode: string;
  readonly region: string;
  readonly dimensions: readonly string[] | undefined;
  readonly now: () => number;
  readonly dryRunResponse: 'error' | 'success';
  readonly onCall: ((call: EmulatorCall) => void) | undefined;
  readonly publicKeyVersion: number;
  readonly publicKeyRotatedAtMs: number | undefined;
  readonly entitlement: EmulatorEntitlement;
  readonly signingKey: KeyObject | undefined;
  readonly quota: QuotaRates;
}

/** The RegisterUsage signing key with its public half as SPKI PEM. */
export interface Signer {
  readonly privateKey: KeyObject;
  readonly publicKeyPem: string;
}

/**
 * Checks `options` and applies the defaults. Throws `TypeError` when `productCode` is not a string, `region`
 * is not a Region name,
 * `dimensions` is given but empty (no call could ever succeed), `publicKeyVersion` is not an integer
 * 1..2^31-1, `entitlement` is not an {@link EmulatorEntitlement}, `publicKeyRotatedAtMs` is not a finite
 * number, `signingKey` is not a private RSA key that can sign PS256, or `quota` is not a quota.
 */
export function emulatorSettings(options: EmulatorOptions): EmulatorSettings {
  if (typeof options.productCode !== 'string')
    throw new TypeError('EmulatorOptions.productCode must be a string');
  if (options.dimensions !== undefined && options.dimensions.length === 0) {
    throw new TypeError(
      'EmulatorOptions.dimensions must list at least one dimension, or be left out to allow any',
    );
  }
  const publicKeyVersion = checkPublicKeyVersion(options.publicKeyVersion ?? MIN_PUBLIC_KEY_VERSION);
  const entitlement = checkEntitlement(options.entitlement ?? 'entitled', 'EmulatorOptions.entitlement');
  if (options.publicKeyRotatedAtMs !== undefined && !Number.isFinite(options.publicKeyRotatedAtMs)) {
    throw new TypeError('EmulatorOptions.publicKeyRotatedAtMs must be a finite epoch-ms number, or left out');
  }
  const region = options.region ?? DEFAULT_REGION;
  if (typeof region !== 'string' || !REGION_NAME.test(region)) {
    throw new TypeError(
      `EmulatorOptions.region must be a Region name such as us-east-1 (got ${JSON.stringify(region)})`,
    );
  }
  return {
    productCode: options.productCode,
    region,
    dimensions: options.dimensions === undefined ? undefined : [...options.dimensions],
    now: options.now ?? Date.now,
    dryRunResponse: options.dryRunResponse ?? 'error',
    onCall: options.onCall,
    publicKeyVersion,
    publicKeyRotatedAtMs: options.publicKeyRotatedAtMs,
    entitlement,
    signingKey: options.signingKey === undefined ? undefined : checkSigningKey(options.signingKey),
    quota: checkQuota(options.quota ?? {}, 'EmulatorOptions.quota'),
  };
}

/** Refuses anything but an {@link EmulatorEntitlement}, naming `where` in the `TypeError`. */
export function checkEntitlement(state: unknown, where: string): EmulatorEntitlement {
  if (!isEmulatorEntitlement(state)) {
    throw new TypeError(
      `${where} must be one of ${EMULATOR_ENTITLEMENTS.join(', ')} (got ${JSON.stringify(state)})`,
    );
  }
  return state;
}

/** Refuses anything but a quota of AWS operations (see `quotaProblem`), naming `where` in the `TypeError`. */
export function checkQuota(rates: unknown, where: string): QuotaRates {
  const problem = quotaProblem(rates, Object.keys(AWS_QUOTAS));
  if (problem !== undefined) throw new TypeError(`${where}: ${problem}`);
  return Object.freeze({ ...(rates as QuotaRates) });
}

/**
 * The signer for `privateKey`, or for a freshly generated {@link SIGNING_KEY_BITS}-bit RSA key when it is
 * `undefined` (0.1-0.5 s of CPU, so callers make it only when a token is first needed).
 */
export function makeSigner(privateKey: KeyObject | undefined): Signer {
  const key = privateKey ?? generateKeyPairSync('rsa', { modulusLength: SIGNING_KEY_BITS }).privateKey;
  const publicKeyPem = createPublicKey(key).export({ type: 'spki', format: 'pem' }).toString();
  return { privateKey: key, publicKeyPem };
}

function checkPublicKeyVersion(version: number): number {
  if (!Number.isInteger(version) || version < MIN_PUBLIC_KEY_VERSION || version > MAX_PUBLIC_KEY_VERSION) {
    throw new TypeError(
      `EmulatorOptions.publicKeyVersion must be an integer from ${MIN_PUBLIC_KEY_VERSION} to ${MAX_PUBLIC_KEY_VERSION} (got ${version})`,
    );
  }
  return version;
}

/** Accepts a private RSA key that signs PS256 (checked by signing a probe), else throws `TypeError`. */
function checkSigningKey(key: KeyObject): KeyObject {
  if (!(key instanceof KeyObject)) {
    throw new TypeError(
      'EmulatorOptions.signingKey must be a KeyObject, e.g. from crypto.createPrivateKey(pem)',
    );
  }
  const isRsa = key.asymmetricKeyType === 'rsa' || key.asymmetricKeyType === 'rsa-pss';
  if (key.type !== 'private' || !isRsa) {
    throw new TypeError(
      `EmulatorOptions.signingKey must be a private RSA KeyObject (got a ${key.type} ${key.asymmetricKeyType ?? 'secret'} key)`,
    );
  }
  try {
    signJwt({}, key);
  } catch (error) {
    // An rsa-pss key restricted to another hash or a larger salt cannot sign PS256.
    throw new TypeError('EmulatorOptions.signingKey cannot sign PS256 (RSA-PSS, SHA-256, 32-byte salt)', {
      cause: error,
    });
  }
  return key;
}
