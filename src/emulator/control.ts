/**
 * The emulator's JSON control surface under `/emulator/` on the AWS port, for standalone users (the CLI's
 * `emulator` command, sellers' own tests in any language): read calls, records and the public key; queue
 * faults; set the entitlement; grant SaaS registration tokens; leave batch records unprocessed; reset. Every route goes through the emulator's public API, so the surface
 * can do nothing a test in-process could not.
 */
import type { ServerResponse } from 'node:http';

import { decodeJson } from './awsJson.js';
import type { MeteringEmulator } from './emulator.js';
import { countProblem, faultProblem } from './faults.js';
import { AWS_QUOTAS, quotaProblem, type QuotaRates } from './quota.js';
import { EMULATOR_ENTITLEMENTS, isEmulatorEntitlement } from './registerUsage.js';
import { registrationTokenSpecProblem } from './saas.js';
import type { RegistrationTokenSpec } from './saas.js';
import type { Body } from '../http.js';
import { sendJson } from '../http.js';
import { isObject } from '../json.js';

/** Path prefix of the control surface. */
export const CONTROL_PREFIX = '/emulator/';

/** Routes of the control surface, for 404 and 405 answers. */
const CONTROL_ROUTES: readonly string[] = [
  'GET /emulator/calls',
  'GET /emulator/records',
  'GET /emulator/public-key',
  'POST /emulator/entitlement',
  'POST /emulator/faults',
  'GET /emulator/quota',
  'POST /emulator/quota',
  'POST /emulator/reset',
  'POST /emulator/registration-tokens',
  'GET /emulator/customers',
  'POST /emulator/unprocessed',
];

/** What the control surface may do to the emulator. */
export type ControlTarget = Pick<
  MeteringEmulator,
  | 'calls'
  | 'records'
  | 'totals'
  | 'reset'
  | 'failNext'
  | 'operations'
  | 'publicKeyPem'
  | 'setEntitlement'
  | 'quota'
  | 'setQuota'
  | 'batchRecords'
  | 'customers'
  | 'createRegistrationToken'
  | 'leaveUnprocessed'
>;

/** Body of the whole request was read (or refused as too large). */
type ReceivedBody = Exclude<Body, { readonly kind: 'aborted' }>;

/**
 * Answers one control request. `limitBytes` is the body limit `body` was read under, named in the 413.
 */
export function handleControl(
  emulator: ControlTarget,
  request: { method: string; path: string; body: ReceivedBody; limitBytes: number },
  res: ServerResponse,
): void {
  const { method, path, body } = request;
  const route = `${method} ${path}`;
  if (body.kind === 'tooLarge') {
    res.setHeader('connection', 'close');
    sendJson(res, 413, { error: `Request body exceeds ${request.limitBytes} bytes.` });
    return;
  }
  switch (route) {
    case 'GET /emulator/calls':
      sendJson(res, 200, { calls: emulator.calls });
      return;
    case 'GET /emulator/records':
      sendJson(res, 200, {
        records: emulator.records,
        totals: Object.fromEntries(emulator.totals()),
        batchRecords: emulator.batchRecords,
      });
      return;
    case 'POST /emulator/reset':
      emulator.reset();
      sendJson(res, 200, { reset: true });
      return;
    case 'POST /emulator/faults':
      controlFaults(emulator, body.text, res);
      return;
    case 'GET /emulator/public-key':
      sendText(res, 200, emulator.publicKeyPem);
      return;
    case 'POST /emulator/entitlement':
      controlEntitlement(emulator, body.text, res);
      return;
    case 'GET /emulator/quota':
      sendJson(res, 200, { quota: emulator.quota });
      return;
    case 'POST /emulator/quota':
      controlQuota(emulator, body.text, res);
      return;
    case 'POST /emulator/registration-tokens':
      controlRegistrationToken(emulator, body.text, res);
      return;
    case 'GET /emulator/customers':
      sendJson(res, 200, { customers: emulator.customers });
      return;
    case 'POST /emulator/unprocessed':
      controlUnprocessed(emulator, body.text, res);
      return;
    default:
      noRoute(route, path, res);
  }
}

