import { execFileSync } from 'node:child_process';
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
import type { ImageRecord, PullProgress } from './types';

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

type Platform = { os: string; architecture: string; variant?: string };

/** Publishes an OCI index of already pushed images, each with its platform, as `name:latest`. */
function pushIndex(name: string, entries: [BuiltImage, Platform][]): string {
  return reg.addManifest(
    name,
    MediaType.OciIndex,
    {
      schemaVersion: 2,
      mediaType: MediaType.OciIndex,
      manifests: entries.map(([image, platform]) => ({
        mediaType: MediaType.OciManifest,
        digest: image.manifestDigest,
        size: image.manifest.length,
        platform,
      })),
    },
    'latest',
  );
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

  it('runs layer downloads in parallel, max-concurrent-downloads (default 3) at once', async () => {
    const layers = await Promise.all(['p1', 'p2', 'p3', 'p4', 'p5'].map((n) => layer(n)));
    push('parallel', 'latest', buildImage(layers, {}));
    for (const [limit, expected] of [
      [undefined, 3],
      [2, 2],
    ] as const) {
      const svc = createImageService({
        root: await fs.mkdtemp(path.join(base, 'root-')),
        log: createSilentLogger(),
        ...(limit !== undefined ? { maxConcurrentDownloads: limit } : {}),
      });
      // Each layer GET is held until `expected` of them are in flight (a serial puller only gets
      // there by timeout, and then saw 1); a puller allowing more would show its extra requests.
      reg.holdBlobs = {
        digests: new Set(layers.map((l) => l.digest)),
        count: expected,
        timeoutMs: 300,
        settleMs: 100,
      };
      try {
        await svc.pull(`${reg.host}/parallel`, {}, () => undefined);
        assert.equal(reg.maxBlobsInFlight, expected, `maxConcurrentDownloads ${String(limit)}`);
      } finally {
        reg.resetHold();
      }
    }
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
    const indexDigest = pushIndex('multi', [
      [arm, { os: 'linux', architecture: 'arm64', variant: 'v8' }],
      [amd, { os: 'linux', architecture: 'amd64' }],
    ]);
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

  it('an index with no linux/amd64 entry fails a default pull with dockerd\'s text, after "Pulling from"', async () => {
    const arm = buildImage(
      [await layer('only-arm64')],
      {},
      { os: 'linux', architecture: 'arm64', variant: 'v8' },
    );
    const ppc = buildImage([await layer('only-ppc64le')], {}, { os: 'linux', architecture: 'ppc64le' });
    push('noamd64', 'arm', arm);
    push('noamd64', 'ppc', ppc);
    pushIndex('noamd64', [
      [arm, { os: 'linux', architecture: 'arm64', variant: 'v8' }],
      [ppc, { os: 'linux', architecture: 'ppc64le' }],
    ]);
    const svc = await service();
    const before = reg.requests.length;
    const events: PullProgress[] = [];
    await assert.rejects(
      svc.pull(`${reg.host}/noamd64`, {}, (p) => events.push(p)),
      (e: unknown) =>
        e instanceof NotFoundError &&
        e.message === 'no matching manifest for linux/amd64 in the manifest list entries',
    );
    // dockerd's pullV2Tag says "Pulling from" before it looks into the list, so the CLI prints
    // "latest: Pulling from noamd64" and then the error (in the stream, not as an HTTP status).
    assert.deepEqual(
      events.map((e) => `${e.id ?? ''}: ${e.status}`),
      ['latest: Pulling from noamd64'],
    );
    // Nothing but the index was fetched, and nothing was kept.
    const fetched = reg.requests.slice(before).filter((r) => r.url.startsWith('/v2/noamd64/'));
    assert.deepEqual(
      fetched.map((r) => `${r.method} ${r.url}`),
      ['GET /v2/noamd64/manifests/latest'],
    );
    assert.deepEqual(await svc.list(), []);
    assert.deepEqual(await fs.readdir(svc.layerStore.layersDir), []);
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

  it('two concurrent pulls of one image download each blob once', async () => {
    const layers = [await layer('once1', 100_000), await layer('once2', 100_000), await layer('once3')];
    const image = buildImage(layers, {});
    push('download-once', 'latest', image);
    // Hold blob bodies open so the two pulls overlap for their whole download phase.
    reg.blobDelayMs = 50;
    const svc = await service();
    const blobGets = (): Map<string, number> => {
      const counts = new Map<string, number>();
      for (const r of reg.requests) {
        const m = /^\/v2\/download-once\/blobs\/(sha256:[0-9a-f]{64})$/.exec(r.url);
        if (r.method === 'GET' && m?.[1] !== undefined) counts.set(m[1], (counts.get(m[1]) ?? 0) + 1);
      }
      return counts;
    };
    try {
      const [a, b] = await Promise.all([
        svc.pull(`${reg.host}/download-once`, {}, () => undefined),
        svc.pull(`${reg.host}/download-once`, {}, () => undefined),
      ]);
      assert.equal(a.id, b.id);
    } finally {
      reg.blobDelayMs = 0;
    }
    const expected = new Map([...layers.map((l) => [l.digest, 1] as const), [image.configDigest, 1]]);
    assert.deepEqual(blobGets(), expected);
    assert.equal(svc.layerStore.unpackCount, 3);
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

  describe('a download shared by two pulls when a client goes away (dockerd: cancelled only when every waiter has gone)', () => {
    /** Polls `check` until it holds (deadline 10 s). */
    async function until(check: () => boolean | Promise<boolean>, what: string): Promise<void> {
      const deadline = Date.now() + 10_000;
      while (!(await check())) {
        if (Date.now() > deadline) assert.fail(`timed out waiting until ${what}`);
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    }

    const layerGets = (name: string, digest: string): number =>
      reg.requests.filter((r) => r.method === 'GET' && r.url === `/v2/${name}/blobs/${digest}`).length;

    interface Shared {
      svc: CapsuleImageService;
      l: Layer;
      image: BuiltImage;
      ref: string;
      a: AbortController;
      pullA: Promise<ImageRecord>;
      pullB: Promise<ImageRecord>;
      b: AbortController;
      settledB: () => boolean;
    }

    /**
     * Pull A starts the download of the one layer, which the registry stalls halfway (a partial
     * temp file in the content store); pull B then joins it. Resolves once both wait for it.
     */
    async function twoPullsOnAStalledDownload(name: string): Promise<Shared> {
      const l = await layer(name, 200_000);
      const image = buildImage([l], { Cmd: ['sh'] });
      push(name, 'latest', image);
      reg.stallBlobs.add(l.digest);
      const svc = await service();
      const ref = `${reg.host}/${name}`;
      const a = new AbortController();
      const pullA = svc.pull(ref, { signal: a.signal }, () => undefined);
      pullA.catch(() => undefined);
      await until(() => reg.stalledBlobs.includes(l.digest), 'pull A downloads the layer');
      await until(
        async () => (await fs.readdir(svc.contentStore.ingestDir)).length === 1,
        'part of the layer is in a temp file',
      );
      const b = new AbortController();
      const eventsB: PullProgress[] = [];
      let settled = false;
      const pullB = svc.pull(ref, { signal: b.signal }, (p) => eventsB.push(p));
      pullB.then(
        () => (settled = true),
        () => (settled = true),
      );
      // B joins the download in the same turn as it reports the layer (pullLayers → download).
      await until(
        () => eventsB.some((e) => e.id === short(l) && e.status === 'Pulling fs layer'),
        'pull B waits for the same download',
      );
      return { svc, l, image, ref, a, pullA, pullB, b, settledB: () => settled };
    }

    it('pull A is cancelled: pull B completes with the download A started, fetched once', async () => {
      const name = 'share-cancel-one';
      const { svc, l, image, a, pullA, pullB } = await twoPullsOnAStalledDownload(name);
      try {
        a.abort();
        await assert.rejects(
          pullA,
          (e: unknown) => e instanceof CanceledError && e.message === 'context canceled',
        );
        reg.releaseStalled();
        const record = await pullB;
        assert.equal(record.id, image.configDigest);
        const [dir] = await svc.layerDirs(await svc.get(`${reg.host}/${name}`));
        assert.match(
          await fs.readFile(path.join(dir ?? '', `${name}/file`), 'utf8'),
          new RegExp(`^${name}\n`),
        );
        assert.equal(layerGets(name, l.digest), 1);
        assert.deepEqual(reg.abandonedBlobs, []);
        assert.deepEqual(await fs.readdir(svc.contentStore.ingestDir), []);
      } finally {
        reg.releaseStalled();
      }
    });

    it('both pulls are cancelled: the download is aborted, leaves nothing behind, and a later pull starts afresh', async () => {
      const name = 'share-cancel-both';
      const { svc, l, image, a, pullA, pullB, b, settledB } = await twoPullsOnAStalledDownload(name);
      try {
        a.abort();
        await assert.rejects(pullA, CanceledError);
        // Let everything A's cancellation set off run: B must still be waiting, the download on.
        await new Promise((resolve) => setImmediate(resolve));
        assert.equal(settledB(), false, 'pull B ended when pull A was cancelled');
        assert.deepEqual(reg.abandonedBlobs, []);
        b.abort();
        await assert.rejects(
          pullB,
          (e: unknown) => e instanceof CanceledError && e.message === 'context canceled',
        );
        await until(() => reg.abandonedBlobs.includes(l.digest), 'the registry sees the download closed');
        await until(
          async () => (await fs.readdir(svc.contentStore.ingestDir)).length === 0,
          'the partial temp file is removed',
        );
        assert.equal(await svc.contentStore.has(l.digest), false);
        assert.deepEqual(await fs.readdir(svc.layerStore.layersDir), []);
        assert.deepEqual(await svc.list(), []);

        reg.releaseStalled();
        const record = await svc.pull(`${reg.host}/${name}`, {}, () => undefined);
        assert.equal(record.id, image.configDigest);
        assert.equal(layerGets(name, l.digest), 2);
        const [dir] = await svc.layerDirs(record);
        assert.match(
          await fs.readFile(path.join(dir ?? '', `${name}/file`), 'utf8'),
          new RegExp(`^${name}\n`),
        );
      } finally {
        reg.releaseStalled();
      }
    });
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

describe('ImageService.pull: cross-layer attacks', () => {
  // The threat: layer N plants a symlink, layer N+1 writes "through" it. dockerd survives this
  // because every layer is applied in its own diff dir; Capsule unpacks each layer alone into its
  // own diffID dir and stacks them only as overlay lower dirs at run time, where layer N+1's real
  // directory hides layer N's symlink. A store that copied layer N into layer N+1's dir before
  // extracting (as a vfs-style snapshot does) would follow the link out of the layer root.
  interface Pulled {
    dir: string;
    canaries: string[];
    rootName: string;
    lower: string;
    upper: string;
  }

  /**
   * Layer 1: evil -> <dir>/outside, up -> ../../.. (from <dir>/root/layers/<hex>: <dir> itself),
   * slash -> /. Layer 2: evil/canary-target, up/canary-target, slash/<unique name>. Canaries wait
   * where the first two links point; the third would land in / under a unique name.
   */
  async function pullPlantedSymlinks(repoName: string): Promise<Pulled> {
    const dir = await fs.mkdtemp(path.join(base, 'xlayer-'));
    const outside = path.join(dir, 'outside');
    await fs.mkdir(outside);
    const canaries = [path.join(outside, 'canary-target'), path.join(dir, 'canary-target')];
    for (const c of canaries) await fs.writeFile(c, 'canary\n');
    const rootName = `capsule-xlayer-canary-${process.pid}-${Date.now()}`;
    const planted = gzipLayer(
      await buildTar([
        { name: 'evil', type: 'symlink', linkname: outside },
        { name: 'up', type: 'symlink', linkname: '../../..' },
        { name: 'slash', type: 'symlink', linkname: '/' },
      ]),
    );
    const through = gzipLayer(
      await buildTar([
        { name: 'evil/canary-target', content: 'pwned\n' },
        { name: 'up/canary-target', content: 'pwned\n' },
        { name: `slash/${rootName}`, content: 'pwned\n' },
      ]),
    );
    push(repoName, 'latest', buildImage([planted, through], { Cmd: ['sh'] }));
    const svc = await service(path.join(dir, 'root'));
    try {
      const record = await svc.pull(`${reg.host}/${repoName}`, {}, () => undefined);
      await assertNothingOutside({ canaries, rootName });
      const [lower = '', upper = ''] = await svc.layerDirs(record);
      assert.equal(path.dirname(lower), svc.layerStore.layersDir);
      assert.equal(path.dirname(upper), svc.layerStore.layersDir);
      return { dir, canaries, rootName, lower, upper };
    } catch (err) {
      await fs.rm(path.join('/', rootName), { force: true });
      throw err;
    }
  }

  async function assertNothingOutside(p: Pick<Pulled, 'canaries' | 'rootName'>): Promise<void> {
    for (const c of p.canaries) assert.equal(await fs.readFile(c, 'utf8'), 'canary\n', c);
    await assert.rejects(fs.lstat(path.join('/', p.rootName)), { code: 'ENOENT' });
  }

  it('layer N plants evil -> / (and an outside dir, and ../../..), layer N+1 writes evil/canary-target: each lands in its own layer dir', async () => {
    const p = await pullPlantedSymlinks('xlayer');
    assert.equal(await fs.readlink(path.join(p.lower, 'evil')), path.join(p.dir, 'outside'));
    assert.equal(await fs.readlink(path.join(p.lower, 'slash')), '/');
    for (const name of ['evil', 'up', 'slash']) {
      assert.ok((await fs.lstat(path.join(p.upper, name))).isDirectory(), name);
    }
    assert.equal(await fs.readFile(path.join(p.upper, 'evil/canary-target'), 'utf8'), 'pwned\n');
    assert.equal(await fs.readFile(path.join(p.upper, 'up/canary-target'), 'utf8'), 'pwned\n');
    assert.deepEqual(await fs.readdir(path.join(p.upper, 'slash')), [p.rootName]);
  });

  it(
    "the same layers stacked as overlay lowers: evil/ is layer N+1's directory and run-time writes stay in the upper dir",
    process.getuid?.() === 0 ? {} : { skip: 'needs root (overlay mount)' },
    async () => {
      const p = await pullPlantedSymlinks('xlayer-overlay');
      // As runtime/rootfs.ts: image layers as lower dirs (top first), a container upper dir.
      const mnt = path.join(p.dir, 'merged');
      const cupper = path.join(p.dir, 'upper');
      const work = path.join(p.dir, 'work');
      for (const d of [mnt, cupper, work]) await fs.mkdir(d);
      const options = `lowerdir=${p.upper}:${p.lower},upperdir=${cupper},workdir=${work}`;
      execFileSync('mount', ['-t', 'overlay', 'overlay', '-o', options, mnt]);
      try {
        for (const name of ['evil', 'up', 'slash']) {
          assert.ok((await fs.lstat(path.join(mnt, name))).isDirectory(), name);
        }
        assert.equal(await fs.readFile(path.join(mnt, 'evil/canary-target'), 'utf8'), 'pwned\n');
        for (const name of ['evil', 'up']) {
          await fs.writeFile(path.join(mnt, name, 'canary-target'), 'run time\n');
          assert.equal(await fs.readFile(path.join(cupper, name, 'canary-target'), 'utf8'), 'run time\n');
        }
        await fs.writeFile(path.join(mnt, 'slash', p.rootName), 'run time\n');
      } finally {
        execFileSync('umount', [mnt]);
        await assertNothingOutside(p).finally(() => fs.rm(path.join('/', p.rootName), { force: true }));
      }
    },
  );
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
