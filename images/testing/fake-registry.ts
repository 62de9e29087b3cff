/**
 * A FAKE registry (registry API v2 subset) in node:http, for unit tests of the registry client and
 * the image service: anonymous, Basic or Bearer auth (with its own token endpoint, scopes checked
 * per action: GET/HEAD need pull, the rest pull,push), blob redirects to a second origin
 * ("storage"), the push side (HEAD, uploads by POST+PUT or POST+PATCH+PUT, cross-repository
 * mounts, manifest PUT), and knobs to misbehave (corrupt blobs, wrong manifests, failing
 * uploads). It records the requests it saw. Not a real registry: integration tests use Debian's
 * docker-registry.
 */
import { createHash, randomUUID } from 'node:crypto';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';

export type FakeAuth =
  | { kind: 'none' }
  | { kind: 'basic'; user: string; password: string }
  | { kind: 'bearer'; user?: string; password?: string; service: string; tokenLifetimeS?: number };

export interface FakeRequest {
  method: string;
  /** The path, without the query. */
  url: string;
  /** The query string ("?mount=…&from=…"), "" when none. */
  query: string;
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
  /**
   * Hold the bodies of GETs of these blobs until `count` of them are in flight at once (each
   * waits `timeoutMs` at most, so a client that never gets there fails its test instead of
   * hanging); once there, wait `settleMs` more, so that any request beyond `count` a client would
   * send at the same time is seen, then answer them all and stop holding.
   */
  holdBlobs: { digests: Set<string>; count: number; timeoutMs: number; settleMs: number } | undefined;
  /** The most held blob GETs (see `holdBlobs`) that were in flight at once. */
  maxBlobsInFlight = 0;
  private blobsInFlight = 0;
  private heldBlobs: Array<() => void> = [];
  private holdOpen = false;
  /**
   * Stall GETs of these blobs halfway: send the headers and the first half of the body, then hold
   * the rest until `releaseStalled()` (so a client has a partial download in flight).
   */
  readonly stallBlobs = new Set<string>();
  /** Blob GETs stalled by `stallBlobs` and not yet released (digest each). */
  readonly stalledBlobs: string[] = [];
  /** Stalled blob GETs whose client closed the connection before the rest was sent (digest each). */
  readonly abandonedBlobs: string[] = [];
  private stalled: Array<() => void> = [];
  /** Answer this many upload requests (PATCH / PUT of a blob) with 503 first. */
  failUploads = 0;
  /** Page size of tag lists (0: one page). */
  tagsPageSize = 0;
  /** Refuse cross-repository mounts (answer 202 with an upload session, as some registries do). */
  refuseMounts = false;
  private readonly repos = new Map<string, Repo>();
  private readonly uploads = new Map<string, { name: string; chunks: Buffer[] }>();
  private server: http.Server | undefined;
  private storage: http.Server | undefined;
  /** token → the scopes it was issued for. */
  private issued = new Map<string, string[]>();
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

  /** Accepts `token` as a Bearer token for `scopes` (a token issued elsewhere, e.g. X-Registry-Auth's registrytoken). */
  grantToken(token: string, scopes: string[]): void {
    this.issued.set(token, scopes);
  }

  /** A blob of a repository, if stored (pushed or added). */
  blob(name: string, digest: string): Buffer | undefined {
    return this.repos.get(name)?.blobs.get(digest);
  }

