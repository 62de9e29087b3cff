import assert from 'node:assert/strict';
import { mkdtemp, mkdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { mkdirAllInRoot, readFileInRoot, resolveInRoot, waitForRootfs } from './rootfs-path';

describe('rootfs paths', () => {
  let base: string;
  let root: string;
  let outside: string;

  before(async () => {
    base = await mkdtemp(path.join(os.tmpdir(), 'capsule-rootfs-path-'));
    root = path.join(base, 'rootfs');
    outside = path.join(base, 'outside');
    await mkdir(path.join(root, 'etc'), { recursive: true });
    await mkdir(outside, { recursive: true });
    await writeFile(path.join(outside, 'passwd'), 'host:x:0:0::/:/bin/sh\n');
    await writeFile(path.join(root, 'etc', 'group'), 'root:x:0:\n');
    await writeFile(path.join(root, 'file'), '');
  });
  after(async () => {
    await rm(base, { recursive: true, force: true });
  });

  it('an absolute symlink /etc/passwd -> host path is read inside the rootfs', async () => {
    await symlink(path.join(outside, 'passwd'), path.join(root, 'etc', 'passwd'));
    // Resolves to <root>/<outside>/passwd, which does not exist: the host file is never read.
    assert.equal(await readFileInRoot(root, '/etc/passwd'), undefined);
    assert.equal(await resolveInRoot(root, '/etc/passwd'), path.join(root, outside, 'passwd'));
  });

  it('a relative symlink with .. stops at the rootfs', async () => {
    await symlink('../../../../outside', path.join(root, 'escape'));
    assert.equal(await resolveInRoot(root, '/escape/passwd'), path.join(root, 'outside', 'passwd'));
  });

  it('reads a plain file', async () => {
    assert.equal(await readFileInRoot(root, '/etc/group'), 'root:x:0:\n');
  });

  it('working dir behind a symlink planted to escape is created inside the rootfs', async () => {
    await symlink(outside, path.join(root, 'work'));
    await mkdirAllInRoot(root, '/work/sub/dir');
    assert.ok((await stat(path.join(root, outside, 'sub', 'dir'))).isDirectory());
    await assert.rejects(stat(path.join(outside, 'sub')));
  });

  it('creates a missing working dir 0755', async () => {
    await mkdirAllInRoot(root, '/new/dir');
    const s = await stat(path.join(root, 'new', 'dir'));
    assert.ok(s.isDirectory());
    assert.equal(s.mode & 0o777, 0o755 & ~process.umask());
  });

  it('a working dir that is a file fails as dockerd does', async () => {
    await assert.rejects(mkdirAllInRoot(root, '/file'), /^Error: Cannot mkdir: \/file is not a directory$/);
    await assert.rejects(mkdirAllInRoot(root, '/file/sub'), /Cannot mkdir: \/file\/sub is not a directory/);
  });

  it('symlink loops fail', async () => {
    await symlink('loop', path.join(root, 'loop'));
    await assert.rejects(resolveInRoot(root, '/loop/x'), /too many levels/);
    assert.ok((await readFile(path.join(root, 'etc', 'group'))).length > 0);
  });
});

describe('waitForRootfs (the host mounts the rootfs into the shared dir just before CreateContainer)', () => {
  let base: string;
  before(async () => {
    base = await mkdtemp(path.join(os.tmpdir(), 'capsule-rootfs-wait-'));
  });
  after(async () => {
    await rm(base, { recursive: true, force: true });
  });

  it('waits while the rootfs is missing or empty, and answers true once it has entries', async () => {
    const rootfs = path.join(base, 'late', 'rootfs');
    setTimeout(() => void mkdir(rootfs, { recursive: true }), 30);
    setTimeout(() => void writeFile(path.join(rootfs, 'bin'), ''), 120);
    const t0 = Date.now();
    assert.equal(await waitForRootfs(rootfs, 5000), true);
    assert.ok(Date.now() - t0 >= 100, 'answered before the rootfs had entries');
  });

  it('gives up after its deadline on an empty directory', async () => {
    const rootfs = path.join(base, 'empty');
    await mkdir(rootfs);
    const t0 = Date.now();
    assert.equal(await waitForRootfs(rootfs, 150), false);
    assert.ok(Date.now() - t0 >= 150 && Date.now() - t0 < 2000);
  });
});
