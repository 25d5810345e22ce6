/**
 * The library surface of `metering-sidecar`, for a seller's app and tests: the app API client, the
 * entitlement token verifier, and the Marketplace Metering emulator.
 */
export {
  SidecarClient,
  type ApiAddress,
  type ApiReply,
  type ApiErrorBody,
  type CancelReply,
  type UsageInput,
} from './client/client.js';
export {
  MeteringEmulator,
  type EmulatorOptions,
  type EmulatorCall,
  type EmulatorEntitlement,
  type MeteredRecord,
} from './emulator/emulator.js';
export {
  verifyEntitlementToken,
  decodeEntitlementToken,
  type ExpectedClaims,
  type TokenClaims,
  type TokenProblem,
  type TokenVerification,
} from './entitlement/token.js';
