/**
 * The SaaS side of the emulated service: the buyers a seller's SaaS listing has (customers), the registration
 * tokens that the buyer's browser brings to the seller's registration page, and ResolveCustomer, which redeems
 * a token for the customer's identifiers. Customers and tokens are made through the control surface
 * (`POST /emulator/registration-tokens`) or `MeteringEmulator.createRegistrationToken`, since on AWS they come
 * from a buyer subscribing. BatchMeterUsage (batchMeterUsage.ts) meters usage for these customers.
 *
 * Pure functions and a small directory class; no I/O, no clock (the caller passes `nowMs`).
 *
 * References: `§` numbers are sections of docs/aws-rules.md, the AWS rules with their public sources.
 * @see docs/aws-rules.md §2.3 (BatchMeterUsage), §2.4 (ResolveCustomer), §2.5 (shapes)
 */
import { randomBytes, randomInt } from 'node:crypto';

import { readMember } from './awsJson.js';
import type { ServiceError } from './awsJson.js';
import { validationError } from './awsJson.js';
import { MAX_PRODUCT_CODE_LENGTH, PRODUCT_CODE_PATTERN } from './registerUsage.js';

/**
 * Pattern of `CustomerAWSAccountId` (1..255 digits; AWS account ids are 12).
 * @see docs/aws-rules.md §2.5
 */
export const ACCOUNT_ID_PATTERN = /^[0-9]{1,255}$/;

/**
 * Pattern of `LicenseArn`, from the model.
 * @see docs/aws-rules.md §2.5
 */
export const LICENSE_ARN_PATTERN =
  /^arn:aws[a-zA-Z-]*:[A-Za-z0-9][A-Za-z0-9_/.-]{0,62}:[A-Za-z0-9_/.-]{0,63}:[A-Za-z0-9_/.-]{0,63}:[A-Za-z0-9][A-Za-z0-9:_/+=,@.-]{0,1023}$/;

/**
 * Largest `CustomerIdentifier` (0..255 characters in the model; the emulator's customers have at least one).
 * @see docs/aws-rules.md §2.5
 */
export const MAX_CUSTOMER_IDENTIFIER_LENGTH = 255;

/**
 * How long a registration token can be redeemed, unless its grant says otherwise. AWS publishes no figure
 * ("your application has held on to the registration token for too long"); one hour is the emulator's choice.
 * @see docs/aws-rules.md §2.4
 */
export const DEFAULT_TOKEN_LIFETIME_SECONDS = 3600;

/** Longest lifetime a grant may ask for: a day. */
export const MAX_TOKEN_LIFETIME_SECONDS = 86_400;

/** A buyer of a SaaS listing, as the emulator knows it. */
export interface SaasCustomer {
  /** The listing's product code. */
  readonly productCode: string;
  readonly customerAWSAccountId: string;
  readonly licenseArn: string;
  /**
   * Set for an integration from before Concurrent Agreements: ResolveCustomer answers it and BatchMeterUsage
   * accepts it. Left out for a new integration, which identifies the buyer by account and license only.
   */
  readonly customerIdentifier: string | undefined;
  /** False for a buyer without an active agreement: BatchMeterUsage answers `CustomerNotSubscribed`. */
  readonly subscribed: boolean;
}

/** What a test or the control surface asks for when it makes a registration token; every member optional. */
export interface RegistrationTokenSpec {
  /** Default: the emulator's product code. */
  productCode?: string;
  /** Default: 12 random digits. */
  customerAWSAccountId?: string;
  /** Default: `arn:aws:license-manager::ACCOUNT:license:l-<32 hex digits>`. */
  licenseArn?: string;
  /** Give one to emulate an integration from before Concurrent Agreements. */
  customerIdentifier?: string;
  /** Default true. */
  subscribed?: boolean;
  /** Default {@link DEFAULT_TOKEN_LIFETIME_SECONDS}; 1..{@link MAX_TOKEN_LIFETIME_SECONDS}. */
  lifetimeSeconds?: number;
}

/** A registration token and the customer it resolves to. */
export interface RegistrationTokenGrant {
  readonly registrationToken: string;
  readonly expiresAtMs: number;
  readonly customer: SaasCustomer;
}

