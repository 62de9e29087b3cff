/**
 * dockerd's image filters (`GET /images/json`, `POST /images/prune`), with its validation and
 * error texts:
 *
 *   list:  dangling=true|false, label=key | key=value (all must match), reference=<glob> (Go's
 *          path.Match on the familiar reference, or on the familiar name), before=<image>,
 *          since=<image> (strictly older / newer than that image's creation time)
 *   prune: dangling=true|false|1|0, until=<timestamp or duration>, label=…, label!=…
 *
 * Filter values arrive as dockerd's filters.Args: a key and a list of values (the API's map form
 * `{"dangling":{"true":true}}` is converted to lists by the caller).
 */
import { InvalidParameterError } from '../common/errdefs';
import type { FilterArgs } from './types';

export type { FilterArgs };

export const LIST_FILTERS = ['dangling', 'label', 'before', 'since', 'reference'] as const;
export const PRUNE_FILTERS = ['dangling', 'label', 'label!', 'until'] as const;

/** filters.Args.Validate: every key must be accepted. */
export function validateFilters(filters: FilterArgs, accepted: readonly string[]): void {
  for (const key of Object.keys(filters)) {
    if (!accepted.includes(key)) throw new InvalidParameterError(`Invalid filter '${key}'`);
  }
}

function invalidFilter(key: string, values: string[]): InvalidParameterError {
  return new InvalidParameterError(`Invalid filter '${key}=[${values.join(' ')}]'`);
}

/** The list's dangling filter: true (only dangling), false (none), undefined (no filter). */
export function listDangling(filters: FilterArgs): boolean | undefined {
  const values = filters.dangling;
  if (values === undefined) return undefined;
  if (values.includes('true')) return true;
  if (values.includes('false')) return false;
  throw invalidFilter('dangling', values);
}

/** Prune's dangling filter: dangling only unless "false"/"0" (dockerd's default is true). */
export function pruneDanglingOnly(filters: FilterArgs): boolean {
  const values = filters.dangling;
  if (values === undefined) return true;
  if (values.includes('false') || values.includes('0')) return false;
  if (values.includes('true') || values.includes('1')) return true;
  throw invalidFilter('dangling', values);
}

/** filters.Args.MatchKVList: every "key" must be present, every "key=value" must equal. */
export function matchLabels(
  values: string[] | undefined,
  labels: Record<string, string> | null | undefined,
): boolean {
  if (values === undefined || values.length === 0) return true;
  if (labels === null || labels === undefined || Object.keys(labels).length === 0) return false;
  for (const value of values) {
    const eq = value.indexOf('=');
    if (eq === -1) {
      if (!Object.prototype.hasOwnProperty.call(labels, value)) return false;
    } else if (labels[value.slice(0, eq)] !== value.slice(eq + 1)) {
      return false;
    }
  }
  return true;
}

