/**
 * A FAKE registry (registry API v2 subset) in node:http, for unit tests of the registry client and
 * the image service: anonymous, Basic or Bearer auth (with its own token endpoint), blob
 * redirects to a second origin ("storage"), and knobs to misbehave (corrupt blobs, wrong
 * manifests). It records the requests it saw. Not a real registry: integration tests use
 * Debian's docker-registry.
 */
import { createHash } from 'node:crypto';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';

export type FakeAuth =
  | { kind: 'none' }
  | { kind: 'basic'; user: string; password: string }
  | { kind: 'bearer'; user?: string; password?: string; service: string; tokenLifetimeS?: number };

export interface FakeRequest {
  method: string;
  url: string;
  authorization?: string;
  origin: 'registry' | 'storage';
}

interface Repo {
  manifests: Map<string, { mediaType: string; bytes: Buffer }>;
  blobs: Map<string, Buffer>;
}

export function digestOf(data: Uint8Array | string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

export class FakeRegistry {
  readonly requests: FakeRequest[] = [];
  tokenRequests: Array<{ scope: string | null; service: string | null; authorization?: string }> = [];
  /** Serve these bytes instead of the real blob (digest → bytes). */
  readonly corruptBlobs = new Map<string, Buffer>();
  /** Redirect blob GETs to the storage origin. */
  redirectBlobs = false;
  /** Delay before each blob body (ms), to hold downloads open. */
  blobDelayMs = 0;
  private readonly repos = new Map<string, Repo>();
  private server: http.Server | undefined;
  private storage: http.Server | undefined;
  private issued = new Set<string>();
  private tokenCounter = 0;

  constructor(public auth: FakeAuth = { kind: 'none' }) {}

  /** "127.0.0.1:PORT" */
  host = '';
  private storageOrigin = '';

  private repo(name: string): Repo {
    let r = this.repos.get(name);
    if (r === undefined) {
      r = { manifests: new Map(), blobs: new Map() };
      this.repos.set(name, r);
    }
    return r;
  }

  addBlob(name: string, data: Buffer): string {
    const digest = digestOf(data);
    this.repo(name).blobs.set(digest, data);
    return digest;
  }

  /** Stores a manifest under its digest and, when given, a tag. Returns its digest. */
  addManifest(name: string, mediaType: string, doc: unknown, tag?: string): string {
    const bytes = Buffer.from(typeof doc === 'string' ? doc : JSON.stringify(doc));
    const digest = digestOf(bytes);
    const r = this.repo(name);
    r.manifests.set(digest, { mediaType, bytes });
    if (tag !== undefined) r.manifests.set(tag, { mediaType, bytes });
    return digest;
  }

  /** Serves `bytes` for `key` (a tag or a digest) without checking that they match. */
  setManifestBytes(name: string, key: string, mediaType: string, bytes: Buffer): void {
    this.repo(name).manifests.set(key, { mediaType, bytes });
  }

  async start(): Promise<void> {
    this.storage = http.createServer((req, res) => this.serveStorage(req, res));
    await listen(this.storage);
    this.storageOrigin = `http://127.0.0.1:${(this.storage.address() as AddressInfo).port}`;
    this.server = http.createServer((req, res) => this.serve(req, res));
    await listen(this.server);
    this.host = `127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  async stop(): Promise<void> {
    for (const s of [this.server, this.storage]) {
      if (s === undefined) continue;
      s.closeAllConnections();
      await new Promise<void>((resolve) => s.close(() => resolve()));
    }
  }

  private challenge(): string {
    if (this.auth.kind === 'basic') return 'Basic realm="fake"';
    if (this.auth.kind === 'bearer') {
      return `Bearer realm="http://${this.host}/token",service="${this.auth.service}"`;
    }
    return '';
  }

  private authorised(req: http.IncomingMessage, scope: string | undefined): boolean {
    const header = req.headers.authorization ?? '';
    if (this.auth.kind === 'none') return true;
    if (this.auth.kind === 'basic') {
      const expected = `Basic ${Buffer.from(`${this.auth.user}:${this.auth.password}`).toString('base64')}`;
      return header === expected;
    }
    const token = header.startsWith('Bearer ') ? header.slice(7) : '';
    return (
      this.issued.has(`${token}|${scope ?? ''}`) ||
      (scope === undefined && [...this.issued].some((k) => k.startsWith(`${token}|`)))
    );
  }

  private deny(res: http.ServerResponse, scope?: string): void {
    let challenge = this.challenge();
    if (this.auth.kind === 'bearer' && scope !== undefined) challenge += `,scope="${scope}"`;
    res.writeHead(401, { 'content-type': 'application/json', 'www-authenticate': challenge });
    res.end(
      JSON.stringify({
        errors: [{ code: 'UNAUTHORIZED', message: 'authentication required', detail: null }],
      }),
    );
  }

  private serveToken(req: http.IncomingMessage, res: http.ServerResponse, url: URL): void {
    const scope = url.searchParams.get('scope');
    const service = url.searchParams.get('service');
    this.tokenRequests.push({
      scope,
      service,
      ...(req.headers.authorization ? { authorization: req.headers.authorization } : {}),
    });
    if (this.auth.kind !== 'bearer') {
      res.writeHead(404).end();
      return;
    }
    if (this.auth.user !== undefined) {
      const expected = `Basic ${Buffer.from(`${this.auth.user}:${this.auth.password ?? ''}`).toString('base64')}`;
      if (req.headers.authorization !== expected) {
        res.writeHead(401, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ details: 'incorrect username or password' }));
        return;
      }
    }
    const token = `tok${++this.tokenCounter}`;
    this.issued.add(`${token}|${scope ?? ''}`);
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ token, expires_in: this.auth.tokenLifetimeS ?? 300 }));
  }

  private serve(req: http.IncomingMessage, res: http.ServerResponse): void {
    const url = new URL(req.url ?? '/', `http://${this.host}`);
    this.requests.push({
      method: req.method ?? '',
      url: url.pathname,
      origin: 'registry',
      ...(req.headers.authorization ? { authorization: req.headers.authorization } : {}),
    });
    if (url.pathname === '/token') return this.serveToken(req, res, url);
    if (url.pathname === '/v2/') {
      if (!this.authorised(req, undefined)) return this.deny(res);
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      return;
    }
    const m = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/.exec(url.pathname);
    if (!m) {
      res.writeHead(404).end();
      return;
    }
    const [, name = '', kind, ref = ''] = m;
    const scope = `repository:${name}:pull`;
    if (!this.authorised(req, scope)) return this.deny(res, scope);
    const repo = this.repos.get(name);
    if (kind === 'manifests') {
      const entry = repo?.manifests.get(ref);
      if (repo === undefined)
        return errorResponse(res, 404, 'NAME_UNKNOWN', 'repository name not known to registry');
      if (entry === undefined) return errorResponse(res, 404, 'MANIFEST_UNKNOWN', 'manifest unknown');
      res.writeHead(200, {
        'content-type': entry.mediaType,
        'docker-content-digest': digestOf(entry.bytes),
        'content-length': entry.bytes.length,
      });
      res.end(entry.bytes);
      return;
    }
    const blob = repo?.blobs.get(ref);
    if (blob === undefined) return errorResponse(res, 404, 'BLOB_UNKNOWN', 'blob unknown to registry');
    if (this.redirectBlobs) {
      res.writeHead(307, { location: `${this.storageOrigin}/storage/${name}/${ref}` }).end();
      return;
    }
    this.sendBlob(res, ref, blob);
  }

  private serveStorage(req: http.IncomingMessage, res: http.ServerResponse): void {
    this.requests.push({
      method: req.method ?? '',
      url: req.url ?? '',
      origin: 'storage',
      ...(req.headers.authorization ? { authorization: req.headers.authorization } : {}),
    });
    const m = /^\/storage\/(.+)\/([^/]+)$/.exec(req.url ?? '');
    const blob = m ? this.repos.get(m[1] ?? '')?.blobs.get(m[2] ?? '') : undefined;
    if (!m || blob === undefined) {
      res.writeHead(404).end();
      return;
    }
    this.sendBlob(res, m[2] ?? '', blob);
  }

  private sendBlob(res: http.ServerResponse, digest: string, blob: Buffer): void {
    const body = this.corruptBlobs.get(digest) ?? blob;
    const send = (): void => {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length });
      res.end(body);
    };
    if (this.blobDelayMs > 0) setTimeout(send, this.blobDelayMs);
    else send();
  }
}

function errorResponse(res: http.ServerResponse, status: number, code: string, message: string): void {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ errors: [{ code, message, detail: null }] }));
}

function listen(server: http.Server): Promise<void> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
}
