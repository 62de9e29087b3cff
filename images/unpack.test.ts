import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, it, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as zlib from 'node:zlib';
import fc from 'fast-check';
import { DataLossError, NotImplementedError } from '../common/errdefs';
import { buildTar, type FixtureEntry } from './testing/image-builder';
import { zstdStoredFrame } from './testing/zstd-frames';
import { cleanEntryName } from '../common/rootfs-archive';
import { detectCompression, directorySize, extractLayer, LayerBreakoutError } from './unpack';

const isRoot = process.getuid?.() === 0;
const needsRoot = isRoot ? {} : { skip: 'needs root (mknod, trusted xattrs, chown)' };

async function* chunks(data: Buffer, size = 777): AsyncGenerator<Buffer> {
  for (let i = 0; i < data.length; i += size) yield data.subarray(i, i + size);
}

/**
 * A sandbox: <base>/canary (a file), <base>/outside/ (a dir with a file), and <base>/root/ where
 * layers are extracted. `outsideSnapshot` captures everything outside root/ to prove it unchanged.
 */
interface Sandbox {
  base: string;
  root: string;
  canary: string;
  outside: string;
}

let tmpBase: string;

async function sandbox(): Promise<Sandbox> {
  const base = await fs.mkdtemp(path.join(tmpBase, 'sb-'));
  const root = path.join(base, 'root');
  const canary = path.join(base, 'canary');
  const outside = path.join(base, 'outside');
  await fs.mkdir(root);
  await fs.writeFile(canary, 'canary\n', { mode: 0o600 });
  await fs.mkdir(outside, { mode: 0o700 });
  await fs.chmod(outside, 0o700);
  await fs.writeFile(path.join(outside, 'file'), 'outside\n', { mode: 0o600 });
  return { base, root, canary, outside };
}

/** Everything under base except root/: path → type, mode, size, nlink, content hash, xattrs. */
async function outsideSnapshot(sb: Sandbox): Promise<string> {
  const lines: string[] = [];
  const walk = async (dir: string): Promise<void> => {
    for (const name of (await fs.readdir(dir)).sort()) {
      const abs = path.join(dir, name);
      if (abs === sb.root) continue;
      const st = await fs.lstat(abs);
      let extra = '';
      if (st.isFile())
        extra = createHash('sha256')
          .update(await fs.readFile(abs))
          .digest('hex');
      if (st.isSymbolicLink()) extra = await fs.readlink(abs);
      lines.push(
        `${path.relative(sb.base, abs)} ${st.mode.toString(8)} ${st.uid}:${st.gid} ${st.size} ${st.nlink} ${extra}`,
      );
      if (st.isDirectory()) await walk(abs);
    }
  };
  await walk(sb.base);
  lines.push(`base ${(await fs.lstat(sb.base)).mode.toString(8)}`);
  if (isRoot) {
    lines.push(
      execFileSync('getfattr', ['--absolute-names', '-R', '-h', '-d', '-m', '-', sb.outside], {
        encoding: 'utf8',
      }),
    );
  }
  return lines.join('\n');
}

async function extractEntries(sb: Sandbox, entries: FixtureEntry[]): Promise<unknown> {
  const data = await buildTar(entries);
  try {
    await extractLayer(chunks(data), sb.root);
    return undefined;
  } catch (err) {
    return err;
  }
}

/** Extracts `entries` and asserts nothing outside the root changed; returns the error, if any. */
async function attack(entries: (sb: Sandbox) => FixtureEntry[]): Promise<{ sb: Sandbox; error: unknown }> {
  const sb = await sandbox();
  const before = await outsideSnapshot(sb);
  const error = await extractEntries(sb, entries(sb));
  assert.equal(await outsideSnapshot(sb), before, 'something outside the layer root changed');
  assert.equal(await fs.readFile(sb.canary, 'utf8'), 'canary\n');
  return { sb, error };
}

function assertBreakout(error: unknown): void {
  assert.ok(error instanceof LayerBreakoutError, `expected a LayerBreakoutError, got ${String(error)}`);
  assert.ok(error instanceof DataLossError);
  assert.match(error.message, /^failed to register layer: /);
}

before(async () => {
  tmpBase = await fs.mkdtemp(path.join(os.tmpdir(), 'capsule-unpack-test-'));
});
after(async () => {
  // read-only dirs extracted by the tests block removal when not root
  execFileSync('chmod', ['-R', 'u+rwX', tmpBase]);
  await fs.rm(tmpBase, { recursive: true, force: true });
});

