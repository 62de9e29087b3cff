import { describe, it, after } from 'node:test';
import * as assert from 'node:assert/strict';
import { createSilentLogger } from '../common/logger';
import { DataLossError, NotFoundError, UnauthorizedError, UnavailableError } from '../common/errdefs';
import { MediaType } from './manifest';
import { parseNormalizedNamed } from './reference';
import { isInsecureRegistry, parseWwwAuthenticate, RegistryClient } from './registry-client';
import { FakeRegistry, digestOf } from './testing/fake-registry';
import { freePortForTest } from './testing/ports';

const log = createSilentLogger();

describe('parseWwwAuthenticate', () => {
  it('parses a Bearer challenge with quoted params', () => {
    assert.deepEqual(
      parseWwwAuthenticate(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull"',
      ),
      [
        {
          scheme: 'bearer',
          params: {
            realm: 'https://auth.docker.io/token',
            service: 'registry.docker.io',
            scope: 'repository:library/busybox:pull',
          },
        },
      ],
    );
  });

  it('parses several challenges, token values, escapes and odd spacing', () => {
    assert.deepEqual(
      parseWwwAuthenticate(
        'Basic realm="Registry Realm", Bearer realm=x , service="a\\"b",error=invalid_token',
      ),
      [
        { scheme: 'basic', params: { realm: 'Registry Realm' } },
        { scheme: 'bearer', params: { realm: 'x', service: 'a"b', error: 'invalid_token' } },
      ],
    );
    assert.deepEqual(parseWwwAuthenticate('Basic'), [{ scheme: 'basic', params: {} }]);
    assert.deepEqual(parseWwwAuthenticate(''), []);
  });

  it('keeps commas inside quoted scopes', () => {
    const [c] = parseWwwAuthenticate('Bearer realm="r",scope="repository:a:pull,push"');
    assert.equal(c?.params.scope, 'repository:a:pull,push');
  });

  it('never throws or loops on junk', () => {
    for (const junk of [
      '=',
      ',,,',
      '"',
      'Bearer ="x"',
      'Bearer realm="unterminated',
      '\u0000\u0001',
      'a b c d=',
    ]) {
      parseWwwAuthenticate(junk);
    }
  });
});

describe('endpoints', () => {
  const client = new RegistryClient({
    log,
    insecureRegistries: ['reg.internal:5000', '10.1.0.0/16'],
    mirrors: ['http://127.0.0.1:5000'],
  });

  it('uses http for loopback, https elsewhere, both for insecure registries', () => {
    assert.deepEqual(
      client.endpoints('127.0.0.1:5000').map((e) => e.origin),
      ['http://127.0.0.1:5000'],
    );
    assert.deepEqual(
      client.endpoints('localhost:5000').map((e) => e.origin),
      ['http://localhost:5000'],
    );
    assert.deepEqual(
      client.endpoints('[::1]:5000').map((e) => e.origin),
      ['http://[::1]:5000'],
    );
    assert.deepEqual(
      client.endpoints('registry.example.com').map((e) => e.origin),
      ['https://registry.example.com'],
    );
    assert.deepEqual(
      client.endpoints('reg.internal:5000').map((e) => [e.origin, e.skipTlsVerify]),
      [
        ['https://reg.internal:5000', true],
        ['http://reg.internal:5000', false],
      ],
    );
    assert.deepEqual(
      client.endpoints('docker.io').map((e) => e.origin),
      ['http://127.0.0.1:5000', 'https://registry-1.docker.io'],
    );
  });

  it('matches insecure registries by host, host:port and CIDR', () => {
    assert.equal(isInsecureRegistry('10.1.2.3:5000', ['10.1.0.0/16']), true);
    assert.equal(isInsecureRegistry('10.2.2.3:5000', ['10.1.0.0/16']), false);
    assert.equal(isInsecureRegistry('myreg:5000', ['myreg']), true);
    assert.equal(isInsecureRegistry('myreg:5001', ['myreg:5000']), false);
  });
});

// ---- against the fake registry ----------------------------------------------------------------

function addImage(
  reg: FakeRegistry,
  name: string,
  tag: string,
): { manifestDigest: string; layer: Buffer; layerDigest: string } {
  const layer = Buffer.from('layer bytes '.repeat(1000));
  const layerDigest = reg.addBlob(name, layer);
  const config = Buffer.from('{"rootfs":{"type":"layers","diff_ids":[]}}');
  const configDigest = reg.addBlob(name, config);
  const manifestDigest = reg.addManifest(
    name,
    MediaType.DockerManifest,
    {
      schemaVersion: 2,
      mediaType: MediaType.DockerManifest,
      config: { mediaType: MediaType.DockerConfig, digest: configDigest, size: config.length },
      layers: [{ mediaType: MediaType.DockerLayerGzip, digest: layerDigest, size: layer.length }],
    },
    tag,
  );
  return { manifestDigest, layer, layerDigest };
}

