/** Linux signal names and numbers, parsed as dockerd's signal.ParseSignal does. */
import { constants } from 'node:os';
import { InvalidParameterError } from '../common/errdefs';

const SIGNALS = new Map<string, number>();
for (const [name, number] of Object.entries(constants.signals)) SIGNALS.set(name.replace(/^SIG/, ''), number);
// Aliases and real-time signals moby's map has and Node's does not.
for (const [name, number] of [
  ['CLD', 17],
  ['IOT', 6],
  ['POLL', 29],
  ['UNUSED', 31],
  ['STKFLT', 16],
  ['RTMIN', 34],
  ['RTMAX', 64],
] as const) {
  if (!SIGNALS.has(name)) SIGNALS.set(name, number);
}
for (let i = 1; i <= 15; i++) {
  SIGNALS.set(`RTMIN+${i}`, 34 + i);
  SIGNALS.set(`RTMAX-${i}`, 64 - i);
}

export const SIGKILL = 9;
export const SIGTERM = 15;
export const MAX_SIGNAL = 64;

/** "TERM", "SIGTERM", "term", "15" → 15; InvalidParameter "Invalid signal: x" otherwise. */
export function parseSignal(raw: string): number {
  if (/^-?\d+$/.test(raw)) {
    const n = Number(raw);
    if (n === 0 || !Number.isSafeInteger(n)) throw new InvalidParameterError(`Invalid signal: ${raw}`);
    return n;
  }
  const number = SIGNALS.get(raw.toUpperCase().replace(/^SIG/, ''));
  if (number === undefined) throw new InvalidParameterError(`Invalid signal: ${raw}`);
  return number;
}

export function isValidLinuxSignal(n: number): boolean {
  return n >= 1 && n <= MAX_SIGNAL;
}
