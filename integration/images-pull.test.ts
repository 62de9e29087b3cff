/**
 * Pull end to end against Debian's docker-registry (distribution 2.8), with images built by our
 * fixtures and pushed by skopeo (zstd layers compressed by skopeo itself), through the ImageService directly (no daemon). Needs root (layer
 * ownership, whiteout device nodes, trusted.* xattrs, overlay mounts) and fails — never skips —
 * when docker-registry, skopeo, openssl or setfattr are missing.
 */
import { execFile, execFileSync } from 'node:child_process';
import { createSign, randomBytes, X509Certificate } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { describe, it, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import { NotFoundError, UnauthorizedError, UnavailableError } from '../common/errdefs';
import { createSilentLogger } from '../common/logger';
import { createImageService, type CapsuleImageService } from '../images/image-service';
import type { PullProgress } from '../images/types';
import {
  BUSYBOX_PATH,
  MULTI_OWNED_MTIME,
  pushBusybox,
  pushMultiArch,
  pushMultiLayer,
  pushZstdImage,
  type PushedImage,
  type PushedIndex,
  type PushedZstd,
} from './harness/fixtures';
import { freePort, requireCommand, startRegistry, type RunningRegistry } from './harness/registry';

const execFileAsync = promisify(execFile);

let base: string;
const cleanups: Array<() => Promise<void>> = [];

async function newService(): Promise<CapsuleImageService> {
  const svc = createImageService({
    root: await fs.mkdtemp(path.join(base, 'root-')),
    log: createSilentLogger(),
  });
  await svc.ready();
  return svc;
}

async function pull(
  svc: CapsuleImageService,
  ref: string,
  options: Parameters<CapsuleImageService['pull']>[1] = {},
): Promise<{ events: PullProgress[]; lines: string[] }> {
  const events: PullProgress[] = [];
  await svc.pull(ref, options, (p) => events.push(p));
  return { events, lines: events.map((e) => (e.id ? `${e.id}: ${e.status}` : e.status)) };
}

/** The distinct statuses a layer went through, in order. */
function statusesOf(events: PullProgress[], id: string): string[] {
  const out: string[] = [];
  for (const e of events) if (e.id === id && out.at(-1) !== e.status) out.push(e.status);
  return out;
}

function xattr(file: string, name: string): string {
  try {
    return execFileSync('getfattr', ['--absolute-names', '--only-values', '-h', '-n', name, file], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    });
  } catch {
    return '';
  }
}

before(async () => {
  assert.equal(process.getuid?.(), 0, 'the pull integration tests need root');
  await requireCommand('docker-registry', 'docker-registry');
  await requireCommand('skopeo', 'skopeo');
  await requireCommand('setfattr', 'attr');
  await requireCommand('openssl', 'openssl');
  base = await fs.mkdtemp(path.join(os.tmpdir(), 'capsule-pull-it-'));
});

after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
  if (base) await fs.rm(base, { recursive: true, force: true });
});