describe('cleanEntryName', () => {
  it('makes names relative and clean', () => {
    assert.equal(cleanEntryName('./a/b/'), 'a/b');
    assert.equal(cleanEntryName('/etc/passwd'), 'etc/passwd');
    assert.equal(cleanEntryName('a/./b//c'), 'a/b/c');
    assert.equal(cleanEntryName('a/../b'), 'b');
    assert.equal(cleanEntryName('./'), '');
    assert.equal(cleanEntryName('../x'), null);
    assert.equal(cleanEntryName('a/../../x'), null);
    assert.equal(cleanEntryName('/../x'), null);
  });

  it('never yields a path that climbs or is absolute (property)', () => {
    const part = fc.constantFrom('a', 'b', '..', '.', '', 'c.d', '.wh.x', '...');
    fc.assert(
      fc.property(fc.array(part, { maxLength: 12 }), fc.boolean(), (parts, absolute) => {
        const name = (absolute ? '/' : '') + parts.join('/');
        const cleaned = cleanEntryName(name);
        if (cleaned === null) return;
        assert.ok(!cleaned.startsWith('/'));
        assert.ok(!cleaned.split('/').includes('..'));
        assert.ok(!cleaned.split('/').includes('.'));
        assert.equal(path.posix.join('/root', cleaned).startsWith('/root'), true);
      }),
      { numRuns: 2000, interruptAfterTimeLimit: 5000 },
    );
  });
});

describe('detectCompression', () => {
  it('knows gzip, zstd, bzip2, xz and plain tar', () => {
    assert.equal(detectCompression(zlib.gzipSync(Buffer.from('x'))), 'gzip');
    assert.equal(detectCompression(Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0, 0])), 'zstd');
    assert.equal(detectCompression(Buffer.from('BZh91AY')), 'bzip2');
    assert.equal(detectCompression(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00])), 'xz');
    assert.equal(detectCompression(Buffer.from('file.txt\0\0\0')), 'none');
    assert.equal(detectCompression(Buffer.alloc(0)), 'none');
  });
});

