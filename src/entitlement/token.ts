/**
 * The RegisterUsage `Signature`: a JWT signed by AWS Marketplace with the product's key (PS256: RSA-PSS with
 * SHA-256, MGF1-SHA-256 and a 32-byte salt) over ProductCode, PublicKeyVersion and Nonce. Verified with
 * `node:crypto`, because AWS product keys may be shorter than some JWT libraries accept.
 * {@link verifyEntitlementToken} is exported for apps that check the sidecar's proof themselves.
 * @see docs/aws-rules.md §3.7
 */
import { constants, createPublicKey, verify, type KeyObject } from 'node:crypto';
import { isObject } from '../json.js';

/** What the token must prove: the values sent in the RegisterUsage request. */
export interface ExpectedClaims {
  readonly productCode: string;
  readonly publicKeyVersion: number;
  readonly nonce: string;
}

/** The claims of a token, with keys as AWS sent them. */
export type TokenClaims = Readonly<Record<string, unknown>>;

/** Why a token was refused. */
export type TokenProblem =
  'malformed' | 'algorithm' | 'signature' | 'product-code' | 'public-key-version' | 'nonce' | 'public-key';

/** The outcome of {@link verifyEntitlementToken}. */
export type TokenVerification =
  | { readonly valid: true; readonly claims: TokenClaims }
  | { readonly valid: false; readonly problem: TokenProblem; readonly message: string };

/** RSASSA-PSS salt length of PS256: the digest length, 32 bytes for SHA-256 (RFC 7518 §3.5). */
const PS256_SALT_LENGTH = 32;

/**
 * Verifies a RegisterUsage token: header `alg` PS256, the signature against `publicKeyPem`, and the payload's
 * product code, public key version and nonce (keys matched case-insensitively; the version as a number or
 * string) equal to `expected`. Never throws for a bad token or key; returns why it was refused.
 */
export function verifyEntitlementToken(
  token: string,
  publicKeyPem: string,
  expected: ExpectedClaims,
): TokenVerification {
  let key: KeyObject;
  try {
    key = createPublicKey(publicKeyPem);
  } catch (err) {
    return refuse('public-key', `the public key is not a usable PEM public key (${(err as Error).message})`);
  }
  const decoded = decodeEntitlementToken(token);
  if (!decoded.valid) return decoded;
  const [headerPart, payloadPart, signaturePart] = token.split('.') as [string, string, string];
  const alg = decoded.header['alg'];
  if (alg !== 'PS256')
    return refuse('algorithm', `the token's algorithm is ${JSON.stringify(alg)}, not PS256`);
  let ok: boolean;
  try {
    ok = verify(
      'sha256',
      Buffer.from(`${headerPart}.${payloadPart}`, 'ascii'),
      { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: PS256_SALT_LENGTH },
      Buffer.from(signaturePart, 'base64url'),
    );
  } catch (err) {
    return refuse('signature', `the signature could not be checked (${(err as Error).message})`);
  }
  if (!ok) return refuse('signature', 'the signature does not match the public key');
  return checkClaims(decoded.claims, expected);
}

/** Decodes a token without verifying it: its header and claims, or why it is not a JWT. */
export function decodeEntitlementToken(
  token: string,
):
  | { valid: true; header: TokenClaims; claims: TokenClaims }
  | { valid: false; problem: 'malformed'; message: string } {
  const parts = token.split('.');
  if (parts.length !== 3 || parts.some((p) => !/^[A-Za-z0-9_-]*$/.test(p)) || parts[2] === '') {
    return { valid: false, problem: 'malformed', message: 'the token is not three base64url sections' };
  }
  try {
    const header = JSON.parse(Buffer.from(parts[0], 'base64url').toString('utf8')) as unknown;
    const claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8')) as unknown;
    if (!isObject(header) || !isObject(claims)) throw new Error('not objects');
    return { valid: true, header, claims };
  } catch {
    return {
      valid: false,
      problem: 'malformed',
      message: 'the token header or payload is not a JSON object',
    };
  }
}

/** Compares the claims with what was sent; keys case-insensitively (AWS samples use both casings). */
export function checkClaims(claims: TokenClaims, expected: ExpectedClaims): TokenVerification {
  const claim = (name: string): unknown => {
    const key = Object.keys(claims).find((k) => k.toLowerCase() === name.toLowerCase());
    return key === undefined ? undefined : claims[key];
  };
  const productCode = claim('ProductCode');
  if (productCode !== expected.productCode) {
    return refuse(
      'product-code',
      `the token's product code ${JSON.stringify(productCode)} is not ${JSON.stringify(expected.productCode)}`,
    );
  }
  const version = claim('PublicKeyVersion');
  if (String(version) !== String(expected.publicKeyVersion)) {
    return refuse(
      'public-key-version',
      `the token's public key version ${JSON.stringify(version)} is not ${expected.publicKeyVersion}`,
    );
  }
  const nonce = claim('Nonce');
  if (nonce !== expected.nonce) return refuse('nonce', "the token's nonce is not the one sent");
  return { valid: true, claims };
}

function refuse(problem: TokenProblem, message: string): TokenVerification {
  return { valid: false, problem, message };
}