describe('pull from an anonymous registry', () => {
  let registry: RunningRegistry;
  let busybox: PushedImage;
  let multi: PushedImage;
  let multiArch: PushedIndex;
  let svc: CapsuleImageService;

  before(async () => {
    registry = await startRegistry();
    cleanups.push(() => registry.stop());
    busybox = await pushBusybox(registry.host);
    multi = await pushMultiLayer(registry.host);
    multiArch = await pushMultiArch(registry.host);
    svc = await newService();
  });

  it('busybox: dockerd progress sequence, the record, and a rootfs that runs', async () => {
    const { events, lines } = await pull(svc, busybox.reference);
    const layer = busybox.image.layers[0];
    assert.ok(layer);
    const id = layer.digest.slice(7, 19);
    assert.equal(lines[0], 'latest: Pulling from busybox');
    assert.deepEqual(statusesOf(events, id), [
      'Pulling fs layer',
      'Downloading',
      'Verifying Checksum',
      'Download complete',
      'Extracting',
      'Pull complete',
    ]);
    assert.deepEqual(lines.slice(-2), [
      `Digest: ${busybox.manifestDigest}`,
      `Status: Downloaded newer image for ${busybox.reference}`,
    ]);
    const extracting = events.filter((e) => e.status === 'Extracting').at(-1);
    assert.deepEqual(extracting?.progressDetail, { current: layer.blob.length, total: layer.blob.length });

    const record = await svc.get(busybox.reference);
    assert.equal(record.id, busybox.image.configDigest);
    assert.deepEqual(record.repoTags, [busybox.reference]);
    assert.deepEqual(record.repoDigests, [`${registry.host}/busybox@${busybox.manifestDigest}`]);
    assert.deepEqual(record.config.config?.Env, [`PATH=${BUSYBOX_PATH}`]);
    assert.deepEqual(record.config.config?.Cmd, ['sh']);
    assert.deepEqual(record.config.rootfs.diff_ids, [layer.diffID]);

    const [dir] = await svc.layerDirs(record);
    assert.ok(dir);
    const bin = await fs.stat(path.join(dir, 'bin/busybox'));
    assert.equal(bin.mode & 0o7777, 0o755);
    assert.equal(bin.size, (await fs.stat('/bin/busybox')).size);
    assert.equal(await fs.readlink(path.join(dir, 'bin/sh')), 'busybox');
    assert.match(await fs.readFile(path.join(dir, 'etc/passwd'), 'utf8'), /^root:x:0:0:/);
    assert.equal((await fs.stat(path.join(dir, 'tmp'))).mode & 0o7777, 0o1777);
    assert.ok(record.size >= bin.size);
    const { stdout } = await execFileAsync('chroot', [
      dir,
      '/bin/sh',
      '-c',
      'echo hello from $(cat /etc/passwd | wc -l) users',
    ]);
    assert.equal(stdout, 'hello from 2 users\n');
  });

  it('a second pull says "Image is up to date"', async () => {
    const { lines } = await pull(svc, busybox.reference);
    assert.deepEqual(lines, [
      'latest: Pulling from busybox',
      `Digest: ${busybox.manifestDigest}`,
      `Status: Image is up to date for ${busybox.reference}`,
    ]);
  });

  it('multi-layer: shared layer already exists; whiteouts, opaque dirs, links, owners, modes as overlay expects', async () => {
    const { lines } = await pull(svc, multi.reference);
    const base0 = multi.image.layers[0];
    assert.ok(base0);
    assert.equal(lines[1], `${base0.digest.slice(7, 19)}: Already exists`);
    const record = await svc.get(multi.reference);
    const dirs = await svc.layerDirs(record);
    assert.equal(dirs.length, 4);
    const [, features = '', whiteouts = '', dups = ''] = dirs;

    // layer 2: ownership, modes, times, links
    const owned = await fs.lstat(path.join(features, 'data/owned'));
    assert.equal(owned.uid, 1000);
    assert.equal(owned.gid, 1001);
    assert.equal(owned.mode & 0o7777, 0o640);
    assert.equal(owned.mtime.getTime(), MULTI_OWNED_MTIME.getTime());
    assert.equal((await fs.lstat(path.join(features, 'data/setuid'))).mode & 0o7777, 0o4755);
    const priv = await fs.lstat(path.join(features, 'data/private'));
    assert.equal(priv.mode & 0o7777, 0o700);
    assert.equal(priv.uid, 1000);
    assert.equal(priv.mtime.getTime(), MULTI_OWNED_MTIME.getTime());
    assert.equal(await fs.readlink(path.join(features, 'data/abs-link')), '/etc/passwd');
    assert.equal(await fs.readlink(path.join(features, 'data/rel-link')), 'keep');
    const keep = await fs.lstat(path.join(features, 'data/keep'));
    assert.equal((await fs.lstat(path.join(features, 'data/hard'))).ino, keep.ino);
    assert.equal(keep.nlink, 2);
    assert.ok((await fs.lstat(path.join(features, 'data/fifo'))).isFIFO());
    await assert.rejects(fs.lstat(path.join(features, 'data/null')), { code: 'ENOENT' });

    // layer 3 (a plain tar): whiteout and opaque dir
    const wh = await fs.lstat(path.join(whiteouts, 'data/gone'));
    assert.ok(wh.isCharacterDevice());
    assert.equal(wh.rdev, 0);
    await assert.rejects(fs.lstat(path.join(whiteouts, 'data/.wh.gone')), { code: 'ENOENT' });
    assert.equal(xattr(path.join(whiteouts, 'data/opq'), 'trusted.overlay.opaque'), 'y');
    await assert.rejects(fs.lstat(path.join(whiteouts, 'data/opq/.wh..wh..opq')), { code: 'ENOENT' });

    // layer 4: absolute names confined, duplicate entries: the later wins
    assert.equal(await fs.readFile(path.join(dups, 'abs/file'), 'utf8'), 'confined\n');
    assert.equal(await fs.readFile(path.join(dups, 'etc/motd'), 'utf8'), 'layer four, second\n');

    // and overlayfs agrees: mount the layers read-only and look at the merged view
    const merged = await fs.mkdtemp(path.join(base, 'merged-'));
    await execFileAsync('mount', [
      '-t',
      'overlay',
      'overlay',
      '-o',
      `ro,lowerdir=${[...dirs].reverse().join(':')}`,
      merged,
    ]);
    try {
      assert.deepEqual((await fs.readdir(path.join(merged, 'data'))).sort(), [
        'abs-link',
        'fifo',
        'hard',
        'keep',
        'opq',
        'owned',
        'private',
        'rel-link',
        'setuid',
      ]);
      assert.deepEqual(await fs.readdir(path.join(merged, 'data/opq')), ['new']);
      assert.equal(await fs.readFile(path.join(merged, 'etc/motd'), 'utf8'), 'layer four, second\n');
      assert.ok((await fs.stat(path.join(merged, 'bin/busybox'))).isFile());
    } finally {
      await execFileAsync('umount', [merged]);
    }
  });

  it('multi-arch index: linux/amd64 by default, linux/arm64 on request, a clear error otherwise', async () => {
    const fresh = await newService();
    const { lines } = await pull(fresh, multiArch.reference);
    assert.equal(lines.at(-2), `Digest: ${multiArch.indexDigest}`);
    const amd = await fresh.get(multiArch.reference);
    assert.equal(amd.id, multiArch.amd64.configDigest);
    assert.deepEqual(amd.repoDigests, [`${registry.host}/multiarch@${multiArch.indexDigest}`]);
    const arm = await fresh.pull(multiArch.reference, { platform: 'linux/arm64' }, () => undefined);
    assert.equal(arm.id, multiArch.arm64.configDigest);
    assert.equal(arm.config.architecture, 'arm64');
    await assert.rejects(
      fresh.pull(multiArch.reference, { platform: 'linux/ppc64le' }, () => undefined),
      (e: unknown) =>
        e instanceof NotFoundError &&
        e.message === 'no matching manifest for linux/ppc64le in the manifest list entries',
    );
  });

  it('Docker schema2 manifests (pushed as v2s2) pull too', async () => {
    const v2 = await pushBusybox(registry.host, 'busybox-v2s2', 'v1', { format: 'v2s2' });
    const res = await fetch(`http://${registry.host}/v2/busybox-v2s2/manifests/v1`, {
      headers: { accept: 'application/vnd.docker.distribution.manifest.v2+json' },
    });
    assert.equal(res.headers.get('content-type'), 'application/vnd.docker.distribution.manifest.v2+json');
    const fresh = await newService();
    const record = await fresh.pull(v2.reference, {}, () => undefined);
    assert.deepEqual(record.repoDigests, [`${registry.host}/busybox-v2s2@${v2.manifestDigest}`]);
    const [dir] = await fresh.layerDirs(record);
    assert.ok((await fs.stat(path.join(dir ?? '', 'bin/busybox'))).isFile());
  });

  it('pull by digest', async () => {
    const fresh = await newService();
    const ref = `${registry.host}/busybox@${busybox.manifestDigest}`;
    const { lines } = await pull(fresh, ref);
    assert.equal(lines[0], `${busybox.manifestDigest}: Pulling from busybox`);
    assert.equal(lines.at(-1), `Status: Downloaded newer image for ${ref}`);
    assert.deepEqual((await fresh.get(ref)).repoDigests, [ref]);
  });

  it('concurrent pulls sharing a layer unpack it once', async () => {
    const fresh = await newService();
    await Promise.all([
      fresh.pull(busybox.reference, {}, () => undefined),
      fresh.pull(multi.reference, {}, () => undefined),
      fresh.pull(busybox.reference, {}, () => undefined),
    ]);
    assert.equal(fresh.layerStore.unpackCount, 4);
    assert.equal((await fresh.list()).length, 2);
  });

  it("an unknown tag or repository is NotFoundError with dockerd's text, before any progress", async () => {
    const events: PullProgress[] = [];
    await assert.rejects(
      svc.pull(`${registry.host}/busybox:nope`, {}, (p) => events.push(p)),
      (e: unknown) =>
        e instanceof NotFoundError &&
        e.message ===
          `manifest for ${registry.host}/busybox:nope not found: manifest unknown: manifest unknown`,
    );
    await assert.rejects(
      svc.pull(`${registry.host}/nosuch`, {}, (p) => events.push(p)),
      NotFoundError,
    );
    assert.deepEqual(events, []);
  });

  it("an unreachable registry is UnavailableError with Go's dial text", async () => {
    const port = await freePort();
    await assert.rejects(
      svc.pull(`127.0.0.1:${port}/busybox`, {}, () => undefined),
      (e: unknown) =>
        e instanceof UnavailableError &&
        e.message ===
          `Get "http://127.0.0.1:${port}/v2/": dial tcp 127.0.0.1:${port}: connect: connection refused`,
    );
  });
});