describe('extractLayer: attacks', () => {
  it('layer entry ../../canary is rejected', async () => {
    const { error } = await attack(() => [{ name: '../canary', content: 'pwned\n' }]);
    assertBreakout(error);
    const { error: e2 } = await attack(() => [{ name: '../../canary', content: 'pwned\n' }]);
    assertBreakout(e2);
  });

  it('layer entry a/../../canary (climbing after descending) is rejected', async () => {
    const { error } = await attack(() => [
      { name: 'a/', type: 'directory' },
      { name: 'a/../../canary', content: 'pwned\n' },
    ]);
    assertBreakout(error);
  });

  it('layer entry with an absolute path to the canary is confined to the layer root', async () => {
    const { sb, error } = await attack((s) => [{ name: s.canary, content: 'pwned\n' }]);
    assert.equal(error, undefined);
    assert.equal(await fs.readFile(path.join(sb.root, sb.canary), 'utf8'), 'pwned\n');
  });

  it('symlink to .. then a file written through it is rejected', async () => {
    const { error } = await attack(() => [
      { name: 'evil', type: 'symlink', linkname: '..' },
      { name: 'evil/canary', content: 'pwned\n' },
    ]);
    assertBreakout(error);
  });

  it('symlink to / then a file under it is rejected', async () => {
    const { error } = await attack((s) => [
      { name: 'evil', type: 'symlink', linkname: '/' },
      { name: `evil${s.canary}`, content: 'pwned\n' },
    ]);
    assertBreakout(error);
  });

  it('symlink to an outside dir then a directory entry under it is rejected', async () => {
    const { error } = await attack((s) => [
      { name: 'evil', type: 'symlink', linkname: s.outside },
      { name: 'evil/sub/', type: 'directory', mode: 0o777 },
    ]);
    assertBreakout(error);
  });

  it('symlink planted where a directory was, then a file under it, is rejected', async () => {
    const { error } = await attack((s) => [
      { name: 'd/', type: 'directory' },
      { name: 'd/ok', content: 'ok\n' },
      { name: 'd', type: 'symlink', linkname: s.outside },
      { name: 'd/file', content: 'pwned\n' },
    ]);
    assertBreakout(error);
  });

  it('directory replaced by a symlink does not get its metadata applied through the symlink', async () => {
    const { sb, error } = await attack((s) => [
      { name: 'd/', type: 'directory', mode: 0o777 },
      { name: 'd', type: 'symlink', linkname: s.outside },
    ]);
    assert.equal(error, undefined);
    assert.ok((await fs.lstat(path.join(sb.root, 'd'))).isSymbolicLink());
  });

  it('file entry over a symlink to the canary replaces the link, not the canary', async () => {
    const { sb, error } = await attack((s) => [
      { name: 'f', type: 'symlink', linkname: s.canary },
      { name: 'f', content: 'pwned\n', mode: 0o666 },
    ]);
    assert.equal(error, undefined);
    const st = await fs.lstat(path.join(sb.root, 'f'));
    assert.ok(st.isFile());
    assert.equal(await fs.readFile(path.join(sb.root, 'f'), 'utf8'), 'pwned\n');
  });

  it('hardlink to ../../canary (outside the root) is rejected', async () => {
    const { error } = await attack(() => [{ name: 'hl', type: 'link', linkname: '../canary' }]);
    assertBreakout(error);
    const { error: e2 } = await attack(() => [{ name: 'hl', type: 'link', linkname: '../../canary' }]);
    assertBreakout(e2);
  });

  it('hardlink to the canary by absolute path stays inside the root and is rejected there', async () => {
    const { error } = await attack((s) => [{ name: 'hl', type: 'link', linkname: s.canary }]);
    assertBreakout(error);
  });

  it('hardlink through a symlink to an outside dir is rejected', async () => {
    const { error } = await attack((s) => [
      { name: 'evil', type: 'symlink', linkname: s.base },
      { name: 'hl', type: 'link', linkname: 'evil/canary' },
      { name: 'hl', content: 'pwned\n' },
    ]);
    assertBreakout(error);
  });

  it('hardlink to a symlink that points outside links the symlink itself', async () => {
    const { sb, error } = await attack((s) => [
      { name: 'ln', type: 'symlink', linkname: s.canary },
      { name: 'hl', type: 'link', linkname: 'ln' },
    ]);
    assert.equal(error, undefined);
    const st = await fs.lstat(path.join(sb.root, 'hl'));
    assert.ok(st.isSymbolicLink());
    assert.equal(st.nlink, 2);
  });

  it('hardlink to a directory is rejected', async () => {
    const { error } = await attack(() => [
      { name: 'd/', type: 'directory' },
      { name: 'hl', type: 'link', linkname: 'd' },
    ]);
    assertBreakout(error);
  });

  it('whiteout ".wh." with no name is rejected', async () => {
    const { error } = await attack(() => [{ name: 'dir/.wh.', content: '' }]);
    assertBreakout(error);
  });

  it('whiteout ".wh.." (the directory itself) is rejected', async () => {
    const { error } = await attack(() => [{ name: 'dir/.wh..', content: '' }]);
    assertBreakout(error);
  });

  it('whiteout ".wh..." (the parent) is rejected', async () => {
    const { error } = await attack(() => [{ name: 'dir/.wh...', content: '' }]);
    assertBreakout(error);
    const { error: e2 } = await attack(() => [{ name: '.wh...', content: '' }]);
    assertBreakout(e2);
  });

  it('whiteout with ../ in its path (../.wh.canary) is rejected', async () => {
    const { error } = await attack(() => [{ name: '../.wh.canary', content: '' }]);
    assertBreakout(error);
    const { error: e2 } = await attack(() => [{ name: 'a/../../.wh.canary', content: '' }]);
    assertBreakout(e2);
  });

  it('whiteout written through a symlink to an outside dir is rejected', async () => {
    const { error } = await attack((s) => [
      { name: 'evil', type: 'symlink', linkname: s.base },
      { name: 'evil/.wh.canary', content: '' },
    ]);
    assertBreakout(error);
  });

  it('opaque marker written through a symlink to an outside dir is rejected', async () => {
    const { error } = await attack((s) => [
      { name: 'evil', type: 'symlink', linkname: s.outside },
      { name: 'evil/.wh..wh..opq', content: '' },
    ]);
    assertBreakout(error);
  });

  it('block and character device nodes are not created', async () => {
    const { sb, error } = await attack(() => [
      { name: 'dev/', type: 'directory' },
      { name: 'dev/sda', type: 'block-device', devmajor: 8, devminor: 0 },
      { name: 'dev/mem', type: 'character-device', devmajor: 1, devminor: 1 },
    ]);
    assert.equal(error, undefined);
    assert.deepEqual(await fs.readdir(path.join(sb.root, 'dev')), []);
  });

  it('overlay xattrs forged in the tar (trusted.overlay.*) are not applied', needsRoot, async () => {
    const { sb, error } = await attack((): FixtureEntry[] => [
      { name: 'd/', type: 'directory', pax: { 'SCHILY.xattr.trusted.overlay.opaque': 'y' } },
      { name: 'f', content: 'x', pax: { 'SCHILY.xattr.trusted.overlay.redirect': '/etc' } },
    ]);
    assert.equal(error, undefined);
    const attrs = execFileSync('getfattr', ['--absolute-names', '-R', '-h', '-d', '-m', '-', sb.root], {
      encoding: 'utf8',
    });
    assert.doesNotMatch(attrs, /trusted\.overlay/);
  });

  it('entry below a regular file is rejected', async () => {
    const { error } = await attack(() => [
      { name: 'f', content: 'x' },
      { name: 'f/g', content: 'y' },
    ]);
    assertBreakout(error);
  });

  it('random entry sequences with symlinks, hardlinks, .. and whiteouts never write outside the root (property)', async () => {
    const name = fc
      .array(fc.constantFrom('a', 'b', 'evil', '..', '.', '.wh.a', '.wh..wh..opq', '.wh...'), {
        minLength: 1,
        maxLength: 4,
      })
      .map((p) => p.join('/'));
    const entry = fc.record({
      name,
      type: fc.constantFrom('file', 'directory', 'symlink', 'link'),
      target: fc.constantFrom('..', '../..', '/', 'OUTSIDE', 'CANARY', 'a', 'evil', 'a/b'),
      absolute: fc.boolean(),
    });
    await fc.assert(
      fc.asyncProperty(fc.array(entry, { minLength: 1, maxLength: 8 }), async (spec) => {
        await attack((s) =>
          spec.map((e): FixtureEntry => {
            const target = e.target === 'OUTSIDE' ? s.outside : e.target === 'CANARY' ? s.canary : e.target;
            const entryName = (e.absolute ? '/' : '') + e.name;
            if (e.type === 'file') return { name: entryName, content: 'pwned\n', mode: 0o777 };
            if (e.type === 'directory') return { name: entryName, type: 'directory', mode: 0o777 };
            return { name: entryName, type: e.type as 'symlink' | 'link', linkname: target };
          }),
        );
      }),
      { numRuns: 150, interruptAfterTimeLimit: 20_000 },
    );
  });
});

