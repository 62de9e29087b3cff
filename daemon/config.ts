/**
 * Daemon settings: defaults, then CAPSULE_* environment variables, then a daemon.json-style
 * configuration file (dockerd's `--config-file`), then command-line flags (the composition root
 * parses the flags and reads the file; this module merges and validates).
 *
 * As dockerd: a key of the file that matches no option is an error, a value of the wrong JSON
 * type is an error, and an option given both as a flag and in the file is an error (whatever the
 * two values are) — the file never silently loses to a flag. The default file may be missing; a
 * file named with `--config-file` must exist.
 */
import { readFileSync } from 'node:fs';
import { InvalidParameterError, messageOf } from '../common/errdefs';
import { parseLogOptions, validateLogOptions } from './logs';

export type AccelSetting = 'auto' | 'kvm' | 'tcg';

export interface DaemonConfig {
  /** The API's unix socket. */
  socketPath: string;
  /** Persistent state: containers, images, volumes. */
  dataRoot: string;
  /** Per-run scratch state of the sandboxes (sockets, shared dirs). */
  execRoot: string;
  /** Built guest kernel, initramfs and agent disk. */
  guestAssetsDir: string;
  accel: AccelSetting;
  logLevel: string;
  /** dockerd's `debug`: debug logging, and `Debug: true` in /info. */
  debug: boolean;
  /** "host[:port]" names and IPv4 CIDRs reached without TLS verification (scheme stripped). */
  insecureRegistries: string[];
  /** Mirrors of Docker Hub, normalised as dockerd does ("http://127.0.0.1:5000/"). */
  registryMirrors: string[];
  /** Parallel layer downloads per pull. */
  maxConcurrentDownloads: number;
  /** VMs kept booted and ready for the next container start; 0 disables the pool. */
  warmPoolSize: number;
  /** dockerd's `log-driver`: the only driver Capsule has. */
  logDriver: 'json-file';
  /**
   * dockerd's `log-opts`: json-file options every container gets for the keys its own
   * HostConfig.LogConfig.Config leaves unset (see mergeLogOptions).
   */
  logOpts: Record<string, string>;
}

export const DEFAULT_CONFIG_FILE = '/etc/capsule/daemon.json';

export const DEFAULT_CONFIG: Readonly<DaemonConfig> = Object.freeze({
  socketPath: '/run/capsule/docker.sock',
  dataRoot: '/var/lib/capsule',
  execRoot: '/run/capsule/vm',
  guestAssetsDir: '/var/cache/capsule/guest',
  accel: 'auto',
  logLevel: 'info',
  debug: false,
  insecureRegistries: [],
  registryMirrors: [],
  maxConcurrentDownloads: 3,
  warmPoolSize: 1,
  logDriver: 'json-file',
  logOpts: Object.freeze({}) as Record<string, string>,
});

/** Values from flags; absent = not given. */
export interface ConfigFlags {
  socket?: string;
  /** `-H/--host`, dockerd's spelling of the socket: "unix:///path". */
  host?: string[];
  dataRoot?: string;
  execRoot?: string;
  guestAssets?: string;
  accel?: string;
  logLevel?: string;
  debug?: boolean;
  insecureRegistry?: string[];
  registryMirror?: string[];
  maxConcurrentDownloads?: string;
  warmPool?: string;
  logDriver?: string;
  /** `--log-opt key=value`, repeatable. */
  logOpt?: string[];
}

/** A parsed configuration file: its path and its (type-checked) keys. */
export interface ConfigFile {
  path: string;
  values: FileValues;
}

export interface FileValues {
  hosts?: string[];
  'data-root'?: string;
  'exec-root'?: string;
  'guest-assets'?: string;
  accel?: string;
  'log-level'?: string;
  debug?: boolean;
  'insecure-registries'?: string[];
  'registry-mirrors'?: string[];
  'max-concurrent-downloads'?: number;
  'warm-pool'?: number;
  'log-driver'?: string;
  'log-opts'?: Record<string, string>;
}

type FileKey = keyof FileValues;
type Kind = 'string' | 'bool' | 'strings' | 'int' | 'stringMap';

