/**
 * `POST /auth` (docker login): checks credentials against a registry the way dockerd's loginV2
 * does, and keeps nothing — the CLI stores the credentials and sends them with each pull and push
 * in X-Registry-Auth.
 *
 * The registry is pinged (`GET /v2/`); its challenge decides how the credentials are proven:
 * none (an open registry: "Login Succeeded" whatever the credentials), Basic (sent with a second
 * `GET /v2/`), or Bearer (a token fetched from the challenge's realm with the credentials —
 * Docker Hub's flow — then `GET /v2/` with it). Endpoints are the push endpoints of the image
 * service's registry client, never mirrors (credentials for a registry must not go to a
 * mirror): plain http for loopback registries, https then http for insecure ones, https
 * elsewhere. Credentials go only to the registry's origin and its token realm.
 *
 * Errors read like dockerd's: a refused login is UnauthorizedError "login attempt to
 * http://127.0.0.1:5000/v2/ failed with status: 401 Unauthorized" (dockerd 20.10 answered 500
 * with this text, later versions 401), a refused token request "Get \"https://…/v2/\":
 * unauthorized: incorrect username or password", an unreachable registry Go's dial text.
 */
import * as http from 'node:http';
import * as https from 'node:https';
import type { IncomingMessage } from 'node:http';
import {
  CanceledError,
  InvalidParameterError,
  SystemError,
  UnauthorizedError,
  UnavailableError,
} from '../common/errdefs';
import type { Logger } from '../common/logger';
import {
  RegistryClient,
  parseWwwAuthenticate,
  registryErrorOf,
  type Challenge,
  type Endpoint,
} from '../images/registry-client';
import type { RegistryAuth } from '../images/types';

export interface LoginOptions {
  log: Logger;
  /** The daemon's insecure-registries ("host[:port]" or IPv4 CIDRs). */
  insecureRegistries: readonly string[];
  userAgent: string;
  signal?: AbortSignal;
  /** Per-request deadline, ms (default 30 s). */
  timeoutMs?: number;
}

export interface LoginResult {
  /** "Login Succeeded". */
  status: string;
  /** A refresh token from the token server, when it issued one; "" otherwise. */
  identityToken: string;
}

const INDEX_HOSTS = new Set(['index.docker.io', 'docker.io', 'registry-1.docker.io']);
const MAX_BODY = 64 * 1024;

