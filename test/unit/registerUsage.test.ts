import { constants, generateKeyPairSync, verify } from 'node:crypto';
import type { KeyObject } from 'node:crypto';

import { describe, expect, it } from 'vitest';

import {
  EMULATOR_ENTITLEMENTS,
  JWT_HEADER,
  MAX_NONCE_LENGTH,
  MAX_PRODUCT_CODE_LENGTH,
  MAX_PUBLIC_KEY_VERSION,
  PS256_SALT_LENGTH,
  isEmulatorEntitlement,
  registerUsageClaims,
  signJwt,
  validateRegisterUsage,
} from '../../src/emulator/registerUsage.js';
import type { RegisterUsageLimits, RegisterUsageRequest } from '../../src/emulator/registerUsage.js';

/** The API Reference sample request (docs/aws-rules.md §2.1). */
const PRODUCT_CODE = 'cqcvf9f0ugw8rkbgmf1c9dxyz';
const NONCE = '2ead20e4-3e6d-42cd-8f56-24f02d1cc4e1';
const LIMITS: RegisterUsageLimits = {
  productCode: PRODUCT_CODE,
  publicKeyVersion: 1,
  entitlement: 'entitled',
};
const NOW_MS = Date.UTC(2026, 10, 26, 10, 30);
/** One key pair for the whole file: generating a 2048-bit key takes about 0.1-0.5 s. */
const KEYS = generateKeyPairSync('rsa', { modulusLength: 2048 });

/** A valid RegisterUsage body with `overrides` merged in. */
function body(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return { ProductCode: PRODUCT_CODE, PublicKeyVersion: 1, Nonce: NONCE, ...overrides };
}

/** The error name `validateRegisterUsage` answers, or `'valid'`. */
function outcome(input: Record<string, unknown>, limits: RegisterUsageLimits = LIMITS): string {
  const result = validateRegisterUsage(input, limits);
  return result.kind === 'valid' ? 'valid' : result.error.name;
}

function validRequest(input: Record<string, unknown>): RegisterUsageRequest {
  const result = validateRegisterUsage(input, LIMITS);
  if (result.kind !== 'valid') throw new Error(`expected a valid request, got ${result.error.name}`);
  return result.request;
}

function decodeSection(section: string | undefined): unknown {
  return JSON.parse(Buffer.from(section ?? '', 'base64url').toString('utf8'));
}

/** True when `token`'s signature is PS256 under `publicKey` with the given salt length. */
function verifies(token: string, publicKey: KeyObject, saltLength = PS256_SALT_LENGTH): boolean {
  const [header = '', payload = '', signature = ''] = token.split('.');
  return verify(
    'sha256',
    Buffer.from(`${header}.${payload}`, 'ascii'),
    { key: publicKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength },
    Buffer.from(signature, 'base64url'),
  );
}

describe('validateRegisterUsage', () => {
  it('accepts the API Reference sample request as sent', () => {
    expect(validRequest(body())).toEqual({ productCode: PRODUCT_CODE, publicKeyVersion: 1, nonce: NONCE });
  });

  it('accepts a request without Nonce, treating JSON null like an absent member', () => {
    expect(validRequest(body({ Nonce: undefined })).nonce).toBeUndefined();
    expect(validRequest(body({ Nonce: null })).nonce).toBeUndefined();
  });

  it('keeps an empty Nonce, which the model allows (length 0..255)', () => {
    expect(validRequest(body({ Nonce: '' })).nonce).toBe('');
  });

  it('accepts the limits themselves, counting characters as code points', () => {
    const longCode = 'p'.repeat(MAX_PRODUCT_CODE_LENGTH);
    // 255 emoji are 510 UTF-16 units but 255 characters, as Smithy counts them.
    const emojiNonce = '\u{1F600}'.repeat(MAX_NONCE_LENGTH);

    expect(outcome(body({ ProductCode: longCode }), { ...LIMITS, productCode: longCode })).toBe('valid');
    expect(outcome(body({ Nonce: emojiNonce }))).toBe('valid');
    expect(
      outcome(body({ PublicKeyVersion: MAX_PUBLIC_KEY_VERSION }), {
        ...LIMITS,
        publicKeyVersion: MAX_PUBLIC_KEY_VERSION,
      }),
    ).toBe('valid');
  });

  it.each([
    ['a missing ProductCode', { ProductCode: undefined }],
    ['a ProductCode given as a number', { ProductCode: 42 }],
    ['a ProductCode over 255 characters', { ProductCode: 'p'.repeat(MAX_PRODUCT_CODE_LENGTH + 1) }],
    ['a ProductCode outside the pattern', { ProductCode: 'prod#1' }],
    ['a missing PublicKeyVersion', { PublicKeyVersion: undefined }],
    ['a PublicKeyVersion of 0', { PublicKeyVersion: 0 }],
    ['a fractional PublicKeyVersion', { PublicKeyVersion: 1.5 }],
    ['a PublicKeyVersion given as text', { PublicKeyVersion: '1' }],
    ['a PublicKeyVersion over 2^31-1', { PublicKeyVersion: MAX_PUBLIC_KEY_VERSION + 1 }],
    ['a Nonce given as a number', { Nonce: 7 }],
    ['a Nonce over 255 characters', { Nonce: 'n'.repeat(MAX_NONCE_LENGTH + 1) }],
  ])('answers ValidationException for %s', (_case, overrides) => {
    expect(outcome(body(overrides))).toBe('ValidationException');
  });

  it('words a ValidationException as AWS does, naming the member and the constraint', () => {
    const result = validateRegisterUsage(body({ PublicKeyVersion: 0 }), LIMITS);

    expect(result.kind === 'invalid' && result.error.message).toBe(
      "1 validation error detected: Value 0 at 'publicKeyVersion' failed to satisfy constraint: Member must be an integer from 1 to 2147483647 and must not be null",
    );
  });

  it('answers InvalidProductCodeException for any other product code', () => {
    expect(outcome(body({ ProductCode: 'someone-else' }))).toBe('InvalidProductCodeException');
  });

  it('answers InvalidPublicKeyVersionException for a valid version the product does not have', () => {
    expect(outcome(body({ PublicKeyVersion: 2 }))).toBe('InvalidPublicKeyVersionException');
    expect(outcome(body({ PublicKeyVersion: 1 }), { ...LIMITS, publicKeyVersion: 3 })).toBe(
      'InvalidPublicKeyVersionException',
    );
  });

  it.each(['CustomerNotEntitledException', 'PlatformNotSupportedException'] as const)(
    'answers %s when the account is in that state',
    (entitlement) => {
      const result = validateRegisterUsage(body(), { ...LIMITS, entitlement });

      expect(result).toMatchObject({ kind: 'invalid', error: { name: entitlement } });
      expect(result.kind === 'invalid' && result.error.message.length).toBeGreaterThan(20);
    },
  );

  it('checks the rules in order: constraints, product code, key version, entitlement', () => {
    const notEntitled: RegisterUsageLimits = { ...LIMITS, entitlement: 'CustomerNotEntitledException' };

    expect(outcome(body({ ProductCode: 'other', PublicKeyVersion: 0 }), notEntitled)).toBe(
      'ValidationException',
    );
    expect(outcome(body({ ProductCode: 'other', PublicKeyVersion: 2 }), notEntitled)).toBe(
      'InvalidProductCodeException',
    );
    expect(outcome(body({ PublicKeyVersion: 2 }), notEntitled)).toBe('InvalidPublicKeyVersionException');
    expect(outcome(body(), notEntitled)).toBe('CustomerNotEntitledException');
  });
});

