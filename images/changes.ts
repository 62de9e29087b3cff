/**
 * Dockerfile-like `--change` lines for `docker import` and `docker commit` (dockerd 20.10's
 * BuildFromConfig): CMD, ENTRYPOINT, ENV, EXPOSE, HEALTHCHECK, LABEL, ONBUILD, USER, VOLUME and
 * WORKDIR, applied in order to an image
 * config, with dockerd's error texts (InvalidParameterError). Other instructions are refused with
 * "<instruction> is not a valid change command" (lower case, as dockerd prints it).
 *
 * Words are split and unquoted as the Dockerfile shell lexer does ('…' literal, "…" with \" \$ \\
 * escapes, \ outside quotes escaping the next character) and, for ENV, EXPOSE, LABEL, USER,
 * VOLUME and WORKDIR, `$VAR`, `${VAR}`, `${VAR:-default}` and `${VAR:+alternative}` are expanded
 * from the environment as set so far. CMD and ENTRYPOINT take a JSON array (exec form) or a
 * command line run by `/bin/sh -c` (shell form), unexpanded.
 */
import * as path from 'node:path';
import { InvalidParameterError } from '../common/errdefs';
import { parseGoDuration } from './filters';
import type { ImageRuntimeConfig } from './types';

const ALLOWED = new Set([
  'cmd',
  'entrypoint',
  'env',
  'expose',
  'healthcheck',
  'label',
  'onbuild',
  'user',
  'volume',
  'workdir',
]);
const SHELL = ['/bin/sh', '-c'];

function invalid(message: string): InvalidParameterError {
  return new InvalidParameterError(message);
}

/** Splits on unquoted whitespace, keeping quotes and escapes in the words (the parser's parseWords). */
export function splitWords(rest: string): string[] {
  const words: string[] = [];
  let word = '';
  let quote: string | undefined;
  for (let i = 0; i < rest.length; i++) {
    const c = rest[i] as string;
    if (quote === undefined && /\s/.test(c)) {
      if (word !== '') words.push(word);
      word = '';
      continue;
    }
    if (c === '\\' && i + 1 < rest.length && quote !== "'") {
      word += c + (rest[i + 1] as string);
      i++;
      continue;
    }
    if (quote === undefined && (c === '"' || c === "'")) quote = c;
    else if (quote === c) quote = undefined;
    word += c;
  }
  if (word !== '') words.push(word);
  return words;
}

function lookupEnv(env: string[], name: string): string | undefined {
  for (let i = env.length - 1; i >= 0; i--) {
    const entry = env[i] as string;
    const eq = entry.indexOf('=');
    if ((eq === -1 ? entry : entry.slice(0, eq)) === name) return eq === -1 ? '' : entry.slice(eq + 1);
  }
  return undefined;
}

/**
 * The shell lexer's ProcessWord: removes quotes and escapes, expands variables (when `env` is
 * given). Throws on an unterminated quote or a malformed `${…}`.
 */
export function processWord(word: string, env: string[] | undefined): string {
  let out = '';
  let i = 0;
  const expand = (): string => {
    // at '$'
    i++;
    if (env === undefined) return '$';
    const c = word[i];
    if (c === '{') {
      const close = word.indexOf('}', i);
      if (close === -1) throw invalid(`failed to process "${word}": missing '}'`);
      const body = word.slice(i + 1, close);
      i = close + 1;
      const m = /^([A-Za-z_][A-Za-z0-9_]*)(?::([-+])(.*))?$/s.exec(body);
      if (!m) throw invalid(`failed to process "${word}": bad substitution`);
      const value = lookupEnv(env, m[1] ?? '');
      if (m[2] === '-') return value === undefined || value === '' ? processWord(m[3] ?? '', env) : value;
      if (m[2] === '+') return value === undefined || value === '' ? '' : processWord(m[3] ?? '', env);
      return value ?? '';
    }
    const m = /^[A-Za-z_][A-Za-z0-9_]*/.exec(word.slice(i));
    if (!m) return '$';
    i += m[0].length;
    return lookupEnv(env, m[0]) ?? '';
  };
  while (i < word.length) {
    const c = word[i] as string;
    if (c === "'") {
      const close = word.indexOf("'", i + 1);
      if (close === -1)
        throw invalid(
          `failed to process "${word}": unexpected end of statement while looking for matching single-quote`,
        );
      out += word.slice(i + 1, close);
      i = close + 1;
    } else if (c === '"') {
      i++;
      let closed = false;
      while (i < word.length) {
        const d = word[i] as string;
        if (d === '"') {
          closed = true;
          i++;
          break;
        }
        if (d === '\\' && i + 1 < word.length && ['"', '$', '\\'].includes(word[i + 1] as string)) {
          out += word[i + 1];
          i += 2;
        } else if (d === '$') {
          out += expand();
        } else {
          out += d;
          i++;
        }
      }
      if (!closed)
        throw invalid(
          `failed to process "${word}": unexpected end of statement while looking for matching double-quote`,
        );
    } else if (c === '\\') {
      if (i + 1 < word.length) out += word[i + 1];
      i += 2;
    } else if (c === '$') {
      out += expand();
    } else {
      out += c;
      i++;
    }
  }
  return out;
}

