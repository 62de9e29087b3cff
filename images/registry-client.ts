/**
 * Registry API v2 client (pull and push) on node:http/https.
 *
 * Transport: plain http for loopback registries (127.0.0.0/8, localhost, ::1) as dockerd does;
 * for registries in the insecure list, https without certificate checks first, then http; https
 * with verification everywhere else. docker.io is served by registry-1.docker.io, or by the
 * configured mirrors first.
 *
 * Auth follows the distribution client: ping `GET /v2/`, remember the challenges of a 401, then
 * authorise each request: Basic with the credentials, or Bearer with a token fetched from the
 * challenge's realm for the request's scope (`repository:<path>:pull`), with credentials when
 * given (an identity token is exchanged by the OAuth2 refresh-token grant), cached per scope until
 * it expires. A 401 that carries a new Bearer challenge is answered once more with a fresh token.
 * Authorization is never sent to another origin on a redirect (blob GETs redirect to storage).
 *
 * Push (a session opened with the "push" action asks for `repository:<path>:pull,push`) checks
 * blobs with HEAD, mounts them across repositories of one registry (`POST
 * /v2/<name>/blobs/uploads/?mount=<digest>&from=<repo>`, the token scope then also covers
 * `repository:<repo>:pull`), uploads them monolithically (POST, then PUT ?digest= with the body)
 * or as a stream (POST, PATCH with the body, PUT ?digest=), and PUTs the manifest. Pushes never go
 * to mirrors.
 *
 * Errors carry dockerd's texts: transport failures read like Go's (`Get "http://…/v2/": dial tcp
 * 127.0.0.1:5999: connect: connection refused`), registry errors like distribution's errcode
 * (`manifest unknown: manifest unknown`), wrapped by the caller with the reference.
 */
import { createHash } from 'node:crypto';
import * as http from 'node:http';
import * as https from 'node:https';
import { isIP } from 'node:net';
import type { IncomingMessage } from 'node:http';
import {
  CanceledError,
  CapsuleError,
  DataLossError,
  ForbiddenError,
  NotFoundError,
  SystemError,
  UnauthorizedError,
  UnavailableError,
} from '../common/errdefs';
import type { Logger } from '../common/logger';
import { sha256Digest } from './content-store';
import { MANIFEST_ACCEPT, MAX_MANIFEST_BYTES, parseManifest, type ParsedManifest } from './manifest';
import { DEFAULT_DOMAIN, familiarName, familiarString, type Reference } from './reference';
import type { RegistryAuth } from './types';

// ---------------------------------------------------------------------------------------------
// WWW-Authenticate

export interface Challenge {
  /** Lowercased: "basic", "bearer". */
  scheme: string;
  /** Parameter names lowercased. */
  params: Record<string, string>;
}

