import { generateKeyPairSync } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { decodeEntitlementToken, verifyEntitlementToken } from '../../src/entitlement/token.js';
import { signToken } from '../helpers/jwt.js';

const aws = generateKeyPairSync('rsa', { modulusLength: 2048 });
const other = generateKeyPairSync('rsa', { modulusLength: 2048 });
// AWS product keys may be 1024-bit; node:crypto verifies them (some JWT libraries refuse keys under 2048 bits).
const short = generateKeyPairSync('rsa', { modulusLength: 1024 });
const pem = (k: typeof aws): string => k.publicKey.export({ type: 'spki', format: 'pem' }).toString();

const expected = { productCode: 'prod-1', publicKeyVersion: 1, nonce: 'n-123' };
const claims = { ProductCode: 'prod-1', PublicKeyVersion: 1, Nonce: 'n-123', iat: 1_790_000_000 };

describe('verifyEntitlementToken', () => {
  it('accepts a PS256 token with the expected claims', () => {
    const result = verifyEntitlementToken(signToken(aws.privateKey, claims), pem(aws), expected);
    expect(result).toEqual({ valid: true, claims });
  });

  it('matches claim keys case-insensitively and the version as a string', () => {
    const lower = { productCode: 'prod-1', publicKeyVersion: '1', nonce: 'n-123' };
    expect(verifyEntitlementToken(signToken(aws.privateKey, lower), pem(aws), expected).valid).toBe(true);
  });

  it('accepts a 1024-bit product key', () => {
    expect(verifyEntitlementToken(signToken(short.privateKey, claims), pem(short), expected).valid).toBe(
      true,
    );
  });

  it.each([
    ['another key', () => signToken(other.privateKey, claims), 'signature'],
    [
      'a tampered payload',
      () => {
        const [h, , s] = signToken(aws.privateKey, claims).split('.');
        return `${h}.${Buffer.from(JSON.stringify({ ...claims, Nonce: 'x' })).toString('base64url')}.${s}`;
      },
      'signature',
    ],
    ['a different salt length', () => signToken(aws.privateKey, claims, undefined, 20), 'signature'],
    ['alg RS256', () => signToken(aws.privateKey, claims, { alg: 'RS256', typ: 'JWT' }), 'algorithm'],
    [
      'alg none',
      () => `${signToken(aws.privateKey, claims, { alg: 'none' }).split('.').slice(0, 2).join('.')}.`,
      'malformed',
    ],
    ['another nonce', () => signToken(aws.privateKey, { ...claims, Nonce: 'replayed' }), 'nonce'],
    ['no nonce', () => signToken(aws.privateKey, { ProductCode: 'prod-1', PublicKeyVersion: 1 }), 'nonce'],
    [
      'another product code',
      () => signToken(aws.privateKey, { ...claims, ProductCode: 'free-product' }),
      'product-code',
    ],
    [
      'another key version',
      () => signToken(aws.privateKey, { ...claims, PublicKeyVersion: 2 }),
      'public-key-version',
    ],
    ['two sections', () => 'abc.def', 'malformed'],
    [
      'a payload that is not JSON',
      () => `${Buffer.from('{"alg":"PS256"}').toString('base64url')}.bm90IGpzb24.c2ln`,
      'malformed',
    ],
  ])('refuses a token with %s', (_name, make, problem) => {
    const result = verifyEntitlementToken(make(), pem(aws), expected);
    expect(result).toMatchObject({ valid: false, problem });
  });

  it('refuses a public key that is not PEM', () => {
    expect(verifyEntitlementToken(signToken(aws.privateKey, claims), 'not a key', expected)).toMatchObject({
      valid: false,
      problem: 'public-key',
    });
  });
});

describe('decodeEntitlementToken', () => {
  it('returns header and claims without verifying', () => {
    const decoded = decodeEntitlementToken(signToken(other.privateKey, claims));
    expect(decoded).toMatchObject({ valid: true, header: { alg: 'PS256' }, claims });
  });
});
