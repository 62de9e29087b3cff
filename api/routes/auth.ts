/**
 * `POST /auth` (docker login): the body is dockerd's AuthConfig JSON (username, password or a
 * base64 `auth`, identitytoken, registrytoken, serveraddress); the daemon checks it against the
 * registry and answers `{"IdentityToken":"","Status":"Login Succeeded"}`. Nothing is stored:
 * the CLI keeps the credentials and sends them in X-Registry-Auth.
 */
import { Router } from 'express';
import { InvalidParameterError } from '../../common/errdefs';
import type { LoginResult } from '../../daemon/daemon-images';
import type { RegistryAuth } from '../../daemon/types';
import { readJsonBody } from '../body';
import { sendJson } from '../errors';
import { toRegistryAuth } from './images';

export interface AuthBackend {
  registryLogin(auth: RegistryAuth, signal?: AbortSignal): Promise<LoginResult>;
}

export function createAuthRouter(backend: AuthBackend): Router {
  const router = Router();

  router.post('/auth', async (req, res) => {
    const body = await readJsonBody(req);
    if (body !== undefined && (typeof body !== 'object' || body === null || Array.isArray(body))) {
      throw new InvalidParameterError('invalid JSON: the body must be an object');
    }
    const abort = new AbortController();
    res.on('close', () => {
      if (!res.writableFinished) abort.abort();
    });
    const result = await backend.registryLogin(toRegistryAuth(body) ?? {}, abort.signal);
    sendJson(res, 200, { IdentityToken: result.identityToken, Status: result.status });
  });

  return router;
}
