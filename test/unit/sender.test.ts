import { describe, expect, it } from 'vitest';
import { classify } from '../../src/send/sender.js';

const awsError = (name: string, status: number, message = `${name} message`): Error =>
  Object.assign(new Error(message), { name, $metadata: { httpStatusCode: status } });
const networkError = (code: string, message = code): Error => Object.assign(new Error(message), { code });

describe('classify', () => {
  it.each([
    ['ThrottlingException', awsError('ThrottlingException', 400), 'retryable', false],
    ['InternalServiceErrorException', awsError('InternalServiceErrorException', 500), 'retryable', true],
    ['a 503 from a proxy', awsError('ServiceUnavailable', 503), 'retryable', true],
    ['an expired role session', awsError('ExpiredTokenException', 400), 'retryable', false],
    ['an unrecognised client', awsError('UnrecognizedClientException', 400), 'retryable', false],
    ['access denied', awsError('AccessDeniedException', 403), 'retryable', false],
    ['connection refused', networkError('ECONNREFUSED'), 'retryable', false],
    ['DNS failure', networkError('ENOTFOUND'), 'retryable', false],
    ['a reset', networkError('ECONNRESET'), 'retryable', true],
    [
      'a connection that was never established',
      Object.assign(
        new Error(
          '@smithy/node-http-handler - the request socket did not establish a connection with the server within the configured timeout of 3000 ms.',
        ),
        { name: 'TimeoutError' },
      ),
      'retryable',
      false,
    ],
    [
      'a request timeout',
      Object.assign(new Error('request timed out'), { name: 'TimeoutError' }),
      'retryable',
      true,
    ],
    // Regression: the SDK reports a body it could not read with the answer's status, here 200: AWS had
    // accepted the record, so it must never count as undelivered (and be carried, billing it twice).
    [
      'a 200 whose body was cut off',
      Object.assign(networkError('ECONNRESET'), { $metadata: { httpStatusCode: 200 } }),
      'retryable',
      true,
    ],
    [
      'a 200 with a body that is not JSON',
      Object.assign(new Error('Unexpected end of JSON input'), {
        name: 'SyntaxError',
        $metadata: { httpStatusCode: 200 },
      }),
      'retryable',
      true,
    ],
  ])('%s → %s (maybe delivered: %s)', (_name, err, status, maybeDelivered) => {
    expect(classify(err, false)).toMatchObject({ status, maybeDelivered });
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
    expect(classify(awsError(name, 400), false).status).toBe(status);
  });

  it('accepts DryRunOperation only for a DryRun request', () => {
    expect(classify(awsError('DryRunOperation', 400), true)).toMatchObject({ status: 'accepted' });
    expect(classify(awsError('DryRunOperation', 400), false)).toMatchObject({
      status: 'retryable',
      maybeDelivered: false,
    });
  });
});