/** Why `spec` cannot make a token, or `undefined`. Member names as in {@link RegistrationTokenSpec}. */
export function registrationTokenSpecProblem(spec: unknown): string | undefined {
  if (typeof spec !== 'object' || spec === null || Array.isArray(spec)) {
    return 'a registration token spec must be an object, e.g. {"customerAWSAccountId":"111122223333"}';
  }
  const known = new Set([
    'productCode',
    'customerAWSAccountId',
    'licenseArn',
    'customerIdentifier',
    'subscribed',
    'lifetimeSeconds',
  ]);
  const unknown = Object.keys(spec).filter((key) => !known.has(key));
  if (unknown.length > 0)
    return `unknown member ${JSON.stringify(unknown[0])}; known: ${[...known].join(', ')}`;
  const s = spec as Record<string, unknown>;
  if (
    s['productCode'] !== undefined &&
    (typeof s['productCode'] !== 'string' ||
      s['productCode'] === '' ||
      s['productCode'].length > MAX_PRODUCT_CODE_LENGTH ||
      !PRODUCT_CODE_PATTERN.test(s['productCode']))
  ) {
    return 'productCode must be 1 to 255 characters of a-z A-Z 0-9 - / = : _ . @';
  }
  if (
    s['customerAWSAccountId'] !== undefined &&
    (typeof s['customerAWSAccountId'] !== 'string' || !ACCOUNT_ID_PATTERN.test(s['customerAWSAccountId']))
  ) {
    return 'customerAWSAccountId must be a string of digits, e.g. "111122223333"';
  }
  if (
    s['licenseArn'] !== undefined &&
    (typeof s['licenseArn'] !== 'string' || !LICENSE_ARN_PATTERN.test(s['licenseArn']))
  ) {
    return 'licenseArn must be a license ARN, e.g. "arn:aws:license-manager::111122223333:license:l-0123"';
  }
  const id = s['customerIdentifier'];
  if (
    id !== undefined &&
    (typeof id !== 'string' || id === '' || id.length > MAX_CUSTOMER_IDENTIFIER_LENGTH)
  ) {
    return `customerIdentifier must be 1 to ${MAX_CUSTOMER_IDENTIFIER_LENGTH} characters`;
  }
  if (s['subscribed'] !== undefined && typeof s['subscribed'] !== 'boolean')
    return 'subscribed must be a boolean';
  const lifetime = s['lifetimeSeconds'];
  if (
    lifetime !== undefined &&
    (typeof lifetime !== 'number' ||
      !Number.isInteger(lifetime) ||
      lifetime < 1 ||
      lifetime > MAX_TOKEN_LIFETIME_SECONDS)
  ) {
    return `lifetimeSeconds must be an integer from 1 to ${MAX_TOKEN_LIFETIME_SECONDS}`;
  }
  return undefined;
}

/** A token that was granted, and whether it has been redeemed. */
interface TokenState {
  readonly grant: RegistrationTokenGrant;
  redeemed: boolean;
}

/**
 * The customers of every SaaS listing and their registration tokens. A customer is known by its license ARN;
 * a token spec naming a known license gets a new token for the same customer, and must agree with it.
 */
export class SaasDirectory {
  #byLicense = new Map<string, SaasCustomer>();
  #byIdentifier = new Map<string, SaasCustomer>();
  #tokens = new Map<string, TokenState>();