function noRoute(route: string, path: string, res: ServerResponse): void {
  const samePath = CONTROL_ROUTES.filter((candidate) => candidate.endsWith(` ${path}`));
  if (samePath.length > 0) {
    res.setHeader('allow', samePath.map((candidate) => candidate.split(' ')[0]).join(', '));
    sendJson(res, 405, { error: `${route} is not supported; use ${samePath.join(' or ')}.` });
  } else {
    sendJson(res, 404, { error: `Unknown control route ${route}; available: ${CONTROL_ROUTES.join(', ')}.` });
  }
}

function controlFaults(emulator: ControlTarget, text: string, res: ServerResponse): void {
  const input = decodeJson(text);
  if (!isObject(input)) {
    sendJson(res, 400, {
      error:
        'Body must be a JSON object like {"operation":"MeterUsage","error":"ThrottlingException","count":2}.',
    });
    return;
  }
  const { operation, error: errorName, count = 1 } = input;
  const problem =
    typeof operation !== 'string'
      ? '"operation" must be a string, e.g. "MeterUsage".'
      : typeof errorName !== 'string'
        ? '"error" must be a string, e.g. "ThrottlingException", "ConnectionReset" or "Timeout".'
        : typeof count !== 'number'
          ? '"count" must be a number (default 1).'
          : faultProblem(emulator.operations, operation, errorName, count);
  if (problem !== undefined) {
    sendJson(res, 400, { error: problem });
    return;
  }
  emulator.failNext(operation as string, errorName as string, count as number);
  sendJson(res, 200, { operation, error: errorName, count });
}

function controlEntitlement(emulator: ControlTarget, text: string, res: ServerResponse): void {
  const input = decodeJson(text);
  const state: unknown = isObject(input) ? input['state'] : undefined;
  if (!isEmulatorEntitlement(state)) {
    sendJson(res, 400, {
      error: `Body must be a JSON object like {"state":"CustomerNotEntitledException"}; "state" is one of ${EMULATOR_ENTITLEMENTS.map((name) => JSON.stringify(name)).join(', ')}.`,
    });
    return;
  }
  emulator.setEntitlement(state);
  sendJson(res, 200, { state });
}

function controlQuota(emulator: ControlTarget, text: string, res: ServerResponse): void {
  const input = decodeJson(text);
  const rates: unknown = isObject(input) ? input['quota'] : undefined;
  const problem = rates === 'aws' ? undefined : quotaProblem(rates, Object.keys(AWS_QUOTAS));
  if (problem !== undefined) {
    sendJson(res, 400, {
      error: `Body must be a JSON object like {"quota":{"MeterUsage":1}}, {"quota":"aws"} or {"quota":{}} (none). ${problem}`,
    });
    return;
  }
  emulator.setQuota(rates === 'aws' ? AWS_QUOTAS : (rates as QuotaRates));
  sendJson(res, 200, { quota: emulator.quota });
}

function controlRegistrationToken(emulator: ControlTarget, text: string, res: ServerResponse): void {
  const input = text.trim() === '' ? {} : decodeJson(text);
  const problem = registrationTokenSpecProblem(input);
  if (problem !== undefined) {
    sendJson(res, 400, {
      error: `Body must be a JSON object like {"customerAWSAccountId":"111122223333"} (every member optional): ${problem}.`,
    });
    return;
  }
  try {
    const grant = emulator.createRegistrationToken(input as RegistrationTokenSpec);
    sendJson(res, 200, {
      registrationToken: grant.registrationToken,
      expiresAt: new Date(grant.expiresAtMs).toISOString(),
      customer: grant.customer,
    });
  } catch (error) {
    if (!(error instanceof TypeError)) throw error;
    sendJson(res, 409, { error: error.message });
  }
}

function controlUnprocessed(emulator: ControlTarget, text: string, res: ServerResponse): void {
  const input = decodeJson(text);
  const count: unknown = isObject(input) ? input['count'] : undefined;
  const problem =
    typeof count === 'number' ? countProblem('"count"', count) : '"count" must be a number, e.g. 3.';
  if (problem !== undefined) {
    sendJson(res, 400, { error: `Body must be a JSON object like {"count":3}. ${problem}` });
    return;
  }
  emulator.leaveUnprocessed(count as number);
  sendJson(res, 200, { count });
}

function sendText(res: ServerResponse, status: number, text: string): void {
  res.writeHead(status, {
    'content-type': 'text/plain; charset=utf-8',
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
}
