import { constants, sign, type KeyObject } from 'node:crypto';

/** Signs a JWT the way AWS Marketplace signs RegisterUsage tokens (PS256, salt 32), with any header and claims. */
export function signToken(
  privateKey: KeyObject,
  claims: Record<string, unknown>,
  header: Record<string, unknown> = { alg: 'PS256', typ: 'JWT' },
  saltLength = 32,
): string {
  const encode = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url');
  const data = `${encode(header)}.${encode(claims)}`;
  const signature = sign('sha256', Buffer.from(data), {
    key: privateKey,
    padding: constants.RSA_PKCS1_PSS_PADDING,
    saltLength,
  });
  return `${data}.${signature.toString('base64url')}`;
}