/** The registry a login names: "" → Docker Hub; a scheme and path are dropped, as dockerd does. */
export function loginDomain(serverAddress: string | undefined): string {
  let address = serverAddress ?? '';
  if (address === '') return 'docker.io';
  if (!/^https?:\/\//i.test(address)) address = `https://${address}`;
  let host: string;
  try {
    host = new URL(address).host;
  } catch (err) {
    throw new InvalidParameterError(`unable to parse server address: ${(err as Error).message}`);
  }
  if (host === '')
    throw new InvalidParameterError(`unable to parse server address: no host in "${serverAddress}"`);
  return INDEX_HOSTS.has(host.toLowerCase()) ? 'docker.io' : host;
}

interface Reply {
  status: number;
  res: IncomingMessage;
}

/** Go's net/http wording for a failed request, as dockerd prints it. */
function transportError(method: string, url: URL, err: unknown): Error {
  const e = err as NodeJS.ErrnoException;
  if (e.name === 'AbortError' || e.code === 'ABORT_ERR') return new CanceledError('context canceled');
  const port = url.port || (url.protocol === 'https:' ? '443' : '80');
  const where = `${method} "${url.toString()}"`;
  const hostPort = `${url.hostname}:${port}`;
  const detail: Record<string, string> = {
    ECONNREFUSED: `dial tcp ${hostPort}: connect: connection refused`,
    ENOTFOUND: `dial tcp: lookup ${url.hostname}: no such host`,
    EAI_AGAIN: `dial tcp: lookup ${url.hostname}: no such host`,
    ETIMEDOUT: `dial tcp ${hostPort}: i/o timeout`,
    ECONNRESET: `read tcp ${hostPort}: read: connection reset by peer`,
    EHOSTUNREACH: `dial tcp ${hostPort}: connect: no route to host`,
    ENETUNREACH: `dial tcp ${hostPort}: connect: network is unreachable`,
    DEPTH_ZERO_SELF_SIGNED_CERT: 'x509: certificate signed by unknown authority',
    SELF_SIGNED_CERT_IN_CHAIN: 'x509: certificate signed by unknown authority',
    UNABLE_TO_VERIFY_LEAF_SIGNATURE: 'x509: certificate signed by unknown authority',
    ERR_TLS_CERT_ALTNAME_INVALID: `x509: certificate is not valid for ${url.hostname}`,
    CERT_HAS_EXPIRED: 'x509: certificate has expired or is not yet valid',
    EPROTO: 'http: server gave HTTP response to HTTPS client',
    ERR_SSL_WRONG_VERSION_NUMBER: 'http: server gave HTTP response to HTTPS client',
  };
  return new UnavailableError(`${where}: ${detail[e.code ?? ''] ?? e.message}`, { cause: err });
}

function send(
  method: 'GET' | 'POST',
  url: URL,
  headers: Record<string, string>,
  options: LoginOptions,
  skipTlsVerify: boolean,
  body?: string,
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const isHttps = url.protocol === 'https:';
    const req = (isHttps ? https : http).request(
      url,
      {
        method,
        headers: { 'user-agent': options.userAgent, ...headers },
        ...(options.signal ? { signal: options.signal } : {}),
        ...(isHttps && skipTlsVerify ? { rejectUnauthorized: false } : {}),
      },
      (res) => resolve({ status: res.statusCode ?? 0, res }),
    );
    req.setTimeout(options.timeoutMs ?? 30_000, () => {
      req.destroy(Object.assign(new Error('i/o timeout'), { code: 'ETIMEDOUT' }));
    });
    req.once('error', (err) => reject(transportError(method === 'GET' ? 'Get' : 'Post', url, err)));
    req.end(body);
  });
}

async function readJson(res: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of res as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY) {
      res.destroy();
      throw new SystemError('token response too large');
    }
    chunks.push(chunk);
  }
  return JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
}

/** distribution's token handler, for a login: no scope, offline (a refresh token is welcome). */
async function fetchToken(
  challenge: Challenge,
  auth: RegistryAuth,
  pingUrl: URL,
  endpoint: Endpoint,
  options: LoginOptions,
): Promise<{ token: string; refreshToken: string }> {
  const where = `Get "${pingUrl.toString()}"`;
  const realm = challenge.params.realm ?? '';
  let realmUrl: URL;
  try {
    realmUrl = new URL(realm);
  } catch {
    throw new UnauthorizedError(`${where}: invalid bearer realm ${JSON.stringify(realm)}`);
  }
  const service = challenge.params.service ?? '';
  let reply: Reply;
  if (auth.identitytoken) {
    const form = new URLSearchParams({
      grant_type: 'refresh_token',
      refresh_token: auth.identitytoken,
      service,
      client_id: 'capsule',
      access_type: 'offline',
    });
    reply = await send(
      'POST',
      realmUrl,
      { 'content-type': 'application/x-www-form-urlencoded' },
      options,
      endpoint.skipTlsVerify,
      form.toString(),
    );
  } else {
    const url = new URL(realmUrl);
    if (service !== '') url.searchParams.set('service', service);
    url.searchParams.set('client_id', 'capsule');
    url.searchParams.set('offline_token', 'true');
    const headers: Record<string, string> = {};
    if (auth.username || auth.password) {
      url.searchParams.set('account', auth.username ?? '');
      headers.authorization = basic(auth);
    }
    reply = await send('GET', url, headers, options, endpoint.skipTlsVerify);
  }
  if (reply.status < 200 || reply.status >= 300) {
    const info = await registryErrorOf(reply.res);
    const text = `${where}: ${info.text}`;
    if (reply.status === 401 || reply.status === 403 || info.code === 'UNAUTHORIZED') {
      throw new UnauthorizedError(text);
    }
    throw reply.status >= 500 ? new UnavailableError(text) : new SystemError(text);
  }
  let doc: { token?: unknown; access_token?: unknown; refresh_token?: unknown };
  try {
    doc = (await readJson(reply.res)) as typeof doc;
  } catch {
    throw new UnauthorizedError(`${where}: invalid token response from ${realmUrl.origin}`);
  }
  const token =
    typeof doc.token === 'string' && doc.token !== ''
      ? doc.token
      : typeof doc.access_token === 'string'
        ? doc.access_token
        : '';
  if (token === '') {
    throw new UnauthorizedError(`${where}: authorization server did not include a token in the response`);
  }
  const refreshToken = typeof doc.refresh_token === 'string' ? doc.refresh_token : (auth.identitytoken ?? '');
  return { token, refreshToken };
}

