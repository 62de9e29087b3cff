/**
 * The guest assets every VM boots from (kernel, initramfs, read-only agent disk), as built by
 * guest/assets/build.sh into the cache dir and described by its manifest.json. The daemon loads
 * them once at start; a missing or broken manifest is a set-up problem, reported as such.
 */
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { SystemError, messageOf } from '../common/errdefs';

export const DEFAULT_GUEST_DIR = '/var/cache/capsule/guest';

export interface GuestAssets {
  kernelPath: string;
  initrdPath: string;
  agentDiskPath: string;
  /** `uname -r` inside the guest. */
  kernelRelease: string;
  /** Hash of every input of the build: changes whenever any asset may have (absent in fakes). */
  inputsHash?: string;
}

interface Manifest {
  kernelRelease: string;
  kernel: string;
  initrd: string;
  agentDisk: string;
  inputsHash: string;
}

function missing(dir: string, detail: string, cause?: unknown): SystemError {
  return new SystemError(`guest assets missing in ${dir}: run scripts/setup.sh (${detail})`, { cause });
}

function isManifest(value: unknown): value is Manifest {
  if (typeof value !== 'object' || value === null) return false;
  const v = value as Record<string, unknown>;
  return ['kernelRelease', 'kernel', 'initrd', 'agentDisk', 'inputsHash'].every(
    (key) => typeof v[key] === 'string' && v[key] !== '',
  );
}

/** Reads `dir`/manifest.json and checks that the files it names exist. */
export async function loadGuestAssets(dir: string): Promise<GuestAssets> {
  const manifestPath = path.join(dir, 'manifest.json');
  let text: string;
  try {
    text = await readFile(manifestPath, 'utf8');
  } catch (err) {
    throw missing(dir, `cannot read manifest.json: ${messageOf(err)}`, err);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw missing(dir, `manifest.json is not JSON: ${messageOf(err)}`, err);
  }
  if (!isManifest(parsed)) throw missing(dir, 'manifest.json lacks a field');
  // Relative names are relative to the manifest (a relocated cache stays usable).
  const resolve = (p: string): string => path.resolve(dir, p);
  const assets: GuestAssets = {
    kernelPath: resolve(parsed.kernel),
    initrdPath: resolve(parsed.initrd),
    agentDiskPath: resolve(parsed.agentDisk),
    kernelRelease: parsed.kernelRelease,
    inputsHash: parsed.inputsHash,
  };
  for (const file of [assets.kernelPath, assets.initrdPath, assets.agentDiskPath]) {
    try {
      const st = await stat(file);
      if (!st.isFile()) throw new Error('not a regular file');
    } catch (err) {
      throw missing(dir, `${file}: ${messageOf(err)}`, err);
    }
  }
  return assets;
}
