/**
 * Docker's rules for combining a container's config with its image's (moby `merge` and
 * `CreateDaemonEnvironment`), kept exact because clients and images depend on them:
 * - Entrypoint/Cmd: when the user gave no Entrypoint, an empty user Cmd takes the image's Cmd,
 *   and a nil user Entrypoint takes the image's; a user Entrypoint disables both image values.
 * - Env: user entries, then image entries whose key the user did not set.
 * - User, WorkingDir, StopSignal, Healthcheck: the user's value, else the image's.
 * - Labels, ExposedPorts, Volumes: union, the user's value winning.
 * - The process environment adds PATH (default), HOSTNAME and TERM=xterm (tty) under the config's Env.
 */
import { InvalidParameterError } from '../common/errdefs';
import type { ImageRuntimeConfig } from '../images/types';
import type { ContainerConfig } from './types';

export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

function envKey(entry: string): string {
  const eq = entry.indexOf('=');
  return eq < 0 ? entry : entry.slice(0, eq);
}

function unionObjects<T extends object>(
  user: Record<string, T> | null,
  image: Record<string, T> | undefined,
): Record<string, T> | null {
  if (!image || Object.keys(image).length === 0) return user;
  const out: Record<string, T> = { ...(user ?? {}) };
  for (const [k, v] of Object.entries(image)) if (!(k in out)) out[k] = v;
  return out;
}

export function mergeImageConfig(
  user: ContainerConfig,
  image: ImageRuntimeConfig | undefined,
): ContainerConfig {
  const img = image ?? {};
  const merged: ContainerConfig = { ...user };
  if (merged.user === '') merged.user = img.User ?? '';

  const imageEnv = img.Env ?? [];
  if (!merged.env || merged.env.length === 0) {
    merged.env = imageEnv.length > 0 ? [...imageEnv] : merged.env;
  } else {
    const keys = new Set(merged.env.map(envKey));
    merged.env = [...merged.env, ...imageEnv.filter((e) => !keys.has(envKey(e)))];
  }

  const labels: Record<string, string> = { ...(merged.labels ?? {}) };
  for (const [k, v] of Object.entries(img.Labels ?? {})) if (!(k in labels)) labels[k] = v;
  merged.labels = labels;

  merged.exposedPorts = unionObjects(merged.exposedPorts, img.ExposedPorts);
  merged.volumes = unionObjects(merged.volumes, img.Volumes);

  if (!merged.entrypoint || merged.entrypoint.length === 0) {
    if (!merged.cmd || merged.cmd.length === 0) merged.cmd = img.Cmd ? [...img.Cmd] : merged.cmd;
    if (merged.entrypoint === null) merged.entrypoint = img.Entrypoint ? [...img.Entrypoint] : null;
  }

  if (merged.workingDir === '') merged.workingDir = img.WorkingDir ?? '';
  if (merged.stopSignal === '') merged.stopSignal = img.StopSignal ?? '';
  if (merged.healthcheck === null && img.Healthcheck)
    merged.healthcheck = { ...lowerHealthcheck(img.Healthcheck) };
  else if (merged.healthcheck && img.Healthcheck) {
    // moby fills the unset parts of a user healthcheck from the image's.
    const base = lowerHealthcheck(img.Healthcheck);
    const hc = { ...merged.healthcheck };
    if (!hc.test || hc.test.length === 0) hc.test = base.test;
    if (!hc.interval) hc.interval = base.interval;
    if (!hc.timeout) hc.timeout = base.timeout;
    if (!hc.startPeriod) hc.startPeriod = base.startPeriod;
    if (!hc.retries) hc.retries = base.retries;
    merged.healthcheck = hc;
  }
  return merged;
}

function lowerHealthcheck(
  hc: NonNullable<ImageRuntimeConfig['Healthcheck']>,
): NonNullable<ContainerConfig['healthcheck']> {
  const out: NonNullable<ContainerConfig['healthcheck']> = {};
  if (hc.Test) out.test = [...hc.Test];
  if (hc.Interval !== undefined) out.interval = hc.Interval;
  if (hc.Timeout !== undefined) out.timeout = hc.Timeout;
  if (hc.StartPeriod !== undefined) out.startPeriod = hc.StartPeriod;
  if (hc.Retries !== undefined) out.retries = hc.Retries;
  return out;
}

/** Path and Args of the container's process: Entrypoint ++ Cmd, split as dockerd reports it. */
export function commandOf(config: ContainerConfig): { path: string; args: string[] } {
  const argv = [...(config.entrypoint ?? []), ...(config.cmd ?? [])];
  const [path, ...args] = argv;
  if (path === undefined) throw new InvalidParameterError('No command specified');
  return { path, args };
}

/** The environment the process gets (moby CreateDaemonEnvironment + ReplaceOrAppendEnvValues). */
export function processEnv(config: ContainerConfig): string[] {
  const env = [`PATH=${DEFAULT_PATH}`, `HOSTNAME=${config.hostname}`];
  if (config.tty) env.push('TERM=xterm');
  const index = new Map(env.map((e, i) => [envKey(e), i]));
  for (const entry of config.env ?? []) {
    const key = envKey(entry);
    const at = index.get(key);
    if (!entry.includes('=')) {
      // "KEY" without a value unsets an inherited default, as in moby.
      if (at !== undefined) env[at] = '';
      continue;
    }
    if (at !== undefined) env[at] = entry;
    else {
      index.set(key, env.length);
      env.push(entry);
    }
  }
  return env.filter((e) => e !== '');
}