/** Every key the file may hold: its JSON kind and the flags that set the same option. */
const FILE_KEYS: Record<FileKey, { kind: Kind; flags: Array<keyof ConfigFlags> }> = {
  hosts: { kind: 'strings', flags: ['host', 'socket'] },
  'data-root': { kind: 'string', flags: ['dataRoot'] },
  'exec-root': { kind: 'string', flags: ['execRoot'] },
  'guest-assets': { kind: 'string', flags: ['guestAssets'] },
  accel: { kind: 'string', flags: ['accel'] },
  'log-level': { kind: 'string', flags: ['logLevel'] },
  debug: { kind: 'bool', flags: ['debug'] },
  'insecure-registries': { kind: 'strings', flags: ['insecureRegistry'] },
  'registry-mirrors': { kind: 'strings', flags: ['registryMirror'] },
  'max-concurrent-downloads': { kind: 'int', flags: ['maxConcurrentDownloads'] },
  'warm-pool': { kind: 'int', flags: ['warmPool'] },
  'log-driver': { kind: 'string', flags: ['logDriver'] },
  'log-opts': { kind: 'stringMap', flags: ['logOpt'] },
};

const LOG_LEVELS = new Set(['error', 'warn', 'info', 'http', 'verbose', 'debug', 'silly']);

function parseAccel(value: string, source: string): AccelSetting {
  if (value === 'auto' || value === 'kvm' || value === 'tcg') return value;
  throw new InvalidParameterError(`${source}: accel must be auto, kvm or tcg, not "${value}"`);
}

function parseLevel(value: string, source: string): string {
  if (LOG_LEVELS.has(value)) return value;
  throw new InvalidParameterError(`${source}: unknown log level "${value}"`);
}

/**
 * Capsule has one logging driver. dockerd starts with any name (it could be a plugin) and fails
 * each container create instead; with no plugins here, refusing to start says it once, clearly.
 */
function parseLogDriver(value: string, source: string): 'json-file' {
  if (value === '' || value === 'json-file') return 'json-file';
  throw new InvalidParameterError(
    `${source}: logging driver "${value}" is not supported; Capsule has only the json-file driver`,
  );
}

/**
 * The daemon's default log options, checked as dockerd does at start ("failed to set log opts:
 * unknown log opt …"); their values too (dockerd checks those at each container start only, so
 * every container would fail to start later).
 */
function checkLogOpts(opts: Record<string, string>, source: string): Record<string, string> {
  try {
    validateLogOptions(opts);
    parseLogOptions(opts);
  } catch (err) {
    throw new InvalidParameterError(`${source}: failed to set log opts: ${messageOf(err)}`, { cause: err });
  }
  return sortedCopy(opts);
}

/** Keys in order, as Go writes a map (inspect shows LogConfig.Config that way). */
function sortedCopy(map: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const key of Object.keys(map).sort()) out[key] = map[key] as string;
  return out;
}

function splitOnce(text: string, sep: string): [string, string] {
  const at = text.indexOf(sep);
  return at < 0 ? [text, ''] : [text.slice(0, at), text.slice(at + sep.length)];
}

/** `--log-opt key=value` flags as a map (a later key wins, as dockerd's map option). */
function logOptFlags(values: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const v of values) {
    const [key, value] = splitOnce(v, '=');
    if (key === '' || !v.includes('=')) {
      throw new InvalidParameterError(`--log-opt: invalid value "${v}": expected key=value`);
    }
    out[key] = value;
  }
  return out;
}

/**
 * dockerd's mergeAndVerifyLogConfig for json-file (Capsule's only driver): the daemon's log-opts
 * fill the keys a container's own LogConfig.Config leaves unset, whether its Type was "" or
 * "json-file"; the container's own values win. Keys sorted, as dockerd's inspect shows them.
 */
export function mergeLogOptions(
  own: Record<string, string>,
  defaults: Record<string, string>,
): Record<string, string> {
  return sortedCopy({ ...defaults, ...own });
}

function parseCount(value: string | number, source: string, min = 1): number {
  const n = typeof value === 'number' ? value : /^\d+$/.test(value) ? Number(value) : NaN;
  if (!Number.isSafeInteger(n) || n < min) {
    throw new InvalidParameterError(`${source}: must be a whole number >= ${min}, not ${String(value)}`);
  }
  return n;
}

