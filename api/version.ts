/**
 * API versioning as dockerd does it: every route answers both unversioned and under /vX.Y/ for
 * MIN_API_VERSION ≤ X.Y ≤ API_VERSION; the version in use is kept on the request for routes whose
 * shapes depend on it. Every response carries dockerd's identification headers.
 */
import type { NextFunction, Request, Response } from 'express';
import { InvalidParameterError } from '../common/errdefs';
import { CAPSULE_VERSION } from '../daemon/version';

/** Advertised (and default) version. 1.44+ drops fields docker-compose 1.29 needs. */
export const API_VERSION = '1.43';
export const MIN_API_VERSION = '1.24';

/** Compares dotted numeric versions ("1.9" < "1.24"); missing parts count as 0. */
export function compareVersions(a: string, b: string): number {
  const pa = a.split('.');
  const pb = b.split('.');
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = Number.parseInt(pa[i] ?? '0', 10) || 0;
    const y = Number.parseInt(pb[i] ?? '0', 10) || 0;
    if (x !== y) return x < y ? -1 : 1;
  }
  return 0;
}

const VERSION_PREFIX = /^\/v([0-9.]+)(?=\/)/;

const API_VERSION_KEY = Symbol('capsule.apiVersion');

/** The API version of this request (the path's, or the default for unversioned paths). */
export function apiVersionOf(req: Request): string {
  return (req as unknown as Record<symbol, string | undefined>)[API_VERSION_KEY] ?? API_VERSION;
}

export function versionAtLeast(req: Request, version: string): boolean {
  return compareVersions(apiVersionOf(req), version) >= 0;
}

export function serverHeader(): string {
  return `Docker/${CAPSULE_VERSION} (linux)`;
}

/** Sets dockerd's headers on every response. */
export function identityHeaders(_req: Request, res: Response, next: NextFunction): void {
  res.setHeader('Api-Version', API_VERSION);
  res.setHeader('Docker-Experimental', 'false');
  res.setHeader('Ostype', 'linux');
  res.setHeader('Server', serverHeader());
  next();
}

/** Strips and checks a /vX.Y prefix; too new or too old → 400 with dockerd's texts. */
export function versionPrefix(req: Request, _res: Response, next: NextFunction): void {
  const m = VERSION_PREFIX.exec(req.url);
  if (!m || m[1] === undefined) return next();
  const version = m[1];
  if (compareVersions(version, API_VERSION) > 0) {
    return next(
      new InvalidParameterError(
        `client version ${version} is too new. Maximum supported API version is ${API_VERSION}`,
      ),
    );
  }
  if (compareVersions(version, MIN_API_VERSION) < 0) {
    return next(
      new InvalidParameterError(
        `client version ${version} is too old. Minimum supported API version is ${MIN_API_VERSION}, ` +
          'please upgrade your client to a newer version',
      ),
    );
  }
  (req as unknown as Record<symbol, string>)[API_VERSION_KEY] = version;
  req.url = req.url.slice(m[0].length);
  next();
}
