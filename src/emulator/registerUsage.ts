/**
 * RegisterUsage as the Marketplace Metering Service answers it, as pure functions: `validateRegisterUsage`
 * turns a decoded JSON body into a typed request or the AWS error for the first broken rule (model
 * constraints, product code, public key version, entitlement), `registerUsageClaims` builds the payload of
 * the `Signature` token and `signJwt` signs it as PS256. No I/O, no clock (the caller passes the instant),
 * no state: the emulator (`emulator.ts`) owns the key, the entitlement state and token tampering.
 *
 * References: `§` numbers are sections of docs/aws-rules.md, the AWS rules with their public sources.
 * @see docs/aws-rules.md §2.1 (RegisterUsage), §2.6 (errors), §3.6 (semantics), §3.7 (signature)
 */
import { constants, sign } from 'node:crypto';
import type { KeyObject } from 'node:crypto';

import { readMember, validationError } from './awsJson.js';
import type { ServiceError } from './awsJson.js';

/**
 * Length limit of `ProductCode` (0..255 characters; the older botocore model said 1..255, the current
 * model allows the empty string).
 * @see docs/aws-rules.md §2.1, §2.7
 */
export const MAX_PRODUCT_CODE_LENGTH = 255;

/**
 * Pattern of `ProductCode` (model `^[-a-zA-Z0-9/=:_.@]*$`).
 * @see docs/aws-rules.md §2.1
 */
export const PRODUCT_CODE_PATTERN = /^[-a-zA-Z0-9/=:_.@]*$/;

/**
 * Smallest `PublicKeyVersion` (`VersionInteger`, range min 1).
 * @see docs/aws-rules.md §2.1
 */
export const MIN_PUBLIC_KEY_VERSION = 1;

/**
 * Largest `PublicKeyVersion`: the model sets no maximum, but a Smithy `integer` is a signed 32-bit value
 * (2^31-1), so a larger number cannot be a version AWS issued.
 * @see docs/aws-rules.md §2.1
 */
export const MAX_PUBLIC_KEY_VERSION = 2_147_483_647;

/**
 * Length limit of `Nonce` (0..255 characters, any characters).
 * @see docs/aws-rules.md §2.1
 */
export const MAX_NONCE_LENGTH = 255;

/**
 * RSASSA-PSS salt length of PS256: the digest length, 32 bytes for SHA-256 (RFC 7518 §3.5).
 * @see docs/aws-rules.md §3.7
 */
export const PS256_SALT_LENGTH = 32;

/**
 * JOSE header of every RegisterUsage token.
 * @see docs/aws-rules.md §3.7
 */
export const JWT_HEADER: Readonly<{ alg: 'PS256'; typ: 'JWT' }> = Object.freeze({ alg: 'PS256', typ: 'JWT' });

/**
 * What the emulated account's RegisterUsage answers after the request itself passed: `'entitled'` (a
 * token), or the error AWS throws on the initial call of a task or pod when the buyer is not subscribed
 * (`CustomerNotEntitledException`) or the container runs outside ECS, EKS and Fargate
 * (`PlatformNotSupportedException`, also what a local run gets from real AWS).
 * @see docs/aws-rules.md §3.6, §3.8, §2.6
 */
export type EmulatorEntitlement =
  'entitled' | 'CustomerNotEntitledException' | 'PlatformNotSupportedException';

/** Every {@link EmulatorEntitlement}, in documentation order. */
export const EMULATOR_ENTITLEMENTS: readonly EmulatorEntitlement[] = Object.freeze([
  'entitled',
  'CustomerNotEntitledException',
  'PlatformNotSupportedException',
]);

/** True when `value` is one of {@link EMULATOR_ENTITLEMENTS}. */
export function isEmulatorEntitlement(value: unknown): value is EmulatorEntitlement {
  return (EMULATOR_ENTITLEMENTS as readonly unknown[]).includes(value);
}

/**
 * Messages of the entitlement errors: the model's documentation of each error.
 * @see docs/aws-rules.md §2.6
 */
const ENTITLEMENT_MESSAGES: Readonly<Record<Exclude<EmulatorEntitlement, 'entitled'>, string>> = {
  CustomerNotEntitledException:
    'Exception thrown when the customer does not have a valid subscription for the product.',
  PlatformNotSupportedException:
    'AWS Marketplace does not support metering usage from the underlying platform. Currently, Amazon ECS, Amazon EKS, and Fargate are supported.',
};

