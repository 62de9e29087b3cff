/**
 * The archive, export, changes and commit routes against the daemon with fakes: a running fake
 * sandbox serves cp from its writable layer with the same confined rules as the agent.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as tar from 'tar-stream';
import { startHarness, type Harness } from '../testing/harness';
import { eventually, request } from '../testing/http';

let h: Harness;
let id: string;

async function tarOf(entries: Array<{ name: string; body: string }>): Promise<Buffer> {
  const pack = tar.pack();
  for (const e of entries) pack.entry({ name: e.name }, Buffer.from(e.body));
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack as unknown as AsyncIterable<Buffer>) chunks.push(c);
  return Buffer.concat(chunks);
}

describe('archive routes', () => {
  before(async () => {
    h = await startHarness();
    const created = await request(h.socketPath, 'POST', '/containers/create?name=arc', {
      body: { Image: 'busybox', Cmd: ['sleep', '60'] },
    });
    id = created.json<{ Id: string }>().Id;
    assert.equal((await request(h.socketPath, 'POST', `/containers/${id}/start`)).status, 204);
    await eventually(() => h.runtime.latest(id));
  });
  after(async () => {
    await h.close();
  });

  it('PUT then HEAD and GET a file of a running container', async () => {
    const put = await request(
      h.socketPath,
      'PUT',
      '/containers/arc/archive?path=/&noOverwriteDirNonDir=true',
      {
        body: await tarOf([{ name: 'hello.txt', body: 'hi' }]),
        headers: { 'Content-Type': 'application/x-tar' },
      },
    );
    assert.equal(put.status, 200, put.text);
    const head = await request(h.socketPath, 'HEAD', '/containers/arc/archive?path=/hello.txt');
    assert.equal(head.status, 200);
    const stat = JSON.parse(
      Buffer.from(String(head.headers['x-docker-container-path-stat']), 'base64').toString(),
    ) as Record<string, unknown>;
    assert.deepEqual(Object.keys(stat), ['name', 'size', 'mode', 'mtime', 'linkTarget']);
    assert.equal(stat.name, 'hello.txt');
    assert.equal(stat.size, 2);
    const get = await request(h.socketPath, 'GET', '/containers/arc/archive?path=/hello.txt');
    assert.equal(get.status, 200);
    assert.equal(get.headers['content-type'], 'application/x-tar');
    assert.ok(get.body.subarray(0, 9).toString() === 'hello.txt');
  });

  it("a missing path is 404 and an empty one 400, with dockerd's texts", async () => {
    const missing = await request(h.socketPath, 'GET', '/containers/arc/archive?path=/nonexist');
    assert.equal(missing.status, 404);
    assert.deepEqual(missing.json(), { message: 'Could not find the file /nonexist in container arc' });
    const empty = await request(h.socketPath, 'GET', '/containers/arc/archive?path=');
    assert.equal(empty.status, 400);
    assert.deepEqual(empty.json(), { message: 'bad parameter: pathcannot be empty' });
    const nosuch = await request(h.socketPath, 'HEAD', '/containers/nosuch/archive?path=/');
    assert.equal(nosuch.status, 404);
  });

  it('a tar entry ../../etc/passwd is rejected with 400', async () => {
    const put = await request(h.socketPath, 'PUT', '/containers/arc/archive?path=/', {
      body: await tarOf([{ name: '../../etc/passwd', body: 'x' }]),
    });
    assert.equal(put.status, 400);
    assert.match(put.json<{ message: string }>().message, /outside of the extraction point/);
  });

  it('changes lists what the writable layer holds', async () => {
    const changes = await request(h.socketPath, 'GET', '/containers/arc/changes');
    assert.equal(changes.status, 200);
    assert.deepEqual(changes.json(), [{ Path: '/hello.txt', Kind: 1 }]);
  });

  it('commit answers 201 with the new id; --change errors are 400', async () => {
    const commit = await request(
      h.socketPath,
      'POST',
      '/commit?container=arc&repo=committed&tag=1&comment=c&author=a&changes=ENV%20A%3D1&changes=CMD%20%5B%22cat%22%5D',
    );
    assert.equal(commit.status, 201, commit.text);
    assert.match(commit.json<{ Id: string }>().Id, /^sha256:[0-9a-f]{64}$/);
    const request0 = h.images.commits[0];
    assert.equal(request0?.comment, 'c');
    assert.deepEqual(request0?.changes, ['ENV A=1', 'CMD ["cat"]']);
    assert.equal((await request(h.socketPath, 'GET', '/images/committed:1/json')).status, 200);
    const bad = await request(h.socketPath, 'POST', '/commit?container=arc&changes=FOO%20x');
    assert.equal(bad.status, 400);
    const unknown = await request(h.socketPath, 'POST', '/commit?container=nosuch');
    assert.deepEqual([unknown.status, unknown.json()], [404, { message: 'No such container: nosuch' }]);
  });

  it("a body config (docker-py's conf) is the new image's, its empty parts from the container (dockerd's merge)", async () => {
    const before = h.images.commits.length;
    const commit = await request(h.socketPath, 'POST', '/commit?container=arc&changes=ENV%20A%3D1', {
      body: { Cmd: ['echo', 'from-body'], Env: ['B=2'], Labels: { from: 'body' }, WorkingDir: '/w' },
    });
    assert.equal(commit.status, 201, commit.text);
    const sent = h.images.commits[before]?.containerConfig;
    assert.deepEqual(sent?.Cmd, ['echo', 'from-body']);
    assert.equal(sent?.WorkingDir, '/w');
    assert.deepEqual(sent?.Labels, { from: 'body' });
    // The body's Env first, then the container's variables it does not set (PATH from busybox).
    assert.equal(sent?.Env?.[0], 'B=2');
    assert.ok(
      sent?.Env?.some((e) => e.startsWith('PATH=')),
      JSON.stringify(sent?.Env),
    );
    assert.deepEqual(h.images.commits[before]?.changes, ['ENV A=1']);
    const notJson = await request(h.socketPath, 'POST', '/commit?container=arc', {
      body: 'x',
      headers: { 'Content-Type': 'text/plain' },
    });
    assert.equal(notJson.status, 400);
    assert.match(notJson.text, /must be 'application\/json'/);
  });
});