describe('isEmulatorEntitlement', () => {
  it('accepts exactly the three documented states', () => {
    expect(EMULATOR_ENTITLEMENTS.every(isEmulatorEntitlement)).toBe(true);
    expect(EMULATOR_ENTITLEMENTS).toHaveLength(3);
    expect([undefined, null, 'Entitled', 'ThrottlingException', 1].some(isEmulatorEntitlement)).toBe(false);
  });
});

describe('registerUsageClaims', () => {
  it('carries ProductCode, PublicKeyVersion as a number, Nonce and iat in epoch seconds, in that order', () => {
    const claims = registerUsageClaims(
      { productCode: PRODUCT_CODE, publicKeyVersion: 2, nonce: NONCE },
      NOW_MS,
    );

    expect(JSON.stringify(claims)).toBe(
      JSON.stringify({ ProductCode: PRODUCT_CODE, PublicKeyVersion: 2, Nonce: NONCE, iat: NOW_MS / 1000 }),
    );
  });

  it('leaves Nonce out when the request had none, and keeps an empty one', () => {
    const request = { productCode: PRODUCT_CODE, publicKeyVersion: 1 };

    expect(registerUsageClaims({ ...request, nonce: undefined }, NOW_MS)).not.toHaveProperty('Nonce');
    expect(registerUsageClaims({ ...request, nonce: '' }, NOW_MS)).toHaveProperty('Nonce', '');
  });

  it('floors iat to whole seconds', () => {
    const claims = registerUsageClaims({ productCode: 'p', publicKeyVersion: 1, nonce: undefined }, 1999);

    expect(claims['iat']).toBe(1);
  });
});

describe('signJwt', () => {
  it('writes three base64url sections: the PS256 header, the claims, and the signature', () => {
    const token = signJwt({ ProductCode: PRODUCT_CODE, iat: 1 }, KEYS.privateKey);
    const sections = token.split('.');

    expect(sections).toHaveLength(3);
    expect(sections.every((section) => /^[A-Za-z0-9_-]+$/.test(section))).toBe(true);
    expect(decodeSection(sections[0])).toEqual({ alg: 'PS256', typ: 'JWT' });
    expect(decodeSection(sections[0])).toEqual(JWT_HEADER);
    expect(decodeSection(sections[1])).toEqual({ ProductCode: PRODUCT_CODE, iat: 1 });
  });

  it('signs with RSA-PSS, SHA-256 and a 32-byte salt, verifiable with the public key', () => {
    const token = signJwt({ Nonce: NONCE }, KEYS.privateKey);
    const other = generateKeyPairSync('rsa', { modulusLength: 2048 });

    expect(verifies(token, KEYS.publicKey)).toBe(true);
    expect(verifies(token, KEYS.publicKey, constants.RSA_PSS_SALTLEN_AUTO)).toBe(true);
    // A verifier expecting another salt length, or holding another key, refuses it.
    expect(verifies(token, KEYS.publicKey, 64)).toBe(false);
    expect(verifies(token, other.publicKey)).toBe(false);
  });

  it('detects any change to the signed claims', () => {
    const token = signJwt({ Nonce: NONCE }, KEYS.privateKey);
    const [header, , signature] = token.split('.');
    const forgedPayload = Buffer.from(JSON.stringify({ Nonce: 'other' })).toString('base64url');

    expect(verifies(`${header}.${forgedPayload}.${signature}`, KEYS.publicKey)).toBe(false);
  });

  it('leaves out claims whose value is undefined', () => {
    const token = signJwt({ ProductCode: PRODUCT_CODE, Nonce: undefined }, KEYS.privateKey);

    expect(decodeSection(token.split('.')[1])).toEqual({ ProductCode: PRODUCT_CODE });
  });

  it('throws for a key that cannot sign', () => {
    expect(() => signJwt({}, KEYS.publicKey)).toThrow();
  });
});
