/**
 * kill -9 of capsuled in the middle of a pull: a multi-layer image of tens of MiB is pulled through
 * a small HTTP proxy in front of the test registry that stalls one layer blob half-way, so the kill
 * lands deterministically while that blob is being downloaded and while an earlier layer is being
 * unpacked. After a restart on the same data root no partial image may be visible (list, inspect),
 * nothing may be left in ingest/ or as an extraction temp dir, and the same pull must succeed.
 *
 * Starts its own capsuled (warm pool 0: no VM is booted) and registry; needs root and fails —
 * never skips — when docker-registry or skopeo are missing.
 */
import { promises as fs } from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Socket } from 'node:net';
import * as path from 'node:path';
import { describe, it, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import { TestDaemon, waitFor } from './harness/daemon';
import { buildLargeImage, pushImage, type PushedImage } from './harness/fixtures';
import { requireCommand, startRegistry, type RunningRegistry } from './harness/registry';

interface StallingProxy {
  host: string;
  /** Stall GETs of `digest` after `bytes` bytes of body until release(). */
  stall(digest: string, bytes: number): void;
  /** Body bytes sent so far for GETs of `digest` (all requests). */
  sent(digest: string): number;
  release(): void;
  close(): Promise<void>;
}

/** A reverse proxy to `upstream` (host:port) that can hold a blob response mid-body. */
async function startStallingProxy(upstream: string): Promise<StallingProxy> {
  const [upHost, upPort] = upstream.split(':');
  const stalls = new Map<string, number>();
  const sent = new Map<string, number>();
  let released: () => void = () => undefined;
  let releasedPromise = new Promise<void>((resolve) => (released = resolve));
  const sockets = new Set<Socket>();
  const server = http.createServer((req, res) => {
    const digest = /\/blobs\/(sha256:[a-f0-9]{64})$/.exec(req.url ?? '')?.[1];
    const upReq = http.request(
      { host: upHost, port: Number(upPort), method: req.method, path: req.url, headers: req.headers },
      (upRes) => {
        res.writeHead(upRes.statusCode ?? 502, upRes.headers);
        if (digest === undefined || req.method !== 'GET') {
          upRes.pipe(res);
          return;
        }
        const limit = stalls.get(digest);
        upRes.on('data', (chunk: Buffer) => {
          const before = sent.get(digest) ?? 0;
          if (limit === undefined || before + chunk.length <= limit) {
            sent.set(digest, before + chunk.length);
            if (!res.write(chunk)) {
              upRes.pause();
              res.once('drain', () => upRes.resume());
            }
            return;
          }
          // Send up to the limit, hold the rest until released.
          const head = chunk.subarray(0, Math.max(0, limit - before));
          sent.set(digest, before + head.length);
          res.write(head);
          upRes.pause();
          const rest = chunk.subarray(head.length);
          void releasedPromise.then(() => {
            stalls.delete(digest);
            sent.set(digest, (sent.get(digest) ?? 0) + rest.length);
            res.write(rest);
            upRes.resume();
          });
        });
        upRes.on('end', () => res.end());
      },
    );
    upReq.on('error', () => res.destroy());
    res.on('close', () => upReq.destroy());
    req.pipe(upReq);
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    host: `127.0.0.1:${port}`,
    stall: (digest, bytes) => stalls.set(digest, bytes),
    sent: (digest) => sent.get(digest) ?? 0,
    release: () => {
      released();
      releasedPromise = new Promise<void>((resolve) => (released = resolve));
    },
    close: async () => {
      released();
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

function api(daemon: TestDaemon, method: string, urlPath: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: daemon.socketPath, method, path: urlPath }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      // 'close' also covers a response cut off by the daemon's death ('end' never comes then).
      res.on('close', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** Starts POST /images/create; resolves with the whole progress stream (or the error). */
function startPull(daemon: TestDaemon, reference: string): Promise<{ status: number; body: string }> {
  const [name, tag] = [
    reference.slice(0, reference.lastIndexOf(':')),
    reference.slice(reference.lastIndexOf(':') + 1),
  ];
  return api(
    daemon,
    'POST',
    `/images/create?fromImage=${encodeURIComponent(name)}&tag=${encodeURIComponent(tag)}`,
  );
}

async function ls(dir: string): Promise<string[]> {
  try {
    return await fs.readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
}

describe('kill -9 during a pull', () => {
  let registry: RunningRegistry;
  let proxy: StallingProxy;
  let daemon: TestDaemon;
  let pushed: PushedImage;
  let reference: string;

  before(async () => {
    assert.equal(process.getuid?.(), 0, 'the crash test needs root');
    await requireCommand('docker-registry', 'docker-registry');
    await requireCommand('skopeo', 'skopeo');
    registry = await startRegistry();
    // Layer 1 (busybox) is small; layers 2–5 hold ≈ 12 MiB each in ≈ 150 files.
    pushed = await pushImage(registry.host, 'crash/large', 'v1', await buildLargeImage({ seed: 7 }));
    proxy = await startStallingProxy(registry.host);
    reference = `${proxy.host}/crash/large:v1`;
    daemon = await TestDaemon.start({ args: ['--warm-pool', '0', '--max-concurrent-downloads', '3'] });
  });

  after(async () => {
    await daemon?.cleanup(process.env.CAPSULE_IT_KEEP === '1');
    await proxy?.close();
    await registry?.stop();
  });

  it('leaves no partial image, no temp content, and the same pull then succeeds', async () => {
    const imagesRoot = path.join(daemon.dataRoot, 'images');
    const ingestDir = path.join(imagesRoot, 'ingest');
    const layersDir = path.join(imagesRoot, 'layers');
    const layers = pushed.image.layers;
    assert.equal(layers.length, 5);
    // Downloads run 3 at a time and unpacking goes in layer order. Layer 4's blob stalls half-way,
    // so layers 1–3 download and unpack (≈ 26 MiB of files) while layer 4 hangs mid-download.
    const stalled = layers[3];
    assert.ok(stalled);
    const half = Math.floor(stalled.blob.length / 2);
    proxy.stall(stalled.digest, half);

    const pulling = startPull(daemon, reference);
    pulling.catch(() => undefined);

    // Kill at a moment when an extraction temp dir exists and the stalled blob is half-ingested.
    let sawExtraction = false;
    await waitFor(
      'a layer extraction in progress while layer 4 is stalled mid-download',
      async () => {
        const names = await ls(layersDir);
        const extracting = names.some((n) => n.startsWith('.tmp-'));
        if (extracting) sawExtraction = true;
        return extracting && proxy.sent(stalled.digest) === half;
      },
      180_000,
    );
    await daemon.kill9();
    assert.ok(sawExtraction);

    // The crash left a half-written ingest and a half-extracted layer behind.
    const ingestBefore = await ls(ingestDir);
    assert.ok(ingestBefore.length > 0, 'expected a partial blob in ingest/ at the kill');
    const tmpBefore = (await ls(layersDir)).filter((n) => n.startsWith('.tmp-'));
    assert.ok(tmpBefore.length > 0, 'expected an extraction temp dir at the kill');
    const result = await pulling;
    assert.equal(result.status, 200); // the stream had started; it just ends early
    assert.ok(!result.body.includes('Status: Downloaded newer image'), result.body);

    proxy.release();
    await daemon.launch();

    // No partial image is visible.
    const list = await api(daemon, 'GET', '/images/json?all=1');
    assert.equal(list.status, 200);
    assert.deepEqual(JSON.parse(list.body), []);
    const byRef = await api(daemon, 'GET', `/images/${encodeURIComponent(reference)}/json`);
    assert.equal(byRef.status, 404, byRef.body);
    assert.equal((JSON.parse(byRef.body) as { message: string }).message, `No such image: ${reference}`);
    const byId = await api(daemon, 'GET', `/images/${pushed.image.configDigest}/json`);
    assert.equal(byId.status, 404, byId.body);
    assert.deepEqual(await ls(path.join(imagesRoot, 'imagedb', 'sha256')), []);
    const repositories = await fs
      .readFile(path.join(imagesRoot, 'repositories.json'), 'utf8')
      .catch(() => '');
    assert.ok(!repositories.includes('crash/large'), repositories);

    // Nothing half-done survives the start-up sweep; whatever is left is complete and verified.
    assert.deepEqual(await ls(ingestDir), []);
    const layerNames = await ls(layersDir);
    assert.deepEqual(
      layerNames.filter((n) => !/^[a-f0-9]{64}$/.test(n)),
      [],
      `unexpected entries in layers/: ${layerNames.join(' ')}`,
    );
    const diffIDs = new Set(layers.map((l) => l.diffID.slice(7)));
    const records = await ls(path.join(imagesRoot, 'layerdb', 'sha256'));
    for (const name of layerNames) {
      assert.ok(diffIDs.has(name), `layer dir ${name} is not one of the image's layers`);
      assert.ok(records.includes(`${name}.json`), `layer dir ${name} has no record`);
    }
    const blobs = await ls(path.join(imagesRoot, 'blobs', 'sha256'));
    assert.ok(!blobs.includes(stalled.digest.slice(7)), 'the stalled blob must not be committed');

    // The same pull now succeeds and the image is whole.
    const again = await startPull(daemon, reference);
    assert.equal(again.status, 200);
    assert.ok(!again.body.includes('errorDetail'), again.body);
    assert.ok(again.body.includes(`Status: Downloaded newer image for ${reference}`), again.body);
    const inspect = await api(daemon, 'GET', `/images/${encodeURIComponent(reference)}/json`);
    assert.equal(inspect.status, 200, inspect.body);
    const image = JSON.parse(inspect.body) as {
      Id: string;
      RepoDigests: string[];
      RootFS: { Layers: string[] };
      Config: { Labels: Record<string, string> };
    };
    assert.equal(image.Id, pushed.image.configDigest);
    assert.deepEqual(
      image.RootFS.Layers,
      layers.map((l) => l.diffID),
    );
    assert.deepEqual(image.RepoDigests, [`${proxy.host}/crash/large@${pushed.manifestDigest}`]);
    assert.equal(image.Config.Labels['capsule.fixture'], 'large');
    // Each layer dir is complete: its symlink, its hardlink and its last-written file are there.
    for (const [i, layer] of layers.slice(1).entries()) {
      const dir = path.join(layersDir, layer.diffID.slice(7), 'opt', `layer${i}`);
      assert.ok((await fs.lstat(path.join(dir, 'first'))).isSymbolicLink());
      assert.equal((await fs.lstat(path.join(dir, 'hard'))).nlink, 2);
      assert.equal(await fs.readFile(path.join(dir, 'replaced'), 'utf8'), `layer ${i}\n`);
    }
    assert.deepEqual(await ls(ingestDir), []);
    assert.deepEqual(
      (await ls(layersDir)).filter((n) => n.startsWith('.tmp-')),
      [],
    );
  });
});