function list(value: string | undefined): string[] {
  return (value ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
}

/** `unix:///path` → "/path". Capsule serves one unix socket, so exactly one host. */
function socketFromHosts(hosts: string[], source: string): string {
  if (hosts.length !== 1) {
    throw new InvalidParameterError(
      `${source}: capsuled listens on exactly one unix socket; got ${hosts.length} hosts`,
    );
  }
  const host = hosts[0] ?? '';
  if (!host.startsWith('unix://')) {
    throw new InvalidParameterError(`${source}: only unix:// hosts are supported, not "${host}"`);
  }
  const socket = host.slice('unix://'.length);
  return socket === '' ? DEFAULT_CONFIG.socketPath : socket;
}

/**
 * dockerd's ValidateMirror: an http(s) URL with no path, query, fragment or credentials,
 * returned with one trailing slash.
 */
export function validateMirror(value: string): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new InvalidParameterError(`invalid mirror: ${JSON.stringify(value)} is not a valid URI`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new InvalidParameterError(
      `invalid mirror: unsupported scheme ${JSON.stringify(url.protocol.replace(/:$/, ''))} in ${JSON.stringify(value)}`,
    );
  }
  if ((url.pathname !== '' && url.pathname !== '/') || url.search !== '' || url.hash !== '') {
    throw new InvalidParameterError(
      `invalid mirror: path, query, or fragment at end of the URI ${JSON.stringify(value)}`,
    );
  }
  if (url.username !== '' || url.password !== '') {
    const shown = `${url.protocol}//${url.username}:xxxxx@${url.host}/`;
    throw new InvalidParameterError(
      `invalid mirror: username/password not allowed in URI ${JSON.stringify(shown)}`,
    );
  }
  return value.replace(/\/+$/, '') + '/';
}

/**
 * dockerd's insecure-registry handling: an "http://" or "https://" prefix is dropped, any other
 * scheme is an error; IPv4 CIDRs and "host[:port]" names are kept.
 */
export function validateInsecureRegistry(value: string): string {
  let entry = value;
  if (/^https?:\/\//i.test(entry)) entry = entry.replace(/^https?:\/\//i, '');
  else if (entry.includes('://')) {
    throw new InvalidParameterError(`insecure registry ${value} should not contain '://'`);
  }
  entry = entry.replace(/\/+$/, '');
  if (/^\d+\.\d+\.\d+\.\d+\/\d+$/.test(entry)) {
    const [ip = '', bits = ''] = entry.split('/');
    if (Number(bits) > 32 || ip.split('.').some((p) => Number(p) > 255)) {
      throw new InvalidParameterError(`insecure registry ${value} is not valid: invalid CIDR address`);
    }
    return entry;
  }
  if (entry === '' || entry.includes('/') || /\s/.test(entry)) {
    throw new InvalidParameterError(`insecure registry ${value} is not valid: invalid host "${entry}"`);
  }
  return entry;
}

function jsonKind(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'array';
  if (typeof value === 'boolean') return 'bool';
  return typeof value;
}

const GO_TYPES: Record<Kind, string> = {
  string: 'string',
  bool: 'bool',
  strings: '[]string',
  int: 'int',
  stringMap: 'map[string]string',
};

/** Type-checks one file value as Go's encoding/json would, with its error text. */
function checkKind(key: string, kind: Kind, value: unknown): void {
  const wrong = (got: unknown, goType: string): InvalidParameterError =>
    new InvalidParameterError(
      `json: cannot unmarshal ${jsonKind(got)} into Go struct field Config.${key} of type ${goType}`,
    );
  switch (kind) {
    case 'string':
      if (typeof value !== 'string') throw wrong(value, GO_TYPES[kind]);
      return;
    case 'bool':
      if (typeof value !== 'boolean') throw wrong(value, GO_TYPES[kind]);
      return;
    case 'int':
      if (typeof value !== 'number' || !Number.isInteger(value)) throw wrong(value, GO_TYPES[kind]);
      return;
    case 'strings':
      if (!Array.isArray(value)) throw wrong(value, GO_TYPES[kind]);
      for (const item of value) if (typeof item !== 'string') throw wrong(item, 'string');
      return;
    case 'stringMap':
      if (value === null || typeof value !== 'object' || Array.isArray(value)) {
        throw wrong(value, GO_TYPES[kind]);
      }
      for (const item of Object.values(value)) if (typeof item !== 'string') throw wrong(item, 'string');
  }
}

function fileError(path: string, message: string): InvalidParameterError {
  return new InvalidParameterError(`unable to configure the Capsule daemon with file ${path}: ${message}`);
}

/** Parses daemon.json text: a JSON object whose keys are known options of the right types. */
export function parseConfigFile(text: string, path: string): ConfigFile {
  let raw: unknown;
  try {
    raw = text.trim() === '' ? {} : JSON.parse(text);
  } catch (err) {
    throw fileError(path, (err as Error).message);
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw fileError(
      path,
      `json: cannot unmarshal ${jsonKind(raw)} into Go value of type map[string]interface {}`,
    );
  }
  const entries = Object.entries(raw as Record<string, unknown>);
  const unknown = entries.map(([k]) => k).filter((k) => !(k in FILE_KEYS));
  if (unknown.length > 0) {
    throw fileError(
      path,
      `the following directives don't match any configuration option: ${unknown.sort().join(', ')}`,
    );
  }
  for (const [key, value] of entries) {
    try {
      checkKind(key, FILE_KEYS[key as FileKey].kind, value);
    } catch (err) {
      throw fileError(path, (err as Error).message);
    }
  }
  return { path, values: raw as FileValues };
}

/**
 * Reads the configuration file. `explicit` (named with --config-file): a missing file is an
 * error, as dockerd's "open …: no such file or directory". The default path may be missing.
 */
export function loadConfigFile(path: string, explicit: boolean): ConfigFile | undefined {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ENOENT' && !explicit) return undefined;
    const reason =
      e.code === 'ENOENT'
        ? `open ${path}: no such file or directory`
        : e.code === 'EACCES'
          ? `open ${path}: permission denied`
          : e.code === 'EISDIR'
            ? `read ${path}: is a directory`
            : e.message;
    throw fileError(path, reason);
  }
  return parseConfigFile(text, path);
}