describe('extractLayer: content', () => {
  it('computes the diffID over the uncompressed stream, gzip or plain', async () => {
    const data = await buildTar([{ name: 'a', content: 'hello\n' }]);
    const diffID = `sha256:${createHash('sha256').update(data).digest('hex')}`;
    const sb1 = await sandbox();
    assert.equal((await extractLayer(chunks(data), sb1.root)).diffID, diffID);
    const sb2 = await sandbox();
    assert.equal((await extractLayer(chunks(zlib.gzipSync(data), 5), sb2.root)).diffID, diffID);
    assert.equal(await fs.readFile(path.join(sb2.root, 'a'), 'utf8'), 'hello\n');
  });

  it('extracts zstd layers (diffID over the plain tar) and rejects bzip2 as not implemented', async () => {
    const data = await buildTar([{ name: 'z', content: 'zstd layer\n' }]);
    const diffID = `sha256:${createHash('sha256').update(data).digest('hex')}`;
    const sb = await sandbox();
    assert.equal((await extractLayer(chunks(zstdStoredFrame(data), 100), sb.root)).diffID, diffID);
    assert.equal(await fs.readFile(path.join(sb.root, 'z'), 'utf8'), 'zstd layer\n');
    const sb2 = await sandbox();
    await assert.rejects(
      extractLayer(chunks(Buffer.from([0x42, 0x5a, 0x68, 0x39, 1, 2, 3, 4])), sb2.root),
      NotImplementedError,
    );
  });

  it('fails with DataLossError on a truncated zstd stream', async () => {
    const frame = zstdStoredFrame(await buildTar([{ name: 'a', content: 'x'.repeat(100_000) }]));
    const sb = await sandbox();
    await assert.rejects(extractLayer(chunks(frame.subarray(0, frame.length - 100)), sb.root), DataLossError);
  });

  it('fails with DataLossError on a truncated gzip stream', async () => {
    const data = zlib.gzipSync(await buildTar([{ name: 'a', content: 'x'.repeat(100_000) }]));
    const sb = await sandbox();
    await assert.rejects(extractLayer(chunks(data.subarray(0, data.length - 100)), sb.root), DataLossError);
  });

  it('fails on a truncated tar stream', async () => {
    const data = await buildTar([{ name: 'a', content: 'x'.repeat(100_000) }]);
    const sb = await sandbox();
    await assert.rejects(extractLayer(chunks(data.subarray(0, 50_000)), sb.root), DataLossError);
  });

  it('reports consumed input bytes', async () => {
    const data = zlib.gzipSync(await buildTar([{ name: 'a', content: 'x'.repeat(300_000) }]));
    const sb = await sandbox();
    const seen: number[] = [];
    await extractLayer(chunks(data, 1000), sb.root, { onInputBytes: (n) => seen.push(n) });
    assert.equal(seen.at(-1), data.length);
  });

  it('creates files, dirs, symlinks and hardlinks with modes, owners and mtimes', async () => {
    const sb = await sandbox();
    const mtime = new Date('2001-02-03T04:05:06Z');
    const error = await extractEntries(sb, [
      { name: './', type: 'directory', mode: 0o755, mtime },
      { name: 'implicit/parent/file', content: 'x', mode: 0o640, uid: 1000, gid: 1001, mtime },
      { name: 'ro/', type: 'directory', mode: 0o555, mtime },
      { name: 'ro/inside', content: 'written before the dir became read-only' },
      { name: 'suid', content: '#!/bin/sh\n', mode: 0o4755, uid: 1000 },
      { name: 'link', type: 'symlink', linkname: '/etc/passwd', mtime },
      { name: 'hard', type: 'link', linkname: 'suid' },
      { name: 'dup', content: 'first' },
      { name: 'dup', content: 'second' },
      { name: 'ro/', type: 'directory', mode: 0o555, mtime },
    ]);
    assert.equal(error, undefined);
    const st = (p: string) => fs.lstat(path.join(sb.root, p));
    assert.equal((await st('implicit')).mode & 0o7777, 0o755);
    assert.equal((await st('implicit/parent/file')).mode & 0o7777, 0o640);
    assert.equal((await st('implicit/parent/file')).mtime.getTime(), mtime.getTime());
    assert.equal((await st('ro')).mode & 0o7777, 0o555);
    assert.equal((await st('ro')).mtime.getTime(), mtime.getTime());
    assert.equal(
      await fs.readFile(path.join(sb.root, 'ro/inside'), 'utf8'),
      'written before the dir became read-only',
    );
    assert.equal((await st('link')).isSymbolicLink(), true);
    assert.equal(await fs.readlink(path.join(sb.root, 'link')), '/etc/passwd');
    assert.equal((await st('hard')).ino, (await st('suid')).ino);
    assert.equal(await fs.readFile(path.join(sb.root, 'dup'), 'utf8'), 'second');
    assert.equal((await fs.lstat(sb.root)).mtime.getTime(), mtime.getTime());
    if (isRoot) {
      assert.equal((await st('implicit/parent/file')).uid, 1000);
      assert.equal((await st('implicit/parent/file')).gid, 1001);
      // set-uid survives the chown because the mode is set after it
      assert.equal((await st('suid')).mode & 0o7777, 0o4755);
      assert.equal((await st('suid')).uid, 1000);
    }
    const expected = ['x', 'written before the dir became read-only', '#!/bin/sh\n', '/etc/passwd', 'second'];
    assert.equal(
      await directorySize(sb.root),
      expected.reduce((n, s) => n + Buffer.byteLength(s), 0),
    );
  });

  it('turns .wh.<name> into an overlay whiteout and .wh..wh..opq into an opaque dir', needsRoot, async () => {
    const sb = await sandbox();
    const error = await extractEntries(sb, [
      { name: 'etc/', type: 'directory' },
      { name: 'etc/.wh.passwd', content: '' },
      { name: '.wh.toplevel', content: '' },
      { name: 'opq/', type: 'directory', mode: 0o750 },
      { name: 'opq/.wh..wh..opq', content: '' },
      { name: 'opq/new', content: 'new' },
      { name: 'implicit/.wh..wh..opq', content: '' },
      { name: 'etc/.wh..wh.plnk', content: '' },
    ]);
    assert.equal(error, undefined);
    for (const p of ['etc/passwd', 'toplevel']) {
      const st = await fs.lstat(path.join(sb.root, p));
      assert.ok(st.isCharacterDevice(), `${p} is a whiteout`);
      assert.equal(st.rdev, 0);
    }
    assert.deepEqual((await fs.readdir(path.join(sb.root, 'etc'))).sort(), ['passwd']);
    for (const dir of ['opq', 'implicit']) {
      const value = execFileSync(
        'getfattr',
        ['--absolute-names', '--only-values', '-h', '-n', 'trusted.overlay.opaque', path.join(sb.root, dir)],
        {
          encoding: 'utf8',
        },
      );
      assert.equal(value, 'y');
    }
    assert.equal((await fs.lstat(path.join(sb.root, 'opq'))).mode & 0o7777, 0o750);
    assert.equal(await fs.readFile(path.join(sb.root, 'opq/new'), 'utf8'), 'new');
  });
});
