/**
 * save, load and import: round trips, dockerd's output lines, OCI layouts, and hostile archives
 * (links out of the archive, digests that lie, layers that try to escape) that must leave nothing
 * recorded and nothing written outside the store.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import * as zlib from 'node:zlib';
import { describe, it, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as tar from 'tar-stream';
import { DataLossError, InvalidParameterError, NotFoundError } from '../common/errdefs';
import { createSilentLogger } from '../common/logger';
import { createImageService, type CapsuleImageService } from './image-service';
import {
  buildImage,
  buildTar,
  gzipLayer,
  plainLayer,
  OCI_INDEX,
  OCI_MANIFEST,
  type FixtureEntry,
} from './testing/image-builder';
import { LayerBreakoutError } from './unpack';
import type { LoadProgress } from './types';

let base: string;

before(async () => {
  base = await fs.mkdtemp(path.join(os.tmpdir(), 'capsule-images-archive-'));
});
after(async () => {
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

const sha256 = (b: Buffer | string): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/** Entries of a tar: name → content (files) or "-> target" (symlinks). */
async function listTar(bytes: Buffer): Promise<Array<[string, string]>> {
  const out: Array<[string, string]> = [];
  const extract = tar.extract();
  const done = (async () => {
    for await (const entry of extract) {
      const chunks: Buffer[] = [];
      for await (const c of entry) chunks.push(c as Buffer);
      const h = entry.header;
      out.push([
        h.name,
        h.type === 'symlink'
          ? `-> ${h.linkname ?? ''}`
          : h.type === 'directory'
            ? 'dir'
            : Buffer.concat(chunks).toString('latin1'),
      ]);
    }
  })();
  extract.end(bytes);
  await done;
  return out;
}

async function load(
  svc: CapsuleImageService,
  archive: Buffer,
  quiet = true,
): Promise<{ events: LoadProgress[]; streams: string[] }> {
  const events: LoadProgress[] = [];
  await svc.load(Readable.from([archive]), { quiet }, (p) => events.push(p));
  return {
    events,
    streams: events.filter((e): e is { stream: string } => 'stream' in e).map((e) => e.stream),
  };
}

async function importTar(
  svc: CapsuleImageService,
  entries: FixtureEntry[],
  repository?: string,
): Promise<string> {
  const tarball = await buildTar(entries);
  return (await svc.import(Readable.from([tarball]), repository ? { repository } : {})).id;
}

const ROOTFS: FixtureEntry[] = [
  { name: 'bin/', type: 'directory' },
  { name: 'bin/tool', content: '#!/bin/sh\necho tool\n', mode: 0o755 },
  { name: 'etc/', type: 'directory' },
  { name: 'etc/motd', content: 'hello\n' },
];

describe('ImageService.import', () => {
  it("makes a one-layer image with dockerd's config layout, comment, history and tag", async () => {
    const svc = await service();
    const tarball = await buildTar(ROOTFS);
    const record = await svc.import(Readable.from([zlib.gzipSync(tarball)]), {
      repository: 'imported:1',
      changes: ['ENV PATH=/bin', 'CMD ["sh"]', 'LABEL a=b'],
    });
    assert.deepEqual(record.repoTags, ['imported:1']);
    assert.deepEqual(record.config.rootfs.diff_ids, [sha256(tarball)], 'diffID of the uncompressed tar');
    assert.deepEqual(record.config.config?.Cmd, ['sh']);
    assert.deepEqual(record.config.config?.Labels, { a: 'b' });
    assert.equal(record.config.comment, 'Imported from -');
    assert.deepEqual(record.config.history, [{ created: record.created, comment: 'Imported from -' }]);
    const raw = (await svc.contentStore.read(record.id)).toString();
    assert.match(
      raw,
      /^\{"architecture":"[a-z0-9]+","comment":"Imported from -","config":\{"Hostname":"","Domainname":"","User":"",.*"Env":\["PATH=\/bin"\],"Cmd":\["sh"\],"Image":"".*"Labels":\{"a":"b"\}\},"container_config":\{"Hostname":"".*\},"created":"[^"]+","history":\[\{"created":"[^"]+","comment":"Imported from -"\}\],"os":"linux","rootfs":\{"type":"layers","diff_ids":\["sha256:[a-f0-9]{64}"\]\}\}$/,
    );
    const [dir] = await svc.layerDirs(record);
    assert.equal((await fs.stat(path.join(dir ?? '', 'bin/tool'))).mode & 0o777, 0o755);
    assert.equal((await svc.history('imported:1'))[0]?.comment, 'Imported from -');
    const untagged = await svc.import(Readable.from([tarball]), {
      message: 'by hand',
      tag: 'ignored-without-repo',
    });
    assert.equal(untagged.config.comment, 'by hand');
    assert.deepEqual(untagged.repoTags, []);
  });

  it('rejects a bad reference or change before reading the body', async () => {
    const svc = await service();
    const body = (async function* () {
      throw new Error('the body must not be read');
      yield Buffer.alloc(0);
    })();
    const cases: Array<[Parameters<CapsuleImageService['import']>[1], string]> = [
      [{ repository: 'Imp:2' }, 'invalid reference format: repository name must be lowercase'],
      [{ repository: `imp@sha256:${'a'.repeat(64)}` }, 'cannot import digest reference'],
      [{ repository: 'imp', changes: ['RUN true'] }, 'run is not a valid change command'],
      [{ repository: 'imp', tag: '-x' }, 'invalid tag format'],
    ];
    for (const [options, message] of cases) {
      await assert.rejects(
        svc.import(body, options),
        (e: unknown) => e instanceof InvalidParameterError && e.message === message,
        message,
      );
    }
  });

  it('layer entry ../../etc/passwd is rejected and nothing is recorded', async () => {
    const svc = await service();
    const canary = path.join(base, 'canary');
    await fs.writeFile(canary, 'untouched');
    const evil = await buildTar([{ name: `../../../../../../../..${canary}`, content: 'owned' }]);
    // The name is cleaned to a path inside the layer (absolute names are confined) or refused.
    const climbing = await buildTar([{ name: 'a/../../x', content: 'owned' }]);
    await assert.rejects(svc.import(Readable.from([climbing]), { repository: 'evil' }), LayerBreakoutError);
    await assert.rejects(svc.import(Readable.from([evil]), { repository: 'evil' }), LayerBreakoutError);
    assert.equal(await fs.readFile(canary, 'utf8'), 'untouched');
    assert.deepEqual(await svc.listImages(), []);
  });
});