/** Go's %v of a flag or file value: lists as "[a b]", maps as "map[k:v]". */
function goValue(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map((v) => goValue(v)).join(' ')}]`;
  if (value !== null && typeof value === 'object') {
    const map = value as Record<string, unknown>;
    return `map[${Object.keys(map)
      .sort()
      .map((k) => `${k}:${goValue(map[k])}`)
      .join(' ')}]`;
  }
  return String(value);
}

/** dockerd's findConfigurationConflicts, over the options given both ways. */
function checkConflicts(flags: ConfigFlags, file: ConfigFile): void {
  const conflicts: string[] = [];
  for (const key of Object.keys(FILE_KEYS).sort() as FileKey[]) {
    const fileValue = file.values[key];
    if (fileValue === undefined) continue;
    for (const flag of FILE_KEYS[key].flags) {
      const flagValue = flags[flag];
      const given = Array.isArray(flagValue) ? flagValue.length > 0 : flagValue !== undefined;
      if (!given) continue;
      const shown =
        flag === 'socket'
          ? [`unix://${String(flagValue)}`]
          : flag === 'logOpt'
            ? Object.fromEntries((flagValue as string[]).map((o) => splitOnce(o, '=')))
            : flagValue;
      conflicts.push(`${key}: (from flag: ${goValue(shown)}, from file: ${goValue(fileValue)})`);
      break;
    }
  }
  if (conflicts.length > 0) {
    throw fileError(
      file.path,
      `the following directives are specified both as a flag and in the configuration file: ${conflicts.join(', ')}`,
    );
  }
}

