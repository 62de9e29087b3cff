import { describe, it, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tar from 'tar-stream';
import {
  RootfsArchiveError,
  archiveOut,
  cleanContainerPath,
  exportRootfs,
  extractInto,
  goFileMode,
  resolveContainerPath,
  statPath,
  userIdsInRoot,
} from './rootfs-archive';
import { readTarEntries } from './testing/tar';

let root: string;
let outside: string;

async function tarOf(
  entries: Array<tar.Header | { name: string; type?: string; linkname?: string; body?: string }>,
): Promise<AsyncIterable<Uint8Array>> {
  const pack = tar.pack();
  for (const e of entries) {
    const { body, ...header } = e as { body?: string; name: string };
    pack.entry(header as tar.Header, body ?? '');
  }
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack as unknown as AsyncIterable<Buffer>) chunks.push(c);
  const whole = Buffer.concat(chunks);
  return (async function* () {
    yield whole;
  })();
}

beforeEach(async () => {
  const base = await fs.mkdtemp(path.join(os.tmpdir(), 'rootfs-archive-'));
  root = path.join(base, 'root');
  outside = path.join(base, 'outside');
  await fs.mkdir(path.join(root, 'etc'), { recursive: true });
  await fs.mkdir(path.join(root, 'bin'));
  await fs.mkdir(outside);
  await fs.writeFile(path.join(outside, 'secret'), 'host secret');
  await fs.writeFile(
    path.join(root, 'etc', 'passwd'),
    'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n',
  );
  await fs.writeFile(path.join(root, 'etc', 'group'), 'root:x:0:\nstaff:x:50:\n');
  await fs.writeFile(path.join(root, 'bin', 'busybox'), 'bb');
  await fs.symlink('busybox', path.join(root, 'bin', 'sh'));
  // Planted links that point out of the rootfs, absolute and relative.
  await fs.symlink(outside, path.join(root, 'abs-escape'));
  await fs.symlink('../../../../../../..' + outside, path.join(root, 'rel-escape'));
});

afterEach(async () => {
  await fs.rm(path.dirname(root), { recursive: true, force: true });
});

