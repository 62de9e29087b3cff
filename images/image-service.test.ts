import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, it, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import { CanceledError, DataLossError, InvalidParameterError, NotFoundError } from '../common/errdefs';
import { createSilentLogger } from '../common/logger';
import { createImageService, type CapsuleImageService } from './image-service';
import { MediaType } from './manifest';
import { FakeRegistry } from './testing/fake-registry';
import {
  buildImage,
  buildTar,
  gzipLayer,
  plainLayer,
  type BuiltImage,
  type Layer,
} from './testing/image-builder';
import type { PullProgress } from './types';

let base: string;
let reg: FakeRegistry;

before(async () => {
  base = await fs.mkdtemp(path.join(os.tmpdir(), 'capsule-images-test-'));
  reg = new FakeRegistry();
  await reg.start();
});
after(async () => {
  await reg.stop();
  await fs.rm(base, { recursive: true, force: true });
});

async function service(root?: string): Promise<CapsuleImageService> {
  const svc = createImageService({
    root: root ?? (await fs.mkdtemp(path.join(base, 'root-'))),
    log: createSilentLogger(),
  });
  await svc.ready();
  return svc;
}

function push(name: string, tag: string, image: BuiltImage): void {
  for (const l of image.layers) reg.addBlob(name, l.blob);
  reg.addBlob(name, image.config);
  reg.addManifest(name, MediaType.OciManifest, image.manifest.toString(), tag);
}

async function layer(label: string, extra = 0): Promise<Layer> {
  return gzipLayer(
    await buildTar([
      { name: `${label}/`, type: 'directory' },
      { name: `${label}/file`, content: `${label}\n` + 'x'.repeat(extra) },
    ]),
  );
}

async function pull(
  svc: CapsuleImageService,
  ref: string,
): Promise<{ events: PullProgress[]; lines: string[] }> {
  const events: PullProgress[] = [];
  await svc.pull(ref, {}, (p) => events.push(p));
  return { events, lines: events.map((e) => (e.id ? `${e.id}: ${e.status}` : e.status)) };
}

/** The statuses one layer id went through, consecutive duplicates (progress) collapsed. */
function statusesOf(events: PullProgress[], id: string): string[] {
  const out: string[] = [];
  for (const e of events) if (e.id === id && out.at(-1) !== e.status) out.push(e.status);
  return out;
}

const short = (l: Layer): string => l.digest.slice(7, 19);

