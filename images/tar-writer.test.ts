import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import * as tar from 'tar-stream';
import { entryHeader, tarStream, type TarEntry } from './tar-writer';
import { BUSYBOX_CONFIG, BUSYBOX_CONFIG_HEADER_B64, BUSYBOX_ID } from './testing/dockerd-reference';

async function collect(entries: TarEntry[]): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of tarStream(entries)) chunks.push(c);
  return Buffer.concat(chunks);
}

describe('tar-writer', () => {
  it("writes the header Go's archive/tar wrote in dockerd's docker save", () => {
    const [block] = entryHeader({
      name: `${BUSYBOX_ID.slice(7)}.json`,
      type: 'file',
      mode: 0o644,
      mtime: 1795985031,
      size: Buffer.byteLength(BUSYBOX_CONFIG),
    });
    assert.equal(block?.toString('base64'), BUSYBOX_CONFIG_HEADER_B64);
  });

  it('produces an archive tar parsers read back (files, dirs, symlinks, long names)', async () => {
    const long = `${'d'.repeat(90)}/${'f'.repeat(60)}`;
    const bytes = await collect([
      { name: 'dir/', type: 'directory', mode: 0o755, mtime: 1 },
      { name: 'dir/a', type: 'file', mode: 0o644, mtime: 2, size: 5, body: Buffer.from('hello') },
      {
        name: 'dir/b',
        type: 'file',
        mode: 0o600,
        mtime: 3,
        size: 600,
        body: async function* () {
          yield Buffer.alloc(100, 1);
          yield Buffer.alloc(500, 2);
        },
      },
      { name: 'dir/link', type: 'symlink', mode: 0o777, mtime: 4, linkname: '../x' },
      { name: long, type: 'file', mode: 0o644, mtime: 5, size: 0, body: Buffer.alloc(0) },
    ]);
    assert.equal(bytes.length % 512, 0);
    const seen: Array<{ name: string; type: string; size: number; linkname: string | null; mode: number }> =
      [];
    const extract = tar.extract();
    const done = (async () => {
      for await (const entry of extract) {
        const h = entry.header;
        let size = 0;
        for await (const c of entry) size += (c as Buffer).length;
        seen.push({ name: h.name, type: h.type, size, linkname: h.linkname, mode: h.mode });
      }
    })();
    extract.end(bytes);
    await done;
    assert.deepEqual(
      seen.map((s) => [s.name, s.type, s.size]),
      [
        ['dir/', 'directory', 0],
        ['dir/a', 'file', 5],
        ['dir/b', 'file', 600],
        ['dir/link', 'symlink', 0],
        [long, 'file', 0],
      ],
    );
    assert.equal(seen[3]?.linkname, '../x');
    assert.equal(seen[2]?.mode, 0o100600, 'the mode keeps the file-type bits, as Go writes it');
  });

  it('fails when a body does not match its announced size', async () => {
    await assert.rejects(
      collect([
        {
          name: 'x',
          type: 'file',
          mode: 0o644,
          mtime: 0,
          size: 10,
          body: async function* () {
            yield Buffer.alloc(4);
          },
        },
      ]),
      /4 bytes, header says 10/,
    );
  });
});
