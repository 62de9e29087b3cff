/**
 * zstd layers, `docker pull --all-tags`, foreign / non-distributable layers and `docker import
 * <URL>`, against the FAKE registry and a local http server (no root, no VM).
 */
import { promises as fs } from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { describe, it, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as zlib from 'node:zlib';
import { DataLossError, NotFoundError, UnauthorizedError } from '../common/errdefs';
import { createSilentLogger } from '../common/logger';
import { createImageService, type CapsuleImageService } from './image-service';
import { MediaType } from './manifest';
import { FakeRegistry } from './testing/fake-registry';
import {
  buildImage,
  buildTar,
  gzipLayer,
  sha256,
  type BuiltImage,
  type Layer,
} from './testing/image-builder';
import { zstdStoredFrame } from './testing/zstd-frames';
import type { PullProgress, PushProgress } from './types';

let base: string;
let reg: FakeRegistry;
/** A plain file server: path → bytes; `hits` counts requests per path. */
let files: Map<string, Buffer>;
let hits: Map<string, number>;
let web: http.Server;
let webOrigin: string;

before(async () => {
  base = await fs.mkdtemp(path.join(os.tmpdir(), 'capsule-images-extra-'));
  reg = new FakeRegistry();
  await reg.start();
  files = new Map();
  hits = new Map();
  web = http.createServer((req, res) => {
    const p = new URL(req.url ?? '/', 'http://x').pathname;
    hits.set(p, (hits.get(p) ?? 0) + 1);
    if (p.startsWith('/redirect/')) {
      res.writeHead(302, { location: p.slice('/redirect'.length) }).end();
      return;
    }
    const body = files.get(p);
    if (body === undefined) {
      res.writeHead(404, 'Not Found', { 'content-type': 'text/plain' }).end('no such file\n');
      return;
    }
    res.writeHead(200, { 'content-length': body.length, 'content-type': 'application/octet-stream' });
    res.end(body);
  });
  await new Promise<void>((resolve) => web.listen(0, '127.0.0.1', resolve));
  webOrigin = `http://127.0.0.1:${(web.address() as AddressInfo).port}`;
});
after(async () => {
  web.closeAllConnections();
  await new Promise<void>((resolve) => web.close(() => resolve()));
  await reg.stop();
  await fs.rm(base, { recursive: true, force: true });
});

async function service(): Promise<CapsuleImageService> {
  const svc = createImageService({
    root: await fs.mkdtemp(path.join(base, 'root-')),
    log: createSilentLogger(),
    pushRetryDelayMs: 10,
  });
  await svc.ready();
  return svc;
}

function publish(name: string, tag: string, image: BuiltImage, skipBlobs: string[] = []): void {
  for (const l of image.layers) if (!skipBlobs.includes(l.digest)) reg.addBlob(name, l.blob);
  reg.addBlob(name, image.config);
  reg.addManifest(name, MediaType.OciManifest, image.manifest.toString(), tag);
}

async function tarOf(label: string, extra = 0): Promise<Buffer> {
  return buildTar([
    { name: `${label}/`, type: 'directory' },
    { name: `${label}/file`, content: `${label}\n${'z'.repeat(extra)}` },
  ]);
}

function zstdLayer(tarBytes: Buffer): Layer {
  const blob = zstdStoredFrame(tarBytes, { checksum: true });
  return { mediaType: MediaType.OciLayerZstd, blob, digest: sha256(blob), diffID: sha256(tarBytes) };
}

/** A layer descriptor with `urls` (media type given), served by the web server at /blobs/<hex>. */
function foreignLayer(base: Layer, mediaType: string): Layer & { urls: string[] } {
  files.set(`/blobs/${base.digest.slice(7)}`, base.blob);
  return {
    ...base,
    mediaType,
    urls: [`${webOrigin}/missing/${base.digest.slice(7)}`, `${webOrigin}/blobs/${base.digest.slice(7)}`],
  };
}

/** buildImage, with `urls` kept on the layer descriptors that have them. */
function imageWithUrls(layers: Array<Layer & { urls?: string[] }>): BuiltImage {
  const built = buildImage(layers, { Cmd: ['sh'] });
  const doc = JSON.parse(built.manifest.toString()) as { layers: Array<Record<string, unknown>> };
  doc.layers = doc.layers.map((d, i) => {
    const urls = layers[i]?.urls;
    return urls !== undefined ? { ...d, urls } : d;
  });
  const manifest = Buffer.from(JSON.stringify(doc));
  return { ...built, manifest, manifestDigest: sha256(manifest) };
}

async function pull(
  svc: CapsuleImageService,
  ref: string,
  allTags = false,
): Promise<{ events: PullProgress[]; lines: string[] }> {
  const events: PullProgress[] = [];
  await svc.pull(ref, { allTags }, (p) => events.push(p));
  return {
    events,
    lines: events
      .filter((e) => !['Downloading', 'Extracting'].includes(e.status))
      .map((e) => (e.id ? `${e.id}: ${e.status}` : e.status)),
  };
}

describe('zstd layers', () => {
  it('pulls an OCI image with a zstd layer: diffID verified, rootfs unpacked, pushed back as gzip', async () => {
    const tarBytes = await tarOf('zst', 50_000);
    const layer = zstdLayer(tarBytes);
    const image = buildImage([layer], { Cmd: ['sh'] });
    publish('zimg', 'v1', image);
    const svc = await service();
    const { lines } = await pull(svc, `${reg.host}/zimg:v1`);
    assert.ok(lines.includes(`${layer.digest.slice(7, 19)}: Pull complete`), lines.join('\n'));
    const record = await svc.get(`${reg.host}/zimg:v1`);
    assert.equal(record.id, image.configDigest);
    const [dir] = await svc.layerDirs(record);
    assert.equal(
      await fs.readFile(path.join(dir as string, 'zst/file'), 'utf8'),
      `zst\n${'z'.repeat(50_000)}`,
    );

    // Saved: layer.tar is the plain tar (decompressed from the zstd blob); loads elsewhere.
    const saved: Buffer[] = [];
    for await (const c of (await svc.save([`${reg.host}/zimg:v1`])) as AsyncIterable<Buffer>) saved.push(c);
    const copy = await service();
    await copy.load(Readable.from([Buffer.concat(saved)]), {}, () => undefined);
    assert.equal((await copy.get(`${reg.host}/zimg:v1`)).id, image.configDigest);

    // Pushed again: the layer goes as a gzip of the same tar (its diffID is unchanged).
    await svc.tag(`${reg.host}/zimg:v1`, `${reg.host}/zimg-copy`, 'v1');
    await svc.push(`${reg.host}/zimg-copy:v1`, {}, () => undefined);
    const manifest = JSON.parse(reg.manifest('zimg-copy', 'v1')?.bytes.toString() ?? '{}') as {
      layers: Array<{ mediaType: string; digest: string }>;
    };
    const pushed = manifest.layers[0];
    assert.equal(pushed?.mediaType, MediaType.DockerLayerGzip);
    const blob = reg.blob('zimg-copy', pushed?.digest ?? '');
    assert.ok(blob !== undefined);
    assert.equal(sha256(zlib.gunzipSync(blob)), layer.diffID);
  });

  it('a zstd layer whose content does not match the diffID fails and leaves no image', async () => {
    const layer = zstdLayer(await tarOf('bad'));
    const other = await tarOf('other');
    const image = buildImage([{ ...layer, diffID: sha256(other) }], { Cmd: ['sh'] });
    publish('zbad', 'v1', image);
    const svc = await service();
    await assert.rejects(pull(svc, `${reg.host}/zbad:v1`), DataLossError);
    await assert.rejects(svc.get(`${reg.host}/zbad:v1`), NotFoundError);
  });

  it('loads a docker-archive compressed with zstd and imports a zstd rootfs', async () => {
    const svc = await service();
    const rootfs = await tarOf('imported');
    const record = await svc.import(Readable.from([zstdStoredFrame(rootfs)]), { repository: 'zimported:1' });
    assert.deepEqual(record.config.rootfs.diff_ids, [sha256(rootfs)]);

    const saved = await svc.save(['zimported:1']);
    const chunks: Buffer[] = [];
    for await (const c of saved as AsyncIterable<Buffer>) chunks.push(c);
    const target = await service();
    const result = await target.load(
      Readable.from([zstdStoredFrame(Buffer.concat(chunks))]),
      {},
      () => undefined,
    );
    assert.deepEqual(result.tags, ['zimported:1']);
    assert.equal((await target.get('zimported:1')).id, record.id);
  });
});

describe('pull --all-tags', () => {
  it('pulls every tag in the registry order, one "Pulling from" per tag and one status for the name', async () => {
    const a = buildImage([gzipLayer(await tarOf('a'))], { Cmd: ['a'] });
    const b = buildImage([gzipLayer(await tarOf('b'))], { Cmd: ['b'] });
    publish('many', 'latest', a);
    publish('many', 'v1', a);
    publish('many', 'v2', b);
    reg.tagsPageSize = 2; // the list comes in two pages
    const svc = await service();
    try {
      const { lines } = await pull(svc, `${reg.host}/many`, true);
      assert.deepEqual(
        lines.filter((l) => l.includes('Pulling from') || l.startsWith('Status') || l.startsWith('Digest')),
        [
          'latest: Pulling from many',
          `Digest: ${a.manifestDigest}`,
          'v1: Pulling from many',
          `Digest: ${a.manifestDigest}`,
          'v2: Pulling from many',
          `Digest: ${b.manifestDigest}`,
          `Status: Downloaded newer image for ${reg.host}/many`,
        ],
      );
      for (const tag of ['latest', 'v1'])
        assert.equal((await svc.get(`${reg.host}/many:${tag}`)).id, a.configDigest);
      assert.equal((await svc.get(`${reg.host}/many:v2`)).id, b.configDigest);

      const again = await pull(svc, `${reg.host}/many`, true);
      assert.equal(again.lines.at(-1), `Status: Image is up to date for ${reg.host}/many`);
      // A trailing ":" (what "pull -a" may send) is trimmed, as dockerd.
      const trimmed = await pull(svc, `${reg.host}/many:`, true);
      assert.equal(trimmed.lines.at(-1), `Status: Image is up to date for ${reg.host}/many`);
    } finally {
      reg.tagsPageSize = 0;
    }
  });

  it('allTags with a tag or digest in the reference pulls just that', async () => {
    const svc = await service();
    const { lines } = await pull(svc, `${reg.host}/many:v2`, true);
    assert.equal(lines.filter((l) => l.includes('Pulling from')).length, 1);
    assert.equal(lines.at(-1), `Status: Downloaded newer image for ${reg.host}/many:v2`);
  });

  it('an unknown repository is a NotFoundError with dockerd-like text', async () => {
    const svc = await service();
    await assert.rejects(pull(svc, `${reg.host}/nosuchrepo`, true), (err: unknown) => {
      assert.ok(err instanceof NotFoundError);
      assert.match(err.message, /^repository .*nosuchrepo not found: name unknown/);
      return true;
    });
  });
});

describe('foreign and non-distributable layers', () => {
  it('a layer the registry lacks comes from its URLs (after a failing one), digest verified', async () => {
    const base = gzipLayer(await tarOf('foreign', 10_000));
    const foreign = foreignLayer(base, MediaType.DockerLayerForeignGzip);
    const own = gzipLayer(await tarOf('own'));
    const image = imageWithUrls([foreign, own]);
    publish('fimg', 'v1', image, [foreign.digest]);
    const svc = await service();
    hits.clear();
    await pull(svc, `${reg.host}/fimg:v1`);
    assert.equal(hits.get(`/missing/${foreign.digest.slice(7)}`), 1);
    assert.equal(hits.get(`/blobs/${foreign.digest.slice(7)}`), 1);
    const [dir] = await svc.layerDirs(await svc.get(`${reg.host}/fimg:v1`));
    assert.match(await fs.readFile(path.join(dir as string, 'foreign/file'), 'utf8'), /^foreign\n/);

    // Push: the foreign layer is skipped and kept with its URLs; the other one is uploaded.
    await svc.tag(`${reg.host}/fimg:v1`, `${reg.host}/fimg-copy`, 'v1');
    const events: PushProgress[] = [];
    await svc.push(`${reg.host}/fimg-copy:v1`, {}, (p) => events.push(p));
    const statuses = events.flatMap((e) => ('status' in e ? [`${e.id ?? ''}: ${e.status}`] : []));
    assert.ok(
      statuses.includes(`${foreign.diffID.slice(7, 19)}: Skipped foreign layer`),
      statuses.join('\n'),
    );
    // Same registry: the other layer is mounted from the repository it was pulled from.
    assert.ok(statuses.includes(`${own.diffID.slice(7, 19)}: Mounted from fimg`), statuses.join('\n'));
    const manifest = JSON.parse(reg.manifest('fimg-copy', 'v1')?.bytes.toString() ?? '{}') as {
      layers: Array<{ mediaType: string; digest: string; size: number; urls?: string[] }>;
    };
    assert.deepEqual(manifest.layers[0], {
      mediaType: MediaType.DockerLayerForeignGzip,
      size: foreign.blob.length,
      digest: foreign.digest,
      urls: foreign.urls,
    });
    assert.equal(reg.blob('fimg-copy', foreign.digest), undefined);
    assert.ok(reg.blob('fimg-copy', own.digest) !== undefined);
  });

  it('the registry copy is used when it has the blob (no URL fetched)', async () => {
    const base = gzipLayer(await tarOf('nondist'));
    const layer = foreignLayer(base, MediaType.OciLayerNondistributableGzip);
    publish('nimg', 'v1', imageWithUrls([layer]));
    const svc = await service();
    hits.clear();
    await pull(svc, `${reg.host}/nimg:v1`);
    assert.equal(hits.size, 0);
  });

  it('a URL serving other bytes fails the digest check; no image is left', async () => {
    const base = gzipLayer(await tarOf('tampered'));
    const layer = foreignLayer(base, MediaType.OciLayerNondistributable);
    files.set(`/blobs/${base.digest.slice(7)}`, gzipLayer(await tarOf('evil')).blob);
    publish('timg', 'v1', imageWithUrls([layer]), [layer.digest]);
    const svc = await service();
    await assert.rejects(pull(svc, `${reg.host}/timg:v1`), (err: unknown) => {
      assert.ok(err instanceof DataLossError);
      assert.match(err.message, /filesystem layer verification failed for digest/);
      return true;
    });
    await assert.rejects(svc.get(`${reg.host}/timg:v1`), NotFoundError);
  });

  it('URLs with other schemes are not fetched', async () => {
    const base = gzipLayer(await tarOf('filescheme'));
    const image = imageWithUrls([
      { ...base, mediaType: MediaType.DockerLayerForeignGzip, urls: ['file:///etc/passwd'] },
    ]);
    publish('fsimg', 'v1', image, [base.digest]);
    const svc = await service();
    await assert.rejects(pull(svc, `${reg.host}/fsimg:v1`), /unsupported protocol scheme "file"/);
  });
});

describe('import from a URL', () => {
  it('downloads with dockerd\'s lines ("Downloading from", "Importing") and the default message', async () => {
    const rootfs = await tarOf('web', 300_000);
    files.set('/rootfs.tar.gz', zlib.gzipSync(rootfs));
    const svc = await service();
    const events: PullProgress[] = [];
    const address = `${webOrigin.slice('http://'.length)}/redirect/rootfs.tar.gz`;
    const record = await svc.import(Readable.from([]), {
      url: address,
      repository: 'fromweb:1',
      onProgress: (p) => events.push(p),
    });
    assert.deepEqual(events[0], { status: `Downloading from http://${address}` });
    const importing = events.slice(1);
    assert.ok(importing.length >= 1);
    for (const e of importing) {
      assert.equal(e.status, 'Importing');
      assert.equal('id' in e, false);
    }
    assert.deepEqual(importing.at(-1)?.progressDetail, {
      current: files.get('/rootfs.tar.gz')?.length,
      total: files.get('/rootfs.tar.gz')?.length,
    });
    assert.equal(record.config.comment, `Imported from http://${address}`);
    assert.deepEqual(record.config.rootfs.diff_ids, [sha256(rootfs)]);
    assert.equal((await svc.get('fromweb:1')).id, record.id);
  });

  it("a 404 is NotFound with dockerd's text and the body; nothing is imported", async () => {
    const svc = await service();
    const events: PullProgress[] = [];
    await assert.rejects(
      svc.import(Readable.from([]), { url: `${webOrigin}/nope.tar`, onProgress: (p) => events.push(p) }),
      (err: unknown) => {
        assert.ok(err instanceof NotFoundError);
        assert.equal(
          err.message,
          `failed to GET ${webOrigin}/nope.tar with status 404 Not Found: no such file`,
        );
        return true;
      },
    );
    assert.deepEqual(events, []);
    assert.deepEqual(await svc.listImages(), []);
  });

  it("an unreachable host fails with Go's dial text", async () => {
    const svc = await service();
    await assert.rejects(
      svc.import(Readable.from([]), { url: 'http://127.0.0.1:1/x.tar' }),
      /^Error: Get "http:\/\/127\.0\.0\.1:1\/x\.tar": dial tcp 127\.0\.0\.1:1: connect: connection refused$|Get "http:\/\/127\.0\.0\.1:1\/x\.tar": dial tcp 127\.0\.0\.1:1: connect: connection refused/,
    );
  });
});

describe("dockerd's texts", () => {
  it('push without credentials to a basic-auth registry: "no basic auth credentials", bare', async () => {
    const locked = new FakeRegistry({ kind: 'basic', user: 'u', password: 'p' });
    await locked.start();
    try {
      const svc = await service();
      await svc.import(Readable.from([await tarOf('locked')]), { repository: `${locked.host}/bb:v1` });
      const events: PushProgress[] = [];
      await assert.rejects(
        svc.push(`${locked.host}/bb:v1`, {}, (p) => events.push(p)),
        (err: unknown) => {
          assert.ok(err instanceof UnauthorizedError);
          assert.equal(err.message, 'no basic auth credentials');
          return true;
        },
      );
      assert.deepEqual(
        events.map((e) => ('status' in e ? e.status : '')),
        [`The push refers to repository [${locked.host}/bb]`, 'Preparing'],
      );
      // A pull names the request, as dockerd's HEAD of the tag.
      await assert.rejects(
        svc.pull(`${locked.host}/bb:v1`, {}, () => undefined),
        new RegExp(
          `^UnauthorizedError: Head "http://${locked.host}/v2/bb/manifests/v1": no basic auth credentials$`,
        ),
      );
      await assert.rejects(
        svc.push(`${locked.host}/bb:v1`, { auth: { username: 'u', password: 'wrong' } }, () => undefined),
        /^UnauthorizedError: unauthorized: authentication required$/,
      );
    } finally {
      await locked.stop();
    }
  });

  it('loading a corrupt tarball fails with the texts dockerd 20.10 prints', async () => {
    const svc = await service();
    const valid = await buildTar([{ name: 'manifest.json', content: '[]' + ' '.repeat(5000) }]);
    const cases: Array<[Buffer, string]> = [
      [Buffer.alloc(3000, 0x5a), 'Error processing tar file(exit status 1): archive/tar: invalid tar header'],
      [valid.subarray(0, 1500), 'Error processing tar file(exit status 1): unexpected EOF'],
      [zlib.gzipSync(valid).subarray(0, 40), 'Error processing tar file(exit status 1): unexpected EOF'],
      [
        Buffer.from('hello world this is not a tar'),
        'Error processing tar file(exit status 1): unexpected EOF',
      ],
      [
        Buffer.concat([Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]), Buffer.alloc(100, 0xff)]),
        'Error processing tar file(flate: corrupt input): ',
      ],
    ];
    for (const [bytes, text] of cases) {
      await assert.rejects(
        svc.load(Readable.from([bytes]), {}, () => undefined),
        (err: unknown) => {
          assert.ok(err instanceof DataLossError, String(err));
          assert.equal(err.message, text);
          return true;
        },
      );
    }
    await assert.rejects(
      svc.load(Readable.from([]), {}, () => undefined),
      /^InvalidParameterError: open \/.*\/repositories: no such file or directory$/,
    );
    assert.deepEqual(await svc.listImages(), []);
  });
});