/** Defaults ← env (CAPSULE_SOCKET, CAPSULE_DATA_ROOT, …) ← configuration file ← flags. */
export function resolveConfig(
  flags: ConfigFlags,
  env: NodeJS.ProcessEnv = {},
  file?: ConfigFile,
): DaemonConfig {
  const config: DaemonConfig = {
    ...DEFAULT_CONFIG,
    insecureRegistries: [],
    registryMirrors: [],
    logOpts: {},
  };
  if (env.CAPSULE_SOCKET) config.socketPath = env.CAPSULE_SOCKET;
  if (env.CAPSULE_DATA_ROOT) config.dataRoot = env.CAPSULE_DATA_ROOT;
  if (env.CAPSULE_EXEC_ROOT) config.execRoot = env.CAPSULE_EXEC_ROOT;
  if (env.CAPSULE_GUEST_ASSETS) config.guestAssetsDir = env.CAPSULE_GUEST_ASSETS;
  if (env.CAPSULE_ACCEL) config.accel = parseAccel(env.CAPSULE_ACCEL, 'CAPSULE_ACCEL');
  if (env.CAPSULE_LOG_LEVEL) config.logLevel = parseLevel(env.CAPSULE_LOG_LEVEL, 'CAPSULE_LOG_LEVEL');
  config.insecureRegistries = list(env.CAPSULE_INSECURE_REGISTRIES).map(validateInsecureRegistry);
  config.registryMirrors = list(env.CAPSULE_REGISTRY_MIRRORS).map(validateMirror);

  if (file !== undefined) {
    checkConflicts(flags, file);
    const v = file.values;
    const where = (key: string): string => `${file.path}: ${key}`;
    if (v.hosts !== undefined) config.socketPath = socketFromHosts(v.hosts, where('hosts'));
    if (v['data-root'] !== undefined) config.dataRoot = v['data-root'];
    if (v['exec-root'] !== undefined) config.execRoot = v['exec-root'];
    if (v['guest-assets'] !== undefined) config.guestAssetsDir = v['guest-assets'];
    if (v.accel !== undefined) config.accel = parseAccel(v.accel, where('accel'));
    if (v['log-level'] !== undefined) config.logLevel = parseLevel(v['log-level'], where('log-level'));
    if (v.debug !== undefined) config.debug = v.debug;
    if (v['insecure-registries'] !== undefined) {
      config.insecureRegistries = v['insecure-registries'].map(validateInsecureRegistry);
    }
    if (v['registry-mirrors'] !== undefined)
      config.registryMirrors = v['registry-mirrors'].map(validateMirror);
    if (v['max-concurrent-downloads'] !== undefined) {
      config.maxConcurrentDownloads = parseCount(
        v['max-concurrent-downloads'],
        where('max-concurrent-downloads'),
      );
    }
    if (v['warm-pool'] !== undefined) config.warmPoolSize = parseCount(v['warm-pool'], where('warm-pool'), 0);
    if (v['log-driver'] !== undefined)
      config.logDriver = parseLogDriver(v['log-driver'], where('log-driver'));
    if (v['log-opts'] !== undefined) config.logOpts = checkLogOpts(v['log-opts'], where('log-opts'));
  }

  if (flags.socket !== undefined) config.socketPath = flags.socket;
  if (flags.host !== undefined && flags.host.length > 0)
    config.socketPath = socketFromHosts(flags.host, '--host');
  if (flags.dataRoot !== undefined) config.dataRoot = flags.dataRoot;
  if (flags.execRoot !== undefined) config.execRoot = flags.execRoot;
  if (flags.guestAssets !== undefined) config.guestAssetsDir = flags.guestAssets;
  if (flags.accel !== undefined) config.accel = parseAccel(flags.accel, '--accel');
  if (flags.logLevel !== undefined) config.logLevel = parseLevel(flags.logLevel, '--log-level');
  if (flags.debug !== undefined) config.debug = flags.debug;
  if (flags.insecureRegistry !== undefined && flags.insecureRegistry.length > 0) {
    config.insecureRegistries = flags.insecureRegistry.map(validateInsecureRegistry);
  }
  if (flags.registryMirror !== undefined && flags.registryMirror.length > 0) {
    config.registryMirrors = flags.registryMirror.map(validateMirror);
  }
  if (flags.maxConcurrentDownloads !== undefined) {
    config.maxConcurrentDownloads = parseCount(flags.maxConcurrentDownloads, '--max-concurrent-downloads');
  }
  if (flags.warmPool !== undefined) config.warmPoolSize = parseCount(flags.warmPool, '--warm-pool', 0);
  if (flags.logDriver !== undefined) config.logDriver = parseLogDriver(flags.logDriver, '--log-driver');
  if (flags.logOpt !== undefined && flags.logOpt.length > 0) {
    config.logOpts = checkLogOpts(logOptFlags(flags.logOpt), '--log-opt');
  }
  // As dockerd: debug turns on debug logging whatever log-level says.
  if (config.debug) config.logLevel = 'debug';
  for (const [key, value] of Object.entries(config)) {
    if (value === '') throw new InvalidParameterError(`${key} must not be empty`);
  }
  return config;
}
