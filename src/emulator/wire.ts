/**
 * Writing the emulator's AWS JSON 1.1 answers: the headers the JS SDK reads (`x-amzn-RequestId`,
 * `x-amzn-errortype`) and the body `awsJson.ts` serializes.
 * @see docs/aws-rules.md §1.4 (success), §1.5 (errors)
 */
import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';

import { JSON_CONTENT_TYPE, errorBody, httpStatusFor } from './awsJson.js';
import type { ServiceError } from './awsJson.js';

/** The first value of request header `name`. */
export function header(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

export function sendAws(
  res: ServerResponse,
  status: number,
  body: string,
  extraHeaders: Record<string, string> = {},
): void {
  res.writeHead(status, {
    'content-type': JSON_CONTENT_TYPE,
    'content-length': Buffer.byteLength(body),
    'x-amzn-RequestId': randomUUID(),
    ...extraHeaders,
  });
  res.end(body);
}

/** Sends an AWS error answer and returns the status used. */
export function sendAwsError(res: ServerResponse, error: ServiceError): number {
  const status = httpStatusFor(error.name);
  sendAws(res, status, errorBody(error), {
    'x-amzn-errortype': error.name,
    ...(status === 413 ? { connection: 'close' } : {}),
  });
  return status;
}