const TOKEN_CHARS = /[!#$%&'*+.^_`|~0-9A-Za-z-]/;

/**
 * Parses one or more challenges (RFC 7235), e.g.
 * `Bearer realm="https://auth/token",service="registry",scope="repository:x:pull", Basic realm="r"`.
 * Unparseable remainders are skipped rather than failing the request.
 */
export function parseWwwAuthenticate(header: string): Challenge[] {
  const out: Challenge[] = [];
  let i = 0;
  const n = header.length;
  const skipSpace = (): void => {
    while (i < n && (header[i] === ' ' || header[i] === '\t')) i++;
  };
  const readToken = (): string => {
    const start = i;
    while (i < n && TOKEN_CHARS.test(header[i] ?? '')) i++;
    return header.slice(start, i);
  };
  const readQuoted = (): string => {
    // at the opening quote
    i++;
    let value = '';
    while (i < n && header[i] !== '"') {
      if (header[i] === '\\' && i + 1 < n) i++;
      value += header[i];
      i++;
    }
    i++; // closing quote (or end)
    return value;
  };
  while (i < n) {
    skipSpace();
    while (i < n && (header[i] === ',' || header[i] === ' ')) i++;
    const scheme = readToken();
    if (scheme === '') {
      i++; // junk character: skip it
      continue;
    }
    const challenge: Challenge = { scheme: scheme.toLowerCase(), params: {} };
    out.push(challenge);
    for (;;) {
      skipSpace();
      const save = i;
      const key = readToken();
      skipSpace();
      if (key === '' || header[i] !== '=') {
        // The next challenge's scheme (or a token68 credential, which no registry sends): rewind.
        i = save;
        break;
      }
      i++; // '='
      skipSpace();
      const value = header[i] === '"' ? readQuoted() : readToken();
      challenge.params[key.toLowerCase()] = value;
      skipSpace();
      if (header[i] === ',') {
        i++;
        continue;
      }
      break;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Endpoints

export interface Endpoint {
  /** "http://127.0.0.1:5000" — origin of the registry API. */
  origin: string;
  /** https without certificate verification (insecure registry). */
  skipTlsVerify: boolean;
  /** Whether this endpoint is a mirror (errors fall through to the next endpoint). */
  mirror: boolean;
}

function splitHostPort(domain: string): { host: string; port?: string } {
  const m = /^\[([^\]]+)\](?::(\d+))?$/.exec(domain);
  if (m) return { host: m[1] ?? '', ...(m[2] ? { port: m[2] } : {}) };
  const colon = domain.lastIndexOf(':');
  if (colon > 0 && !domain.slice(0, colon).includes(':')) {
    return { host: domain.slice(0, colon), port: domain.slice(colon + 1) };
  }
  return { host: domain };
}

export function isLoopbackHost(host: string): boolean {
  const h = host.toLowerCase();
  if (h === 'localhost' || h.endsWith('.localhost')) return true;
  if (isIP(h) === 4) return h.startsWith('127.');
  if (isIP(h) === 6) return h === '::1' || h === '0:0:0:0:0:0:0:1';
  return false;
}

function ipv4ToInt(ip: string): number {
  return ip.split('.').reduce((acc, part) => acc * 256 + Number(part), 0);
}

/** Whether `domain` ("host[:port]") is in the insecure list (entries "host[:port]" or IPv4 CIDRs). */
export function isInsecureRegistry(domain: string, insecure: readonly string[]): boolean {
  const { host } = splitHostPort(domain);
  for (const entry of insecure) {
    if (entry === domain || entry === host) return true;
    const cidr = /^(\d+\.\d+\.\d+\.\d+)\/(\d+)$/.exec(entry);
    if (cidr && isIP(host) === 4) {
      const bits = Number(cidr[2]);
      if (bits > 32) continue;
      const mask = bits === 0 ? 0 : (~0 << (32 - bits)) >>> 0;
      if ((ipv4ToInt(host) & mask) >>> 0 === (ipv4ToInt(cidr[1] ?? '') & mask) >>> 0) return true;
    }
  }
  return false;
}

// ---------------------------------------------------------------------------------------------
// HTTP plumbing

/** A request body: bytes, or a factory of a fresh stream (so a request can be sent again). */
export type RequestBody = string | Buffer | (() => NodeJS.ReadableStream);

interface RequestSpec {
  method: 'GET' | 'HEAD' | 'POST' | 'PUT' | 'PATCH';
  url: URL;
  headers: Record<string, string>;
  body?: RequestBody;
  skipTlsVerify: boolean;
  signal?: AbortSignal;
}

const REQUEST_IDLE_TIMEOUT_MS = 60_000;
const MAX_REDIRECTS = 10;
const MAX_ERROR_BODY = 64 * 1024;

function goMethod(method: string): string {
  return method.charAt(0) + method.slice(1).toLowerCase();
}

/** Go's net/http error text for a transport failure, as dockerd prints it. */
function transportError(spec: RequestSpec, err: unknown): CapsuleError {
  const e = err as NodeJS.ErrnoException & { reason?: string };
  const where = `${goMethod(spec.method)} "${spec.url.toString()}"`;
  if (e.name === 'AbortError' || e.code === 'ABORT_ERR')
    return new CanceledError('context canceled', { cause: err });
  const port = spec.url.port || (spec.url.protocol === 'https:' ? '443' : '80');
  const hostPort = `${spec.url.hostname}:${port}`;
  let detail: string;
  switch (e.code) {
    case 'ECONNREFUSED':
      detail = `dial tcp ${hostPort}: connect: connection refused`;
      break;
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      detail = `dial tcp: lookup ${spec.url.hostname}: no such host`;
      break;
    case 'ETIMEDOUT':
    case 'ESOCKETTIMEDOUT':
      detail = `dial tcp ${hostPort}: i/o timeout`;
      break;
    case 'ECONNRESET':
      detail = `read tcp ${hostPort}: read: connection reset by peer`;
      break;
    case 'EHOSTUNREACH':
      detail = `dial tcp ${hostPort}: connect: no route to host`;
      break;
    case 'ENETUNREACH':
      detail = `dial tcp ${hostPort}: connect: network is unreachable`;
      break;
    case 'DEPTH_ZERO_SELF_SIGNED_CERT':
    case 'SELF_SIGNED_CERT_IN_CHAIN':
    case 'UNABLE_TO_VERIFY_LEAF_SIGNATURE':
    case 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY':
      detail = 'x509: certificate signed by unknown authority';
      break;
    case 'ERR_TLS_CERT_ALTNAME_INVALID':
      detail = `x509: certificate is not valid for ${spec.url.hostname}`;
      break;
    case 'CERT_HAS_EXPIRED':
      detail = 'x509: certificate has expired or is not yet valid';
      break;
    case 'EPROTO':
    case 'ERR_SSL_WRONG_VERSION_NUMBER':
      detail = 'http: server gave HTTP response to HTTPS client';
      break;
    default:
      detail = e.message || String(err);
  }
  return new UnavailableError(`${where}: ${detail}`, { cause: err });
}

function sendOnce(spec: RequestSpec): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const isHttps = spec.url.protocol === 'https:';
    const options: https.RequestOptions = {
      method: spec.method,
      headers: spec.headers,
      ...(spec.signal ? { signal: spec.signal } : {}),
      ...(isHttps && spec.skipTlsVerify ? { rejectUnauthorized: false } : {}),
    };
    const req = (isHttps ? https : http).request(spec.url, options, (res) => {
      // The idle timeout goes on covering the body while the caller streams it.
      resolve(res);
    });
    req.setTimeout(REQUEST_IDLE_TIMEOUT_MS, () => {
      const err = Object.assign(new Error('i/o timeout'), { code: 'ETIMEDOUT' });
      req.destroy(err);
    });
    req.once('error', (err) => reject(transportError(spec, err)));
    const body = spec.body;
    if (typeof body === 'function') {
      const stream = body();
      stream.once('error', (err: Error) => req.destroy(err));
      stream.pipe(req);
    } else {
      req.end(body);
    }
  });
}