describe('pull from a registry with htpasswd basic auth', () => {
  const creds = { user: 'alice', password: 'wonderland' };
  let registry: RunningRegistry;
  let busybox: PushedImage;

  before(async () => {
    registry = await startRegistry({ htpasswd: creds });
    cleanups.push(() => registry.stop());
    busybox = await pushBusybox(registry.host, 'busybox', 'latest', { creds });
  });

  it('without credentials: UnauthorizedError "no basic auth credentials"', async () => {
    const svc = await newService();
    await assert.rejects(
      svc.pull(busybox.reference, {}, () => undefined),
      (e: unknown) =>
        e instanceof UnauthorizedError &&
        e.message === `Head "http://${registry.host}/v2/busybox/manifests/latest": no basic auth credentials`,
    );
    assert.deepEqual(await svc.list(), []);
  });

  it('with a wrong password: UnauthorizedError "unauthorized: authentication required"', async () => {
    const svc = await newService();
    await assert.rejects(
      svc.pull(busybox.reference, { auth: { username: 'alice', password: 'nope' } }, () => undefined),
      (e: unknown) => e instanceof UnauthorizedError && e.message === 'unauthorized: authentication required',
    );
  });

  it('with credentials: pulls', async () => {
    const svc = await newService();
    const record = await svc.pull(
      busybox.reference,
      { auth: { username: creds.user, password: creds.password, serveraddress: registry.host } },
      () => undefined,
    );
    assert.equal(record.id, busybox.image.configDigest);
  });
});

