import { describe, it, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createSilentLogger } from '../common/logger';
import { ContainerArchive, encodePathStat, upperDirChanges, type RootfsMounter } from './archive';
import type { ContainerFilesystem } from './containers';

let base: string;
let lower: string;
let upper: string;

const isRoot = process.getuid?.() === 0;

/** A fake mounter: "mounts" by handing out the upper dir alone (no overlay, no root needed). */
function fakeMounter(): RootfsMounter & { mounted: string[]; unmounted: string[] } {
  const mounted: string[] = [];
  const unmounted: string[] = [];
  return {
    mounted,
    unmounted,
    async mount(_layers, containerLayerDir, target) {
      mounted.push(target);
      return path.join(containerLayerDir, 'upper');
    },
    async unmount(target) {
      unmounted.push(target);
    },
  };
}

function fakeProvider(running = false): {
  withFilesystem<T>(ref: string, fn: (f: ContainerFilesystem) => Promise<T>): Promise<T>;
} {
  return {
    async withFilesystem(ref, fn) {
      if (ref !== 'c1') throw new Error(`No such container: ${ref}`);
      const cfs = {
        record: { id: 'f'.repeat(64), config: { user: '' } },
        containerLayerDir: base,
        upperDir: upper,
        layerDirs: [lower],
        execRoot: path.join(base, 'exec'),
        ...(running ? { sandbox: {} } : {}),
      } as unknown as ContainerFilesystem;
      return fn(cfs);
    },
  };
}

beforeEach(async () => {
  base = await fs.mkdtemp(path.join(os.tmpdir(), 'daemon-archive-'));
  lower = path.join(base, 'lower');
  upper = path.join(base, 'upper');
  await fs.mkdir(path.join(lower, 'bin'), { recursive: true });
  await fs.mkdir(path.join(lower, 'tmp'));
  await fs.writeFile(path.join(lower, 'bin', 'ls'), 'ls');
  await fs.writeFile(path.join(lower, 'bin', 'cat'), 'cat');
  await fs.mkdir(path.join(upper, 'bin'), { recursive: true });
  await fs.mkdir(path.join(upper, 'tmp'));
  await fs.writeFile(path.join(upper, 'tmp', 'new'), '');
  await fs.writeFile(path.join(upper, 'bin', 'cat'), 'patched');
});

afterEach(async () => {
  await fs.rm(base, { recursive: true, force: true });
});

describe('container archive', () => {
  it(
    'diff: A for new paths, C for paths in a lower layer, D for whiteouts',
    { skip: !isRoot && 'mknod needs root' },
    async () => {
      execFileSync('mknod', ['-m', '000', path.join(upper, 'bin', 'ls'), 'c', '0', '0']);
      assert.deepEqual(await upperDirChanges(upper, [lower]), [
        { path: '/bin', kind: 0 },
        { path: '/bin/cat', kind: 0 },
        { path: '/bin/ls', kind: 2 },
        { path: '/tmp', kind: 0 },
        { path: '/tmp/new', kind: 1 },
      ]);
    },
  );

  it("diff leaves out the runtime mount points /dev, /proc, /sys (dockerd's init layer hides them)", async () => {
    for (const dir of ['dev', 'proc', 'sys']) await fs.mkdir(path.join(upper, dir));
    const changes = await upperDirChanges(upper, [lower]);
    assert.ok(!changes.some((c) => ['/dev', '/proc', '/sys'].includes(c.path)), JSON.stringify(changes));
  });

  it('diff: a lower layer seen through a symlink is not followed', async () => {
    // The lower layer has `tmp2 -> /` (image content); the upper's tmp2/etc must not be checked
    // against the host's /etc.
    await fs.symlink('/', path.join(lower, 'tmp2'));
    await fs.mkdir(path.join(upper, 'tmp2', 'etc'), { recursive: true });
    const changes = await upperDirChanges(upper, [lower]);
    assert.deepEqual(
      changes.filter((c) => c.path.startsWith('/tmp2')),
      [
        { path: '/tmp2', kind: 0 },
        { path: '/tmp2/etc', kind: 1 },
      ],
    );
  });

  it('a not-running container is mounted for the call and unmounted after it', async () => {
    const mounter = fakeMounter();
    const archive = new ContainerArchive(fakeProvider(), createSilentLogger(), mounter);
    const stat = await archive.statPath('c1', '/tmp/new');
    assert.equal(stat.name, 'new');
    assert.equal(mounter.mounted.length, 1);
    assert.deepEqual(mounter.unmounted, mounter.mounted);
  });

  it('a stream keeps the mount until it is consumed', async () => {
    const mounter = fakeMounter();
    const archive = new ContainerArchive(fakeProvider(), createSilentLogger(), mounter);
    const { stat, stream } = await archive.archive('c1', '/bin');
    assert.equal(stat.name, 'bin');
    assert.equal(mounter.unmounted.length, 0);
    let bytes = 0;
    for await (const chunk of stream as AsyncIterable<Buffer>) bytes += chunk.length;
    assert.ok(bytes >= 1024);
    for (let i = 0; i < 50 && mounter.unmounted.length === 0; i++)
      await new Promise((r) => setTimeout(r, 10));
    assert.equal(mounter.unmounted.length, 1);
  });

  it("a missing path is 404 with dockerd's message and unmounts", async () => {
    const mounter = fakeMounter();
    const archive = new ContainerArchive(fakeProvider(), createSilentLogger(), mounter);
    await assert.rejects(archive.archive('c1', '/nonexist'), (err: unknown) => {
      assert.equal((err as Error).constructor.name, 'NotFoundError');
      assert.equal((err as Error).message, 'Could not find the file /nonexist in container c1');
      return true;
    });
    assert.equal(mounter.unmounted.length, 1);
  });

  it("an empty path is dockerd's 400", async () => {
    const archive = new ContainerArchive(fakeProvider(), createSilentLogger(), fakeMounter());
    await assert.rejects(archive.statPath('c1', ''), /bad parameter: pathcannot be empty/);
  });

  it("the stat header is base64 JSON in dockerd's field order", () => {
    const header = encodePathStat({
      name: 'passwd',
      size: 30,
      mode: 420,
      mtime: '2026-11-29T23:12:21Z',
      linkTarget: '',
    });
    assert.equal(
      header,
      'eyJuYW1lIjoicGFzc3dkIiwic2l6ZSI6MzAsIm1vZGUiOjQyMCwibXRpbWUiOiIyMDI2LTExLTI5VDIzOjEyOjIxWiIsImxpbmtUYXJnZXQiOiIifQ==',
    );
  });
});
