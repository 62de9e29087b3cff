/**
 * LayerStore.unpack shared between callers (concurrent pulls of images with a common layer). The
 * blob is a FIFO the test writes, so it decides when the extraction can go on.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createWriteStream, promises as fs, type WriteStream } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { CanceledError } from '../common/errdefs';
import { createSilentLogger } from '../common/logger';
import { LayerStore } from './layer-store';
import { tarStream } from './tar-writer';

async function layerTar(): Promise<Buffer> {
  const parts: Buffer[] = [];
  const entries = [0, 1, 2, 3].map((i) => ({
    name: `f${i}`,
    type: 'file' as const,
    mode: 0o644,
    mtime: 1_700_000_000,
    size: 256 * 1024,
    body: Buffer.alloc(256 * 1024, i),
  }));
  for await (const block of tarStream(entries)) parts.push(block);
  parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}

const diffIDOf = (tar: Buffer) => `sha256:${createHash('sha256').update(tar).digest('hex')}`;

describe('LayerStore: an unpack shared by several callers', { timeout: 20_000 }, () => {
  let dir: string;
  let tar: Buffer;
  let seq = 0;

  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'capsule-layer-store-'));
    tar = await layerTar();
  });
  after(() => fs.rm(dir, { recursive: true, force: true }));

  /**
   * A fresh store, a FIFO as the blob with the layer's first half written, and two callers (`a`,
   * `b`) unpacking it, the extraction under way.
   */
  async function setup() {
    const store = new LayerStore(path.join(dir, `root${++seq}`), createSilentLogger());
    await store.init();
    const fifo = path.join(dir, `blob${seq}`);
    assert.equal(spawnSync('mkfifo', [fifo]).status, 0, 'mkfifo');
    const writer: WriteStream = createWriteStream(fifo);
    writer.on('error', () => undefined); // EPIPE once the reader is gone
    writer.write(tar.subarray(0, tar.length / 2));
    const tmpDirs = async () => (await fs.readdir(store.layersDir)).filter((n) => n.startsWith('.tmp-'));
    const a = new AbortController();
    const b = new AbortController();
    const diffID = diffIDOf(tar);
    const first = store.unpack(diffID, fifo, 'sha256:blob', { signal: a.signal });
    const second = store.unpack(diffID, fifo, 'sha256:blob', { signal: b.signal });
    await new Promise((r) => setTimeout(r, 50));
    return { store, writer, tmpDirs, a, b, diffID, first, second };
  }

  it('one caller cancelled: the other gets the layer, unpacked once', async () => {
    const { store, writer, a, diffID, first, second } = await setup();
    a.abort(new CanceledError('context canceled'));
    await assert.rejects(first, CanceledError);
    writer.end(tar.subarray(tar.length / 2));
    const info = await second;
    assert.equal(info.diffID, diffID);
    assert.equal((await fs.readFile(path.join(info.dir, 'f3'))).length, 256 * 1024);
    assert.equal(store.unpackCount, 1);
  });

  it('every caller cancelled: the unpack stops, leaves nothing, and a later one starts afresh', async () => {
    const { store, writer, tmpDirs, a, b, diffID, first, second } = await setup();
    a.abort();
    await assert.rejects(first, CanceledError);
    assert.equal((await tmpDirs()).length, 1, 'still unpacking for the second caller');
    b.abort();
    await assert.rejects(second, CanceledError);
    // The rest of the blob arrives: an unpack that went on would now commit the layer; an aborted
    // one stops at its next chunk and removes its temp dir.
    writer.end(tar.subarray(tar.length / 2));
    await new Promise<void>((resolve) => {
      const check = async () =>
        (await tmpDirs()).length === 0 ? resolve() : setTimeout(() => void check(), 20);
      void check();
    });
    assert.equal(await store.get(diffID), undefined);
    const again = path.join(dir, `blob${seq}-again`);
    await fs.writeFile(again, tar);
    const info = await store.unpack(diffID, again, 'sha256:blob');
    assert.equal(info.diffID, diffID);
    assert.equal(store.unpackCount, 2);
  });
});