describe('ImageService.pull', () => {
  it('reports progress like dockerd, records the image and unpacks its layers', async () => {
    const l1 = await layer('one', 200_000);
    const l2 = await layer('two');
    const image = buildImage([l1, l2], { Cmd: ['sh'], Env: ['PATH=/bin'] });
    push('app', 'v1', image);
    const svc = await service();
    const { events, lines } = await pull(svc, `${reg.host}/app:v1`);

    assert.equal(lines[0], 'v1: Pulling from app');
    assert.deepEqual(lines.slice(-2), [
      `Digest: ${image.manifestDigest}`,
      `Status: Downloaded newer image for ${reg.host}/app:v1`,
    ]);
    assert.deepEqual(lines.slice(1, 3), [`${short(l1)}: Pulling fs layer`, `${short(l2)}: Pulling fs layer`]);
    for (const l of [l1, l2]) {
      assert.deepEqual(statusesOf(events, short(l)), [
        'Pulling fs layer',
        'Downloading',
        'Verifying Checksum',
        'Download complete',
        'Extracting',
        'Pull complete',
      ]);
    }
    // extraction strictly in layer order
    const done = lines.filter((l) => l.endsWith('Pull complete'));
    assert.deepEqual(done, [`${short(l1)}: Pull complete`, `${short(l2)}: Pull complete`]);
    const downloading = events.find((e) => e.status === 'Downloading' && e.id === short(l1));
    assert.equal(downloading?.progressDetail?.total, l1.blob.length);
    assert.match(downloading?.progress ?? '', /^\[[=>]/);

    const record = await svc.get(`${reg.host}/app:v1`);
    assert.equal(record.id, image.configDigest);
    assert.deepEqual(record.repoTags, [`${reg.host}/app:v1`]);
    assert.deepEqual(record.repoDigests, [`${reg.host}/app@${image.manifestDigest}`]);
    assert.equal(record.created, '2024-01-02T03:04:05Z');
    assert.deepEqual(record.config.config?.Cmd, ['sh']);
    assert.equal(record.size, 'one\n'.length + 200_000 + 'two\n'.length);

    const dirs = await svc.layerDirs(record);
    assert.equal(dirs.length, 2);
    assert.equal(
      await fs.readFile(path.join(dirs[0] ?? '', 'one/file'), 'utf8'),
      'one\n' + 'x'.repeat(200_000),
    );
    assert.equal(await fs.readFile(path.join(dirs[1] ?? '', 'two/file'), 'utf8'), 'two\n');
    assert.equal(path.basename(dirs[0] ?? ''), l1.diffID.slice(7));
  });

  it('says "Image is up to date" on a second pull, without layer lines', async () => {
    const image = buildImage([await layer('again')], {});
    push('again', 'latest', image);
    const svc = await service();
    await pull(svc, `${reg.host}/again`);
    const { lines } = await pull(svc, `${reg.host}/again`);
    assert.deepEqual(lines, [
      'latest: Pulling from again',
      `Digest: ${image.manifestDigest}`,
      `Status: Image is up to date for ${reg.host}/again:latest`,
    ]);
    // the same image under a new tag is "newer" for that tag, still without downloads
    push('again', 'other', image);
    const other = await pull(svc, `${reg.host}/again:other`);
    assert.deepEqual(other.lines, [
      'other: Pulling from again',
      `Digest: ${image.manifestDigest}`,
      `Status: Downloaded newer image for ${reg.host}/again:other`,
    ]);
    assert.deepEqual((await svc.get(`${reg.host}/again`)).repoTags, [
      `${reg.host}/again:latest`,
      `${reg.host}/again:other`,
    ]);
  });

  it('says "Already exists" for a layer another image brought', async () => {
    const shared = await layer('shared');
    const a = buildImage([shared], { Cmd: ['a'] });
    const b = buildImage([shared, await layer('own')], { Cmd: ['b'] });
    push('has-shared-a', 'latest', a);
    push('has-shared-b', 'latest', b);
    const svc = await service();
    await pull(svc, `${reg.host}/has-shared-a`);
    const { lines } = await pull(svc, `${reg.host}/has-shared-b`);
    assert.equal(lines[1], `${short(shared)}: Already exists`);
    assert.equal(svc.layerStore.unpackCount, 2);
  });

  it('downloads at most 3 layers at once and says "Waiting" for the others', async () => {
    const layers = await Promise.all(['w1', 'w2', 'w3', 'w4', 'w5'].map((n) => layer(n)));
    push('five', 'latest', buildImage(layers, {}));
    const svc = await service();
    const { lines } = await pull(svc, `${reg.host}/five`);
    const waiting = lines.filter((l) => l.endsWith('Waiting'));
    assert.deepEqual(waiting, [
      `${short(layers[3] as Layer)}: Waiting`,
      `${short(layers[4] as Layer)}: Waiting`,
    ]);
  });

  it('pulls by digest and records the repo digest', async () => {
    const image = buildImage([await layer('bydigest')], {});
    push('bydigest', 'latest', image);
    const svc = await service();
    const ref = `${reg.host}/bydigest@${image.manifestDigest}`;
    const { lines } = await pull(svc, ref);
    assert.equal(lines[0], `${image.manifestDigest}: Pulling from bydigest`);
    assert.equal(lines.at(-1), `Status: Downloaded newer image for ${ref}`);
    const record = await svc.get(ref);
    assert.deepEqual(record.repoTags, []);
    assert.deepEqual(record.repoDigests, [ref]);
    assert.equal((await pull(svc, ref)).lines.at(-1), `Status: Image is up to date for ${ref}`);
  });

  it('picks linux/amd64 from an index, or the requested platform', async () => {
    const amd = buildImage([await layer('amd64')], {});
    const arm = buildImage([await layer('arm64')], {}, { os: 'linux', architecture: 'arm64', variant: 'v8' });
    push('multi', 'x', amd);
    push('multi', 'y', arm);
    const indexDigest = reg.addManifest(
      'multi',
      MediaType.OciIndex,
      {
        schemaVersion: 2,
        mediaType: MediaType.OciIndex,
        manifests: [
          {
            mediaType: MediaType.OciManifest,
            digest: arm.manifestDigest,
            size: arm.manifest.length,
            platform: { os: 'linux', architecture: 'arm64', variant: 'v8' },
          },
          {
            mediaType: MediaType.OciManifest,
            digest: amd.manifestDigest,
            size: amd.manifest.length,
            platform: { os: 'linux', architecture: 'amd64' },
          },
        ],
      },
      'latest',
    );
    const svc = await service();
    const { lines } = await pull(svc, `${reg.host}/multi`);
    assert.equal(lines.at(-2), `Digest: ${indexDigest}`);
    const record = await svc.get(`${reg.host}/multi`);
    assert.equal(record.id, amd.configDigest);
    assert.deepEqual(record.repoDigests, [`${reg.host}/multi@${indexDigest}`]);
    const armRecord = await svc.pull(`${reg.host}/multi`, { platform: 'linux/arm64' }, () => undefined);
    assert.equal(armRecord.id, arm.configDigest);
    await assert.rejects(
      svc.pull(`${reg.host}/multi`, { platform: 'linux/s390x' }, () => undefined),
      (e: unknown) =>
        e instanceof NotFoundError &&
        e.message === 'no matching manifest for linux/s390x in the manifest list entries',
    );
  });

  it('a layer whose bytes do not match its digest fails the pull and leaves no image', async () => {
    const bad = await layer('corrupt');
    const image = buildImage([bad], {});
    push('corrupt', 'latest', image);
    reg.corruptBlobs.set(bad.digest, Buffer.from(bad.blob).fill(0, 0, 10));
    const svc = await service();
    const events: PullProgress[] = [];
    await assert.rejects(
      svc.pull(`${reg.host}/corrupt`, {}, (p) => events.push(p)),
      (e: unknown) =>
        e instanceof DataLossError &&
        e.message === `filesystem layer verification failed for digest ${bad.digest}`,
    );
    assert.equal(events[0]?.status, 'Pulling from corrupt');
    assert.deepEqual(await svc.list(), []);
    await assert.rejects(svc.get(`${reg.host}/corrupt`), NotFoundError);
    assert.equal(await svc.contentStore.has(bad.digest), false);
    assert.deepEqual(await fs.readdir(svc.contentStore.ingestDir), []);
    reg.corruptBlobs.delete(bad.digest);
  });

  it('a layer whose content does not match the config diffID fails the pull and leaves no layer', async () => {
    const real = await layer('diffid');
    const lying: Layer = { ...real, diffID: 'sha256:' + '1'.repeat(64) };
    push('diffid', 'latest', buildImage([lying], {}));
    const svc = await service();
    await assert.rejects(
      svc.pull(`${reg.host}/diffid`, {}, () => undefined),
      DataLossError,
    );
    assert.deepEqual(await svc.list(), []);
    assert.deepEqual(await fs.readdir(svc.layerStore.layersDir), []);
  });

  it('two concurrent pulls of one image unpack each layer once', async () => {
    const layers = [await layer('c1', 100_000), await layer('c2', 100_000)];
    push('concurrent', 'latest', buildImage(layers, {}));
    const svc = await service();
    const [a, b] = await Promise.all([
      svc.pull(`${reg.host}/concurrent`, {}, () => undefined),
      svc.pull(`${reg.host}/concurrent`, {}, () => undefined),
    ]);
    assert.equal(a.id, b.id);
    assert.equal(svc.layerStore.unpackCount, 2);
    assert.equal((await svc.list()).length, 1);
  });

  it('an aborted pull fails with CanceledError and leaves no image', async () => {
    push('slow', 'latest', buildImage([await layer('slow')], {}));
    reg.blobDelayMs = 300;
    const svc = await service();
    const controller = new AbortController();
    const pulling = svc.pull(`${reg.host}/slow`, { signal: controller.signal }, (p) => {
      if (p.status === 'Pulling fs layer') setTimeout(() => controller.abort(), 20);
    });
    await assert.rejects(pulling, CanceledError);
    reg.blobDelayMs = 0;
    assert.deepEqual(await svc.list(), []);
  });

  it('accepts plain (uncompressed) tar layers', async () => {
    const plain = plainLayer(await buildTar([{ name: 'plain.txt', content: 'plain\n' }]));
    push('plain', 'latest', buildImage([plain], {}));
    const svc = await service();
    const record = await svc.pull(`${reg.host}/plain`, {}, () => undefined);
    const [dir] = await svc.layerDirs(record);
    assert.equal(await fs.readFile(path.join(dir ?? '', 'plain.txt'), 'utf8'), 'plain\n');
  });

  it("fails before any progress for an unknown tag, with dockerd's message", async () => {
    const svc = await service();
    const events: PullProgress[] = [];
    await assert.rejects(
      svc.pull(`${reg.host}/app:nope`, {}, (p) => events.push(p)),
      (e: unknown) =>
        e instanceof NotFoundError &&
        e.message === `manifest for ${reg.host}/app:nope not found: manifest unknown: manifest unknown`,
    );
    assert.deepEqual(events, []);
    await assert.rejects(
      svc.pull('Busybox', {}, () => undefined),
      InvalidParameterError,
    );
  });
});

describe('ImageService lookups', () => {
  let svc: CapsuleImageService;
  let image: BuiltImage;
  let root: string;

  before(async () => {
    image = buildImage([await layer('lookup')], { Cmd: ['x'] });
    push('lookup', 'v1', image);
    root = await fs.mkdtemp(path.join(base, 'lookup-'));
    svc = await service(root);
    await svc.pull(`${reg.host}/lookup:v1`, {}, () => undefined);
  });

  it('finds an image by name, name@digest, full id, bare id and unique id prefix', async () => {
    const hex = image.configDigest.slice(7);
    for (const ref of [
      `${reg.host}/lookup:v1`,
      `${reg.host}/lookup@${image.manifestDigest}`,
      image.configDigest,
      hex,
      hex.slice(0, 12),
      `sha256:${hex.slice(0, 8)}`,
    ]) {
      assert.equal((await svc.get(ref)).id, image.configDigest, ref);
    }
  });

  it("answers NotFoundError with dockerd's 'No such image' text", async () => {
    const cases: Array<[string, string]> = [
      ['nosuch', 'No such image: nosuch:latest'],
      ['nosuch:1', 'No such image: nosuch:1'],
      [`${reg.host}/lookup:v2`, `No such image: ${reg.host}/lookup:v2`],
      [`${reg.host}/lookup`, `No such image: ${reg.host}/lookup:latest`],
      ['sha256:' + 'f'.repeat(64), `No such image: sha256:${'f'.repeat(64)}`],
      ['0123456789ab', 'No such image: 0123456789ab:latest'],
    ];
    for (const [ref, message] of cases) {
      await assert.rejects(
        svc.get(ref),
        (e: unknown) => e instanceof NotFoundError && e.message === message,
        ref,
      );
    }
    await assert.rejects(svc.get('UPPER'), InvalidParameterError);
  });

  it('lists images and survives a restart (state reloaded from disk)', async () => {
    const again = await service(root);
    const list = await again.list();
    assert.equal(list.length, 1);
    assert.deepEqual(list[0]?.repoTags, [`${reg.host}/lookup:v1`]);
    assert.equal((await again.layerDirs(list[0] as never)).length, 1);
  });
});