  /** A manifest of a repository by tag or digest, if stored. */
  manifest(name: string, key: string): { mediaType: string; bytes: Buffer } | undefined {
    return this.repos.get(name)?.manifests.get(key);
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

  /** `scope` is "repository:<name>:<actions>" or undefined (the /v2/ ping: any token will do). */
  private authorised(req: http.IncomingMessage, scope: string | undefined): boolean {
    const header = req.headers.authorization ?? '';
    if (this.auth.kind === 'none') return true;
    if (this.auth.kind === 'basic') {
      const expected = `Basic ${Buffer.from(`${this.auth.user}:${this.auth.password}`).toString('base64')}`;
      return header === expected;
    }
    const token = header.startsWith('Bearer ') ? header.slice(7) : '';
    const granted = this.issued.get(token);
    if (granted === undefined) return false;
    if (scope === undefined) return true;
    const [, name, actions = ''] = scope.split(':');
    const wanted = actions.split(',');
    return granted.some((g) => {
      const [type, gName, gActions = ''] = g.split(':');
      const have = gActions.split(',');
      return type === 'repository' && gName === name && wanted.every((a) => have.includes(a));
    });
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
    this.issued.set(token, url.searchParams.getAll('scope'));
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ token, expires_in: this.auth.tokenLifetimeS ?? 300 }));
  }

  private serve(req: http.IncomingMessage, res: http.ServerResponse): void {
    const url = new URL(req.url ?? '/', `http://${this.host}`);
    this.requests.push({
      method: req.method ?? '',
      url: url.pathname,
      query: url.search,
      origin: 'registry',
      ...(req.headers.authorization ? { authorization: req.headers.authorization } : {}),
    });
    if (url.pathname === '/token') return this.serveToken(req, res, url);
    if (url.pathname === '/v2/') {
      if (!this.authorised(req, undefined)) return this.deny(res);
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      this.servePush(req, res, url);
      return;
    }
    const tagList = /^\/v2\/(.+)\/tags\/list$/.exec(url.pathname);
    if (tagList && req.method === 'GET') return this.serveTags(req, res, tagList[1] ?? '', url);
    const m = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/.exec(url.pathname);
    if (!m) {
      res.writeHead(404).end();
      return;
    }
    const [, name = '', kind, ref = ''] = m;
    const scope = `repository:${name}:pull`;
    if (!this.authorised(req, scope)) return this.deny(res, scope);
    if (req.method === 'HEAD') {
      const found =
        kind === 'blobs'
          ? this.repos.get(name)?.blobs.get(ref)
          : this.repos.get(name)?.manifests.get(ref)?.bytes;
      if (found === undefined) {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(200, { 'content-length': found.length, 'docker-content-digest': digestOf(found) }).end();
      return;
    }
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

  /** Tags (keys that are not digests), sorted, `tagsPageSize` per page with a Link to the next. */
  private serveTags(req: http.IncomingMessage, res: http.ServerResponse, name: string, url: URL): void {
    const scope = `repository:${name}:pull`;
    if (!this.authorised(req, scope)) return this.deny(res, scope);
    const repo = this.repos.get(name);
    if (repo === undefined)
      return errorResponse(res, 404, 'NAME_UNKNOWN', 'repository name not known to registry');
    const all = [...repo.manifests.keys()].filter((k) => !k.startsWith('sha256:')).sort();
    const last = url.searchParams.get('last');
    const after = last === null ? all : all.filter((t) => t > last);
    const page = this.tagsPageSize > 0 ? after.slice(0, this.tagsPageSize) : after;
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (page.length < after.length) {
      headers.link = `</v2/${name}/tags/list?n=${this.tagsPageSize}&last=${page[page.length - 1] ?? ''}>; rel="next"`;
    }
    res.writeHead(200, headers).end(JSON.stringify({ name, tags: page }));
  }

  /** POST/PATCH/PUT: uploads, mounts, manifests (scope pull,push on the target repository). */
  private servePush(req: http.IncomingMessage, res: http.ServerResponse, url: URL): void {
    const start = /^\/v2\/(.+)\/blobs\/uploads\/$/.exec(url.pathname);
    const upload = /^\/v2\/(.+)\/blobs\/uploads\/([a-f0-9-]+)$/.exec(url.pathname);
    const manifest = /^\/v2\/(.+)\/manifests\/([^/]+)$/.exec(url.pathname);
    const name = start?.[1] ?? upload?.[1] ?? manifest?.[1];
    if (name === undefined) {
      req.resume();
      res.writeHead(404).end();
      return;
    }
    const scope = `repository:${name}:pull,push`;
    const body: Buffer[] = [];
    req.on('data', (chunk: Buffer) => body.push(chunk));
    req.on('end', () => {
      if (!this.authorised(req, scope)) return this.deny(res, scope);
      const data = Buffer.concat(body);
      if (start && req.method === 'POST') {
        const mount = url.searchParams.get('mount');
        const from = url.searchParams.get('from');
        if (mount !== null && from !== null && !this.refuseMounts) {
          const fromScope = `repository:${from}:pull`;
          const blob = this.repos.get(from)?.blobs.get(mount);
          if (blob !== undefined && this.authorised(req, fromScope)) {
            this.repo(name).blobs.set(mount, blob);
            res
              .writeHead(201, { location: `/v2/${name}/blobs/${mount}`, 'docker-content-digest': mount })
              .end();
            return;
          }
        }
        const uuid = randomUUID();
        this.uploads.set(uuid, { name, chunks: [] });
        res.writeHead(202, { location: `/v2/${name}/blobs/uploads/${uuid}?_state=s0`, range: '0-0' }).end();
        return;
      }
      if (upload && (req.method === 'PATCH' || req.method === 'PUT')) {
        const session = this.uploads.get(upload[2] ?? '');
        if (session === undefined || session.name !== name) {
          return errorResponse(res, 404, 'BLOB_UPLOAD_UNKNOWN', 'blob upload unknown to registry');
        }
        if (this.failUploads > 0) {
          this.failUploads--;
          this.uploads.delete(upload[2] ?? '');
          return errorResponse(res, 503, 'UNAVAILABLE', 'service unavailable');
        }
        session.chunks.push(data);
        if (req.method === 'PATCH') {
          const size = session.chunks.reduce((n, c) => n + c.length, 0);
          res
            .writeHead(202, {
              location: `/v2/${name}/blobs/uploads/${upload[2] ?? ''}?_state=s${size}`,
              range: `0-${Math.max(0, size - 1)}`,
            })
            .end();
          return;
        }
        const blob = Buffer.concat(session.chunks);
        const digest = url.searchParams.get('digest');
        this.uploads.delete(upload[2] ?? '');
        if (digest !== digestOf(blob)) {
          return errorResponse(res, 400, 'DIGEST_INVALID', 'provided digest did not match uploaded content');
        }
        this.repo(name).blobs.set(digest, blob);
        res
          .writeHead(201, { location: `/v2/${name}/blobs/${digest}`, 'docker-content-digest': digest })
          .end();
        return;
      }
      if (manifest && req.method === 'PUT') {
        const mediaType = String(req.headers['content-type'] ?? '');
        let doc: { config?: { digest?: string }; layers?: Array<{ digest?: string; urls?: unknown }> };
        try {
          doc = JSON.parse(data.toString('utf8')) as typeof doc;
        } catch {
          return errorResponse(res, 400, 'MANIFEST_INVALID', 'manifest invalid');
        }
        const repo = this.repo(name);
        // As distribution: layers with URLs (foreign, non-distributable) need not be in the registry.
        const local = (doc.layers ?? []).filter((l) => !Array.isArray(l.urls) || l.urls.length === 0);
        for (const d of [doc.config?.digest, ...local.map((l) => l.digest)]) {
          if (d === undefined || !repo.blobs.has(d)) {
            return errorResponse(res, 400, 'MANIFEST_BLOB_UNKNOWN', 'blob unknown to registry');
          }
        }
        const digest = digestOf(data);
        repo.manifests.set(digest, { mediaType, bytes: data });
        repo.manifests.set(manifest[2] ?? '', { mediaType, bytes: data });
        res
          .writeHead(201, { location: `/v2/${name}/manifests/${digest}`, 'docker-content-digest': digest })
          .end();
        return;
      }
      res.writeHead(405).end();
    });
  }

  private serveStorage(req: http.IncomingMessage, res: http.ServerResponse): void {
    this.requests.push({
      method: req.method ?? '',
      url: req.url ?? '',
      query: '',
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
      if (res.destroyed) return;
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length });
      res.end(body);
    };
    if (this.stallBlobs.has(digest)) {
      this.stallBlob(res, digest, body);
      return;
    }
    const hold = this.holdBlobs;
    if (hold !== undefined && hold.digests.has(digest) && !this.holdOpen) {
      this.blobsInFlight++;
      this.maxBlobsInFlight = Math.max(this.maxBlobsInFlight, this.blobsInFlight);
      res.on('close', () => this.blobsInFlight--);
      const timer = setTimeout(send, hold.timeoutMs);
      this.heldBlobs.push(() => {
        clearTimeout(timer);
        send();
      });
      if (this.blobsInFlight >= hold.count) {
        setTimeout(() => {
          this.holdOpen = true;
          for (const release of this.heldBlobs.splice(0)) release();
        }, hold.settleMs);
      }
      return;
    }
    if (this.blobDelayMs > 0) setTimeout(send, this.blobDelayMs);
    else send();
  }

  private stallBlob(res: http.ServerResponse, digest: string, body: Buffer): void {
    const half = Math.floor(body.length / 2);
    let finished = false;
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length });
    res.write(body.subarray(0, half));
    this.stalledBlobs.push(digest);
    const unstall = (): void => {
      const i = this.stalledBlobs.indexOf(digest);
      if (i >= 0) this.stalledBlobs.splice(i, 1);
    };
    res.on('close', () => {
      if (finished) return;
      unstall();
      this.abandonedBlobs.push(digest);
    });
    this.stalled.push(() => {
      if (res.destroyed) return;
      finished = true;
      unstall();
      res.end(body.subarray(half));
    });
  }

  /** Sends the rest of every stalled blob (see `stallBlobs`) and stops stalling. */
  releaseStalled(): void {
    this.stallBlobs.clear();
    for (const release of this.stalled.splice(0)) release();
  }

  /** Stops holding blobs (see `holdBlobs`) and clears its counters. */
  resetHold(): void {
    this.holdBlobs = undefined;
    this.holdOpen = false;
    this.maxBlobsInFlight = 0;
    for (const release of this.heldBlobs.splice(0)) release();
  }
}

function errorResponse(res: http.ServerResponse, status: number, code: string, message: string): void {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ errors: [{ code, message, detail: null }] }));
}

function listen(server: http.Server): Promise<void> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
}