/** A RegisterUsage request that passed the model constraints of {@link validateRegisterUsage}. */
export interface RegisterUsageRequest {
  readonly productCode: string;
  readonly publicKeyVersion: number;
  /** `Nonce` as sent (possibly `''`), or `undefined` when absent or JSON `null`. */
  readonly nonce: string | undefined;
}

/** What a RegisterUsage request is checked against: the emulated product and account. */
export interface RegisterUsageLimits {
  /** The product code the emulated product was published with. */
  readonly productCode: string;
  /** The only public key version the emulated product has. */
  readonly publicKeyVersion: number;
  /** The entitlement state of the emulated account. */
  readonly entitlement: EmulatorEntitlement;
}

/** Outcome of {@link validateRegisterUsage}. */
export type RegisterUsageValidation =
  | { readonly kind: 'valid'; readonly request: RegisterUsageRequest }
  | { readonly kind: 'invalid'; readonly error: ServiceError };

/**
 * Checks a decoded RegisterUsage body against the rules AWS applies after authentication, in this order,
 * and stops at the first broken one:
 *
 * 1. model constraints -> `ValidationException`: `ProductCode` missing, not a string, over
 *    {@link MAX_PRODUCT_CODE_LENGTH} characters or outside {@link PRODUCT_CODE_PATTERN};
 *    `PublicKeyVersion` missing or not an integer {@link MIN_PUBLIC_KEY_VERSION}..{@link MAX_PUBLIC_KEY_VERSION};
 *    `Nonce` present but not a string of at most {@link MAX_NONCE_LENGTH} characters;
 * 2. `ProductCode` differs from `limits.productCode` -> `InvalidProductCodeException`;
 * 3. `PublicKeyVersion` differs from `limits.publicKeyVersion` -> `InvalidPublicKeyVersionException`;
 * 4. `limits.entitlement` is not `'entitled'` -> that error (`CustomerNotEntitledException` or
 *    `PlatformNotSupportedException`).
 *
 * `valid` means the caller answers 200 with a token for `request`. Lengths count Unicode code points, as
 * Smithy's length trait does. Unknown members are ignored and JSON `null` counts as absent. Pure.
 * @see docs/aws-rules.md §2.1 (members and constraints), §2.6 (errors), §3.6 (entitlement), §3.7 (key version)
 */
export function validateRegisterUsage(
  input: Readonly<Record<string, unknown>>,
  limits: RegisterUsageLimits,
): RegisterUsageValidation {
  const decoded = decodeRequest(input);
  if (decoded.kind === 'invalid') return decoded;
  const error = checkRules(decoded.request, limits);
  return error === undefined ? decoded : { kind: 'invalid', error };
}

/** Rule 1 of {@link validateRegisterUsage}: the typed request, or the `ValidationException`. */
function decodeRequest(input: Readonly<Record<string, unknown>>): RegisterUsageValidation {
  const productCode = readMember(input, 'ProductCode');
  if (typeof productCode !== 'string') {
    return invalid('productCode', productCode, 'Member must be a string and must not be null');
  }
  if (characterCount(productCode) > MAX_PRODUCT_CODE_LENGTH) {
    return invalid(
      'productCode',
      productCode,
      `Member must have length less than or equal to ${MAX_PRODUCT_CODE_LENGTH}`,
    );
  }
  if (!PRODUCT_CODE_PATTERN.test(productCode)) {
    return invalid(
      'productCode',
      productCode,
      `Member must satisfy regular expression pattern: ${PRODUCT_CODE_PATTERN.source}`,
    );
  }
  const publicKeyVersion = readMember(input, 'PublicKeyVersion');
  if (
    typeof publicKeyVersion !== 'number' ||
    !Number.isInteger(publicKeyVersion) ||
    publicKeyVersion < MIN_PUBLIC_KEY_VERSION ||
    publicKeyVersion > MAX_PUBLIC_KEY_VERSION
  ) {
    return invalid(
      'publicKeyVersion',
      publicKeyVersion,
      `Member must be an integer from ${MIN_PUBLIC_KEY_VERSION} to ${MAX_PUBLIC_KEY_VERSION} and must not be null`,
    );
  }
  const nonce = readMember(input, 'Nonce');
  if (nonce !== undefined && (typeof nonce !== 'string' || characterCount(nonce) > MAX_NONCE_LENGTH)) {
    return invalid(
      'nonce',
      nonce,
      `Member must be a string with length less than or equal to ${MAX_NONCE_LENGTH}`,
    );
  }
  return { kind: 'valid', request: { productCode, publicKeyVersion, nonce } };
}