describe('rootfs archive', () => {
  it('cleanContainerPath keeps a trailing "/" and "/."', () => {
    assert.equal(cleanContainerPath('tmp/x'), '/tmp/x');
    assert.equal(cleanContainerPath('/tmp/x/'), '/tmp/x/');
    assert.equal(cleanContainerPath('/tmp/x/.'), '/tmp/x/.');
    assert.equal(cleanContainerPath('/../..'), '/');
  });

  it('goFileMode has Go os.FileMode bits', () => {
    assert.equal(goFileMode({ mode: 0o40755 }), 2147484141);
    assert.equal(goFileMode({ mode: 0o120777 }), 134218239);
    assert.equal(goFileMode({ mode: 0o100644 }), 420);
  });

  it('a symlink pointing outside the rootfs resolves inside it', async () => {
    assert.equal(await resolveContainerPath(root, '/abs-escape/secret'), outside + '/secret');
    assert.equal(await resolveContainerPath(root, '/rel-escape/secret'), outside + '/secret');
    await assert.rejects(
      statPath(root, '/abs-escape/secret', 'c1'),
      /Could not find the file \/abs-escape\/secret in container c1/,
    );
    await assert.rejects(
      statPath(root, '/rel-escape/secret', 'c1'),
      (err: unknown) => err instanceof RootfsArchiveError && err.kind === 'NotFound',
    );
  });

  it('stat of a symlink is the link itself, linkTarget the resolved container path', async () => {
    const st = await statPath(root, '/bin/sh', 'c1');
    assert.equal(st.name, 'sh');
    assert.equal(st.size, 'busybox'.length);
    assert.equal(st.mode, 134218239);
    assert.equal(st.linkTarget, '/bin/busybox');
    const dir = await statPath(root, '/etc/', 'c1');
    assert.equal(dir.name, 'etc');
    assert.ok(dir.mode >= 2 ** 31, 'a directory has ModeDir');
    await assert.rejects(statPath(root, '/etc/passwd/', 'c1'), /not a directory/);
  });

  it('archive of a directory is named by its base name; "/." gives its contents', async () => {
    const named = await readTarEntries((await archiveOut(root, '/bin', 'c1')).stream);
    assert.deepEqual(
      named.map((e) => e.name),
      ['bin/', 'bin/busybox', 'bin/sh'],
    );
    assert.equal(named.find((e) => e.name === 'bin/sh')?.linkname, 'busybox');
    const contents = await readTarEntries((await archiveOut(root, '/bin/.', 'c1')).stream);
    assert.deepEqual(
      contents.map((e) => e.name),
      ['./', './busybox', './sh'],
    );
  });

  it('archive of a directory holding a link out of the rootfs carries the link, not the host file', async () => {
    const entries = await readTarEntries((await archiveOut(root, '/', 'c1')).stream);
    const escape = entries.find((e) => e.name === './abs-escape');
    assert.equal(escape?.type, 'symlink');
    assert.ok(!entries.some((e) => e.body === 'host secret'));
  });

  it('export lists every entry relative to the root', async () => {
    const names = (await readTarEntries(exportRootfs(root))).map((e) => e.name);
    assert.ok(names.includes('bin/busybox'));
    assert.ok(names.includes('etc/passwd'));
    assert.ok(!names.some((n) => n.startsWith('/') || n.startsWith('./')));
  });

  it('extracts into a directory, following the destination path inside the root', async () => {
    await fs.mkdir(path.join(root, 'tmp'));
    await fs.symlink('/tmp', path.join(root, 'tmplink'));
    await extractInto(root, '/tmplink', 'c1', await tarOf([{ name: 'a.txt', body: 'hello' }]), {
      noOverwriteDirNonDir: true,
    });
    assert.equal(await fs.readFile(path.join(root, 'tmp', 'a.txt'), 'utf8'), 'hello');
  });

  it('a destination symlink to a host dir lands inside the root, never on the host', async () => {
    await assert.rejects(
      extractInto(root, '/abs-escape', 'c1', await tarOf([{ name: 'pwned', body: 'x' }]), {
        noOverwriteDirNonDir: false,
      }),
      /Could not find the file \/abs-escape in container c1/,
    );
    await assert.rejects(fs.access(path.join(outside, 'pwned')));
  });

  it('tar entry ../../evil is rejected', async () => {
    await assert.rejects(
      extractInto(root, '/etc', 'c1', await tarOf([{ name: '../../evil', body: 'x' }]), {
        noOverwriteDirNonDir: false,
      }),
      (err: unknown) => err instanceof RootfsArchiveError && err.kind === 'InvalidArgument',
    );
    await assert.rejects(fs.access(path.join(path.dirname(root), 'evil')));
  });

  it('an entry written through a symlink planted by an earlier entry is rejected', async () => {
    await assert.rejects(
      extractInto(
        root,
        '/',
        'c1',
        await tarOf([
          { name: 'evil', type: 'symlink', linkname: outside },
          { name: 'evil/pwned', body: 'x' },
        ]),
        { noOverwriteDirNonDir: false },
      ),
      /path goes through the symlink/,
    );
    await assert.rejects(fs.access(path.join(outside, 'pwned')));
  });

  it('an entry written through a symlink already in the container is rejected', async () => {
    await assert.rejects(
      extractInto(root, '/', 'c1', await tarOf([{ name: 'abs-escape/pwned', body: 'x' }]), {
        noOverwriteDirNonDir: false,
      }),
      /path goes through the symlink/,
    );
    await assert.rejects(fs.access(path.join(outside, 'pwned')));
  });

  it('a hardlink to a file outside the extraction point is rejected', async () => {
    await assert.rejects(
      extractInto(
        root,
        '/etc',
        'c1',
        await tarOf([{ name: 'h', type: 'link', linkname: '../../outside/secret' }]),
        {
          noOverwriteDirNonDir: false,
        },
      ),
      /hardlink/,
    );
  });

  it('the extraction point must be a directory; a missing one is not found', async () => {
    await assert.rejects(
      extractInto(root, '/etc/passwd', 'c1', await tarOf([{ name: 'x' }]), { noOverwriteDirNonDir: false }),
      /extraction point is not a directory/,
    );
    await assert.rejects(
      extractInto(root, '/nonexist', 'c1', await tarOf([{ name: 'x' }]), { noOverwriteDirNonDir: false }),
      /Could not find the file \/nonexist in container c1/,
    );
  });

  it('noOverwriteDirNonDir refuses to replace a directory by a file', async () => {
    await assert.rejects(
      extractInto(root, '/', 'c1', await tarOf([{ name: 'etc', body: 'x' }]), { noOverwriteDirNonDir: true }),
      /cannot overwrite directory/,
    );
    assert.ok((await fs.lstat(path.join(root, 'etc'))).isDirectory());
  });

  it('resolves copyUIDGID owners from the rootfs passwd and group', async () => {
    assert.deepEqual(await userIdsInRoot(root, ''), { uid: 0, gid: 0 });
    assert.deepEqual(await userIdsInRoot(root, 'app'), { uid: 1000, gid: 1001 });
    assert.deepEqual(await userIdsInRoot(root, 'app:staff'), { uid: 1000, gid: 50 });
    assert.deepEqual(await userIdsInRoot(root, '4242:7'), { uid: 4242, gid: 7 });
    await assert.rejects(userIdsInRoot(root, 'nobody-here'), /unable to find user/);
  });
});