// ---- token (Bearer) auth: docker-registry trusts JWTs from a small token server of ours --------

interface TokenServer {
  realm: string;
  requests: Array<{
    scope: string | null;
    service: string | null;
    account: string | null;
    authorized: boolean;
  }>;
  stop(): Promise<void>;
}

function b64url(data: Buffer | string): string {
  return Buffer.from(data).toString('base64url');
}

/** Issues ES256 JWTs in distribution's token format (x5c header), to `user` for what they ask. */
async function startTokenServer(opts: {
  keyPem: string;
  certPem: string;
  issuer: string;
  service: string;
  user: string;
  password: string;
}): Promise<TokenServer> {
  const certDer = new X509Certificate(opts.certPem).raw;
  const requests: TokenServer['requests'] = [];
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const expected = `Basic ${Buffer.from(`${opts.user}:${opts.password}`).toString('base64')}`;
    const given = req.headers.authorization;
    const authorized = given === expected;
    requests.push({
      scope: url.searchParams.get('scope'),
      service: url.searchParams.get('service'),
      account: url.searchParams.get('account'),
      authorized,
    });
    if (given !== undefined && !authorized) {
      res.writeHead(401, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ details: 'incorrect username or password' }));
      return;
    }
    // Anonymous callers get a token with no access (as Docker Hub does for private repos).
    const access = authorized
      ? url.searchParams.getAll('scope').map((scope) => {
          const [type = '', name = '', actions = ''] = scope.split(':');
          return { type, name, actions: actions.split(',').filter((a) => a === 'pull' || a === 'push') };
        })
      : [];
    const now = Math.floor(Date.now() / 1000);
    const header = { typ: 'JWT', alg: 'ES256', x5c: [certDer.toString('base64')] };
    const claims = {
      iss: opts.issuer,
      sub: authorized ? opts.user : '',
      aud: opts.service,
      exp: now + 300,
      nbf: now - 10,
      iat: now,
      jti: randomBytes(8).toString('hex'),
      access,
    };
    const signingInput = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
    const signature = createSign('sha256')
      .update(signingInput)
      .sign({ key: opts.keyPem, dsaEncoding: 'ieee-p1363' });
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ token: `${signingInput}.${b64url(signature)}`, expires_in: 300 }));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const port = (server.address() as AddressInfo).port;
  return {
    realm: `http://127.0.0.1:${port}/token`,
    requests,
    stop: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

describe('pull from a registry with token (Bearer) auth', () => {
  const creds = { user: 'bob', password: 'builder' };
  const service = 'capsule-test-registry';
  let registry: RunningRegistry;
  let tokens: TokenServer;
  let busybox: PushedImage;

  before(async () => {
    const dir = await fs.mkdtemp(path.join(base, 'token-'));
    const keyPath = path.join(dir, 'key.pem');
    const certPath = path.join(dir, 'cert.pem');
    await execFileAsync('openssl', [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-keyout',
      keyPath,
      '-out',
      certPath,
      '-days',
      '2',
      '-subj',
      '/CN=capsule-token-issuer',
    ]);
    tokens = await startTokenServer({
      keyPem: await fs.readFile(keyPath, 'utf8'),
      certPem: await fs.readFile(certPath, 'utf8'),
      issuer: 'capsule-test-issuer',
      service,
      user: creds.user,
      password: creds.password,
    });
    cleanups.push(() => tokens.stop());
    registry = await startRegistry({
      token: { realm: tokens.realm, service, issuer: 'capsule-test-issuer', rootCertBundle: certPath },
    });
    cleanups.push(() => registry.stop());
    busybox = await pushBusybox(registry.host, 'busybox', 'latest', { creds });
  });

  it('anonymously: the token grants nothing and the pull is denied like dockerd says', async () => {
    const svc = await newService();
    await assert.rejects(
      svc.pull(busybox.reference, {}, () => undefined),
      (e: unknown) =>
        e instanceof NotFoundError &&
        e.message ===
          `pull access denied for ${registry.host}/busybox, repository does not exist or may require 'docker login': denied: requested access to the resource is denied`,
    );
  });

  it('with a wrong password: UnauthorizedError from the token server', async () => {
    const svc = await newService();
    await assert.rejects(
      svc.pull(busybox.reference, { auth: { username: creds.user, password: 'nope' } }, () => undefined),
      (e: unknown) =>
        e instanceof UnauthorizedError &&
        e.message ===
          `Head "http://${registry.host}/v2/busybox/manifests/latest": unauthorized: incorrect username or password`,
    );
  });

  it('with credentials: one token for the repository scope, then the pull succeeds', async () => {
    const svc = await newService();
    tokens.requests.length = 0;
    const record = await svc.pull(
      busybox.reference,
      { auth: { username: creds.user, password: creds.password } },
      () => undefined,
    );
    assert.equal(record.id, busybox.image.configDigest);
    assert.deepEqual(tokens.requests, [
      { scope: 'repository:busybox:pull', service, account: creds.user, authorized: true },
    ]);
  });
});

describe('zstd layers (skopeo --dest-compress-format zstd)', () => {
  let registry: RunningRegistry;
  let pushed: PushedZstd;

  before(async () => {
    registry = await startRegistry();
    cleanups.push(() => registry.stop());
    pushed = await pushZstdImage(registry.host, 'zstd', 'v1');
  });

  it('the registry holds zstd blobs; the pull verifies digests and diffIDs and unpacks a rootfs that runs', async () => {
    assert.deepEqual(
      pushed.manifest.layers.map((l) => l.mediaType),
      ['application/vnd.oci.image.layer.v1.tar+zstd', 'application/vnd.oci.image.layer.v1.tar+zstd'],
    );
    const svc = await newService();
    const { events, lines } = await pull(svc, pushed.reference);
    for (const l of pushed.manifest.layers) {
      assert.equal(statusesOf(events, l.digest.slice(7, 19)).at(-1), 'Pull complete');
    }
    assert.equal(lines.at(-1), `Status: Downloaded newer image for ${pushed.reference}`);
    const record = await svc.get(pushed.reference);
    assert.equal(record.id, pushed.image.configDigest);
    assert.deepEqual(
      record.config.rootfs.diff_ids,
      pushed.image.layers.map((l) => l.diffID),
    );
    const [lower, upper] = await svc.layerDirs(record);
    assert.ok(lower && upper);
    assert.equal((await fs.stat(path.join(lower, 'bin/busybox'))).size, (await fs.stat('/bin/busybox')).size);
    assert.equal(await fs.readlink(path.join(lower, 'bin/sh')), 'busybox');
    assert.equal(
      await fs.readFile(path.join(upper, 'etc/zstd-marker'), 'utf8'),
      'compressed with zstd\n'.repeat(1000),
    );
    const { stdout } = await execFileAsync('chroot', [lower, '/bin/sh', '-c', 'echo zstd ok']);
    assert.equal(stdout, 'zstd ok\n');
  });

  it('a zstd-pulled image pushes back as gzip and pulls again with the same diffIDs', async () => {
    const svc = await newService();
    await pull(svc, pushed.reference);
    await svc.tag(pushed.reference, `${registry.host}/zstd-regz`, 'v1');
    await svc.push(`${registry.host}/zstd-regz:v1`, {}, () => undefined);
    const other = await newService();
    await pull(other, `${registry.host}/zstd-regz:v1`);
    const record = await other.get(`${registry.host}/zstd-regz:v1`);
    assert.equal(record.id, pushed.image.configDigest);
    const { stdout } = await execFileAsync('skopeo', [
      'inspect',
      '--raw',
      '--tls-verify=false',
      `docker://${registry.host}/zstd-regz:v1`,
    ]);
    const manifest = JSON.parse(stdout) as { layers: Array<{ mediaType: string }> };
    assert.deepEqual(
      manifest.layers.map((l) => l.mediaType),
      [
        'application/vnd.docker.image.rootfs.diff.tar.gzip',
        'application/vnd.docker.image.rootfs.diff.tar.gzip',
      ],
    );
  });
});