function invalid(path: string, value: unknown, constraint: string): RegisterUsageValidation {
  return { kind: 'invalid', error: validationError(path, value, constraint) };
}

/** Rules 2-4 of {@link validateRegisterUsage}. */
function checkRules(request: RegisterUsageRequest, limits: RegisterUsageLimits): ServiceError | undefined {
  if (request.productCode !== limits.productCode) {
    return {
      name: 'InvalidProductCodeException',
      message: `Product code ${JSON.stringify(request.productCode)} does not match the product code used for publishing the product.`,
    };
  }
  if (request.publicKeyVersion !== limits.publicKeyVersion) {
    return {
      name: 'InvalidPublicKeyVersionException',
      message: `Public key version ${request.publicKeyVersion} is invalid; the product's public key version is ${limits.publicKeyVersion}. Configure the version that came with the public key.`,
    };
  }
  if (limits.entitlement !== 'entitled') {
    return { name: limits.entitlement, message: ENTITLEMENT_MESSAGES[limits.entitlement] };
  }
  return undefined;
}

/** Number of Unicode code points in `text` (what Smithy's length trait counts for strings). */
function characterCount(text: string): number {
  // Spreading a string yields code points, so a surrogate pair counts once.
  return [...text].length;
}

/** Claims of a RegisterUsage token, keyed as AWS writes them. */
export type RegisterUsageClaims = Readonly<Record<string, unknown>>;

/**
 * The payload of the token for a valid request, in this key order: `ProductCode`, `PublicKeyVersion` (a
 * number), `Nonce` (only when the request carried one; `''` is kept) and `iat` (`issuedAtMs` floored to
 * epoch seconds). AWS says the signature covers ProductCode, PublicKeyVersion and Nonce; the `iat` claim is
 * from the Seller Guide sample. AWS samples disagree on key casing; this follows the Seller Guide
 * (upper-camel, lower-case `iat`).
 * @see docs/aws-rules.md §3.7
 */
export function registerUsageClaims(request: RegisterUsageRequest, issuedAtMs: number): RegisterUsageClaims {
  return {
    ProductCode: request.productCode,
    PublicKeyVersion: request.publicKeyVersion,
    ...(request.nonce === undefined ? {} : { Nonce: request.nonce }),
    iat: Math.floor(issuedAtMs / 1000),
  };
}

/**
 * Signs `claims` as a compact JWS with {@link JWT_HEADER}: three base64url sections
 * `header.payload.signature`, the signature being RSASSA-PSS with SHA-256, MGF1-SHA-256 and a
 * {@link PS256_SALT_LENGTH}-byte salt over the ASCII bytes of `header.payload` (what AWS's Java sample
 * verifies with `SHA256withRSA/PSS`). Claims whose value is `undefined` are left out (JSON rules).
 *
 * `privateKey` must be a private RSA key (`rsa` or `rsa-pss`); the caller checks that, because `node:crypto`
 * ignores the PSS options for other key types and would sign something that is not PS256. Throws when the
 * key cannot sign (a public key, or an `rsa-pss` key restricted to other parameters), or when a claim
 * cannot be serialized as JSON (e.g. a `bigint`).
 * @see docs/aws-rules.md §3.7
 */
export function signJwt(claims: RegisterUsageClaims, privateKey: KeyObject): string {
  const signingInput = `${base64UrlJson(JWT_HEADER)}.${base64UrlJson(claims)}`;
  const signature = sign('sha256', Buffer.from(signingInput, 'ascii'), {
    key: privateKey,
    padding: constants.RSA_PKCS1_PSS_PADDING,
    saltLength: PS256_SALT_LENGTH,
  });
  return `${signingInput}.${signature.toString('base64url')}`;
}

function base64UrlJson(value: unknown): string {
  return Buffer.from(JSON.stringify(value), 'utf8').toString('base64url');
}
