/**
 * AWS's limits, in one place, each with the section of docs/aws-rules.md that gives its public source. The
 * sidecar enforces them at intake, so nothing acknowledged can be refused by AWS for a limit. The emulator keeps
 * copies of its own on purpose: as an independent oracle, it must not agree with the sidecar by construction.
 */
import { HOUR_MS } from './clock.js';

/** Largest UsageQuantity / AllocatedUsageQuantity AWS accepts (2^31-1). @see docs/aws-rules.md §2.2, §2.5 */
export const MAX_QUANTITY = 2_147_483_647;

/**
 * Largest PublicKeyVersion the sidecar takes. AWS documents a minimum of 1 and no maximum; the API types the
 * member as a 32-bit Integer, so 2^31-1 is the largest any client can send. @see docs/aws-rules.md §2.1
 */
export const MAX_PUBLIC_KEY_VERSION = 2_147_483_647;

/** AWS accepts MeterUsage records up to six hours after their Timestamp. @see docs/aws-rules.md §3.2 */
export const MAX_RECORD_AGE_MS = 6 * HOUR_MS;

/** At most 2,500 UsageAllocations (tag sets) per record. @see docs/aws-rules.md §2.5, §3.3 */
export const MAX_TAG_SETS = 2500;

/** At most 5 tags per allocation, read conservatively as 5 distinct keys per record. @see docs/aws-rules.md §3.3 */
export const MAX_TAG_KEYS = 5;

/** Tag key length limit. @see docs/aws-rules.md §2.5 (TagKey len 1..100) */
export const MAX_TAG_KEY_LENGTH = 100;

/** Tag value length limit. @see docs/aws-rules.md §2.5 (TagValue len 1..256) */
export const MAX_TAG_VALUE_LENGTH = 256;

/**
 * The Seller Guide's documented tag characters `a-zA-Z0-9+ -=._:/@` (docs/aws-rules.md §3.3). The model's
 * regex reads ` -=` as a range that admits more; the sidecar keeps to the documented set.
 */
export const TAG_PATTERN = /^[a-zA-Z0-9+ \-=._:/@]+$/;

/** Product code constraint. @see docs/aws-rules.md §2.1 (len ≤255, `^[-a-zA-Z0-9/=:_.@]*$`). */
export const PRODUCT_CODE_PATTERN = /^[-a-zA-Z0-9/=:_.@]{1,255}$/;

/**
 * Dimension names are set at listing time; AWS allows 1..255 characters of any kind
 * (docs/aws-rules.md §2.2). The sidecar refuses control characters, so a name is always printable in logs,
 * and lone UTF-16 surrogates, which SQLite would store as a different string.
 */
export const DIMENSION_PATTERN = /^[^\p{Cc}\p{Cs}]{1,255}$/u;

/** At most 24 pricing dimensions per container product. @see docs/aws-rules.md §3.3 */
export const MAX_DIMENSIONS = 24;

/** Longest RegisterUsage Nonce. @see docs/aws-rules.md §2.1 (Nonce len 0..255) */
export const MAX_NONCE_LENGTH = 255;
