import { describe, it, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tar from 'tar-stream';
import { ArchiveService } from './archive';
import { AgentError } from './errors';

let base: string;
let rootfs: string;

async function tarOf(name: string, body: string): Promise<AsyncIterable<Uint8Array>> {
  const pack = tar.pack();
  pack.entry({ name }, Buffer.from(body));
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack as unknown as AsyncIterable<Buffer>) chunks.push(c);
  const whole = Buffer.concat(chunks);
  return (async function* () {
    yield whole;
  })();
}

const kindOf = (kind: string) => (err: unknown) => err instanceof AgentError && err.kind === kind;

beforeEach(async () => {
  base = await fs.mkdtemp(path.join(os.tmpdir(), 'agent-archive-'));
  rootfs = path.join(base, 'rootfs');
  await fs.mkdir(path.join(rootfs, 'tmp'), { recursive: true });
  await fs.writeFile(path.join(base, 'agent-secret'), 'guest file outside the container');
  await fs.symlink('/../../agent-secret', path.join(rootfs, 'tmp', 'link'));
});
afterEach(async () => {
  await fs.rm(base, { recursive: true, force: true });
});

describe('agent archive service', () => {
  const service = () =>
    new ArchiveService((id) => {
      if (id !== 'c1') throw new AgentError('NotFound', `no such container: ${id}`);
      return rootfs;
    });

  it('stat resolves inside the container rootfs: a link out of it finds nothing', async () => {
    const st = await service().stat('c1', '/tmp/link', 'web');
    assert.equal(st.link_target, '/agent-secret');
    await assert.rejects(service().stat('c1', '/tmp/link/', 'web'), kindOf('NotFound'));
    await assert.rejects(
      service().stat('c1', '/nope', 'web'),
      /Could not find the file \/nope in container web/,
    );
  });

  it('ArchiveIn writes into the rootfs and rejects a ../ entry as InvalidArgument', async () => {
    const options = { noOverwriteDirNonDir: true, copyUidGid: false, user: '' };
    await service().in('c1', '/tmp', 'web', options, await tarOf('a.txt', 'a'));
    assert.equal(await fs.readFile(path.join(rootfs, 'tmp', 'a.txt'), 'utf8'), 'a');
    await assert.rejects(
      service().in('c1', '/tmp', 'web', options, await tarOf('../../../x', 'x')),
      kindOf('InvalidArgument'),
    );
    await assert.rejects(fs.access(path.join(base, 'x')));
  });

  it('an unknown container is NotFound', async () => {
    await assert.rejects(service().stat('nope', '/', 'nope'), kindOf('NotFound'));
  });
});
