/**
 * Nanosecond wall-clock time and Go's RFC3339 formats. Docker reports times with nanoseconds
 * (RFC3339Nano, trailing zeros trimmed) and `docker logs -t` uses a fixed nine-digit fraction.
 */

/** Go's zero time.Time, which Docker prints for "never" (StartedAt of a created container). */
export const ZERO_TIME = '0001-01-01T00:00:00Z';

const NS_PER_MS = 1_000_000n;
const NS_PER_S = 1_000_000_000n;

// Wall-clock anchor plus the monotonic clock: sub-millisecond resolution that never goes back
// within one process (two events in the same millisecond still order correctly).
const anchorNs = BigInt(Date.now()) * NS_PER_MS;
const anchorHr = process.hrtime.bigint();

export function nowNs(): bigint {
  return anchorNs + (process.hrtime.bigint() - anchorHr);
}

function split(ns: bigint): { seconds: bigint; frac: bigint } {
  let seconds = ns / NS_PER_S;
  let frac = ns % NS_PER_S;
  if (frac < 0n) {
    frac += NS_PER_S;
    seconds -= 1n;
  }
  return { seconds, frac };
}

function isoSeconds(seconds: bigint): string {
  // toISOString gives "YYYY-MM-DDTHH:MM:SS.mmmZ"; keep the part up to the seconds.
  return new Date(Number(seconds) * 1000).toISOString().slice(0, 19);
}

/** Go's time.RFC3339Nano in UTC: fraction with trailing zeros trimmed, none when zero. */
export function formatRFC3339Nano(ns: bigint): string {
  const { seconds, frac } = split(ns);
  let fraction = '';
  if (frac !== 0n) fraction = '.' + frac.toString().padStart(9, '0').replace(/0+$/, '');
  return `${isoSeconds(seconds)}${fraction}Z`;
}

/** jsonmessage.RFC3339NanoFixed: always nine fraction digits (what `docker logs -t` prints). */
export function formatRFC3339NanoFixed(ns: bigint): string {
  const { seconds, frac } = split(ns);
  return `${isoSeconds(seconds)}.${frac.toString().padStart(9, '0')}Z`;
}

const RFC3339 = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$/;

/** Parses an RFC3339 time with up to nine fraction digits into nanoseconds; undefined if malformed. */
export function parseRFC3339Nano(text: string): bigint | undefined {
  const m = RFC3339.exec(text);
  if (!m) return undefined;
  const ms = Date.parse(`${m[1]}${m[3]}`);
  if (Number.isNaN(ms)) return undefined;
  const frac = BigInt((m[2] ?? '').padEnd(9, '0') || '0');
  return BigInt(ms) * NS_PER_MS + frac;
}

/** Nanoseconds of an RFC3339 string, or undefined for the zero time. */
export function timeOrUndefined(text: string): bigint | undefined {
  if (text === ZERO_TIME || text === '') return undefined;
  return parseRFC3339Nano(text);
}

/** Seconds since the epoch (what `Created` is in container listings). */
export function unixSeconds(text: string): number {
  const ns = parseRFC3339Nano(text);
  return ns === undefined ? 0 : Number(ns / NS_PER_S);
}

/**
 * Docker's API timestamps (`since`/`until` on logs and events): unix seconds with an optional
 * fraction ("1795976788", "1795976788.123456789"). Returns undefined when malformed.
 */
export function parseUnixTimestamp(text: string): bigint | undefined {
  const m = /^(-?\d+)(?:\.(\d{1,9}))?$/.exec(text.trim());
  if (!m || m[1] === undefined) return undefined;
  const seconds = BigInt(m[1]);
  const frac = BigInt((m[2] ?? '').padEnd(9, '0') || '0');
  return seconds * NS_PER_S + (seconds < 0n ? -frac : frac);
}

/** Whether `promise` settles (either way) within `ms`; the timer is cleared when it does. */
export function withinMs(promise: Promise<unknown>, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    const settled = (): void => {
      clearTimeout(timer);
      resolve(true);
    };
    promise.then(settled, settled);
  });
}
