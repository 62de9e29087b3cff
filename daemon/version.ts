/** Capsule's own version and build facts, read once from the package manifest. */
import { readFileSync } from 'node:fs';
import * as path from 'node:path';

function readPackageVersion(): string {
  // dist/daemon/version.js and daemon/version.ts are both two levels below the package root.
  for (const candidate of [
    path.join(__dirname, '..', '..', 'package.json'),
    path.join(__dirname, '..', 'package.json'),
  ]) {
    try {
      const pkg = JSON.parse(readFileSync(candidate, 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'capsule' && typeof pkg.version === 'string') return pkg.version;
    } catch {
      // try the next candidate
    }
  }
  return '0.0.0-dev';
}

export const CAPSULE_VERSION = readPackageVersion();
/** Set by a release build; empty in a checkout. */
export const GIT_COMMIT = process.env.CAPSULE_GIT_COMMIT ?? '';
export const BUILD_TIME = process.env.CAPSULE_BUILD_TIME ?? '';