describe('ImageService.save / load', () => {
  it('round trip: a fresh root loads what save wrote, with the same ids, names and files', async () => {
    const src = await service();
    const id = await importTar(src, ROOTFS, 'roundtrip:v1');
    await src.tag(id, 'roundtrip', 'v2');
    const archive = await readAll(await src.save(['roundtrip']));
    const names = (await listTar(archive)).map(([n]) => n);
    assert.equal(names.at(-2), 'manifest.json');
    assert.equal(names.at(-1), 'repositories');
    assert.ok(names.includes(`${id.slice(7)}.json`));
    const manifest = JSON.parse(
      (await listTar(archive)).find(([n]) => n === 'manifest.json')?.[1] ?? '',
    ) as Array<{
      RepoTags: string[];
      Layers: string[];
    }>;
    assert.deepEqual(manifest[0]?.RepoTags, ['roundtrip:v1', 'roundtrip:v2']);

    const dst = await service();
    const { events, streams } = await load(dst, archive, false);
    assert.deepEqual(streams, ['Loaded image: roundtrip:v1\n', 'Loaded image: roundtrip:v2\n']);
    const progress = events.filter((e) => 'status' in e && e.status === 'Loading layer');
    assert.ok(progress.length >= 1);
    const record = await dst.get('roundtrip:v2');
    assert.equal(record.id, id);
    const [dir] = await dst.layerDirs(record);
    assert.equal(await fs.readFile(path.join(dir ?? '', 'etc/motd'), 'utf8'), 'hello\n');
    // Saving it again gives the same bytes (deterministic archive).
    assert.deepEqual(await readAll(await dst.save(['roundtrip'])), archive);
  });

  it('says what dockerd says: renamed images, untagged loads, quiet loads', async () => {
    const src = await service();
    const first = await importTar(src, ROOTFS, 'same:tag');
    const archive = await readAll(await src.save(['same:tag']));
    const untaggedArchive = await readAll(await src.save([first]));
    const dst = await service();
    const other = await importTar(dst, [{ name: 'x', content: 'other' }], 'same:tag');
    const { streams, events } = await load(dst, archive);
    assert.deepEqual(streams, [
      `The image same:tag already exists, renaming the old one with ID ${other} to empty string\n`,
      'Loaded image: same:tag\n',
    ]);
    assert.equal(events.length, 2, 'quiet: no progress');
    assert.deepEqual((await load(dst, untaggedArchive)).streams, [`Loaded image ID: ${first}\n`]);
    // gzip-compressed archives load too
    assert.deepEqual((await load(dst, zlib.gzipSync(archive))).streams, ['Loaded image: same:tag\n']);
  });

  it('resolves names like dockerd: unknown tag, unknown name, id prefix', async () => {
    const svc = await service();
    const id = await importTar(svc, ROOTFS, 'named:1');
    await assert.rejects(
      svc.save(['named:2']),
      (e: unknown) => e instanceof NotFoundError && e.message === 'reference does not exist',
    );
    await assert.rejects(
      svc.save(['nosuch']),
      (e: unknown) => e instanceof NotFoundError && e.message === 'No such image: nosuch',
    );
    const byPrefix = await listTar(await readAll(await svc.save([id.slice(7, 19)])));
    const manifest = JSON.parse(byPrefix.find(([n]) => n === 'manifest.json')?.[1] ?? '') as Array<{
      RepoTags: unknown;
    }>;
    assert.equal(manifest[0]?.RepoTags, null);
    assert.ok(!byPrefix.some(([n]) => n === 'repositories'));
  });

  it('loads an OCI image layout (index → manifest → config, gzip and plain layers)', async () => {
    const gz = gzipLayer(
      await buildTar([
        { name: 'oci/', type: 'directory' },
        { name: 'oci/a', content: 'a\n' },
      ]),
    );
    const plain = plainLayer(await buildTar([{ name: 'oci/b', content: 'b\n' }]));
    const image = buildImage([gz, plain], { Cmd: ['sh'] });
    const index = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: OCI_INDEX,
        manifests: [
          {
            mediaType: OCI_MANIFEST,
            digest: image.manifestDigest,
            size: image.manifest.length,
            annotations: {
              'io.containerd.image.name': 'docker.io/library/ocitest:1',
              'org.opencontainers.image.ref.name': '1',
            },
          },
        ],
      }),
    );
    const blobs = [gz.blob, plain.blob, image.config, image.manifest];
    const archive = await buildTar([
      { name: 'oci-layout', content: '{"imageLayoutVersion":"1.0.0"}' },
      { name: 'index.json', content: index },
      { name: 'blobs/', type: 'directory' },
      { name: 'blobs/sha256/', type: 'directory' },
      ...blobs.map((b): FixtureEntry => ({ name: `blobs/sha256/${sha256(b).slice(7)}`, content: b })),
    ]);
    const svc = await service();
    assert.deepEqual((await load(svc, archive)).streams, ['Loaded image: ocitest:1\n']);
    const record = await svc.get('ocitest:1');
    assert.equal(record.id, image.configDigest);
    const dirs = await svc.layerDirs(record);
    assert.equal(await fs.readFile(path.join(dirs[1] ?? '', 'oci/b'), 'utf8'), 'b\n');
    assert.equal(await svc.contentStore.has(gz.digest), true, 'the gzip blob is kept for pushes');
  });

  it('an OCI blob whose content does not match its name is refused', async () => {
    const layer = gzipLayer(await buildTar([{ name: 'f', content: 'f' }]));
    const image = buildImage([layer], {});
    const index = JSON.stringify({
      schemaVersion: 2,
      manifests: [{ mediaType: OCI_MANIFEST, digest: image.manifestDigest, size: image.manifest.length }],
    });
    const archive = await buildTar([
      { name: 'oci-layout', content: '{"imageLayoutVersion":"1.0.0"}' },
      { name: 'index.json', content: index },
      { name: `blobs/sha256/${layer.digest.slice(7)}`, content: Buffer.from('not the layer') },
      { name: `blobs/sha256/${image.configDigest.slice(7)}`, content: image.config },
      { name: `blobs/sha256/${image.manifestDigest.slice(7)}`, content: image.manifest },
    ]);
    const svc = await service();
    await assert.rejects(load(svc, archive), DataLossError);
    assert.deepEqual(await svc.listImages(), []);
  });

  it('a layer that does not hash to its diffID is refused, nothing is recorded', async () => {
    const svc = await service();
    const id = await importTar(svc, ROOTFS, 'lie:1');
    const entries = await listTar(await readAll(await svc.save(['lie:1'])));
    const tampered = await buildTar(
      entries.map(([name, content]): FixtureEntry =>
        content === 'dir'
          ? { name, type: 'directory' }
          : name.endsWith('layer.tar')
            ? { name, content: Buffer.from(content.replace('hello', 'HELLO'), 'latin1') }
            : { name, content: Buffer.from(content, 'latin1') },
      ),
    );
    const dst = await service();
    await assert.rejects(
      load(dst, tampered),
      (e: unknown) => e instanceof DataLossError && /invalid diffID for layer 0/.test(e.message),
    );
    await assert.rejects(dst.get(id), NotFoundError);
    assert.deepEqual(await dst.contentStore.list(), []);
  });

  it('a layer.tar symlink out of the archive is refused', async () => {
    const svc = await service();
    const config = Buffer.from(
      JSON.stringify({
        architecture: 'amd64',
        os: 'linux',
        rootfs: { type: 'layers', diff_ids: [`sha256:${'e'.repeat(64)}`] },
      }),
    );
    const archive = await buildTar([
      {
        name: 'manifest.json',
        content: JSON.stringify([{ Config: 'c.json', RepoTags: ['evil:1'], Layers: ['l/layer.tar'] }]),
      },
      { name: 'c.json', content: config },
      { name: 'l/', type: 'directory' },
      { name: 'l/layer.tar', type: 'symlink', linkname: '../../../../etc/passwd' },
    ]);
    await assert.rejects(
      load(svc, archive),
      (e: unknown) => e instanceof DataLossError && /outside the archive/.test(e.message),
    );
    assert.deepEqual(await svc.listImages(), []);
    await assert.rejects(load(svc, Buffer.from('garbage\n')), DataLossError);
    await assert.rejects(load(svc, await buildTar([{ name: 'x', content: 'x' }])), InvalidParameterError);
  });
});
