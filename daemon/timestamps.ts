/**
 * The timestamps Docker's API takes in `since`/`until` arguments and `until` filters, with
 * dockerd's semantics (api/types/time in moby):
 *
 * - `parseApiTimestamp`: what dockerd's server parses itself (`GET /events`, `logs`): unix seconds
 *   with an optional fraction ("1795976788", "1795976788.5"); anything else is Go's
 *   strconv.ParseInt error.
 * - `resolveTimestamp`: what `GetTimestamp` accepts (prune `until` filters on the server, and what
 *   the CLI converts `--since`/`--until` with before sending): a Go duration counted back from now
 *   ("10m", "1h30m"), an RFC3339 time or date (in the daemon's zone when it names none), or unix
 *   seconds.
 */
import { SystemError } from '../common/errdefs';

const NS_PER_S = 1_000_000_000n;
const INT64_MAX = (1n << 63n) - 1n;
const INT64_MIN = -(1n << 63n);

/** Go's strconv.ParseInt(text, 10, 64), with its error text. */
function parseGoInt(text: string): bigint {
  if (!/^[+-]?\d+$/.test(text))
    throw new SystemError(`strconv.ParseInt: parsing ${goQuote(text)}: invalid syntax`);
  const value = BigInt(text);
  if (value > INT64_MAX || value < INT64_MIN) {
    throw new SystemError(`strconv.ParseInt: parsing ${goQuote(text)}: value out of range`);
  }
  return value;
}

function goQuote(text: string): string {
  return JSON.stringify(text);
}

/**
 * Go's timetypes.ParseTimestamps: "SECONDS[.FRACTION]" → nanoseconds since the epoch. The fraction
 * is scaled to nanoseconds by its length (".5" = 500 ms; digits past the ninth are truncated).
 */
export function parseApiTimestamp(text: string): bigint {
  const dot = text.indexOf('.');
  const seconds = parseGoInt(dot < 0 ? text : text.slice(0, dot));
  if (dot < 0) return seconds * NS_PER_S;
  const fracText = text.slice(dot + 1);
  const frac = parseGoInt(fracText);
  const digits = fracText.replace(/^[+-]/, '').length;
  const scaled = digits <= 9 ? frac * 10n ** BigInt(9 - digits) : frac / 10n ** BigInt(digits - 9);
  return seconds * NS_PER_S + scaled;
}

const DURATION_UNITS: Record<string, number> = {
  ns: 1,
  us: 1e3,
  µs: 1e3,
  μs: 1e3,
  ms: 1e6,
  s: 1e9,
  m: 60e9,
  h: 3600e9,
};

/** Go's time.ParseDuration, in nanoseconds; undefined when `text` is not a duration. */
export function parseGoDuration(text: string): number | undefined {
  let rest = text;
  let sign = 1;
  if (rest.startsWith('-') || rest.startsWith('+')) {
    if (rest.startsWith('-')) sign = -1;
    rest = rest.slice(1);
  }
  if (rest === '0') return 0;
  if (rest === '') return undefined;
  let total = 0;
  while (rest !== '') {
    const m = /^(\d*)(?:\.(\d*))?([^\d.]+)/.exec(rest);
    if (!m || (m[1] === '' && (m[2] ?? '') === '')) return undefined;
    const unit = DURATION_UNITS[m[3] ?? ''];
    if (unit === undefined) return undefined;
    total += Number(`${m[1] || '0'}.${m[2] ?? '0'}`) * unit;
    rest = rest.slice(m[0].length);
  }
  return sign * Math.round(total);
}

interface TimeParts {
  year: number;
  month: number;
  day: number;
  hour: number;
  minute: number;
  second: number;
  nanos: number;
  /** Offset east of UTC in minutes; undefined = the daemon's zone. */
  offsetMinutes?: number;
}

const ZONE = '(Z|[+-]\\d{2}:\\d{2})';

function daysIn(year: number, month: number): number {
  return new Date(Date.UTC(year, month, 0)).getUTCDate();
}

