/**
 * tag, remove, prune, history, listImages and diskUsage, against images pulled from the FAKE
 * registry. The expected outputs follow what the reference dockerd 20.10 answered for the same
 * sequences (see the report of issue 3).
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, it, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import { ConflictError, InvalidParameterError, NotFoundError } from '../common/errdefs';
import { createSilentLogger } from '../common/logger';
import { chainIds } from './go-json';
import { createImageService, type CapsuleImageService } from './image-service';
import { MediaType } from './manifest';
import { FakeRegistry } from './testing/fake-registry';
import { buildImage, buildTar, gzipLayer, type BuiltImage, type Layer } from './testing/image-builder';
import type { ImageInUse, ImageUser } from './types';

let base: string;
let reg: FakeRegistry;

before(async () => {
  base = await fs.mkdtemp(path.join(os.tmpdir(), 'capsule-images-manage-'));
  reg = new FakeRegistry();
  await reg.start();
});
after(async () => {
  await reg.stop();
  await fs.rm(base, { recursive: true, force: true });
});

async function service(): Promise<CapsuleImageService> {
  const svc = createImageService({
    root: await fs.mkdtemp(path.join(base, 'root-')),
    log: createSilentLogger(),
  });
  await svc.ready();
  return svc;
}

async function layer(label: string, extra = 0): Promise<Layer> {
  return gzipLayer(
    await buildTar([
      { name: `${label}/`, type: 'directory' },
      { name: `${label}/file`, content: `${label}\n${'x'.repeat(extra)}` },
    ]),
  );
}

function publish(name: string, tag: string, image: BuiltImage): string {
  for (const l of image.layers) reg.addBlob(name, l.blob);
  reg.addBlob(name, image.config);
  reg.addManifest(name, MediaType.OciManifest, image.manifest.toString(), tag);
  return `${reg.host}/${name}:${tag}`;
}

async function pulled(
  svc: CapsuleImageService,
  name: string,
  tag: string,
  image: BuiltImage,
): Promise<string> {
  const ref = publish(name, tag, image);
  await svc.pull(ref, {}, () => undefined);
  return ref;
}

const nobody: ImageInUse = () => undefined;
const usedBy =
  (users: Record<string, ImageUser>): ImageInUse =>
  (id) =>
    users[id];

async function dirEntries(dir: string): Promise<string[]> {
  return (await fs.readdir(dir)).filter((n) => !n.startsWith('.'));
}

const short = (id: string): string => id.slice(7, 19);

describe('ImageService.tag', () => {
  it('adds a name, returns it, and records LastTagTime', async () => {
    const svc = await service();
    const image = buildImage([await layer('tag1')], {});
    const ref = await pulled(svc, 'tagsrc', 'v1', image);
    assert.equal(await svc.tag(ref, 'bb', 't1'), 'bb:t1');
    assert.equal(await svc.tag(ref, 'bb:t1', 't2'), 'bb:t2', 'the tag argument replaces the one in repo');
    assert.equal(await svc.tag('bb:t1', 'bb'), 'bb:latest');
    const record = await svc.get('bb:t2');
    assert.equal(record.id, image.configDigest);
    assert.deepEqual(record.repoTags, [`${reg.host}/tagsrc:v1`, 'bb:latest', 'bb:t1', 'bb:t2']);
    assert.ok(record.lastTagTime !== undefined && Date.parse(record.lastTagTime) > Date.now() - 60_000);
  });

  it("refuses bad targets and unknown sources with dockerd's texts", async () => {
    const svc = await service();
    const ref = await pulled(svc, 'tagerr', 'v1', buildImage([await layer('tagerr')], {}));
    const cases: Array<[string, string | undefined, string]> = [
      ['UPPER', 'x', 'invalid reference format: repository name must be lowercase'],
      ['bb', '-bad', 'invalid tag format'],
      [`bb@sha256:${'c'.repeat(64)}`, undefined, 'refusing to create a tag with a digest reference'],
      ['sha256', 'x', 'refusing to create an ambiguous tag using digest algorithm as name'],
      ['', 'x', 'invalid reference format'],
    ];
    for (const [repo, tag, message] of cases) {
      await assert.rejects(
        svc.tag(ref, repo, tag),
        (e: unknown) => e instanceof InvalidParameterError && e.message === message,
        `${repo} ${tag}`,
      );
    }
    await assert.rejects(
      svc.tag('nosuch', 'bb', 'x'),
      (e: unknown) => e instanceof NotFoundError && e.message === 'No such image: nosuch:latest',
    );
  });
});

describe('ImageService.remove', () => {
  it('untags while other names remain, then deletes the image, its digest names, layers and blobs', async () => {
    const svc = await service();
    const image = buildImage([await layer('rm-base', 1000), await layer('rm-top')], {});
    const ref = await pulled(svc, 'rmme', 'v1', image);
    await svc.tag(ref, 'other', '1');
    assert.deepEqual(await svc.remove('other:1', {}, nobody), [{ untagged: 'other:1' }]);
    // By digest while the tag remains: only that digest reference goes (then pulled back).
    const byDigest = `${reg.host}/rmme@${image.manifestDigest}`;
    assert.deepEqual(await svc.remove(byDigest, {}, nobody), [{ untagged: byDigest }]);
    await svc.pull(ref, {}, () => undefined);
    const chains = chainIds(image.layers.map((l) => l.diffID));
    assert.deepEqual(await svc.remove(ref, {}, nobody), [
      { untagged: `${reg.host}/rmme:v1` },
      { untagged: `${reg.host}/rmme@${image.manifestDigest}` },
      { deleted: image.configDigest },
      { deleted: chains[1] },
      { deleted: chains[0] },
    ]);
    await assert.rejects(svc.get(image.configDigest), NotFoundError);
    assert.deepEqual(await dirEntries(svc.layerStore.layersDir), []);
    assert.deepEqual(await svc.contentStore.list(), []);
  });

  it("answers 404 with dockerd's text for an unknown image", async () => {
    const svc = await service();
    await assert.rejects(
      svc.remove('nosuch:1', {}, nobody),
      (e: unknown) => e instanceof NotFoundError && e.message === 'No such image: nosuch:1',
    );
  });

  it('409 for the last name of an image a container uses, unless forced', async () => {
    const svc = await service();
    const image = buildImage([await layer('inuse')], {});
    const ref = await pulled(svc, 'inuse', 'latest', image);
    await svc.tag(ref, 'busybox');
    await svc.remove(ref, {}, nobody);
    const stopped = usedBy({ [image.configDigest]: '1dac55f20c28aaaa' });
    await assert.rejects(
      svc.remove('busybox', {}, stopped),
      (e: unknown) =>
        e instanceof ConflictError &&
        e.message ===
          `conflict: unable to remove repository reference "busybox" (must force) - container 1dac55f20c28 is using its referenced image ${short(image.configDigest)}`,
    );
    await assert.rejects(
      svc.remove(short(image.configDigest), {}, stopped),
      (e: unknown) =>
        e instanceof ConflictError &&
        e.message ===
          `conflict: unable to delete ${short(image.configDigest)} (must be forced) - image is being used by stopped container 1dac55f20c28`,
    );
    // Forced: dockerd reports the image deleted but keeps its layers for the container.
    assert.deepEqual(await svc.remove(short(image.configDigest), { force: true }, stopped), [
      { untagged: 'busybox:latest' },
      { deleted: image.configDigest },
    ]);
    await assert.rejects(svc.get(image.configDigest), NotFoundError);
    assert.deepEqual(await svc.listImages(), []);
    const dirs = await svc.layerDirs({ id: image.configDigest } as never);
    assert.equal(await fs.readFile(path.join(dirs[0] ?? '', 'inuse/file'), 'utf8'), 'inuse\n');
    // Once the container is gone, the next removal collects them.
    const other = await pulled(svc, 'other', 'latest', buildImage([await layer('other')], {}));
    await svc.remove(other, {}, nobody);
    assert.deepEqual(await dirEntries(svc.layerStore.layersDir), []);
    await assert.rejects(svc.layerDirs({ id: image.configDigest } as never), NotFoundError);
  });

  it('an image force-removed while a container uses it is visible again once pulled again', async () => {
    const svc = await service();
    const image = buildImage([await layer('revive')], {});
    const ref = await pulled(svc, 'revive', 'latest', image);
    const stopped = usedBy({ [image.configDigest]: 'c0ffee' });
    await svc.remove(ref, { force: true }, stopped);
    await assert.rejects(svc.get(image.configDigest), NotFoundError);
    await svc.pull(ref, {}, () => undefined);
    assert.equal((await svc.get(ref)).id, image.configDigest);
    assert.deepEqual(
      (await svc.listImages()).map((i) => i.id),
      [image.configDigest],
    );
  });

  it('409 for an id named in several repositories unless forced; running containers cannot be forced', async () => {
    const svc = await service();
    const image = buildImage([await layer('multi')], {});
    const ref = await pulled(svc, 'multi', 'v1', image);
    await svc.tag(ref, 'second', 'x');
    const id12 = short(image.configDigest);
    await assert.rejects(
      svc.remove(id12, {}, nobody),
      (e: unknown) =>
        e instanceof ConflictError &&
        e.message ===
          `conflict: unable to delete ${id12} (must be forced) - image is referenced in multiple repositories`,
    );
    const running = usedBy({ [image.configDigest]: { id: 'ce5caa04543dd9cc30d5', running: true } });
    await assert.rejects(
      svc.remove(id12, { force: true }, running),
      (e: unknown) =>
        e instanceof ConflictError &&
        e.message ===
          `conflict: unable to delete ${id12} (cannot be forced) - image is being used by running container ce5caa04543d`,
    );
    // By name with force: the names go, the running container keeps a dangling image.
    assert.deepEqual(await svc.remove('second:x', { force: true }, running), [{ untagged: 'second:x' }]);
    assert.deepEqual(await svc.remove(ref, { force: true }, running), [
      { untagged: `${reg.host}/multi:v1` },
      { untagged: `${reg.host}/multi@${image.manifestDigest}` },
    ]);
    const listed = await svc.listImages();
    assert.deepEqual(
      listed.map((i) => [i.id, i.repoTags]),
      [[image.configDigest, ['<none>:<none>']]],
    );
    // Forced by id once nothing runs it: deleted with its layer.
    assert.deepEqual(await svc.remove(id12, { force: true }, nobody), [
      { deleted: image.configDigest },
      { deleted: image.layers[0]?.diffID },
    ]);
  });

  it('keeps layers another image still uses and reports only the released chain', async () => {
    const svc = await service();
    const shared = await layer('shared-base');
    const a = buildImage([shared, await layer('a-top')], { Cmd: ['a'] });
    const b = buildImage([shared, await layer('b-top')], { Cmd: ['b'] });
    const refA = await pulled(svc, 'share-a', 'latest', a);
    await pulled(svc, 'share-b', 'latest', b);
    const records = await svc.remove(refA, {}, nobody);
    assert.deepEqual(records.slice(-2), [
      { deleted: a.configDigest },
      { deleted: chainIds(a.layers.map((l) => l.diffID))[1] },
    ]);
    assert.deepEqual(
      (await dirEntries(svc.layerStore.layersDir)).sort(),
      [shared.diffID.slice(7), b.layers[1]?.diffID.slice(7)].sort(),
    );
    assert.equal(await svc.contentStore.has(shared.digest), true);
    assert.equal(await svc.contentStore.has(a.layers[1]?.digest ?? ''), false);
  });

  it('collects only after the pulls in flight have finished', async () => {
    const svc = await service();
    const image = buildImage([await layer('gc-early')], {});
    const ref = await pulled(svc, 'gc-early', 'latest', image);
    const slow = buildImage([await layer('gc-slow')], {});
    const slowRef = publish('gc-slow', 'latest', slow);
    reg.blobDelayMs = 200;
    let pulling: Promise<unknown> | undefined;
    const started = new Promise<void>((resolve) => {
      pulling = svc.pull(slowRef, {}, (p) => {
        if (p.status === 'Pulling fs layer') resolve();
      });
    });
    await started;
    const records = await svc.remove(ref, {}, nobody);
    assert.ok(records.some((r) => 'deleted' in r && r.deleted === image.configDigest));
    // Deferred: the removed image's layer is still on disk while the pull runs.
    assert.ok((await dirEntries(svc.layerStore.layersDir)).includes(image.layers[0]?.diffID.slice(7) ?? ''));
    await pulling;
    reg.blobDelayMs = 0;
    for (let i = 0; i < 50 && (await dirEntries(svc.layerStore.layersDir)).length > 1; i++) {
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.deepEqual(await dirEntries(svc.layerStore.layersDir), [slow.layers[0]?.diffID.slice(7)]);
    assert.equal((await svc.get(slowRef)).id, slow.configDigest);
  });
});

describe('ImageService.prune', () => {
  it('dangling only by default; with dangling=false every image no container uses', async () => {
    const svc = await service();
    const keep = buildImage([await layer('p-keep', 10)], {});
    const used = buildImage([await layer('p-used', 20)], {});
    const dangling = buildImage([await layer('p-dangling', 30)], {});
    const keepRef = await pulled(svc, 'p-keep', 'latest', keep);
    const usedRef = await pulled(svc, 'p-used', 'latest', used);
    const danglingRef = await pulled(svc, 'p-dangling', 'latest', dangling);
    // Make it dangling: force-untag by name while a running container holds it.
    const hold = usedBy({ [dangling.configDigest]: { id: 'abc', running: true } });
    await svc.remove(danglingRef, { force: true }, hold);
    const first = await svc.prune({}, usedBy({ [used.configDigest]: 'c1' }));
    assert.deepEqual(first.imagesDeleted, [
      { deleted: dangling.configDigest },
      { deleted: dangling.layers[0]?.diffID },
    ]);
    assert.equal(first.spaceReclaimed, 'p-dangling\n'.length + 30);
    const all = await svc.prune({ filters: { dangling: ['false'] } }, usedBy({ [used.configDigest]: 'c1' }));
    assert.deepEqual(all.imagesDeleted, [
      { untagged: keepRef.slice(0) },
      { untagged: `${reg.host}/p-keep@${keep.manifestDigest}` },
      { deleted: keep.configDigest },
      { deleted: keep.layers[0]?.diffID },
    ]);
    assert.equal(all.spaceReclaimed, 'p-keep\n'.length + 10);
    assert.equal((await svc.get(usedRef)).id, used.configDigest);
  });

  it('label, until and filter validation', async () => {
    const svc = await service();
    const labelled = buildImage([await layer('p-label')], { Labels: { keep: 'yes' } });
    await pulled(svc, 'p-label', 'latest', labelled);
    const a = { filters: { dangling: ['false'], label: ['keep=no'] } };
    assert.deepEqual((await svc.prune(a, nobody)).imagesDeleted, []);
    const b = { filters: { dangling: ['false'], until: ['2000-01-01T00:00:00Z'] } };
    assert.deepEqual((await svc.prune(b, nobody)).imagesDeleted, [], 'created after until');
    const c = { filters: { dangling: ['false'], 'label!': ['keep=yes'] } };
    assert.deepEqual((await svc.prune(c, nobody)).imagesDeleted, []);
    await assert.rejects(svc.prune({ filters: { foo: ['x'] } }, nobody), /Invalid filter 'foo'/);
    await assert.rejects(
      svc.prune({ filters: { dangling: ['maybe'] } }, nobody),
      /Invalid filter 'dangling=\[maybe\]'/,
    );
    const [one, two] = await Promise.allSettled([svc.prune({}, nobody), svc.prune({}, nobody)]);
    assert.equal(one.status, 'fulfilled');
    assert.ok(two.status === 'rejected' && two.reason instanceof ConflictError);
    assert.equal((two as PromiseRejectedResult).reason.message, 'a prune operation is already running');
  });
});

describe('ImageService views', () => {
  let svc: CapsuleImageService;
  let older: BuiltImage;
  let newer: BuiltImage;
  let olderRef: string;
  let newerRef: string;

  before(async () => {
    svc = await service();
    const base0 = await layer('v-base', 100);
    older = buildImage([base0], { Labels: { tier: 'base' } });
    // A newer image with an empty-layer history entry, created a day later.
    const top = await layer('v-top', 7);
    newer = buildImage([base0, top], { Cmd: ['x'] });
    const newerConfig = JSON.parse(newer.config.toString()) as Record<string, unknown>;
    newerConfig.created = '2024-01-03T00:00:00.123456789Z';
    newerConfig.history = [
      { created: '2024-01-02T03:04:05Z', created_by: 'ADD base', comment: 'base layer' },
      { created: '2024-01-02T04:00:00Z', created_by: 'ENV X=1', empty_layer: true },
      { created: '2024-01-03T00:00:00Z', created_by: 'RUN top' },
    ];
    newer = rebuild(newer, newerConfig);
    olderRef = await pulled(svc, 'view-old', 'v1', older);
    newerRef = await pulled(svc, 'view-new', 'v2', newer);
    await svc.tag(newerRef, 'view-new', 'extra');
  });

  it('history: newest first, the image id and tags on top, <missing> below, layer sizes', async () => {
    const history = await svc.history(newerRef);
    assert.deepEqual(history, [
      {
        id: newer.configDigest,
        created: Date.parse('2024-01-03T00:00:00Z') / 1000,
        createdBy: 'RUN top',
        tags: [`${reg.host}/view-new:v2`, 'view-new:extra'],
        size: 'v-top\n'.length + 7,
        comment: '',
      },
      {
        id: '<missing>',
        created: Date.parse('2024-01-02T04:00:00Z') / 1000,
        createdBy: 'ENV X=1',
        tags: null,
        size: 0,
        comment: '',
      },
      {
        id: '<missing>',
        created: Date.parse('2024-01-02T03:04:05Z') / 1000,
        createdBy: 'ADD base',
        tags: null,
        size: 'v-base\n'.length + 100,
        comment: 'base layer',
      },
    ]);
    await assert.rejects(svc.history('nosuch'), (e: unknown) => e instanceof NotFoundError);
  });

  it('lists newest first with dockerd fields; reference, label, before, since, dangling filters', async () => {
    const all = await svc.listImages();
    assert.deepEqual(
      all.map((i) => i.id),
      [newer.configDigest, older.configDigest],
    );
    const first = all[0];
    assert.deepEqual(first?.repoTags, [`${reg.host}/view-new:v2`, 'view-new:extra']);
    assert.deepEqual(first?.repoDigests, [`${reg.host}/view-new@${newer.manifestDigest}`]);
    assert.equal(first?.created, 1704240000);
    assert.equal(first?.size, 'v-base\n'.length + 100 + 'v-top\n'.length + 7);
    assert.equal(first?.containers, -1);
    assert.equal(first?.sharedSize, -1);
    assert.deepEqual(all[1]?.labels, { tier: 'base' });

    const byRef = await svc.listImages({ filters: { reference: ['view-new'] } });
    assert.deepEqual(
      byRef.map((i) => [i.repoTags, i.repoDigests]),
      [[['view-new:extra'], null]],
    );
    const glob = await svc.listImages({ filters: { reference: [`${reg.host}/view-*`] } });
    assert.equal(glob.length, 2);
    assert.deepEqual(
      (await svc.listImages({ filters: { label: ['tier=base'] } })).map((i) => i.id),
      [older.configDigest],
    );
    assert.deepEqual(
      (await svc.listImages({ filters: { before: [newerRef] } })).map((i) => i.id),
      [older.configDigest],
    );
    assert.deepEqual(
      (await svc.listImages({ filters: { since: [olderRef] } })).map((i) => i.id),
      [newer.configDigest],
    );
    assert.deepEqual(await svc.listImages({ filters: { dangling: ['true'] } }), []);
    await assert.rejects(svc.listImages({ filters: { reference: ['['] } }), /syntax error in pattern/);
    await assert.rejects(svc.listImages({ filters: { before: ['nosuch'] } }), /No such image: nosuch:latest/);
  });

  it('disk usage: shared sizes, container counts, total layer size', async () => {
    const df = await svc.diskUsage((id) => (id === older.configDigest ? 2 : 0));
    const baseSize = 'v-base\n'.length + 100;
    assert.equal(df.layersSize, baseSize + 'v-top\n'.length + 7);
    const byId = new Map(df.images.map((i) => [i.id, i]));
    assert.equal(byId.get(older.configDigest)?.containers, 2);
    assert.equal(byId.get(older.configDigest)?.sharedSize, baseSize);
    assert.equal(byId.get(newer.configDigest)?.sharedSize, baseSize);
    assert.equal(byId.get(newer.configDigest)?.containers, 0);
  });
});

/** The same image with a different config document (new digest, new manifest). */
function rebuild(image: BuiltImage, config: Record<string, unknown>): BuiltImage {
  const bytes = Buffer.from(JSON.stringify(config));
  const rebuilt = buildImage(image.layers, {});
  const manifest = JSON.parse(rebuilt.manifest.toString()) as { config: { digest: string; size: number } };
  const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
  manifest.config.digest = digest;
  manifest.config.size = bytes.length;
  const manifestBytes = Buffer.from(JSON.stringify(manifest));
  return {
    layers: image.layers,
    config: bytes,
    configDigest: digest,
    manifest: manifestBytes,
    manifestDigest: `sha256:${createHash('sha256').update(manifestBytes).digest('hex')}`,
  };
}