  /** Every customer, in the order they were first granted a token. */
  get customers(): readonly SaasCustomer[] {
    return [...this.#byLicense.values()];
  }

  /**
   * A new token for the customer `spec` describes (made on first use). Throws `TypeError` for a bad spec, or
   * for one that names a known license or customer identifier with different details.
   */
  grant(spec: RegistrationTokenSpec, defaultProductCode: string, nowMs: number): RegistrationTokenGrant {
    const problem = registrationTokenSpecProblem(spec);
    if (problem !== undefined) throw new TypeError(`createRegistrationToken: ${problem}`);
    const customer = this.#customerFor(spec, defaultProductCode);
    const lifetimeSeconds = spec.lifetimeSeconds ?? DEFAULT_TOKEN_LIFETIME_SECONDS;
    const grant: RegistrationTokenGrant = Object.freeze({
      registrationToken: randomBytes(33).toString('base64url'),
      expiresAtMs: nowMs + lifetimeSeconds * 1000,
      customer,
    });
    this.#tokens.set(grant.registrationToken, { grant, redeemed: false });
    return grant;
  }

  /** The customer of a license ARN. */
  byLicense(licenseArn: string): SaasCustomer | undefined {
    return this.#byLicense.get(licenseArn);
  }

  /** The customer of a CustomerIdentifier (integrations from before Concurrent Agreements). */
  byIdentifier(customerIdentifier: string): SaasCustomer | undefined {
    return this.#byIdentifier.get(customerIdentifier);
  }

  /** The customers of an account on one product (without a license ARN to choose, the first one). */
  byAccount(customerAWSAccountId: string, productCode: string): SaasCustomer | undefined {
    for (const customer of this.#byLicense.values()) {
      if (customer.customerAWSAccountId === customerAWSAccountId && customer.productCode === productCode)
        return customer;
    }
    return undefined;
  }

  /** True when some customer is on `productCode`. */
  hasProduct(productCode: string): boolean {
    for (const customer of this.#byLicense.values()) if (customer.productCode === productCode) return true;
    return false;
  }

  /**
   * ResolveCustomer: the customer of a token, once, before it expires.
   * - `RegistrationToken` absent, not a string or empty: `ValidationException`;
   * - never granted: `InvalidTokenException`;
   * - redeemed before, or past its lifetime: `ExpiredTokenException` (AWS: "the buyer has resubmitted the
   *   registration token, or your application has held on to the registration token for too long");
   * - else the customer's `CustomerAWSAccountId`, `LicenseArn` and `ProductCode`, and `CustomerIdentifier` for
   *   an integration from before Concurrent Agreements.
   * @see docs/aws-rules.md §2.4
   */
  resolve(
    input: Readonly<Record<string, unknown>>,
    nowMs: number,
  ): { kind: 'resolved'; body: Record<string, string> } | { kind: 'invalid'; error: ServiceError } {
    const token = readMember(input, 'RegistrationToken');
    if (typeof token !== 'string' || token === '') {
      return {
        kind: 'invalid',
        error: validationError(
          'registrationToken',
          token,
          'Member must satisfy regular expression pattern: ^[\\s\\S]+$ and must not be null',
        ),
      };
    }
    const state = this.#tokens.get(token);
    if (state === undefined) {
      return {
        kind: 'invalid',
        error: { name: 'InvalidTokenException', message: 'Registration token is invalid.' },
      };
    }
    if (state.redeemed || nowMs >= state.grant.expiresAtMs) {
      return {
        kind: 'invalid',
        error: {
          name: 'ExpiredTokenException',
          message: state.redeemed
            ? 'Registration token was already redeemed; redeem a token once, as soon as the buyer submits it.'
            : 'Registration token has expired; redeem a token as soon as the buyer submits it.',
        },
      };
    }
    state.redeemed = true;
    const { customer } = state.grant;
    return {
      kind: 'resolved',
      body: {
        ...(customer.customerIdentifier === undefined
          ? {}
          : { CustomerIdentifier: customer.customerIdentifier }),
        CustomerAWSAccountId: customer.customerAWSAccountId,
        LicenseArn: customer.licenseArn,
        ProductCode: customer.productCode,
      },
    };
  }

  /** Forgets every customer and token. */
  reset(): void {
    this.#byLicense = new Map();
    this.#byIdentifier = new Map();
    this.#tokens = new Map();
  }

  #customerFor(spec: RegistrationTokenSpec, defaultProductCode: string): SaasCustomer {
    const known =
      (spec.licenseArn === undefined ? undefined : this.#byLicense.get(spec.licenseArn)) ??
      (spec.customerIdentifier === undefined ? undefined : this.#byIdentifier.get(spec.customerIdentifier));
    if (known !== undefined) {
      const differs =
        (spec.productCode !== undefined && spec.productCode !== known.productCode) ||
        (spec.customerAWSAccountId !== undefined &&
          spec.customerAWSAccountId !== known.customerAWSAccountId) ||
        (spec.licenseArn !== undefined && spec.licenseArn !== known.licenseArn) ||
        (spec.customerIdentifier !== undefined && spec.customerIdentifier !== known.customerIdentifier) ||
        (spec.subscribed !== undefined && spec.subscribed !== known.subscribed);
      if (differs) {
        throw new TypeError(
          `createRegistrationToken: license ${known.licenseArn} already belongs to a customer with other details (${JSON.stringify(known)})`,
        );
      }
      return known;
    }
    const account = spec.customerAWSAccountId ?? String(randomInt(100_000_000_000, 999_999_999_999));
    const customer: SaasCustomer = Object.freeze({
      productCode: spec.productCode ?? defaultProductCode,
      customerAWSAccountId: account,
      licenseArn:
        spec.licenseArn ?? `arn:aws:license-manager::${account}:license:l-${randomBytes(16).toString('hex')}`,
      customerIdentifier: spec.customerIdentifier,
      subscribed: spec.subscribed ?? true,
    });
    this.#byLicense.set(customer.licenseArn, customer);
    if (customer.customerIdentifier !== undefined)
      this.#byIdentifier.set(customer.customerIdentifier, customer);
    return customer;
  }
}