/** Sends and follows redirects (GET/HEAD), dropping Authorization when the origin changes. */
async function send(spec: RequestSpec): Promise<{ res: IncomingMessage; url: URL }> {
  let current = spec;
  for (let hop = 0; ; hop++) {
    const res = await sendOnce(current);
    const status = res.statusCode ?? 0;
    const location = res.headers.location;
    if (
      ![301, 302, 303, 307, 308].includes(status) ||
      location === undefined ||
      (current.method !== 'GET' && current.method !== 'HEAD')
    ) {
      return { res, url: current.url };
    }
    res.resume();
    if (hop >= MAX_REDIRECTS) {
      throw new SystemError(
        `${goMethod(spec.method)} "${current.url.toString()}": stopped after 10 redirects`,
      );
    }
    const next = new URL(location, current.url);
    const headers = { ...current.headers };
    if (next.origin !== current.url.origin) delete headers.authorization;
    current = { ...current, url: next, headers };
  }
}

/**
 * A plain GET outside any registry (`docker import <URL>`, foreign layer URLs), as Go's
 * http.Get: redirects followed, transport errors in Go's words (`Get "http://…": dial tcp …`),
 * schemes other than http and https refused as Go refuses them.
 */
export async function httpGet(
  url: URL,
  signal?: AbortSignal,
  userAgent = 'capsule/0.1',
): Promise<IncomingMessage> {
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new SystemError(
      `Get "${url.toString()}": unsupported protocol scheme "${url.protocol.slice(0, -1)}"`,
    );
  }
  const { res } = await send({
    method: 'GET',
    url,
    headers: { 'user-agent': userAgent },
    skipTlsVerify: false,
    ...(signal ? { signal } : {}),
  });
  return res;
}