/** The layouts GetTimestamp picks from, as regular expressions (see its comment in moby). */
function layoutFor(value: string): { re: RegExp; layout: string; local: boolean } {
  const local = !(/[zZ+]/.test(value) || value.split('-').length - 1 === 3);
  const zone = local ? '' : ZONE;
  const date = '(\\d{4})-(\\d{2})-(\\d{2})';
  if (value.includes('.')) {
    return {
      re: new RegExp(`^${date}T(\\d{2}):(\\d{2}):(\\d{2})(?:\\.(\\d{1,9}))?${zone}$`),
      layout: local ? '2006-01-02T15:04:05.999999999' : '2006-01-02T15:04:05.999999999Z07:00',
      local,
    };
  }
  if (value.includes('T')) {
    let colons = value.split(':').length - 1;
    if (!local && !/[zZ]/.test(value) && colons > 0) colons--;
    const [time, layout] =
      colons === 0
        ? ['T(\\d{2})', '2006-01-02T15']
        : colons === 1
          ? ['T(\\d{2}):(\\d{2})', '2006-01-02T15:04']
          : ['T(\\d{2}):(\\d{2}):(\\d{2})', '2006-01-02T15:04:05'];
    return { re: new RegExp(`^${date}${time}${zone}$`), layout: local ? layout : `${layout}Z07:00`, local };
  }
  return { re: new RegExp(`^${date}${zone}$`), layout: local ? '2006-01-02' : '2006-01-02Z07:00', local };
}

function parseTimeParts(value: string): TimeParts {
  const { re, layout, local } = layoutFor(value);
  const m = re.exec(value);
  if (!m) throw new SystemError(`parsing time ${goQuote(value)} as ${goQuote(layout)}: cannot parse`);
  const groups = m.slice(1);
  const zoneText = local ? undefined : groups.pop();
  const [year, month, day, hour, minute, second] = groups
    .slice(0, 6)
    .map((g) => (g === undefined ? 0 : Number(g)));
  const fraction = layout.includes('.') ? (groups[6] ?? '') : '';
  const parts: TimeParts = {
    year: year ?? 0,
    month: month ?? 0,
    day: day ?? 0,
    hour: hour ?? 0,
    minute: minute ?? 0,
    second: second ?? 0,
    nanos: Number(fraction.padEnd(9, '0') || '0'),
  };
  const outOfRange = (what: string): never => {
    throw new SystemError(`parsing time ${goQuote(value)}: ${what} out of range`);
  };
  if (parts.month < 1 || parts.month > 12) outOfRange('month');
  if (parts.day < 1 || parts.day > daysIn(parts.year, parts.month)) outOfRange('day');
  if (parts.hour > 23) outOfRange('hour');
  if (parts.minute > 59) outOfRange('minute');
  if (parts.second > 59) outOfRange('second');
  if (zoneText !== undefined && zoneText.toUpperCase() !== 'Z') {
    const sign = zoneText.startsWith('-') ? -1 : 1;
    parts.offsetMinutes = sign * (Number(zoneText.slice(1, 3)) * 60 + Number(zoneText.slice(4, 6)));
  } else if (zoneText !== undefined) {
    parts.offsetMinutes = 0;
  }
  return parts;
}

function partsToNs(parts: TimeParts, nowMs: number): bigint {
  // A time without a zone is in the daemon's zone, at its offset now (Go's FixedZone(now.Zone())).
  const offset = parts.offsetMinutes ?? -new Date(nowMs).getTimezoneOffset();
  const utcMs =
    Date.UTC(parts.year, parts.month - 1, parts.day, parts.hour, parts.minute, parts.second) -
    offset * 60_000;
  return BigInt(utcMs) * 1_000_000n + BigInt(parts.nanos);
}

/**
 * moby's GetTimestamp followed by ParseTimestamps: a duration, a time or unix seconds, as
 * nanoseconds since the epoch. Errors carry dockerd's text.
 */
export function resolveTimestamp(value: string, nowNs: bigint): bigint {
  const duration = parseGoDuration(value);
  if (duration !== undefined && value !== '0') {
    // Go: reference.Add(-d).Unix(): whole seconds, rounded down.
    const t = nowNs - BigInt(duration);
    const seconds = t >= 0n ? t / NS_PER_S : -((-t + NS_PER_S - 1n) / NS_PER_S);
    return seconds * NS_PER_S;
  }
  try {
    return partsToNs(parseTimeParts(value), Number(nowNs / 1_000_000n));
  } catch (err) {
    if (value.includes('-')) throw err;
    try {
      return parseApiTimestamp(value);
    } catch {
      throw new SystemError(`failed to parse value as time or duration: ${goQuote(value)}`);
    }
  }
}