/** Exec form when `rest` is a JSON array of strings, else undefined (shell form). */
function parseJsonArgs(rest: string): string[] | undefined {
  if (!rest.trimStart().startsWith('[')) return undefined;
  try {
    const parsed = JSON.parse(rest) as unknown;
    if (Array.isArray(parsed) && parsed.every((x) => typeof x === 'string')) return parsed;
  } catch {
    // shell form
  }
  return undefined;
}

/** KEY name value | KEY name=value … (parseNameVal), keys and values still raw. */
function nameValues(rest: string, instruction: string): Array<[string, string]> {
  const words = splitWords(rest);
  if (words.length === 0) throw invalid(`${instruction} requires at least one argument`);
  const [first] = words;
  if (first !== undefined && !first.includes('=')) {
    const m = /^(\S+)\s+(.*)$/s.exec(rest.trim());
    if (!m) throw invalid(`${instruction} must have two arguments`);
    return [[m[1] ?? '', m[2] ?? '']];
  }
  return words.map((word) => {
    const eq = word.indexOf('=');
    if (eq === -1) {
      throw invalid(`Syntax error - can't find = in "${word}". Must be of the form: name=value`);
    }
    return [word.slice(0, eq), word.slice(eq + 1)];
  });
}

function exposedPorts(spec: string): string[] {
  const m = /^(\d+)(?:-(\d+))?(?:\/([A-Za-z]+))?$/.exec(spec);
  if (!m) throw invalid(`Invalid containerPort: ${spec.split('/')[0] ?? spec}`);
  const proto = (m[3] ?? 'tcp').toLowerCase();
  if (!['tcp', 'udp', 'sctp'].includes(proto)) throw invalid(`Invalid proto: ${m[3] ?? ''}`);
  const start = Number(m[1]);
  const end = m[2] === undefined ? start : Number(m[2]);
  if (start > 65535 || end > 65535) throw invalid(`Invalid containerPort: ${m[1] ?? ''}`);
  if (end < start) throw invalid(`Invalid range specified for the Port: ${spec}`);
  const out: string[] = [];
  for (let p = start; p <= end; p++) out.push(`${p}/${proto}`);
  return out;
}

type Healthcheck = NonNullable<ImageRuntimeConfig['Healthcheck']>;

/** Leading `--name=value` words (the parser's extractBuilderFlags + BFlags.Parse), and the rest. */
function builderFlags(rest: string, known: readonly string[]): { flags: Map<string, string>; body: string } {
  const flags = new Map<string, string>();
  let body = rest.trimStart();
  for (;;) {
    const m = /^--(\S*)(?:\s+|$)/.exec(body);
    if (!m) break;
    body = body.slice(m[0].length);
    const arg = m[1] ?? '';
    if (arg === '') break; // "--" ends the flags
    const eq = arg.indexOf('=');
    const name = eq === -1 ? arg : arg.slice(0, eq);
    if (!known.includes(name)) throw invalid(`Unknown flag: ${name}`);
    if (flags.has(name)) throw invalid(`Duplicate flag specified: ${name}`);
    if (eq === -1) throw invalid(`Missing a value on flag: ${name}`);
    flags.set(name, arg.slice(eq + 1));
  }
  return { flags, body };
}

