import { describe, it, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import * as tar from 'tar-stream';
import { opaqueDirs, planCommit, upperDirLayer, type CommitRequest } from './commit';

const isRoot = process.getuid?.() === 0;
let upper: string;

async function entries(stream: AsyncIterable<Buffer>): Promise<Array<[string, string, string]>> {
  const extract = tar.extract();
  const out: Array<[string, string, string]> = [];
  const done = new Promise<void>((resolve, reject) => {
    extract.on('entry', (header, body, next) => {
      out.push([header.name, header.type ?? 'file', header.linkname ?? '']);
      body.resume();
      body.on('end', () => next());
    });
    extract.on('finish', resolve);
    extract.on('error', reject);
  });
  const source = Readable.from(stream);
  const failed = new Promise<never>((_, reject) => source.on('error', reject));
  source.pipe(extract);
  await Promise.race([done, failed]);
  return out;
}

function request(extra: Partial<CommitRequest> = {}): CommitRequest {
  return {
    parentId: 'sha256:' + '1'.repeat(64),
    upperDir: '/nonexistent',
    containerId: 'c'.repeat(64),
    containerConfig: { Env: ['PATH=/bin'], Cmd: ['sh'] },
    createdBy: 'sh',
    dockerVersion: '0.1.0',
    ...extra,
  };
}

beforeEach(async () => {
  upper = await fs.mkdtemp(path.join(os.tmpdir(), 'commit-upper-'));
});
afterEach(async () => {
  await fs.rm(upper, { recursive: true, force: true });
});

describe('commit', () => {
  it('planCommit applies --change to the container config and validates the reference', () => {
    const plan = planCommit(request({ repository: 'repo/x', tag: '1', changes: ['ENV A=1', 'CMD ["cat"]'] }));
    assert.deepEqual(plan.config.Env, ['PATH=/bin', 'A=1']);
    assert.deepEqual(plan.config.Cmd, ['cat']);
    assert.equal(plan.ref?.tag, '1');
    assert.throws(() => planCommit(request({ repository: 'BAD' })), /repository name must be lowercase/);
    assert.throws(() => planCommit(request({ changes: ['FOO x'] })), /not a valid change command/i);
  });

  it('streams file contents at their size (a file larger than a read buffer comes back whole)', async () => {
    const big = Buffer.alloc((3 << 20) + 123);
    for (let i = 0; i < big.length; i++) big[i] = i % 251;
    await fs.writeFile(path.join(upper, 'big'), big);
    await fs.writeFile(path.join(upper, 'empty'), '');
    const extract = tar.extract();
    const bodies = new Map<string, Buffer>();
    const done = new Promise<void>((resolve, reject) => {
      extract.on('entry', (header, body, next) => {
        const parts: Buffer[] = [];
        body.on('data', (d: unknown) => parts.push(d as Buffer));
        body.on('end', () => {
          bodies.set(header.name, Buffer.concat(parts));
          next();
        });
      });
      extract.on('finish', resolve);
      extract.on('error', reject);
    });
    Readable.from(upperDirLayer(upper, new Set())).pipe(extract);
    await done;
    assert.ok(bodies.get('big')?.equals(big));
    assert.equal(bodies.get('empty')?.length, 0);
  });

  it('a walk that fails rejects the iteration (never an unhandled error event)', async () => {
    const notADir = path.join(upper, 'file');
    await fs.writeFile(notADir, 'x');
    await assert.rejects(entries(upperDirLayer(notADir, new Set())), /ENOTDIR/);
    // Also when nobody iterates at once (the consumer sets up first).
    const later = upperDirLayer(notADir, new Set());
    await new Promise((r) => setTimeout(r, 50));
    await assert.rejects(entries(later), /ENOTDIR/);
  });

  it('the layer of an upper dir: files, links, hardlinks; a planted symlink is stored, not followed', async () => {
    await fs.mkdir(path.join(upper, 'etc'));
    await fs.writeFile(path.join(upper, 'etc', 'a'), 'a');
    await fs.link(path.join(upper, 'etc', 'a'), path.join(upper, 'etc', 'b'));
    await fs.symlink('/', path.join(upper, 'escape'));
    const got = await entries(upperDirLayer(upper, new Set()));
    assert.deepEqual(got, [
      ['escape', 'symlink', '/'],
      ['etc/', 'directory', ''],
      ['etc/a', 'file', ''],
      ['etc/b', 'link', 'etc/a'],
    ]);
  });

  it(
    'overlay whiteouts become .wh. entries and opaque dirs .wh..wh..opq',
    { skip: !isRoot && 'mknod and trusted.* xattrs need root' },
    async () => {
      await fs.mkdir(path.join(upper, 'bin'));
      execFileSync('mknod', ['-m', '000', path.join(upper, 'bin', 'ls'), 'c', '0', '0']);
      await fs.mkdir(path.join(upper, 'opt'));
      await fs.writeFile(path.join(upper, 'opt', 'new'), 'n');
      execFileSync('setfattr', ['-h', '-n', 'trusted.overlay.opaque', '-v', 'y', path.join(upper, 'opt')]);
      const opaque = await opaqueDirs(upper);
      assert.deepEqual([...opaque], ['opt']);
      const got = await entries(upperDirLayer(upper, opaque));
      assert.deepEqual(got, [
        ['bin/', 'directory', ''],
        ['bin/.wh.ls', 'file', ''],
        ['opt/', 'directory', ''],
        ['opt/.wh..wh..opq', 'file', ''],
        ['opt/new', 'file', ''],
      ]);
    },
  );
});
