/**
 * JSON helpers shared by the sidecar's modules. {@link parseJson} reads JSON as the app API does: the standard parser, plus a refusal of duplicate member names. JSON.parse keeps
 * the last of `{"quantity":1,"quantity":2}` without a word, and a body whose meaning depends on which copy a
 * parser keeps must not be billed. The check is cheap on the normal path: in valid JSON every member has exactly
 * one `:` outside strings, so the colons outside strings are counted (skipping strings with `indexOf`, not
 * character by character) and compared with the members of the parsed value; only a body that fails the count
 * is scanned again to name the repeated member.
 */

/** A parsed body, or why it was refused. */
export type JsonResult =
  { readonly ok: true; readonly value: unknown } | { readonly ok: false; readonly message: string };

/** Parses `text` as JSON whose objects each name every member once. */
export function parseJson(text: string): JsonResult {
  const parsed = parseJsonAllowingRepeats(text);
  if (!parsed.ok) return parsed;
  const problem = repeatedMemberProblem(text, memberCount(parsed.value));
  return problem === undefined ? parsed : { ok: false, message: problem };
}

/**
 * The standard parser alone. For a caller that walks every member of the value anyway (intake's validation),
 * counts them, and checks the count with {@link repeatedMemberProblem}, saving a second walk.
 */
export function parseJsonAllowingRepeats(text: string): JsonResult {
  try {
    return { ok: true, value: JSON.parse(text) as unknown };
  } catch (err) {
    return { ok: false, message: `body is not valid JSON: ${(err as Error).message}` };
  }
}

/**
 * Why `text`, valid JSON whose parsed value has `members` object members in all, is refused: undefined when no
 * object in it repeats a member name.
 */
export function repeatedMemberProblem(text: string, members: number): string | undefined {
  if (colonsOutsideStrings(text) === members) return undefined;
  const name = firstDuplicate(text);
  return `body repeats the member ${JSON.stringify(name)} in one object; send each member once (which copy would count is ambiguous)`;
}

/** Members of every object in `value` (iteratively: a body may nest thousands deep). */
export function memberCount(value: unknown): number {
  let count = 0;
  const pending: unknown[] = [value];
  while (pending.length > 0) {
    const item = pending.pop();
    if (typeof item !== 'object' || item === null) continue;
    if (Array.isArray(item)) {
      for (const element of item) pending.push(element);
      continue;
    }
    for (const key in item) {
      count++;
      pending.push((item as Record<string, unknown>)[key]);
    }
  }
  return count;
}

/** The index of the `"` that closes the string opening at `open`, in valid JSON. */
function stringEnd(text: string, open: number): number {
  let at = open + 1;
  for (;;) {
    at = text.indexOf('"', at);
    let backslashes = 0;
    while (text.charCodeAt(at - 1 - backslashes) === 92) backslashes++;
    if (backslashes % 2 === 0) return at;
    at++;
  }
}

/** The `:` characters of valid JSON text that are not inside a string. */
function colonsOutsideStrings(text: string): number {
  let count = 0;
  let at = 0;
  let colon = text.indexOf(':');
  while (colon !== -1) {
    const quote = text.indexOf('"', at);
    const segmentEnd = quote === -1 ? text.length : quote;
    while (colon !== -1 && colon < segmentEnd) {
      count++;
      colon = text.indexOf(':', colon + 1);
    }
    if (quote === -1) break;
    at = stringEnd(text, quote) + 1;
    if (colon !== -1 && colon < at) colon = text.indexOf(':', at);
  }
  return count;
}

/** The first member name that an object of valid JSON text repeats. */
function firstDuplicate(text: string): string {
  // One entry per open container: the names seen so far (objects), or undefined (arrays).
  const stack: (Set<string> | undefined)[] = [];
  let expectName = false;
  for (let at = 0; at < text.length; at++) {
    const c = text[at];
    if (c === '"') {
      const end = stringEnd(text, at);
      const names = stack[stack.length - 1];
      if (expectName && names !== undefined) {
        const name = JSON.parse(text.slice(at, end + 1)) as string;
        if (names.has(name)) return name;
        names.add(name);
      }
      expectName = false;
      at = end;
    } else if (c === '{') {
      stack.push(new Set());
      expectName = true;
    } else if (c === '[') {
      stack.push(undefined);
      expectName = false;
    } else if (c === '}' || c === ']') {
      stack.pop();
    } else if (c === ',') {
      expectName = stack[stack.length - 1] !== undefined;
    }
  }
  return '';
}

/** A plain JSON object (not null, not an array). */
export function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
