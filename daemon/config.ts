/**
 * Daemon settings: defaults, then CAPSULE_* environment variables, then command-line flags (the
 * composition root parses the flags and hands them here).
 */
import { InvalidParameterError } from '../common/errdefs';

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
  insecureRegistries: string[];
}

export const DEFAULT_CONFIG: Readonly<DaemonConfig> = Object.freeze({
  socketPath: '/run/capsule/docker.sock',
  dataRoot: '/var/lib/capsule',
  execRoot: '/run/capsule/vm',
  guestAssetsDir: '/var/cache/capsule/guest',
  accel: 'auto',
  logLevel: 'info',
  insecureRegistries: [],
});

/** Values from flags; absent = not given. */
export interface ConfigFlags {
  socket?: string;
  dataRoot?: string;
  execRoot?: string;
  guestAssets?: string;
  accel?: string;
  logLevel?: string;
  insecureRegistry?: string[];
}

const LOG_LEVELS = new Set(['error', 'warn', 'info', 'http', 'verbose', 'debug', 'silly']);

function parseAccel(value: string, source: string): AccelSetting {
  if (value === 'auto' || value === 'kvm' || value === 'tcg') return value;
  throw new InvalidParameterError(`${source}: accel must be auto, kvm or tcg, not "${value}"`);
}

function parseLevel(value: string, source: string): string {
  if (LOG_LEVELS.has(value)) return value;
  throw new InvalidParameterError(`${source}: unknown log level "${value}"`);
}

function list(value: string | undefined): string[] {
  return (value ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
}

/** Defaults ← env (CAPSULE_SOCKET, CAPSULE_DATA_ROOT, …) ← flags. */
export function resolveConfig(flags: ConfigFlags, env: NodeJS.ProcessEnv = {}): DaemonConfig {
  const config: DaemonConfig = { ...DEFAULT_CONFIG, insecureRegistries: [] };
  if (env.CAPSULE_SOCKET) config.socketPath = env.CAPSULE_SOCKET;
  if (env.CAPSULE_DATA_ROOT) config.dataRoot = env.CAPSULE_DATA_ROOT;
  if (env.CAPSULE_EXEC_ROOT) config.execRoot = env.CAPSULE_EXEC_ROOT;
  if (env.CAPSULE_GUEST_ASSETS) config.guestAssetsDir = env.CAPSULE_GUEST_ASSETS;
  if (env.CAPSULE_ACCEL) config.accel = parseAccel(env.CAPSULE_ACCEL, 'CAPSULE_ACCEL');
  if (env.CAPSULE_LOG_LEVEL) config.logLevel = parseLevel(env.CAPSULE_LOG_LEVEL, 'CAPSULE_LOG_LEVEL');
  config.insecureRegistries = list(env.CAPSULE_INSECURE_REGISTRIES);

  if (flags.socket !== undefined) config.socketPath = flags.socket;
  if (flags.dataRoot !== undefined) config.dataRoot = flags.dataRoot;
  if (flags.execRoot !== undefined) config.execRoot = flags.execRoot;
  if (flags.guestAssets !== undefined) config.guestAssetsDir = flags.guestAssets;
  if (flags.accel !== undefined) config.accel = parseAccel(flags.accel, '--accel');
  if (flags.logLevel !== undefined) config.logLevel = parseLevel(flags.logLevel, '--log-level');
  if (flags.insecureRegistry !== undefined && flags.insecureRegistry.length > 0) {
    config.insecureRegistries = [...flags.insecureRegistry];
  }
  for (const [key, value] of Object.entries(config)) {
    if (value === '') throw new InvalidParameterError(`${key} must not be empty`);
  }
  return config;
}
