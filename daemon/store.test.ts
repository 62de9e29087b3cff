import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createSilentLogger } from '../common/logger';
import { ConflictError, NotFoundError } from '../common/errdefs';
import { initialState } from './containers';
import { KeyedMutex, ContainerStore } from './store';
import type { ContainerRecord } from './types';

let dir: string;
before(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'capsule-store-'));
});
after(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

function record(id: string, name: string): ContainerRecord {
  return {
    id,
    name,
    created: '2026-11-29T18:23:52.5Z',
    path: 'true',
    args: [],
    imageId: 'sha256:' + 'a'.repeat(64),
    config: {} as ContainerRecord['config'],
    hostConfig: {} as ContainerRecord['hostConfig'],
    state: initialState(),
    restartCount: 0,
    hasBeenManuallyStopped: false,
  };
}

const ID1 = 'abc1' + '0'.repeat(60);
const ID2 = 'abc2' + '0'.repeat(60);

describe('container store', () => {
  it('resolves full id, name and unique prefix; ambiguous prefix and unknown are errors', async () => {
    const store = new ContainerStore(path.join(dir, 'a'), createSilentLogger());
    await store.load();
    store.reserveName('/one', ID1);
    await store.create(record(ID1, '/one'));
    store.reserveName('/two', ID2);
    await store.create(record(ID2, '/two'));
    assert.equal(store.resolve(ID1).name, '/one');
    assert.equal(store.resolve('one').id, ID1);
    assert.equal(store.resolve('/two').id, ID2);
    assert.equal(store.resolve('abc2').id, ID2);
    assert.throws(() => store.resolve('abc'), /Multiple IDs found with provided prefix: abc/);
    assert.throws(
      () => store.resolve('nosuch'),
      (err: unknown) => err instanceof NotFoundError && err.message === 'No such container: nosuch',
    );
  });

  it('refuses a taken name with dockerd text', async () => {
    const store = new ContainerStore(path.join(dir, 'b'), createSilentLogger());
    store.reserveName('/dup', ID1);
    assert.throws(
      () => store.reserveName('/dup', ID2),
      (err: unknown) =>
        err instanceof ConflictError &&
        err.message.includes(`"/dup" is already in use by container "${ID1}"`),
    );
  });

  it('persists atomically, publishes after the write, and reloads', async () => {
    const root = path.join(dir, 'c');
    const store = new ContainerStore(root, createSilentLogger());
    await store.load();
    store.reserveName('/p', ID1);
    await store.create(record(ID1, '/p'));
    await store.update(ID1, (r) => (r.state.exitCode = 42));
    assert.equal(store.get(ID1)?.state.exitCode, 42);
    const onDisk = JSON.parse(
      await fs.readFile(path.join(root, ID1, 'config.v2.json'), 'utf8'),
    ) as ContainerRecord;
    assert.equal(onDisk.state.exitCode, 42);
    assert.ok((await fs.stat(path.join(root, ID1, 'layer'))).isDirectory());
    const again = new ContainerStore(root, createSilentLogger());
    const loaded = await again.load();
    assert.equal(loaded.length, 1);
    assert.equal(again.resolve('p').state.exitCode, 42);
    await again.remove(ID1);
    await assert.rejects(fs.stat(path.join(root, ID1)));
    assert.throws(() => again.resolve('p'));
  });

  it('KeyedMutex serialises per key', async () => {
    const m = new KeyedMutex();
    const order: string[] = [];
    const slow = m.run('k', async () => {
      await new Promise((r) => setTimeout(r, 20));
      order.push('first');
    });
    const fast = m.run('k', async () => {
      order.push('second');
    });
    const other = m.run('other', async () => {
      order.push('other');
    });
    await Promise.all([slow, fast, other]);
    assert.deepEqual(order, ['other', 'first', 'second']);
  });
});