/** Prune's label filters: `label` values must all match, no `label!` value may match. */
export function matchPruneLabels(
  filters: FilterArgs,
  labels: Record<string, string> | null | undefined,
): boolean {
  if (filters.label !== undefined && !matchLabels(filters.label, labels)) return false;
  for (const value of filters['label!'] ?? []) {
    if (matchLabels([value], labels)) return false;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Go's path.Match

type GlobToken =
  | { kind: 'char'; c: string }
  | { kind: 'any' }
  | { kind: 'star' }
  | { kind: 'class'; negated: boolean; ranges: Array<[string, string]> };

function badPattern(): InvalidParameterError {
  return new InvalidParameterError('syntax error in pattern');
}

/** Tokenises a path.Match pattern; InvalidParameterError "syntax error in pattern" when malformed. */
export function parseGlob(pattern: string): GlobToken[] {
  const chars = Array.from(pattern);
  const tokens: GlobToken[] = [];
  let i = 0;
  const escaped = (): string => {
    i++; // the backslash
    const c = chars[i];
    if (c === undefined) throw badPattern();
    i++;
    return c;
  };
  while (i < chars.length) {
    const c = chars[i] as string;
    if (c === '*') {
      tokens.push({ kind: 'star' });
      i++;
    } else if (c === '?') {
      tokens.push({ kind: 'any' });
      i++;
    } else if (c === '\\') {
      tokens.push({ kind: 'char', c: escaped() });
    } else if (c === '[') {
      i++;
      let negated = false;
      if (chars[i] === '^') {
        negated = true;
        i++;
      }
      const ranges: Array<[string, string]> = [];
      const rangeChar = (): string => {
        const r = chars[i];
        if (r === undefined || r === '-' || r === ']') throw badPattern();
        if (r === '\\') return escaped();
        i++;
        return r;
      };
      for (;;) {
        if (chars[i] === ']' && ranges.length > 0) {
          i++;
          break;
        }
        const lo = rangeChar();
        let hi = lo;
        if (chars[i] === '-') {
          i++;
          hi = rangeChar();
        }
        ranges.push([lo, hi]);
      }
      tokens.push({ kind: 'class', negated, ranges });
    } else {
      tokens.push({ kind: 'char', c });
      i++;
    }
  }
  return tokens;
}

function tokenMatches(token: GlobToken, c: string): boolean {
  switch (token.kind) {
    case 'char':
      return token.c === c;
    case 'any':
      return c !== '/';
    case 'class': {
      if (c === '/') return false;
      const cp = c.codePointAt(0) ?? 0;
      const inside = token.ranges.some(
        ([lo, hi]) => (lo.codePointAt(0) ?? 0) <= cp && cp <= (hi.codePointAt(0) ?? 0),
      );
      return inside !== token.negated;
    }
    case 'star':
      return false;
  }
}

/**
 * Go's path.Match: `*` any run of non-'/' characters, `?` one non-'/' character, `[…]` / `[^…]`
 * classes, `\` escapes. Matched by dynamic programming (linear in pattern × name, no backtracking
 * blow-up on hostile patterns).
 */
export function goPathMatch(pattern: string | GlobToken[], name: string): boolean {
  const tokens = typeof pattern === 'string' ? parseGlob(pattern) : pattern;
  const chars = Array.from(name);
  // reachable[j]: the tokens so far can match exactly chars[0..j).
  let reachable = new Array<boolean>(chars.length + 1).fill(false);
  reachable[0] = true;
  for (const token of tokens) {
    const next = new Array<boolean>(chars.length + 1).fill(false);
    if (token.kind === 'star') {
      for (let j = 0; j <= chars.length; j++) {
        if (reachable[j]) next[j] = true;
        else if (j > 0 && next[j - 1] && chars[j - 1] !== '/') next[j] = true;
      }
    } else {
      for (let j = 0; j < chars.length; j++) {
        if (reachable[j] && tokenMatches(token, chars[j] as string)) next[j + 1] = true;
      }
    }
    reachable = next;
  }
  return reachable[chars.length] === true;
}

/** reference.FamiliarMatch: the pattern against "name:tag" (or "name@digest"), then against the name. */
export function familiarMatch(pattern: string, familiarRef: string, familiarNameOfRef: string): boolean {
  const tokens = parseGlob(pattern);
  return goPathMatch(tokens, familiarRef) || goPathMatch(tokens, familiarNameOfRef);
}

// ---------------------------------------------------------------------------------------------
// until

const DURATION_UNITS: Record<string, number> = {
  ns: 1e-6,
  us: 1e-3,
  µs: 1e-3,
  μs: 1e-3,
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
};

/** Go's time.ParseDuration, in milliseconds; undefined when `s` is not a duration. */
export function parseGoDuration(s: string): number | undefined {
  const m = /^([-+]?)((?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+$/.exec(s);
  if (!m) return s === '0' ? 0 : undefined;
  let total = 0;
  for (const part of s.replace(/^[-+]/, '').matchAll(/(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)/g)) {
    total += Number(part[1]) * (DURATION_UNITS[part[2] ?? ''] ?? 0);
  }
  return m[1] === '-' ? -total : total;
}

/**
 * dockerd's timetypes.GetTimestamp for `until`: a Go duration ("10m", "1h30m": that long before
 * `now`), unix seconds ("1700000000", "1700000000.5"), or an RFC 3339 date or date-time.
 * Returns epoch milliseconds; InvalidParameterError with dockerd's text otherwise.
 */
export function parseUntil(value: string, now: number = Date.now()): number {
  const duration = value === '0' ? undefined : parseGoDuration(value);
  if (duration !== undefined) return now - duration;
  if (/^-?\d+(\.\d+)?$/.test(value)) return Number(value) * 1000;
  if (/^\d{4}-\d\d-\d\d(T\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d:\d\d)?)?$/i.test(value)) {
    const t = Date.parse(/T/i.test(value) && !/(Z|[+-]\d\d:\d\d)$/i.test(value) ? `${value}Z` : value);
    if (Number.isFinite(t)) return t;
  }
  throw new InvalidParameterError(`failed to parse value as time or duration: ${JSON.stringify(value)}`);
}

/** Prune's until filter: at most one value. */
export function pruneUntil(filters: FilterArgs, now: number = Date.now()): number | undefined {
  const values = filters.until;
  if (values === undefined || values.length === 0) return undefined;
  if (values.length > 1) throw new InvalidParameterError('more than one until filter specified');
  return parseUntil(values[0] as string, now);
}
