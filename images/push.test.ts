/**
 * Push against the FAKE registry: the progress lines dockerd prints, the upload flows (chunked:
 * POST+PATCH+PUT, monolithic: POST+PUT), HEAD skips, cross-repository mounts, bearer scopes,
 * retries, errors, and a pull of the pushed image into a second service root.
 */
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { describe, it, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import { InvalidParameterError, NotFoundError, UnavailableError } from '../common/errdefs';
import { createSilentLogger } from '../common/logger';
import { createImageService, type CapsuleImageService, type ImageServiceDeps } from './image-service';
import { MediaType } from './manifest';
import { FakeRegistry, digestOf } from './testing/fake-registry';
import { buildImage, buildTar, gzipLayer, type BuiltImage, type Layer } from './testing/image-builder';
import { freePortForTest } from './testing/ports';
import type { PushProgress } from './types';

let base: string;

before(async () => {
  base = await fs.mkdtemp(path.join(os.tmpdir(), 'capsule-images-push-'));
});
after(async () => {
  await fs.rm(base, { recursive: true, force: true });
});

async function service(extra: Partial<ImageServiceDeps> = {}): Promise<CapsuleImageService> {
  const svc = createImageService({
    root: await fs.mkdtemp(path.join(base, 'root-')),
    log: createSilentLogger(),
    pushRetryDelayMs: 10,
    ...extra,
  });
  await svc.ready();
  return svc;
}

async function layer(label: string, extra = 0): Promise<Layer> {
  return gzipLayer(
    await buildTar([
      { name: `${label}/`, type: 'directory' },
      { name: `${label}/file`, content: `${label}\n${'y'.repeat(extra)}` },
    ]),
  );
}

function publish(reg: FakeRegistry, name: string, tag: string, image: BuiltImage): string {
  for (const l of image.layers) reg.addBlob(name, l.blob);
  reg.addBlob(name, image.config);
  reg.addManifest(name, MediaType.OciManifest, image.manifest.toString(), tag);
  return `${reg.host}/${name}:${tag}`;
}

async function push(
  svc: CapsuleImageService,
  ref: string,
  options: Parameters<CapsuleImageService['push']>[1] = {},
): Promise<{ events: PushProgress[]; lines: string[] }> {
  const events: PushProgress[] = [];
  await svc.push(ref, options, (p) => events.push(p));
  return { events, lines: lines(events) };
}

function lines(events: PushProgress[]): string[] {
  return events
    .filter((e) => 'status' in e && e.status !== 'Pushing')
    .map((e) => ('status' in e ? (e.id ? `${e.id}: ${e.status}` : e.status) : ''));
}

const short = (digest: string): string => digest.slice(7, 19);

async function importTar(svc: CapsuleImageService, repository: string, content: string): Promise<string> {
  const tarball = await buildTar([
    { name: 'etc/', type: 'directory' },
    { name: 'etc/hello', content },
  ]);
  const record = await svc.import(Readable.from([tarball]), {
    repository,
    changes: ['CMD ["cat","/etc/hello"]'],
  });
  return record.id;
}

describe('ImageService.push', () => {
  let reg: FakeRegistry;

  before(async () => {
    reg = new FakeRegistry();
    await reg.start();
  });
  after(async () => {
    await reg.stop();
  });

  it('pushes an imported image like dockerd: gzip blobs, chunked uploads, manifest, aux, repo digest', async () => {
    const svc = await service();
    const id = await importTar(svc, `${reg.host}/imported:v1`, 'hello\n');
    const diffID = (await svc.get(id)).config.rootfs.diff_ids[0] as string;
    reg.requests.length = 0;
    const { events, lines: out } = await push(svc, `${reg.host}/imported:v1`);
    const stored = reg.manifest('imported', 'v1');
    assert.ok(stored !== undefined);
    const digest = digestOf(stored.bytes);
    assert.deepEqual(out, [
      `The push refers to repository [${reg.host}/imported]`,
      `${short(diffID)}: Preparing`,
      `${short(diffID)}: Pushed`,
      `v1: digest: ${digest} size: ${stored.bytes.length}`,
    ]);
    const pushing = events.filter((e) => 'status' in e && e.status === 'Pushing');
    assert.ok(pushing.length >= 1);
    assert.deepEqual(events.at(-1), {
      progressDetail: {},
      aux: { Tag: 'v1', Digest: digest, Size: stored.bytes.length },
    });
    assert.equal(stored.mediaType, MediaType.DockerManifest);
    const manifest = JSON.parse(stored.bytes.toString()) as {
      config: { digest: string; mediaType: string };
      layers: Array<{ digest: string; mediaType: string; size: number }>;
    };
    assert.equal(stored.bytes.toString(), JSON.stringify(manifest, null, 3), "dockerd's 3-space layout");
    assert.equal(manifest.config.digest, id);
    assert.equal(manifest.config.mediaType, MediaType.DockerConfig);
    assert.equal(manifest.layers[0]?.mediaType, MediaType.DockerLayerGzip);
    const blob = reg.blob('imported', manifest.layers[0]?.digest ?? '');
    assert.ok(
      blob !== undefined && blob[0] === 0x1f && blob[1] === 0x8b,
      'the layer went up gzip-compressed',
    );
    // dockerd's request flow for a layer: POST, PATCH, PUT ?digest=; the config: HEAD, POST, PUT.
    const flow = reg.requests
      .filter((r) => r.url !== '/v2/')
      .map((r) => `${r.method} ${r.url.replace(/uploads\/[a-f0-9]{8}-[a-f0-9-]{27}$/, 'uploads/UUID')}`);
    assert.deepEqual(flow, [
      `HEAD /v2/imported/blobs/${manifest.layers[0]?.digest}`,
      'POST /v2/imported/blobs/uploads/',
      'PATCH /v2/imported/blobs/uploads/UUID',
      'PUT /v2/imported/blobs/uploads/UUID',
      `HEAD /v2/imported/blobs/${id}`,
      'POST /v2/imported/blobs/uploads/',
      'PUT /v2/imported/blobs/uploads/UUID',
      'PUT /v2/imported/manifests/v1',
    ]);
    assert.deepEqual((await svc.get(id)).repoDigests, [`${reg.host}/imported@${digest}`]);

    // Again: every layer already exists, same manifest digest (the gzip blob was kept).
    const again = await push(svc, `${reg.host}/imported:v1`);
    assert.deepEqual(again.lines.slice(1, 3), [
      `${short(diffID)}: Preparing`,
      `${short(diffID)}: Layer already exists`,
    ]);
    assert.equal(again.lines[3], `v1: digest: ${digest} size: ${stored.bytes.length}`);

    // And a fresh service pulls it back: same image, same content.
    const other = await service();
    const pulled = await other.pull(`${reg.host}/imported:v1`, {}, () => undefined);
    assert.equal(pulled.id, id);
    const [dir] = await other.layerDirs(pulled);
    assert.equal(await fs.readFile(path.join(dir ?? '', 'etc/hello'), 'utf8'), 'hello\n');
  });

  it('monolithic uploads: POST then PUT with the body', async () => {
    const svc = await service({ uploadMode: 'monolithic' });
    await importTar(svc, `${reg.host}/mono:v1`, 'mono\n');
    reg.requests.length = 0;
    await push(svc, `${reg.host}/mono:v1`);
    const methods = reg.requests.filter((r) => r.url.includes('/uploads/')).map((r) => r.method);
    assert.deepEqual(methods, ['POST', 'PUT', 'POST', 'PUT']);
  });

  it('mounts layers pulled from another repository of the same registry; pushes the rest', async () => {
    const base0 = await layer('mount-base', 5000);
    const image = buildImage([base0], { Cmd: ['sh'] });
    const ref = publish(reg, 'library-src', 'latest', image);
    const svc = await service();
    await svc.pull(ref, {}, () => undefined);
    await svc.tag(ref, `${reg.host}/dest`, 'v1');
    reg.requests.length = 0;
    const { lines: out } = await push(svc, `${reg.host}/dest:v1`);
    assert.equal(out[2], `${short(base0.diffID)}: Mounted from library-src`);
    const mount = reg.requests.find((r) => r.method === 'POST' && r.query.includes('mount='));
    assert.ok(mount?.query.includes(`from=library-src`));
    const stored = reg.manifest('dest', 'v1');
    const manifest = JSON.parse(stored?.bytes.toString() ?? '{}') as { layers: Array<{ digest: string }> };
    assert.equal(manifest.layers[0]?.digest, base0.digest, 'the pulled gzip blob is pushed as is');
    // A registry that refuses the mount gets an upload instead.
    reg.refuseMounts = true;
    await svc.tag(ref, `${reg.host}/dest2`, 'v1');
    const refused = await push(svc, `${reg.host}/dest2:v1`);
    reg.refuseMounts = false;
    assert.equal(refused.lines[2], `${short(base0.diffID)}: Pushed`);
  });

  it('without a tag pushes every tag of the repository, in order; layers pushed once', async () => {
    const svc = await service();
    const id = await importTar(svc, `${reg.host}/alltags:b`, 'all\n');
    await svc.tag(id, `${reg.host}/alltags`, 'a');
    const diffID = (await svc.get(id)).config.rootfs.diff_ids[0] as string;
    const { lines: out } = await push(svc, `${reg.host}/alltags`);
    assert.equal(out[0], `The push refers to repository [${reg.host}/alltags]`);
    assert.match(out[3] ?? '', /^a: digest: sha256:[a-f0-9]{64} size: \d+$/);
    assert.deepEqual(out.slice(4, 6), [
      `${short(diffID)}: Preparing`,
      `${short(diffID)}: Layer already exists`,
    ]);
    assert.match(out[6] ?? '', /^b: digest: /);
  });

  it('retries a failed upload, then succeeds', async () => {
    const svc = await service();
    await importTar(svc, `${reg.host}/retry:v1`, 'retry\n');
    reg.failUploads = 1;
    const { lines: out } = await push(svc, `${reg.host}/retry:v1`);
    assert.ok(
      out.some((l) => l.endsWith(': Retrying in 5 seconds')),
      out.join('\n'),
    );
    assert.ok(out.some((l) => l.endsWith(': Pushed')));
  });

  it("fails with dockerd's texts: unknown tag, no tags, unreachable registry, bad reference", async () => {
    const svc = await service();
    await importTar(svc, `${reg.host}/errs:v1`, 'errs\n');
    const events: PushProgress[] = [];
    await assert.rejects(
      svc.push(`${reg.host}/errs:nope`, {}, (p) => events.push(p)),
      (e: unknown) => e instanceof NotFoundError && e.message === `tag does not exist: ${reg.host}/errs:nope`,
    );
    assert.deepEqual(lines(events), [`The push refers to repository [${reg.host}/errs]`]);
    await assert.rejects(
      svc.push(`${reg.host}/nothere`, {}, () => undefined),
      (e: unknown) =>
        e instanceof NotFoundError &&
        e.message === `An image does not exist locally with the tag: ${reg.host}/nothere`,
    );
    const port = await freePortForTest();
    await svc.tag(`${reg.host}/errs:v1`, `127.0.0.1:${port}/errs`, 'v1');
    await assert.rejects(
      svc.push(`127.0.0.1:${port}/errs:v1`, {}, () => undefined),
      (e: unknown) =>
        e instanceof UnavailableError &&
        e.message ===
          `Get "http://127.0.0.1:${port}/v2/": dial tcp 127.0.0.1:${port}: connect: connection refused`,
    );
    await assert.rejects(
      svc.push('UPPER/x', {}, () => undefined),
      InvalidParameterError,
    );
    // options.tag overrides the reference's tag (the API passes ?tag= separately)
    const ok = await push(svc, `${reg.host}/errs`, { tag: 'v1' });
    assert.match(ok.lines.at(-1) ?? '', /^v1: digest: /);
  });
});

describe('ImageService.push with bearer auth', () => {
  let reg: FakeRegistry;

  before(async () => {
    reg = new FakeRegistry({ kind: 'bearer', service: 'fake', user: 'alice', password: 'secret' });
    await reg.start();
  });
  after(async () => {
    await reg.stop();
  });

  it('asks for repository:<name>:pull,push with the credentials', async () => {
    const svc = await service();
    await importTar(svc, `${reg.host}/secure:v1`, 'secure\n');
    reg.tokenRequests = [];
    const { lines: out } = await push(svc, `${reg.host}/secure:v1`, {
      auth: { username: 'alice', password: 'secret' },
    });
    assert.match(out.at(-1) ?? '', /^v1: digest: /);
    assert.deepEqual([...new Set(reg.tokenRequests.map((t) => t.scope))], ['repository:secure:pull,push']);
    assert.ok(reg.tokenRequests.every((t) => t.authorization?.startsWith('Basic ')));
  });

  it('a wrong password fails at the token server', async () => {
    const svc = await service();
    await importTar(svc, `${reg.host}/secure:v2`, 'secure2\n');
    await assert.rejects(
      svc.push(`${reg.host}/secure:v2`, { auth: { username: 'alice', password: 'nope' } }, () => undefined),
      /unauthorized: incorrect username or password/,
    );
  });
});