async function readAll(stream: AsyncIterable<Buffer>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c);
  return Buffer.concat(chunks);
}

describe('RegistryClient against a fake registry', () => {
  let reg: FakeRegistry | undefined;
  after(async () => {
    await reg?.stop();
  });

  async function fresh(auth: ConstructorParameters<typeof FakeRegistry>[0]): Promise<FakeRegistry> {
    if (reg) await reg.stop();
    const r = new FakeRegistry(auth);
    reg = r;
    await r.start();
    return r;
  }

  it('fetches and verifies a manifest and streams a blob anonymously', async () => {
    const r = await fresh({ kind: 'none' });
    const img = addImage(r, 'bb', 'v1');
    const repo = new RegistryClient({ log }).repository(parseNormalizedNamed(`${r.host}/bb:v1`), undefined);
    const m = await repo.getManifest('v1');
    assert.equal(m.digest, img.manifestDigest);
    assert.equal(m.parsed.kind, 'manifest');
    const byDigest = await repo.getManifest(img.manifestDigest);
    assert.equal(byDigest.digest, img.manifestDigest);
    const blob = await repo.getBlob(img.layerDigest);
    assert.equal(blob.size, img.layer.length);
    assert.deepEqual(await readAll(blob.stream), img.layer);
  });

  it("maps unknown tags and repositories to NotFoundError with dockerd's text", async () => {
    const r = await fresh({ kind: 'none' });
    addImage(r, 'bb', 'v1');
    const client = new RegistryClient({ log });
    await assert.rejects(
      client.repository(parseNormalizedNamed(`${r.host}/bb:nope`), undefined).getManifest('nope'),
      (e: unknown) =>
        e instanceof NotFoundError &&
        e.message === `manifest for ${r.host}/bb:nope not found: manifest unknown: manifest unknown`,
    );
    await assert.rejects(
      client.repository(parseNormalizedNamed(`${r.host}/other:v1`), undefined).getManifest('v1'),
      (e: unknown) =>
        e instanceof NotFoundError &&
        e.message ===
          `repository ${r.host}/other not found: name unknown: repository name not known to registry`,
    );
  });

  it('rejects a manifest whose bytes do not match the digest asked for', async () => {
    const r = await fresh({ kind: 'none' });
    const wrong = 'sha256:' + '0'.repeat(64);
    r.setManifestBytes(
      'bb',
      wrong,
      MediaType.OciManifest,
      Buffer.from('{"schemaVersion":2,"config":{},"layers":[]}'),
    );
    const repo = new RegistryClient({ log }).repository(parseNormalizedNamed(`${r.host}/bb`), undefined);
    await assert.rejects(
      repo.getManifest(wrong),
      (e: unknown) => e instanceof DataLossError && /manifest verification failed/.test(e.message),
    );
  });

  it('basic auth: no credentials, wrong credentials, right credentials', async () => {
    const r = await fresh({ kind: 'basic', user: 'alice', password: 's3cret' });
    const img = addImage(r, 'bb', 'v1');
    const client = new RegistryClient({ log });
    const ref = parseNormalizedNamed(`${r.host}/bb:v1`);
    await assert.rejects(
      client.repository(ref, undefined).getManifest('v1'),
      (e: unknown) =>
        e instanceof UnauthorizedError &&
        e.message === `Head "http://${r.host}/v2/bb/manifests/v1": no basic auth credentials`,
    );
    await assert.rejects(
      client.repository(ref, { username: 'alice', password: 'nope' }).getManifest('v1'),
      (e: unknown) => e instanceof UnauthorizedError && e.message === 'unauthorized: authentication required',
    );
    const m = await client.repository(ref, { username: 'alice', password: 's3cret' }).getManifest('v1');
    assert.equal(m.digest, img.manifestDigest);
  });

  it('bearer auth: token from the realm for the repository scope, cached across requests', async () => {
    const r = await fresh({ kind: 'bearer', service: 'fake-registry' });
    const img = addImage(r, 'team/app', 'v1');
    const client = new RegistryClient({ log });
    const ref = parseNormalizedNamed(`${r.host}/team/app:v1`);
    const repo = client.repository(ref, undefined);
    await repo.getManifest('v1');
    await readAll((await repo.getBlob(img.layerDigest)).stream);
    // a second pull reuses the cached token
    const again = client.repository(ref, undefined);
    await again.getManifest('v1');
    assert.deepEqual(
      r.tokenRequests.map((t) => [t.scope, t.service, t.authorization]),
      [['repository:team/app:pull', 'fake-registry', undefined]],
    );
    const authed = r.requests.filter((q) => q.url.startsWith('/v2/team/app/'));
    assert.ok(authed.length >= 3);
    assert.ok(authed.every((q) => q.authorization === 'Bearer tok1'));
  });

  it('bearer auth with credentials: sent to the token endpoint only; refused without them', async () => {
    const r = await fresh({ kind: 'bearer', service: 'fake-registry', user: 'bob', password: 'pw' });
    addImage(r, 'bb', 'v1');
    const client = new RegistryClient({ log });
    const ref = parseNormalizedNamed(`${r.host}/bb:v1`);
    await assert.rejects(
      client.repository(ref, undefined).getManifest('v1'),
      (e: unknown) =>
        e instanceof UnauthorizedError &&
        e.message ===
          `Head "http://${r.host}/v2/bb/manifests/v1": unauthorized: incorrect username or password`,
    );
    await client.repository(ref, { username: 'bob', password: 'pw' }).getManifest('v1');
    const basic = `Basic ${Buffer.from('bob:pw').toString('base64')}`;
    assert.equal(r.tokenRequests.at(-1)?.authorization, basic);
    assert.ok(r.requests.filter((q) => q.url !== '/token').every((q) => q.authorization !== basic));
  });

  it('bearer auth: an expired token is renewed when the registry answers invalid_token', async () => {
    const r = await fresh({ kind: 'bearer', service: 'fake-registry' });
    addImage(r, 'bb', 'v1');
    const client = new RegistryClient({ log });
    const ref = parseNormalizedNamed(`${r.host}/bb:v1`);
    await client.repository(ref, undefined).getManifest('v1');
    // the registry forgets every token it issued
    (r as unknown as { issued: Set<string> }).issued.clear();
    await client.repository(ref, undefined).getManifest('v1');
    assert.equal(r.tokenRequests.length, 2);
  });

  it('uses a registry token as the bearer token directly', async () => {
    const r = await fresh({ kind: 'bearer', service: 'fake-registry' });
    addImage(r, 'bb', 'v1');
    r.grantToken('given', ['repository:bb:pull']);
    await new RegistryClient({ log })
      .repository(parseNormalizedNamed(`${r.host}/bb:v1`), { registrytoken: 'given' })
      .getManifest('v1');
    assert.equal(r.tokenRequests.length, 0);
  });

  it('follows blob redirects to storage without sending Authorization there', async () => {
    const r = await fresh({ kind: 'basic', user: 'alice', password: 's3cret' });
    r.redirectBlobs = true;
    const img = addImage(r, 'bb', 'v1');
    const repo = new RegistryClient({ log }).repository(parseNormalizedNamed(`${r.host}/bb:v1`), {
      username: 'alice',
      password: 's3cret',
    });
    await repo.getManifest('v1');
    const blob = await repo.getBlob(img.layerDigest);
    assert.equal(digestOf(await readAll(blob.stream)), img.layerDigest);
    const storage = r.requests.filter((q) => q.origin === 'storage');
    assert.equal(storage.length, 1);
    assert.equal(storage[0]?.authorization, undefined);
  });

  it('reports a refused connection like dockerd', async () => {
    const port = await freePortForTest();
    const repo = new RegistryClient({ log }).repository(
      parseNormalizedNamed(`127.0.0.1:${port}/x`),
      undefined,
    );
    await assert.rejects(
      repo.getManifest('latest'),
      (e: unknown) =>
        e instanceof UnavailableError &&
        e.message ===
          `Get "http://127.0.0.1:${port}/v2/": dial tcp 127.0.0.1:${port}: connect: connection refused`,
    );
  });

  it('falls through a failing mirror to the next endpoint', async () => {
    const r = await fresh({ kind: 'none' });
    const img = addImage(r, 'library/busybox', 'latest');
    const dead = await freePortForTest();
    const client = new RegistryClient({ log, mirrors: [`http://127.0.0.1:${dead}`, `http://${r.host}`] });
    const m = await client.repository(parseNormalizedNamed('busybox'), undefined).getManifest('latest');
    assert.equal(m.digest, img.manifestDigest);
  });
});