async function readBody(res: IncomingMessage, limit: number, what: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of res as AsyncIterable<Buffer>) {
    total += chunk.length;
    if (total > limit) {
      res.destroy();
      throw new DataLossError(`${what} exceeds the ${limit}-byte limit`);
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

/** distribution's errcode text of an error response: "manifest unknown: manifest unknown". */
export interface RegistryErrorInfo {
  code?: string;
  text: string;
}

const DEFAULT_ERROR_MESSAGES: Record<string, string> = {
  UNAUTHORIZED: 'authentication required',
  DENIED: 'requested access to the resource is denied',
  MANIFEST_UNKNOWN: 'manifest unknown',
  NAME_UNKNOWN: 'repository name not known to registry',
  BLOB_UNKNOWN: 'blob unknown to registry',
  TOOMANYREQUESTS: 'too many requests',
};

function errcodeText(code: string, message: string | undefined): string {
  const name = code.toLowerCase().replace(/_/g, ' ');
  return `${name}: ${message || DEFAULT_ERROR_MESSAGES[code] || name}`;
}

/** Reads an error response the way distribution's HandleErrorResponse does. */
export async function registryErrorOf(res: IncomingMessage): Promise<RegistryErrorInfo> {
  const status = res.statusCode ?? 0;
  const statusText = `${status} ${res.statusMessage ?? http.STATUS_CODES[status] ?? ''}`.trim();
  // OAuth errors in a Bearer challenge (RFC 6750 §3.1) come first.
  for (const c of parseWwwAuthenticate(String(res.headers['www-authenticate'] ?? ''))) {
    if (c.scheme !== 'bearer') continue;
    const code =
      c.params.error === 'invalid_token'
        ? 'UNAUTHORIZED'
        : c.params.error === 'insufficient_scope'
          ? 'DENIED'
          : '';
    if (code !== '') {
      res.resume();
      return { code, text: errcodeText(code, c.params.error_description) };
    }
  }
  let body: Buffer;
  try {
    body = await readBody(res, MAX_ERROR_BODY, 'error response');
  } catch {
    body = Buffer.alloc(0);
  }
  try {
    const doc = JSON.parse(body.toString('utf8')) as {
      errors?: Array<{ code?: unknown; message?: unknown }>;
      details?: unknown;
    };
    const first = Array.isArray(doc.errors) ? doc.errors[0] : undefined;
    if (first && typeof first.code === 'string') {
      return {
        code: first.code,
        text: errcodeText(first.code, typeof first.message === 'string' ? first.message : undefined),
      };
    }
    if (typeof doc.details === 'string' && doc.details !== '') {
      return status === 401
        ? { code: 'UNAUTHORIZED', text: errcodeText('UNAUTHORIZED', doc.details) }
        : { text: `unknown: ${doc.details}` };
    }
  } catch {
    // not JSON: fall through
  }
  if (status === 401) return { code: 'UNAUTHORIZED', text: errcodeText('UNAUTHORIZED', undefined) };
  if (status === 429) return { code: 'TOOMANYREQUESTS', text: errcodeText('TOOMANYREQUESTS', undefined) };
  if (status >= 400 && status < 500) {
    const snippet = body.toString('utf8').trim().slice(0, 200);
    return {
      text: `error parsing HTTP ${status} response body: ${snippet === '' ? 'unexpected end of JSON input' : `invalid character in body: ${JSON.stringify(snippet)}`}`,
    };
  }
  return { text: `received unexpected HTTP status: ${statusText}` };
}

// ---------------------------------------------------------------------------------------------
// Tokens

interface CachedToken {
  token: string;
  expiresAt: number;
}

const MIN_TOKEN_LIFETIME_S = 60;

// ---------------------------------------------------------------------------------------------
// Client

export interface RegistryClientOptions {
  log: Logger;
  /** "host[:port]" or IPv4 CIDR entries: https without verification, then http. */
  insecureRegistries?: string[];
  /** Origins ("http://127.0.0.1:5000", "https://mirror.example") tried first for docker.io. */
  mirrors?: string[];
  userAgent?: string;
}

export interface FetchedManifest {
  /** The verified digest of `bytes`. */
  digest: string;
  mediaType: string;
  bytes: Buffer;
  parsed: ParsedManifest;
}

export interface BlobResponse {
  stream: AsyncIterable<Buffer> & { destroy(err?: Error): void };
  /** Content-Length when the registry sent one. */
  size?: number;
}

export class RegistryClient {
  /** Tokens by endpoint, credentials and scope; shared by every pull from this client. */
  private readonly tokens = new Map<string, CachedToken>();

  constructor(private readonly options: RegistryClientOptions) {}

  /** Endpoints for a domain, in the order they are tried. */
  endpoints(domain: string): Endpoint[] {
    if (domain === DEFAULT_DOMAIN) {
      const mirrors = (this.options.mirrors ?? []).map((m) => {
        const url = new URL(m);
        return { origin: url.origin, skipTlsVerify: false, mirror: true };
      });
      return [...mirrors, { origin: 'https://registry-1.docker.io', skipTlsVerify: false, mirror: false }];
    }
    const { host } = splitHostPort(domain);
    if (isLoopbackHost(host)) return [{ origin: `http://${domain}`, skipTlsVerify: false, mirror: false }];
    if (isInsecureRegistry(domain, this.options.insecureRegistries ?? [])) {
      return [
        { origin: `https://${domain}`, skipTlsVerify: true, mirror: false },
        { origin: `http://${domain}`, skipTlsVerify: false, mirror: false },
      ];
    }
    return [{ origin: `https://${domain}`, skipTlsVerify: false, mirror: false }];
  }

  /**
   * A session on one repository for one pull (or push, with `actions: 'pull,push'`): holds the
   * endpoint choice and auth state.
   */
  repository(
    ref: Reference,
    auth: RegistryAuth | undefined,
    signal?: AbortSignal,
    actions: 'pull' | 'pull,push' = 'pull',
  ): RemoteRepository {
    return new RemoteRepository(this, ref, auth ?? {}, signal, actions);
  }

  /** @internal */
  cachedToken(key: string): string | undefined {
    const t = this.tokens.get(key);
    if (t === undefined) return undefined;
    if (t.expiresAt <= Date.now()) {
      this.tokens.delete(key);
      return undefined;
    }
    return t.token;
  }

  /** @internal */
  storeToken(key: string, token: string, lifetimeS: number): void {
    // Renew a little early so a token does not expire mid-request.
    const seconds = Math.max(lifetimeS, MIN_TOKEN_LIFETIME_S);
    this.tokens.set(key, { token, expiresAt: Date.now() + (seconds - 5) * 1000 });
  }

  /** @internal */
  forgetToken(key: string): void {
    this.tokens.delete(key);
  }

  get log(): Logger {
    return this.options.log;
  }

  get userAgent(): string {
    return this.options.userAgent ?? 'capsule/0.1';
  }
}

interface PingResult {
  endpoint: Endpoint;
  challenges: Challenge[];
}

/** What a blob upload reports as it goes. */
export interface UploadOptions {
  /** 'chunked': POST, PATCH with the body, PUT ?digest= (dockerd's way); 'monolithic': POST, PUT with the body. */
  mode?: 'chunked' | 'monolithic';
  /** Bytes of the body sent so far. */
  onBytes?: (sent: number) => void;
  /** An upload location already opened (a failed mount answers with one). */
  location?: string;
}

/** The outcome of a cross-repository mount attempt. */
export type MountResult = { mounted: true } | { mounted: false; location?: string };

export class RemoteRepository {
  private ping: PingResult | undefined;
  private readonly scope: string;

  constructor(
    private readonly client: RegistryClient,
    readonly ref: Reference,
    private readonly auth: RegistryAuth,
    private readonly signal?: AbortSignal,
    private readonly actions: 'pull' | 'pull,push' = 'pull',
  ) {
    this.scope = `repository:${ref.path}:${actions}`;
  }

  /** The endpoint in use once the manifest was fetched. */
  get endpoint(): Endpoint | undefined {
    return this.ping?.endpoint;
  }

  /**
   * Fetches and verifies a manifest by tag or digest, trying the endpoints in order (mirrors fall
   * through to the next on any error). Pins the endpoint that answered for later blob requests.
   * NotFoundError with dockerd's text for an unknown tag, digest or repository.
   */
  async getManifest(tagOrDigest: string): Promise<FetchedManifest> {
    if (this.ping !== undefined) return this.getManifestFrom(this.ping.endpoint, tagOrDigest);
    const endpoints = this.client.endpoints(this.ref.domain);
    let lastError: unknown;
    for (const [i, endpoint] of endpoints.entries()) {
      const isLast = i === endpoints.length - 1;
      try {
        return await this.getManifestFrom(endpoint, tagOrDigest);
      } catch (err) {
        lastError = err;
        this.ping = undefined;
        if (err instanceof CanceledError || isLast) throw err;
        const fallThrough =
          endpoint.mirror || (endpoint.origin.startsWith('https:') && err instanceof UnavailableError);
        if (!fallThrough) throw err;
        this.client.log.info('registry endpoint failed, trying the next one', {
          endpoint: endpoint.origin,
          error: (err as Error).message,
        });
      }
    }
    throw lastError;
  }

  private async getManifestFrom(endpoint: Endpoint, tagOrDigest: string): Promise<FetchedManifest> {
    const ping = await this.pingEndpoint(endpoint);
    const url = new URL(`/v2/${this.ref.path}/manifests/${tagOrDigest}`, ping.endpoint.origin);
    // dockerd resolves a tag with a HEAD first, so its auth errors name "Head" (a digest: "Get").
    const res = await this.authorizedRequest('GET', url, {
      accept: MANIFEST_ACCEPT,
      ...(tagOrDigest.startsWith('sha256:') ? {} : { shownMethod: 'HEAD' }),
    });
    const status = res.statusCode ?? 0;
    if (status !== 200) throw await this.manifestError(res, tagOrDigest);
    const bytes = await readBody(res, MAX_MANIFEST_BYTES, 'manifest');
    const digest = sha256Digest(bytes);
    if (tagOrDigest.startsWith('sha256:') && digest !== tagOrDigest) {
      throw new DataLossError(`manifest verification failed for digest ${tagOrDigest}`);
    }
    const announced = res.headers['docker-content-digest'];
    if (typeof announced === 'string' && announced.startsWith('sha256:') && announced !== digest) {
      throw new DataLossError(`manifest verification failed for digest ${announced}`);
    }
    const contentType = res.headers['content-type'];
    const parsed = parseManifest(bytes, contentType);
    return { digest, mediaType: parsed.mediaType, bytes, parsed };
  }

  private async manifestError(res: IncomingMessage, tagOrDigest: string): Promise<CapsuleError> {
    const info = await registryErrorOf(res);
    const status = res.statusCode ?? 0;
    const shown = tagOrDigest.startsWith('sha256:')
      ? { domain: this.ref.domain, path: this.ref.path, digest: tagOrDigest }
      : { domain: this.ref.domain, path: this.ref.path, tag: tagOrDigest };
    switch (info.code) {
      case 'MANIFEST_UNKNOWN':
        return new NotFoundError(`manifest for ${familiarString(shown)} not found: ${info.text}`);
      case 'NAME_UNKNOWN':
        return new NotFoundError(`repository ${familiarName(this.ref)} not found: ${info.text}`);
      case 'DENIED':
        return new NotFoundError(
          `pull access denied for ${familiarName(this.ref)}, repository does not exist or may require 'docker login': ${info.text}`,
        );
      case 'UNAUTHORIZED':
        return new UnauthorizedError(info.text);
    }
    if (status === 404) {
      return new NotFoundError(`manifest for ${familiarString(shown)} not found: ${info.text}`);
    }
    if (status === 401) return new UnauthorizedError(info.text);
    if (status === 429 || status >= 500) return new UnavailableError(info.text);
    return new SystemError(info.text);
  }

  /**
   * Every tag of the repository (`GET /v2/<name>/tags/list`, following `Link: <…>; rel="next"`
   * pages as distribution's client does), for `docker pull --all-tags`. Endpoints are tried as
   * for a manifest; the one that answered is pinned for the pulls that follow.
   */
  async listTags(): Promise<string[]> {
    const endpoints = this.ping !== undefined ? [this.ping.endpoint] : this.client.endpoints(this.ref.domain);
    let lastError: unknown;
    for (const [i, endpoint] of endpoints.entries()) {
      try {
        return await this.listTagsFrom(endpoint);
      } catch (err) {
        lastError = err;
        this.ping = undefined;
        if (err instanceof CanceledError || i === endpoints.length - 1) throw err;
        const fallThrough =
          endpoint.mirror || (endpoint.origin.startsWith('https:') && err instanceof UnavailableError);
        if (!fallThrough) throw err;
      }
    }
    throw lastError;
  }

  private async listTagsFrom(endpoint: Endpoint): Promise<string[]> {
    const ping = await this.pingEndpoint(endpoint);
    const tags: string[] = [];
    let url: URL | undefined = new URL(`/v2/${this.ref.path}/tags/list`, ping.endpoint.origin);
    for (let page = 0; url !== undefined; page++) {
      if (page >= 1000) throw new SystemError(`too many pages of tags for ${familiarName(this.ref)}`);
      const res = await this.authorizedRequest('GET', url, { accept: 'application/json' });
      const status = res.statusCode ?? 0;
      if (status !== 200) {
        const info = await registryErrorOf(res);
        if (info.code === 'NAME_UNKNOWN' || status === 404) {
          throw new NotFoundError(`repository ${familiarName(this.ref)} not found: ${info.text}`);
        }
        if (info.code === 'DENIED' || status === 403) {
          throw new NotFoundError(
            `pull access denied for ${familiarName(this.ref)}, repository does not exist or may require 'docker login': ${info.text}`,
          );
        }
        if (info.code === 'UNAUTHORIZED' || status === 401) throw new UnauthorizedError(info.text);
        if (status === 429 || status >= 500) throw new UnavailableError(info.text);
        throw new SystemError(info.text);
      }
      const body = await readBody(res, MAX_MANIFEST_BYTES, 'tag list');
      let doc: { tags?: unknown };
      try {
        doc = JSON.parse(body.toString('utf8')) as { tags?: unknown };
      } catch {
        throw new SystemError(`invalid tag list from ${url.origin}`);
      }
      if (Array.isArray(doc.tags)) tags.push(...doc.tags.filter((t): t is string => typeof t === 'string'));
      const next = /<([^>]+)>\s*;\s*rel="?next"?/i.exec(String(res.headers.link ?? ''));
      url = next?.[1] !== undefined ? new URL(next[1], url) : undefined;
      // Never follow a page link to another origin (it would get our Authorization).
      if (url !== undefined && url.origin !== ping.endpoint.origin) {
        throw new SystemError(`tag list of ${familiarName(this.ref)} links to another origin`);
      }
    }
    return tags;
  }

  /** Opens a blob for streaming (following the registry's redirect to storage). */
  async getBlob(digest: string): Promise<BlobResponse> {
    if (this.ping === undefined)
      await this.pingEndpoint(this.client.endpoints(this.ref.domain)[0] as Endpoint);
    const endpoint = (this.ping as PingResult).endpoint;
    const url = new URL(`/v2/${this.ref.path}/blobs/${digest}`, endpoint.origin);
    const res = await this.authorizedRequest('GET', url, {});
    const status = res.statusCode ?? 0;
    if (status !== 200) {
      const info = await registryErrorOf(res);
      if (info.code === 'BLOB_UNKNOWN' || status === 404) throw new NotFoundError(info.text);
      if (info.code === 'UNAUTHORIZED' || status === 401) throw new UnauthorizedError(info.text);
      if (info.code === 'DENIED' || status === 403) {
        throw new NotFoundError(
          `pull access denied for ${familiarName(this.ref)}, repository does not exist or may require 'docker login': ${info.text}`,
        );
      }
      if (status === 429 || status >= 500) throw new UnavailableError(info.text);
      throw new SystemError(info.text);
    }
    const length = Number(res.headers['content-length']);
    return {
      stream: res,
      ...(Number.isSafeInteger(length) && res.headers['content-length'] !== undefined
        ? { size: length }
        : {}),
    };
  }

  // -------------------------------------------------------------------------------------------
  // Push

  /**
   * Pings the registry for a push: the registry itself, never a mirror (https first, then http
   * for an insecure registry). Errors read like dockerd's (`Get "https://…/v2/": dial tcp: …`).
   */
  async preparePush(): Promise<Endpoint> {
    if (this.ping !== undefined) return this.ping.endpoint;
    const endpoints = this.client.endpoints(this.ref.domain).filter((e) => !e.mirror);
    let lastError: unknown;
    for (const [i, endpoint] of endpoints.entries()) {
      try {
        return (await this.pingEndpoint(endpoint)).endpoint;
      } catch (err) {
        lastError = err;
        const fallThrough =
          i < endpoints.length - 1 && endpoint.origin.startsWith('https:') && err instanceof UnavailableError;
        if (!fallThrough) throw err;
      }
    }
    throw lastError;
  }

  private async pushEndpoint(): Promise<Endpoint> {
    return this.ping?.endpoint ?? this.preparePush();
  }

  /** HEAD on a blob in this repository: true when the registry has it. */
  async blobExists(digest: string): Promise<boolean> {
    const endpoint = await this.pushEndpoint();
    const url = new URL(`/v2/${this.ref.path}/blobs/${digest}`, endpoint.origin);
    const res = await this.authorizedRequest('HEAD', url, {});
    const status = res.statusCode ?? 0;
    res.resume();
    if (status === 200) return true;
    if (status === 404) return false;
    throw await this.pushError(res, `HEAD ${url.pathname}`);
  }

  /**
   * Asks the registry to mount `digest` from repository `fromPath` (same registry) into this
   * one. A registry that cannot mount answers with an upload session instead (returned, to
   * upload into).
   */
  async mountBlob(digest: string, fromPath: string): Promise<MountResult> {
    const endpoint = await this.pushEndpoint();
    const url = new URL(`/v2/${this.ref.path}/blobs/uploads/`, endpoint.origin);
    url.searchParams.set('mount', digest);
    url.searchParams.set('from', fromPath);
    const res = await this.authorizedRequest('POST', url, {
      body: '',
      headers: { 'content-length': '0' },
      extraScopes: [`repository:${fromPath}:pull`],
    });
    const status = res.statusCode ?? 0;
    if (status === 201) {
      res.resume();
      return { mounted: true };
    }
    if (status === 202) {
      res.resume();
      const location = res.headers.location;
      return { mounted: false, ...(typeof location === 'string' ? { location } : {}) };
    }
    // A registry that refuses mounts (or the source scope) is no reason to fail the push.
    const info = await registryErrorOf(res);
    this.client.log.debug('cross-repository mount refused', { digest, from: fromPath, error: info.text });
    return { mounted: false };
  }

  /**
   * Uploads a blob whose digest and size are known. `body` makes a fresh stream of its bytes
   * (called again if the request must be retried after an auth challenge).
   */
  async uploadBlob(
    digest: string,
    size: number,
    body: () => NodeJS.ReadableStream,
    options: UploadOptions = {},
  ): Promise<void> {
    const endpoint = await this.pushEndpoint();
    let location = options.location;
    if (location === undefined) {
      const start = new URL(`/v2/${this.ref.path}/blobs/uploads/`, endpoint.origin);
      const res = await this.authorizedRequest('POST', start, {
        body: '',
        headers: { 'content-length': '0' },
      });
      const status = res.statusCode ?? 0;
      if (status !== 202) throw await this.pushError(res, `POST ${start.pathname}`);
      res.resume();
      location = this.locationOf(res, start);
    }
    const counted = (): NodeJS.ReadableStream => {
      const stream = body();
      let sent = 0;
      stream.on('data', (chunk: Buffer) => {
        sent += chunk.length;
        options.onBytes?.(sent);
      });
      return stream;
    };
    let uploadUrl = new URL(location, endpoint.origin);
    if ((options.mode ?? 'chunked') === 'chunked') {
      const res = await this.authorizedRequest('PATCH', uploadUrl, {
        body: counted,
        headers: { 'content-type': 'application/octet-stream' },
      });
      const status = res.statusCode ?? 0;
      if (status !== 202 && status !== 204) throw await this.pushError(res, `PATCH ${uploadUrl.pathname}`);
      res.resume();
      uploadUrl = new URL(this.locationOf(res, uploadUrl), endpoint.origin);
      uploadUrl.searchParams.set('digest', digest);
      const done = await this.authorizedRequest('PUT', uploadUrl, {
        body: '',
        headers: { 'content-length': '0' },
      });
      await this.expectCreated(done, digest, uploadUrl);
      return;
    }
    uploadUrl.searchParams.set('digest', digest);
    const res = await this.authorizedRequest('PUT', uploadUrl, {
      body: counted,
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(size) },
    });
    await this.expectCreated(res, digest, uploadUrl);
  }

  /** PUTs a manifest under a tag (or digest); returns the digest the registry stored. */
  async putManifest(tagOrDigest: string, mediaType: string, bytes: Buffer): Promise<string> {
    const endpoint = await this.pushEndpoint();
    const url = new URL(`/v2/${this.ref.path}/manifests/${tagOrDigest}`, endpoint.origin);
    const res = await this.authorizedRequest('PUT', url, {
      body: bytes,
      headers: { 'content-type': mediaType, 'content-length': String(bytes.length) },
    });
    const status = res.statusCode ?? 0;
    if (status !== 201 && status !== 200) throw await this.pushError(res, `PUT ${url.pathname}`);
    res.resume();
    const digest = sha256Digest(bytes);
    const announced = res.headers['docker-content-digest'];
    if (typeof announced === 'string' && announced !== '' && announced !== digest) {
      throw new DataLossError(`registry stored manifest ${announced}, expected ${digest}`);
    }
    return digest;
  }

  private locationOf(res: IncomingMessage, base: URL): string {
    const location = res.headers.location;
    if (typeof location !== 'string' || location === '') {
      throw new SystemError(`registry answered ${base.pathname} without an upload location`);
    }
    return new URL(location, base).toString();
  }

  private async expectCreated(res: IncomingMessage, digest: string, url: URL): Promise<void> {
    const status = res.statusCode ?? 0;
    if (status !== 201 && status !== 204) throw await this.pushError(res, `PUT ${url.pathname}`);
    res.resume();
    const announced = res.headers['docker-content-digest'];
    if (typeof announced === 'string' && announced !== '' && announced !== digest) {
      throw new DataLossError(`registry stored blob ${announced}, expected ${digest}`);
    }
  }

  /** A push-side error response in the taxonomy, with distribution's text. */
  private async pushError(res: IncomingMessage, what: string): Promise<CapsuleError> {
    const info = await registryErrorOf(res);
    const status = res.statusCode ?? 0;
    if (info.code === 'UNAUTHORIZED' || status === 401) return new UnauthorizedError(info.text);
    if (info.code === 'DENIED' || status === 403) return new ForbiddenError(info.text);
    if (info.code === 'NAME_UNKNOWN' || info.code === 'BLOB_UNKNOWN' || status === 404) {
      return new NotFoundError(info.text);
    }
    if (status === 429 || status >= 500) return new UnavailableError(info.text);
    this.client.log.debug('registry refused a push request', { what, status, error: info.text });
    return new SystemError(info.text);
  }

  // -------------------------------------------------------------------------------------------

  private async pingEndpoint(endpoint: Endpoint): Promise<PingResult> {
    if (this.ping !== undefined && this.ping.endpoint === endpoint) return this.ping;
    const url = new URL('/v2/', endpoint.origin);
    const { res } = await send({
      method: 'GET',
      url,
      headers: { 'user-agent': this.client.userAgent },
      skipTlsVerify: endpoint.skipTlsVerify,
      ...(this.signal ? { signal: this.signal } : {}),
    });
    res.resume();
    const status = res.statusCode ?? 0;
    const challenges =
      status === 401 ? parseWwwAuthenticate(String(res.headers['www-authenticate'] ?? '')) : [];
    if (status >= 500) {
      throw new UnavailableError(
        `Get "${url.toString()}": received unexpected HTTP status: ${status} ${res.statusMessage ?? ''}`.trim(),
      );
    }
    this.ping = { endpoint, challenges };
    return this.ping;
  }

  private credentialKey(): string {
    const a = this.auth;
    return createHash('sha256')
      .update(
        JSON.stringify([a.username ?? '', a.password ?? '', a.identitytoken ?? '', a.registrytoken ?? '']),
      )
      .digest('hex')
      .slice(0, 16);
  }

  private tokenKey(challenge: Challenge, scopes: string[]): string {
    const origin = this.ping?.endpoint.origin ?? '';
    return [
      origin,
      this.credentialKey(),
      challenge.params.realm ?? '',
      challenge.params.service ?? '',
      scopes.join(' '),
    ].join('|');
  }

  /** The Authorization header value for a request, per the endpoint's challenges. */
  private async authorization(
    requestUrl: URL,
    scopes: string[],
    method: string,
  ): Promise<string | undefined> {
    const challenges = this.ping?.challenges ?? [];
    const bearer = challenges.find((c) => c.scheme === 'bearer');
    if (bearer !== undefined) {
      if (this.auth.registrytoken) return `Bearer ${this.auth.registrytoken}`;
      return `Bearer ${await this.token(bearer, requestUrl, scopes, method)}`;
    }
    const basic = challenges.find((c) => c.scheme === 'basic');
    if (basic !== undefined) {
      if (!this.auth.username && !this.auth.password) {
        // A push reports the bare error (dockerd's retryOnError unwraps the url.Error); a pull
        // keeps Go's `Head "<url>": ` prefix.
        if (this.actions === 'pull,push') throw new UnauthorizedError('no basic auth credentials');
        throw new UnauthorizedError(
          `${goMethod(method)} "${requestUrl.toString()}": no basic auth credentials`,
        );
      }
      const raw = `${this.auth.username ?? ''}:${this.auth.password ?? ''}`;
      return `Basic ${Buffer.from(raw, 'utf8').toString('base64')}`;
    }
    return undefined;
  }

  private async token(
    challenge: Challenge,
    requestUrl: URL,
    scopes: string[],
    method: string,
  ): Promise<string> {
    const key = this.tokenKey(challenge, scopes);
    const cached = this.client.cachedToken(key);
    if (cached !== undefined) return cached;
    const where = `${goMethod(method)} "${requestUrl.toString()}"`;
    const realm = challenge.params.realm;
    if (realm === undefined || realm === '') {
      throw new UnauthorizedError(`${where}: bearer challenge without a realm`);
    }
    let realmUrl: URL;
    try {
      realmUrl = new URL(realm);
    } catch {
      throw new UnauthorizedError(`${where}: invalid bearer realm ${JSON.stringify(realm)}`);
    }
    const service = challenge.params.service ?? '';
    const skipTlsVerify = this.ping?.endpoint.skipTlsVerify ?? false;
    let res: IncomingMessage;
    if (this.auth.identitytoken) {
      // OAuth2 refresh-token grant, as the docker client does with an identity token.
      const form = new URLSearchParams({
        grant_type: 'refresh_token',
        refresh_token: this.auth.identitytoken,
        service,
        scope: scopes.join(' '),
        client_id: 'capsule',
        access_type: 'offline',
      });
      ({ res } = await send({
        method: 'POST',
        url: realmUrl,
        headers: {
          'content-type': 'application/x-www-form-urlencoded',
          'user-agent': this.client.userAgent,
        },
        body: form.toString(),
        skipTlsVerify,
        ...(this.signal ? { signal: this.signal } : {}),
      }));
    } else {
      const url = new URL(realmUrl);
      if (service !== '') url.searchParams.set('service', service);
      for (const scope of scopes) url.searchParams.append('scope', scope);
      const headers: Record<string, string> = { 'user-agent': this.client.userAgent };
      if (this.auth.username || this.auth.password) {
        url.searchParams.set('account', this.auth.username ?? '');
        const raw = `${this.auth.username ?? ''}:${this.auth.password ?? ''}`;
        headers.authorization = `Basic ${Buffer.from(raw, 'utf8').toString('base64')}`;
      }
      ({ res } = await send({
        method: 'GET',
        url,
        headers,
        skipTlsVerify,
        ...(this.signal ? { signal: this.signal } : {}),
      }));
    }
    const status = res.statusCode ?? 0;
    if (status < 200 || status >= 300) {
      const info = await registryErrorOf(res);
      const text = `${where}: ${info.text}`;
      if (status === 401 || info.code === 'UNAUTHORIZED') throw new UnauthorizedError(text);
      if (status === 403 || info.code === 'DENIED') throw new UnauthorizedError(text);
      if (status >= 500) throw new UnavailableError(text);
      throw new SystemError(text);
    }
    const body = await readBody(res, MAX_ERROR_BODY, 'token response');
    let doc: { token?: unknown; access_token?: unknown; expires_in?: unknown };
    try {
      doc = JSON.parse(body.toString('utf8')) as typeof doc;
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
    const expiresIn = typeof doc.expires_in === 'number' ? doc.expires_in : MIN_TOKEN_LIFETIME_S;
    this.client.storeToken(key, token, expiresIn);
    return token;
  }

  /**
   * A request with auth; one retry on a 401 that brings a (new) Bearer challenge (the body is
   * bytes or a stream factory, so it can be sent again). Authorization goes only to the
   * registry's own origin (an upload location may point elsewhere).
   */
  private async authorizedRequest(
    method: RequestSpec['method'],
    url: URL,
    extra: {
      accept?: string;
      headers?: Record<string, string>;
      body?: RequestBody;
      extraScopes?: string[];
      /** The method error texts name, when it is not the one sent. */
      shownMethod?: string;
    },
  ): Promise<IncomingMessage> {
    const endpoint = (this.ping as PingResult).endpoint;
    const scopes = [this.scope, ...(extra.extraScopes ?? [])];
    for (let attempt = 0; ; attempt++) {
      const headers: Record<string, string> = { 'user-agent': this.client.userAgent, ...extra.headers };
      if (extra.accept !== undefined) headers.accept = extra.accept;
      if (url.origin === endpoint.origin) {
        const authorization = await this.authorization(url, scopes, extra.shownMethod ?? method);
        if (authorization !== undefined) headers.authorization = authorization;
      }
      const { res } = await send({
        method,
        url,
        headers,
        ...(extra.body !== undefined ? { body: extra.body } : {}),
        skipTlsVerify: endpoint.skipTlsVerify,
        ...(this.signal ? { signal: this.signal } : {}),
      });
      if ((res.statusCode ?? 0) !== 401 || attempt > 0) return res;
      const challenges = parseWwwAuthenticate(String(res.headers['www-authenticate'] ?? ''));
      const bearer = challenges.find((c) => c.scheme === 'bearer');
      const hadBearer = (this.ping?.challenges ?? []).some((c) => c.scheme === 'bearer');
      const basic = challenges.find((c) => c.scheme === 'basic');
      const hadBasic = (this.ping?.challenges ?? []).some((c) => c.scheme === 'basic');
      if (bearer !== undefined && bearer.params.error !== 'insufficient_scope') {
        // The registry did not challenge the ping, or the token went stale: fetch a fresh one.
        if (hadBearer) {
          const old = (this.ping?.challenges ?? []).find((c) => c.scheme === 'bearer');
          if (old) this.client.forgetToken(this.tokenKey(old, scopes));
        }
        this.ping = { endpoint, challenges };
        res.resume();
        continue;
      }
      if (basic !== undefined && !hadBasic) {
        this.ping = { endpoint, challenges };
        res.resume();
        continue;
      }
      return res;
    }
  }
}