/** A HEALTHCHECK duration flag (parseOptInterval): Go duration text, at least 1ms; 0 when unset. */
function healthInterval(flags: Map<string, string>, name: string): number {
  const text = flags.get(name);
  if (text === undefined || text === '') return 0;
  const ms = parseGoDuration(text);
  if (ms === undefined) {
    throw invalid(
      /^[-+]?(\d+\.?\d*|\.\d+)$/.test(text)
        ? `time: missing unit in duration ${JSON.stringify(text)}`
        : `time: invalid duration ${JSON.stringify(text)}`,
    );
  }
  if (ms < 1) throw invalid(`Interval ${JSON.stringify(name)} cannot be less than 1ms`);
  return Math.round(ms * 1_000_000);
}

/** HEALTHCHECK [--interval=… --timeout=… --start-period=… --retries=…] CMD …|NONE (parseHealthcheck). */
function parseHealthcheck(rest: string): Healthcheck {
  const { flags, body } = builderFlags(rest, ['interval', 'timeout', 'start-period', 'retries']);
  const m = /^(\S+)\s*(.*)$/s.exec(body);
  if (!m) throw invalid('HEALTHCHECK requires at least one argument');
  const type = (m[1] ?? '').toUpperCase();
  const command = m[2] ?? '';
  if (type === 'NONE') {
    if (command !== '') throw invalid('HEALTHCHECK NONE takes no arguments');
    return { Test: ['NONE'] };
  }
  if (type !== 'CMD') throw invalid(`Unknown type ${JSON.stringify(type)} in HEALTHCHECK (try CMD)`);
  const json = parseJsonArgs(command);
  const args = json ?? (command === '' ? [] : [command]);
  if (args.length === 0) throw invalid('Missing command after HEALTHCHECK CMD');
  const health: Healthcheck = { Test: [json ? 'CMD' : 'CMD-SHELL', ...args] };
  const interval = healthInterval(flags, 'interval');
  const timeout = healthInterval(flags, 'timeout');
  const startPeriod = healthInterval(flags, 'start-period');
  if (interval) health.Interval = interval;
  if (timeout) health.Timeout = timeout;
  if (startPeriod) health.StartPeriod = startPeriod;
  const retries = flags.get('retries');
  if (retries !== undefined && retries !== '') {
    if (!/^[-+]?\d+$/.test(retries)) {
      throw invalid(`strconv.ParseInt: parsing ${JSON.stringify(retries)}: invalid syntax`);
    }
    const n = Number(retries);
    if (n > 2 ** 31 - 1 || n < -(2 ** 31)) {
      throw invalid(`strconv.ParseInt: parsing ${JSON.stringify(retries)}: value out of range`);
    }
    if (n < 1) throw invalid(`--retries must be at least 1 (not ${n})`);
    health.Retries = n;
  }
  return health;
}

/**
 * Applies `changes` (each one or more lines) to a copy of `base` and returns it. Errors are
 * InvalidParameterError with dockerd's texts.
 */