function basic(auth: RegistryAuth): string {
  return `Basic ${Buffer.from(`${auth.username ?? ''}:${auth.password ?? ''}`, 'utf8').toString('base64')}`;
}

/** Thrown when the endpoint could not be reached at all: the next endpoint may be tried. */
class PingFailed extends Error {
  constructor(readonly error: Error) {
    super(error.message);
  }
}

/** dockerd's loginV2 against one endpoint. */
async function loginV2(endpoint: Endpoint, auth: RegistryAuth, options: LoginOptions): Promise<LoginResult> {
  const pingUrl = new URL('/v2/', endpoint.origin);
  let ping: Reply;
  try {
    ping = await send('GET', pingUrl, {}, options, endpoint.skipTlsVerify);
  } catch (err) {
    throw new PingFailed(err as Error);
  }
  ping.res.resume();
  if (ping.status === 200) return { status: 'Login Succeeded', identityToken: '' };
  const challenges =
    ping.status === 401 ? parseWwwAuthenticate(String(ping.res.headers['www-authenticate'] ?? '')) : [];
  const bearer = challenges.find((c) => c.scheme === 'bearer');
  const basicChallenge = challenges.find((c) => c.scheme === 'basic');
  let authorization: string | undefined;
  let identityToken = '';
  if (bearer !== undefined) {
    if (auth.registrytoken) {
      authorization = `Bearer ${auth.registrytoken}`;
    } else {
      const { token, refreshToken } = await fetchToken(bearer, auth, pingUrl, endpoint, options);
      authorization = `Bearer ${token}`;
      identityToken = refreshToken;
    }
  } else if (basicChallenge !== undefined) {
    if (!auth.username || !auth.password) {
      throw new UnauthorizedError(`Get "${pingUrl.toString()}": no basic auth credentials`);
    }
    authorization = basic(auth);
  }
  const check =
    authorization === undefined
      ? ping
      : await send('GET', pingUrl, { authorization }, options, endpoint.skipTlsVerify);
  if (check !== ping) check.res.resume();
  if (check.status === 200) return { status: 'Login Succeeded', identityToken };
  const text =
    `login attempt to ${pingUrl.toString()} failed with status: ${check.status} ${http.STATUS_CODES[check.status] ?? ''}`.trim();
  if (check.status === 401 || check.status === 403) throw new UnauthorizedError(text);
  throw check.status >= 500 ? new UnavailableError(text) : new SystemError(text);
}

/**
 * Logs in to the registry `auth.serveraddress` names (Docker Hub when empty). Tries the push
 * endpoints in order while an endpoint cannot be reached (https before http for insecure
 * registries); a registry that answers decides.
 */
export async function registryLogin(auth: RegistryAuth, options: LoginOptions): Promise<LoginResult> {
  const domain = loginDomain(auth.serveraddress);
  const client = new RegistryClient({
    log: options.log,
    insecureRegistries: [...options.insecureRegistries],
  });
  const endpoints = client.endpoints(domain).filter((e) => !e.mirror);
  let last: Error = new SystemError(`no endpoint for ${domain}`);
  for (const endpoint of endpoints) {
    try {
      const result = await loginV2(endpoint, auth, options);
      options.log.info('registry login succeeded', { registry: domain, endpoint: endpoint.origin });
      return result;
    } catch (err) {
      if (!(err instanceof PingFailed)) throw err;
      last = err.error;
      if (last instanceof CanceledError) throw last;
      options.log.info('error logging in to endpoint, trying next endpoint', {
        endpoint: endpoint.origin,
        error: last.message,
      });
    }
  }
  throw last;
}
