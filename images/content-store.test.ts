import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, it, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import { DataLossError, InvalidParameterError } from '../common/errdefs';
import { ContentStore, sha256Digest } from './content-store';

let base: string;
before(async () => {
  base = await fs.mkdtemp(path.join(os.tmpdir(), 'capsule-content-test-'));
});
after(async () => {
  await fs.rm(base, { recursive: true, force: true });
});

async function store(): Promise<ContentStore> {
  const s = new ContentStore(await fs.mkdtemp(path.join(base, 'cs-')));
  await s.init();
  return s;
}

async function* pieces(...parts: string[]): AsyncGenerator<Buffer> {
  for (const p of parts) yield Buffer.from(p);
}

describe('ContentStore', () => {
  it('commits a blob whose digest and size match, read-only, and leaves no ingest behind', async () => {
    const s = await store();
    const d = sha256Digest('hello world');
    const seen: number[] = [];
    await s.ingest(d, pieces('hello', ' ', 'world'), { size: 11, onBytes: (n) => seen.push(n) });
    assert.equal(await s.has(d), true);
    assert.equal((await s.read(d)).toString(), 'hello world');
    assert.equal((await fs.stat(s.blobPath(d))).mode & 0o777, 0o444);
    assert.deepEqual(seen, [5, 6, 11]);
    assert.deepEqual(await fs.readdir(s.ingestDir), []);
  });

  it('refuses content with another digest: DataLossError, nothing committed, temp removed', async () => {
    const s = await store();
    const d = sha256Digest('expected');
    await assert.rejects(
      s.ingest(d, pieces('tampered')),
      (e: unknown) => e instanceof DataLossError && e.message.includes(d),
    );
    assert.equal(await s.has(d), false);
    assert.deepEqual(await fs.readdir(s.blobsDir), []);
    assert.deepEqual(await fs.readdir(s.ingestDir), []);
  });

  it('refuses content shorter or longer than the descriptor size', async () => {
    const s = await store();
    const d = sha256Digest('abc');
    await assert.rejects(s.ingest(d, pieces('abc'), { size: 4 }), DataLossError);
    await assert.rejects(s.ingest(d, pieces('ab', 'c'), { size: 2 }), DataLossError);
    assert.deepEqual(await fs.readdir(s.ingestDir), []);
    assert.equal(await s.has(d), false);
  });

  it('removes the temp file when the source fails or the pull is aborted', async () => {
    const s = await store();
    const d = sha256Digest('abc');
    async function* failing(): AsyncGenerator<Buffer> {
      yield Buffer.from('a');
      throw new Error('connection reset');
    }
    await assert.rejects(s.ingest(d, failing()), /connection reset/);
    const controller = new AbortController();
    async function* slow(): AsyncGenerator<Buffer> {
      yield Buffer.from('a');
      controller.abort();
      yield Buffer.from('bc');
    }
    await assert.rejects(s.ingest(d, slow(), { signal: controller.signal }), { name: 'AbortError' });
    assert.deepEqual(await fs.readdir(s.ingestDir), []);
    assert.equal(await s.has(d), false);
  });

  it('digest "sha256:../../x" and other malformed digests never become paths', async () => {
    const s = await store();
    for (const bad of [
      'sha256:../../etc/passwd',
      'sha256:' + 'A'.repeat(64),
      'sha512:' + 'a'.repeat(128),
      'md5:x',
      '',
    ]) {
      assert.throws(() => s.blobPath(bad), InvalidParameterError);
      await assert.rejects(s.ingest(bad, pieces('x')), InvalidParameterError);
    }
  });

  it('two concurrent ingests of the same blob both succeed', async () => {
    const s = await store();
    const d = sha256Digest('same');
    await Promise.all([s.writeBlob(d, Buffer.from('same')), s.writeBlob(d, Buffer.from('same'))]);
    assert.equal((await s.read(d)).toString(), 'same');
    assert.deepEqual(await fs.readdir(s.ingestDir), []);
  });

  it('init drops ingests left by a crash', async () => {
    const s = await store();
    await fs.writeFile(path.join(s.ingestDir, 'stale'), 'x');
    await s.init();
    assert.deepEqual(await fs.readdir(s.ingestDir), []);
  });
});
