import { describe, expect, it } from 'vitest';
import { classify, errorName } from '../../src/send/awsErrors.js';

const awsError = (name: string, status: number, message = `${name} message`): Error =>
  Object.assign(new Error(message), { name, $metadata: { httpStatusCode: status } });
const networkError = (code: string, message = code): Error => Object.assign(new Error(message), { code });

/** A connection to AWS was made for the request (an answer, or a failure after connecting). */
const CONNECTED = true;
/** No connection was made: DNS, connect, TLS handshake, or no request at all. */
const NO_CONNECTION = false;

describe('classify', () => {
  it.each([
    ['ThrottlingException', awsError('ThrottlingException', 400), CONNECTED, 'retryable', false],
    [
      'InternalServiceErrorException',
      awsError('InternalServiceErrorException', 500),
      CONNECTED,
      'retryable',
      true,
    ],
    ['a 503 from a proxy', awsError('ServiceUnavailable', 503), CONNECTED, 'retryable', true],
    ['an expired role session', awsError('ExpiredTokenException', 400), CONNECTED, 'retryable', false],
    ['an unrecognised client', awsError('UnrecognizedClientException', 400), CONNECTED, 'retryable', false],
    ['access denied', awsError('AccessDeniedException', 403), CONNECTED, 'retryable', false],
    ['connection refused', networkError('ECONNREFUSED'), NO_CONNECTION, 'retryable', false],
    ['DNS failure', networkError('ENOTFOUND'), NO_CONNECTION, 'retryable', false],
    ['a reset', networkError('ECONNRESET'), CONNECTED, 'retryable', true],
    // Regression: these were taken for possible deliveries, failed instead of carried when the window closed.
    ['a DNS lookup that timed out', networkError('EAI_AGAIN'), NO_CONNECTION, 'retryable', false],
    [
      'a certificate that did not verify',
      networkError('DEPTH_ZERO_SELF_SIGNED_CERT', 'self-signed certificate'),
      NO_CONNECTION,
      'retryable',
      false,
    ],
    ['a TLS handshake failure', networkError('EPROTO'), NO_CONNECTION, 'retryable', false],
    [
      'an STS 5xx while fetching IRSA credentials',
      awsError('InternalFailure', 500),
      NO_CONNECTION,
      'retryable',
      false,
    ],
    [
      'credentials the chain could not find',
      Object.assign(new Error('Could not load credentials from any providers'), {
        name: 'CredentialsProviderError',
      }),
      NO_CONNECTION,
      'retryable',
      false,
    ],
    [
      'a connection that was never established',
      Object.assign(
        new Error(
          '@smithy/node-http-handler - the request socket did not establish a connection with the server within the configured timeout of 3000 ms.',
        ),
        { name: 'TimeoutError' },
      ),
      NO_CONNECTION,
      'retryable',
      false,
    ],
    [
      'a request timeout',
      Object.assign(new Error('request timed out'), { name: 'TimeoutError' }),
      CONNECTED,
      'retryable',
      true,
    ],
    // Regression: the SDK reports a body it could not read with the answer's status, here 200: AWS had
    // accepted the record, so it must never count as undelivered (and be carried, billing it twice).
    [
      'a 200 whose body was cut off',
      Object.assign(networkError('ECONNRESET'), { $metadata: { httpStatusCode: 200 } }),
      CONNECTED,
      'retryable',
      true,
    ],
    [
      'a 200 with a body that is not JSON',
      Object.assign(new Error('Unexpected end of JSON input'), {
        name: 'SyntaxError',
        $metadata: { httpStatusCode: 200 },
      }),
      CONNECTED,
      'retryable',
      true,
    ],
  ])('%s (connected: %s) → %s (maybe delivered: %s)', (_name, err, connected, status, maybeDelivered) => {
    expect(classify(err, { dryRun: false, connected })).toMatchObject({ status, maybeDelivered });
  });

  it.each([
    ['DuplicateRequestException', 'duplicate'],
    ['TimestampOutOfBoundsException', 'expired'],
    ['InvalidUsageDimensionException', 'rejected'],
    ['InvalidTagException', 'rejected'],
    ['InvalidUsageAllocationsException', 'rejected'],
    ['CustomerNotEntitledException', 'rejected'],
    ['InvalidEndpointRegionException', 'rejected'],
    ['InvalidProductCodeException', 'rejected'],
    ['IdempotencyConflictException', 'rejected'],
  ])('%s → %s', (name, status) => {
    expect(classify(awsError(name, 400), { dryRun: false, connected: CONNECTED }).status).toBe(status);
  });

  it('accepts DryRunOperation only for a DryRun request', () => {
    expect(classify(awsError('DryRunOperation', 400), { dryRun: true, connected: CONNECTED })).toMatchObject({
      status: 'accepted',
    });
    expect(classify(awsError('DryRunOperation', 400), { dryRun: false, connected: CONNECTED })).toMatchObject(
      {
        status: 'retryable',
        maybeDelivered: false,
      },
    );
  });
});

describe('errorName', () => {
  // Regression: only codes of the form E[A-Z]+ were kept, so EAI_AGAIN and TLS codes read as a plain Error.
  it.each(['ECONNREFUSED', 'EAI_AGAIN', 'DEPTH_ZERO_SELF_SIGNED_CERT', 'ERR_TLS_CERT_ALTNAME_INVALID'])(
    'keeps the Node.js error code %s',
    (code) => {
      expect(errorName(networkError(code))).toBe(code);
    },
  );

  it('names an AWS error by its AWS name', () => {
    expect(errorName(awsError('ThrottlingException', 400))).toBe('ThrottlingException');
  });
});