export function applyChanges(changes: readonly string[], base: ImageRuntimeConfig = {}): ImageRuntimeConfig {
  const config: ImageRuntimeConfig = structuredClone(base);
  let cmdSet = false;
  let healthcheckSet = false;
  const lines = changes.flatMap((c) => c.split('\n')).map((l) => l.trim());
  for (const line of lines) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^(\S+)\s*(.*)$/s.exec(line);
    const instruction = (m?.[1] ?? '').toLowerCase();
    const rest = m?.[2] ?? '';
    if (!ALLOWED.has(instruction)) throw invalid(`${instruction} is not a valid change command`);
    const env = config.Env ?? [];
    const words = (): string[] => splitWords(rest).map((w) => processWord(w, env));
    switch (instruction) {
      case 'cmd': {
        config.Cmd = parseJsonArgs(rest) ?? (rest === '' ? [...SHELL] : [...SHELL, rest]);
        cmdSet = true;
        break;
      }
      case 'entrypoint': {
        const json = parseJsonArgs(rest);
        config.Entrypoint = json ?? (rest === '' ? null : [...SHELL, rest]);
        if (!cmdSet) config.Cmd = null;
        break;
      }
      case 'env': {
        const next = [...env];
        for (const [rawKey, rawValue] of nameValues(rest, 'ENV')) {
          const key = processWord(rawKey, env);
          const value = processWord(rawValue, env);
          if (key === '') throw invalid('ENV names can not be blank');
          const entry = `${key}=${value}`;
          const index = next.findIndex((e) => e === key || e.startsWith(`${key}=`));
          if (index >= 0) next[index] = entry;
          else next.push(entry);
        }
        config.Env = next;
        break;
      }
      case 'label': {
        const labels = { ...(config.Labels ?? {}) };
        for (const [rawKey, rawValue] of nameValues(rest, 'LABEL')) {
          const key = processWord(rawKey, env);
          if (key === '') throw invalid('LABEL names can not be blank');
          labels[key] = processWord(rawValue, env);
        }
        config.Labels = labels;
        break;
      }
      case 'expose': {
        const specs = words();
        if (specs.length === 0) throw invalid('EXPOSE requires at least one argument');
        const ports: Record<string, object> = { ...(config.ExposedPorts ?? {}) };
        for (const spec of specs) for (const port of exposedPorts(spec)) ports[port] = {};
        config.ExposedPorts = ports;
        break;
      }
      case 'user': {
        const args = words();
        if (args.length !== 1) throw invalid('USER requires exactly one argument');
        config.User = args[0] as string;
        break;
      }
      case 'workdir': {
        const args = words();
        if (args.length !== 1) throw invalid('WORKDIR requires exactly one argument');
        const dir = args[0] as string;
        config.WorkingDir = path.posix.isAbsolute(dir)
          ? path.posix.normalize(dir)
          : path.posix.join('/', config.WorkingDir ?? '', dir);
        break;
      }
      case 'volume': {
        const vols = parseJsonArgs(rest) ?? words();
        if (vols.length === 0) throw invalid('VOLUME requires at least one argument');
        const volumes: Record<string, object> = { ...(config.Volumes ?? {}) };
        for (const v of vols) {
          if (v.trim() === '') throw invalid('VOLUME specified can not be an empty string');
          volumes[v] = {};
        }
        config.Volumes = volumes;
        break;
      }
      case 'healthcheck': {
        config.Healthcheck = parseHealthcheck(rest);
        healthcheckSet = true;
        break;
      }
      case 'onbuild': {
        const t = /^(\S+)\s*(.*)$/s.exec(rest.trim());
        if (!t) throw invalid('ONBUILD requires at least one argument');
        const trigger = (t[1] ?? '').toUpperCase();
        if (trigger === 'ONBUILD') throw invalid("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed");
        if (trigger === 'FROM' || trigger === 'MAINTAINER') {
          throw invalid(`${trigger} isn't allowed as an ONBUILD trigger`);
        }
        const onbuild = Array.isArray(config.OnBuild) ? (config.OnBuild as string[]) : [];
        config.OnBuild = [...onbuild, `${trigger} ${t[2] ?? ''}`.trim()];
        break;
      }
    }
  }
  // dockerd's commit merges the result with the container's config: what the HEALTHCHECK left
  // unset comes from the base (`--health-retries 2` survives `HEALTHCHECK --interval=1s CMD true`).
  const previous = base.Healthcheck;
  if (healthcheckSet && previous && config.Healthcheck) {
    const merged: Healthcheck = { ...config.Healthcheck };
    if (!merged.Test || merged.Test.length === 0) merged.Test = previous.Test;
    merged.Interval ||= previous.Interval;
    merged.Timeout ||= previous.Timeout;
    merged.StartPeriod ||= previous.StartPeriod;
    merged.Retries ||= previous.Retries;
    for (const key of Object.keys(merged) as Array<keyof Healthcheck>) {
      if (merged[key] === undefined) delete merged[key];
    }
    config.Healthcheck = merged;
  }
  return config;
}
