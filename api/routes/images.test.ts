/**
 * The image routes over HTTP, against the fake image service: statuses, headers and bodies as
 * dockerd writes them (recorded traffic in shared/reference/client-traffic), and the image
 * events the daemon logs.
 */
import assert from 'node:assert/strict';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { BUSYBOX, startHarness, type Harness } from '../testing/harness';
import { request, type Reply } from '../testing/http';
import type { ImportOptions } from '../../daemon/daemon-images';

let h: Harness;

before(async () => {
  h = await startHarness({
    images: [
      BUSYBOX,
      { ref: 'labelled:1', config: { Cmd: ['sh'], Labels: { tier: 'web' } } },
      { ref: '127.0.0.1:5000/bb:v1', config: { Cmd: ['sh'] } },
    ],
    registry: [
      {
        ref: '127.0.0.1:5000/locked:v1',
        refuseCredentials: 'Head "http://127.0.0.1:5000/v2/locked/manifests/v1": no basic auth credentials',
      },
    ],
  });
});
after(async () => {
  await h.close();
});

/** Progress-stream lines of a reply. */
function lines(reply: Reply): Array<Record<string, unknown>> {
  return reply.text
    .split('\r\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** Image events logged since `sinceS` (unix seconds), read back through GET /events. */
async function imageEvents(
  sinceNs: bigint,
): Promise<Array<{ Action: string; Actor: { ID: string; Attributes: Record<string, string> } }>> {
  const since = `${sinceNs / 1_000_000_000n}.${String(sinceNs % 1_000_000_000n).padStart(9, '0')}`;
  const until = String(Math.ceil(Date.now() / 1000) + 1);
  const filters = encodeURIComponent(JSON.stringify({ type: ['image'] }));
  const reply = await request(
    h.socketPath,
    'GET',
    `/events?since=${since}&until=${until}&filters=${filters}`,
  );
  assert.equal(reply.status, 200, reply.text);
  return reply.text
    .split('\n')
    .filter((l) => l !== '')
    .map(
      (l) => JSON.parse(l) as { Action: string; Actor: { ID: string; Attributes: Record<string, string> } },
    );
}

function nowNs(): bigint {
  return BigInt(Date.now()) * 1_000_000n;
}

describe('tag, list, history', () => {
  it('POST /images/{name}/tag answers 201 with no body and logs a tag event', async () => {
    const t0 = nowNs();
    const reply = await request(
      h.socketPath,
      'POST',
      '/v1.43/images/busybox/tag?repo=127.0.0.1%3A5000%2Fbb&tag=v2',
    );
    assert.equal(reply.status, 201, reply.text);
    assert.equal(reply.body.length, 0);
    assert.equal(reply.headers['content-type'], undefined);
    const busybox = await h.images.get('busybox');
    assert.ok(busybox.repoTags.includes('127.0.0.1:5000/bb:v2'));
    const events = await imageEvents(t0);
    assert.deepEqual(
      events.map((e) => [e.Action, e.Actor.ID, e.Actor.Attributes.name]),
      [['tag', busybox.id, '127.0.0.1:5000/bb:v2']],
    );
  });

  it('tag errors: 404 for an unknown image, 400 for a bad repository', async () => {
    const missing = await request(h.socketPath, 'POST', '/images/nosuch/tag?repo=x');
    assert.equal(missing.status, 404);
    assert.deepEqual(missing.json(), { message: 'No such image: nosuch:latest' });
    const bad = await request(h.socketPath, 'POST', '/images/busybox/tag?repo=Bad');
    assert.equal(bad.status, 400);
    assert.deepEqual(bad.json(), { message: 'invalid reference format: repository name must be lowercase' });
  });

  it('GET /images/json: dockerd keys, filters in map and list forms', async () => {
    const all = await request(h.socketPath, 'GET', '/images/json');
    assert.equal(all.status, 200);
    assert.equal(all.headers['content-type'], 'application/json');
    const items = all.json<Array<Record<string, unknown>>>();
    assert.deepEqual(Object.keys(items[0] ?? {}), [
      'Containers',
      'Created',
      'Id',
      'Labels',
      'ParentId',
      'RepoDigests',
      'RepoTags',
      'SharedSize',
      'Size',
      'VirtualSize',
    ]);
    const map = encodeURIComponent(JSON.stringify({ label: { 'tier=web': true } }));
    const byLabel = (await request(h.socketPath, 'GET', `/images/json?filters=${map}`)).json<
      Array<{ RepoTags: string[] }>
    >();
    assert.deepEqual(
      byLabel.map((i) => i.RepoTags),
      [['labelled:1']],
    );
    const list = encodeURIComponent(JSON.stringify({ reference: ['labelled'] }));
    const byRef = (await request(h.socketPath, 'GET', `/images/json?filters=${list}`)).json<
      Array<{ RepoTags: string[] }>
    >();
    assert.deepEqual(
      byRef.map((i) => i.RepoTags),
      [['labelled:1']],
    );
    const bad = await request(
      h.socketPath,
      'GET',
      `/images/json?filters=${encodeURIComponent('{"foo":["x"]}')}`,
    );
    assert.equal(bad.status, 400);
    assert.deepEqual(bad.json(), { message: "Invalid filter 'foo'" });
  });

  it('the legacy ?filter= is a reference filter before API 1.41 and ignored from 1.41', async () => {
    const old = (await request(h.socketPath, 'GET', '/v1.40/images/json?filter=labelled')).json<unknown[]>();
    assert.equal(old.length, 1);
    const current = (await request(h.socketPath, 'GET', '/v1.41/images/json?filter=labelled')).json<
      unknown[]
    >();
    assert.ok(current.length > 1);
  });

  it('GET /images/{name}/history: dockerd keys, the top entry carries id and tags', async () => {
    const reply = await request(h.socketPath, 'GET', '/images/labelled:1/history');
    assert.equal(reply.status, 200);
    const [top] = reply.json<Array<Record<string, unknown>>>();
    assert.deepEqual(Object.keys(top ?? {}), ['Comment', 'Created', 'CreatedBy', 'Id', 'Size', 'Tags']);
    assert.deepEqual(top?.Tags, ['labelled:1']);
    const missing = await request(h.socketPath, 'GET', '/images/nosuch/history');
    assert.equal(missing.status, 404);
  });

  it('names with "/" and ":" route (inspect, history)', async () => {
    const reply = await request(h.socketPath, 'GET', '/v1.43/images/127.0.0.1:5000/bb:v1/json');
    assert.equal(reply.status, 200, reply.text);
    const history = await request(h.socketPath, 'GET', '/v1.43/images/127.0.0.1:5000/bb:v1/history');
    assert.equal(history.status, 200, history.text);
  });
});

describe('rmi and prune', () => {
  it('DELETE /images/{name}: untag while other names remain, then delete; events untag and delete', async () => {
    await h.images.tag('labelled:1', 'twice', '1');
    const image = await h.images.get('twice:1');
    const t0 = nowNs();
    const first = await request(h.socketPath, 'DELETE', '/images/twice:1');
    assert.equal(first.status, 200);
    assert.deepEqual(first.json(), [{ Untagged: 'twice:1' }]);
    const second = await request(h.socketPath, 'DELETE', '/images/labelled:1');
    assert.deepEqual(second.json(), [{ Untagged: 'labelled:1' }, { Deleted: image.id }]);
    const events = await imageEvents(t0);
    assert.deepEqual(
      events.map((e) => [e.Action, e.Actor.ID, e.Actor.Attributes.name]),
      [
        ['untag', image.id, image.id],
        ['untag', image.id, image.id],
        ['delete', image.id, image.id],
      ],
    );
    const missing = await request(h.socketPath, 'DELETE', '/images/nosuch:1');
    assert.equal(missing.status, 404);
    assert.deepEqual(missing.json(), { message: 'No such image: nosuch:1' });
  });

  it('DELETE of an image a container uses is 409 with dockerd text; ?force=1 deletes it', async () => {
    h.images.add({ ref: 'used:1', config: { Cmd: ['sh'] } });
    const image = await h.images.get('used:1');
    const created = await request(h.socketPath, 'POST', '/containers/create', { body: { Image: 'used:1' } });
    assert.equal(created.status, 201, created.text);
    const cid = created.json<{ Id: string }>().Id;
    const conflict = await request(h.socketPath, 'DELETE', '/images/used:1');
    assert.equal(conflict.status, 409);
    assert.deepEqual(conflict.json(), {
      message: `conflict: unable to remove repository reference "used:1" (must force) - container ${cid.slice(0, 12)} is using its referenced image ${image.id.slice(7, 19)}`,
    });
    const byId = await request(h.socketPath, 'DELETE', `/images/${image.id.slice(7, 19)}`);
    assert.equal(byId.status, 409);
    assert.match(
      byId.json<{ message: string }>().message,
      /\(must be forced\) - image is being used by stopped container/,
    );
    const forced = await request(h.socketPath, 'DELETE', '/images/used:1?force=1');
    assert.equal(forced.status, 200, forced.text);
    assert.deepEqual(forced.json(), [{ Untagged: 'used:1' }, { Deleted: image.id }]);
    await request(h.socketPath, 'DELETE', `/containers/${cid}`);
  });

  it('POST /images/prune: ImagesDeleted null when nothing goes, the deleted list otherwise', async () => {
    const none = await request(h.socketPath, 'POST', '/images/prune');
    assert.equal(none.status, 200);
    const noneBody = none.json<{ ImagesDeleted: unknown; SpaceReclaimed: number }>();
    // The image untagged above (used:1) is dangling and no longer used: it goes first.
    if (noneBody.ImagesDeleted !== null) {
      const again = await request(h.socketPath, 'POST', '/images/prune');
      assert.equal(again.text, '{"ImagesDeleted":null,"SpaceReclaimed":0}\n');
    }
    h.images.add({ ref: 'prunable:1', config: { Cmd: ['sh'] } });
    const prunable = await h.images.get('prunable:1');
    const filters = encodeURIComponent(JSON.stringify({ dangling: { false: true } }));
    const t0 = nowNs();
    const all = await request(h.socketPath, 'POST', `/images/prune?filters=${filters}`);
    const body = all.json<{ ImagesDeleted: Array<Record<string, string>>; SpaceReclaimed: number }>();
    assert.ok(body.ImagesDeleted.some((i) => i.Untagged === 'prunable:1'));
    assert.ok(body.ImagesDeleted.some((i) => i.Deleted === prunable.id));
    assert.ok(body.SpaceReclaimed > 0);
    const events = await imageEvents(t0);
    assert.ok(events.some((e) => e.Action === 'delete' && e.Actor.ID === prunable.id));
    const prune = events.find((e) => e.Action === 'prune');
    assert.equal(prune?.Actor.Attributes.reclaimed, String(body.SpaceReclaimed));
    const bad = await request(
      h.socketPath,
      'POST',
      `/images/prune?filters=${encodeURIComponent('{"x":["1"]}')}`,
    );
    assert.equal(bad.status, 400);
    assert.deepEqual(bad.json(), { message: "Invalid filter 'x'" });
    // Prune took every image: put busybox back for the tests below.
    h.images.add(BUSYBOX);
  });
});

describe('push, save, load, import', () => {
  it('POST /images/{name}/push streams progress with the X-Registry-Auth credentials; push event per tag', async () => {
    h.images.add({ ref: '127.0.0.1:5000/pushme:v1', config: { Cmd: ['sh'] } });
    const auth = Buffer.from(
      JSON.stringify({ username: 'alice', password: 'pw', serveraddress: '127.0.0.1:5000' }),
    ).toString('base64url');
    const t0 = nowNs();
    const reply = await request(h.socketPath, 'POST', '/v1.43/images/127.0.0.1:5000/pushme/push?tag=v1', {
      headers: { 'X-Registry-Auth': auth },
    });
    assert.equal(reply.status, 200, reply.text);
    assert.equal(reply.headers['content-type'], 'application/json');
    const out = lines(reply);
    assert.deepEqual(out[0], { status: 'The push refers to repository [127.0.0.1:5000/pushme]' });
    assert.deepEqual(Object.keys(out.at(-1) ?? {}), ['progressDetail', 'aux']);
    assert.deepEqual(h.images.pushes.at(-1), {
      ref: '127.0.0.1:5000/pushme:v1',
      auth: { username: 'alice', password: 'pw', serveraddress: '127.0.0.1:5000' },
    });
    const events = await imageEvents(t0);
    assert.deepEqual(
      events.map((e) => [e.Action, e.Actor.ID, e.Actor.Attributes.name]),
      [['push', '127.0.0.1:5000/pushme:v1', '127.0.0.1:5000/pushme']],
    );
  });

  it('push: "e30=" is no credentials; no header and no body is 400 as dockerd', async () => {
    await request(h.socketPath, 'POST', '/images/127.0.0.1:5000/pushme/push?tag=v1', {
      headers: { 'X-Registry-Auth': 'e30=' },
    });
    assert.deepEqual(h.images.pushes.at(-1), { ref: '127.0.0.1:5000/pushme:v1' });
    const missing = await request(h.socketPath, 'POST', '/images/127.0.0.1:5000/pushme/push?tag=v1');
    assert.equal(missing.status, 400);
    assert.deepEqual(missing.json(), { message: 'Bad parameters and missing X-Registry-Auth: EOF' });
  });

  it('push of a tag that does not exist reports the error in the stream after the first line', async () => {
    const reply = await request(h.socketPath, 'POST', '/images/127.0.0.1:5000/pushme/push?tag=nope', {
      headers: { 'X-Registry-Auth': 'e30=' },
    });
    assert.equal(reply.status, 200);
    const out = lines(reply);
    assert.equal(out.length, 2);
    assert.deepEqual(out[1], {
      errorDetail: { message: 'tag does not exist: 127.0.0.1:5000/pushme:nope' },
      error: 'tag does not exist: 127.0.0.1:5000/pushme:nope',
    });
  });

  it('GET /images/get and /images/{name}/get: application/x-tar; save events once read; load round trip', async () => {
    const busybox = await h.images.get('busybox');
    const t0 = nowNs();
    const saved = await request(h.socketPath, 'GET', '/v1.43/images/get?names=busybox');
    assert.equal(saved.status, 200);
    assert.equal(saved.headers['content-type'], 'application/x-tar');
    const single = await request(h.socketPath, 'GET', '/v1.43/images/busybox/get');
    assert.deepEqual(single.body, saved.body);
    const missing = await request(h.socketPath, 'GET', '/images/get?names=nosuch');
    assert.equal(missing.status, 404);
    const loaded = await request(h.socketPath, 'POST', '/images/load?quiet=1', {
      body: saved.body,
      headers: { 'Content-Type': 'application/x-tar' },
    });
    assert.equal(loaded.status, 200);
    assert.equal(loaded.headers['content-type'], 'application/json');
    assert.deepEqual(lines(loaded), [{ stream: 'Loaded image: busybox:latest\n' }]);
    const events = await imageEvents(t0);
    assert.deepEqual(
      events.map((e) => [e.Action, e.Actor.ID]),
      [
        ['save', busybox.id],
        ['save', busybox.id],
        ['load', busybox.id],
      ],
    );
  });

  it('load errors are reported in the stream after a 200, as dockerd', async () => {
    const reply = await request(h.socketPath, 'POST', '/images/load', {
      body: Buffer.from('not an archive'),
      headers: { 'Content-Type': 'application/x-tar' },
    });
    assert.equal(reply.status, 200);
    assert.deepEqual(lines(reply), [{ errorDetail: { message: 'unexpected EOF' }, error: 'unexpected EOF' }]);
  });

  it('POST /images/create?fromSrc=- imports with repo, changes and message; events tag then import', async () => {
    const t0 = nowNs();
    const reply = await request(
      h.socketPath,
      'POST',
      `/images/create?fromSrc=-&repo=imported%3A1&message=hello&changes=${encodeURIComponent('CMD ["/bin/sh"]')}&changes=${encodeURIComponent('ENV A 1')}`,
      { body: Buffer.from('rootfs tar bytes'), headers: { 'Content-Type': 'text/plain' } },
    );
    assert.equal(reply.status, 200, reply.text);
    const [line] = lines(reply);
    const id = String(line?.status);
    assert.match(id, /^sha256:[0-9a-f]{64}$/);
    const image = await h.images.get('imported:1');
    assert.equal(image.id, id);
    assert.deepEqual(image.config.config?.Cmd, ['/bin/sh']);
    assert.deepEqual(image.config.config?.Env, ['A=1']);
    assert.equal(image.config.history?.[0]?.comment, 'hello');
    const events = await imageEvents(t0);
    assert.deepEqual(
      events.map((e) => [e.Action, e.Actor.ID, e.Actor.Attributes.name]),
      [
        ['tag', id, 'imported:1'],
        ['import', id, id],
      ],
    );
    const bad = await request(
      h.socketPath,
      'POST',
      `/images/create?fromSrc=-&changes=${encodeURIComponent('RUN x')}`,
      {
        body: Buffer.from('x'),
      },
    );
    assert.equal(bad.status, 400);
    assert.deepEqual(bad.json(), { message: 'run is not a valid change command' });
  });

  it('POST /images/create?fromSrc=<URL> hands the URL to the service and streams its progress lines', async () => {
    const seen: ImportOptions[] = [];
    const original = h.images.import.bind(h.images);
    h.images.import = async (tarball, options) => {
      seen.push(options);
      options.onProgress?.({ status: `Downloading from ${options.url ?? ''}` });
      return original(tarball, options);
    };
    try {
      const reply = await request(
        h.socketPath,
        'POST',
        '/images/create?fromSrc=127.0.0.1%3A9%2Fx.tar&repo=fromurl&tag=2',
        { body: Buffer.from('ignored body'), headers: { 'Content-Type': 'text/plain' } },
      );
      assert.equal(reply.status, 200, reply.text);
      const [first, second] = lines(reply);
      assert.deepEqual(first, { status: 'Downloading from 127.0.0.1:9/x.tar' });
      assert.match(String(second?.status), /^sha256:[0-9a-f]{64}$/);
      assert.equal(seen[0]?.url, '127.0.0.1:9/x.tar');
      assert.equal(seen[0]?.repository, 'fromurl');
      assert.equal(seen[0]?.tag, '2');
    } finally {
      h.images.import = original;
    }
  });

  it('POST /images/create?fromImage without a tag asks for every tag (docker pull -a); with one, not', async () => {
    const seen: Array<{ reference: string; allTags: boolean | undefined }> = [];
    const original = h.images.pull.bind(h.images);
    h.images.pull = async (reference, options, onProgress) => {
      seen.push({ reference, allTags: options.allTags });
      onProgress({ status: `Status: Image is up to date for ${reference}` });
      return h.images.get('busybox:latest');
    };
    try {
      for (const query of [
        'fromImage=127.0.0.1%3A5000%2Fbb',
        'fromImage=127.0.0.1%3A5000%2Fbb&tag=',
        'fromImage=127.0.0.1%3A5000%2Fbb&tag=v1',
      ]) {
        const reply = await request(h.socketPath, 'POST', `/v1.41/images/create?${query}`);
        assert.equal(reply.status, 200, reply.text);
      }
      assert.deepEqual(seen, [
        { reference: '127.0.0.1:5000/bb', allTags: true },
        { reference: '127.0.0.1:5000/bb', allTags: true },
        { reference: '127.0.0.1:5000/bb:v1', allTags: false },
      ]);
    } finally {
      h.images.pull = original;
    }
  });
});

describe('POST /images/create: credentials refused', () => {
  it('the registry refusing the credentials gives 500 (as dockerd), not 401: the CLI would prompt for a login on 401', async () => {
    const reply = await request(
      h.socketPath,
      'POST',
      '/v1.43/images/create?fromImage=127.0.0.1%3A5000%2Flocked&tag=v1',
    );
    assert.equal(reply.status, 500, reply.text);
    assert.deepEqual(reply.json(), {
      message: 'Head "http://127.0.0.1:5000/v2/locked/manifests/v1": no basic auth credentials',
    });
  });
});

describe('POST /auth and GET /system/df', () => {
  it('login against a registry with basic auth; bad credentials are 401 with dockerd text', async () => {
    const server = http.createServer((req, res) => {
      if (req.headers.authorization === `Basic ${Buffer.from('alice:secret').toString('base64')}`) {
        res.writeHead(200).end('{}');
        return;
      }
      res.writeHead(401, { 'www-authenticate': 'Basic realm="test"' }).end();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
      const ok = await request(h.socketPath, 'POST', '/v1.43/auth', {
        body: { username: 'alice', password: 'secret', serveraddress: host },
      });
      assert.equal(ok.status, 200, ok.text);
      assert.equal(ok.text, '{"IdentityToken":"","Status":"Login Succeeded"}\n');
      const bad = await request(h.socketPath, 'POST', '/v1.43/auth', {
        body: { username: 'alice', password: 'wrong', serveraddress: host },
      });
      assert.equal(bad.status, 401);
      assert.deepEqual(bad.json(), {
        message: `login attempt to http://${host}/v2/ failed with status: 401 Unauthorized`,
      });
      const junk = await request(h.socketPath, 'POST', '/auth', {
        body: Buffer.from('x'),
        headers: { 'Content-Type': 'application/json' },
      });
      assert.equal(junk.status, 400);
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it('GET /system/df: images with container counts, containers, no volumes, BuildCache null', async () => {
    const created = await request(h.socketPath, 'POST', '/containers/create', { body: { Image: 'busybox' } });
    assert.equal(created.status, 201, created.text);
    const cid = created.json<{ Id: string }>().Id;
    try {
      const reply = await request(h.socketPath, 'GET', '/v1.43/system/df');
      assert.equal(reply.status, 200);
      const df = reply.json<{
        LayersSize: number;
        Images: Array<{ Id: string; Containers: number; SharedSize: number }>;
        Containers: Array<{ Id: string; SizeRw?: number }>;
        Volumes: unknown[];
        BuildCache: null;
        BuilderSize: number;
      }>();
      assert.deepEqual(Object.keys(df), [
        'LayersSize',
        'Images',
        'Containers',
        'Volumes',
        'BuildCache',
        'BuilderSize',
      ]);
      const busybox = await h.images.get('busybox');
      assert.equal(df.Images.find((i) => i.Id === busybox.id)?.Containers, 1);
      assert.ok(df.Containers.some((c) => c.Id === cid));
      assert.deepEqual(df.Volumes, []);
      assert.equal(df.BuildCache, null);
      const images = (await request(h.socketPath, 'GET', '/v1.43/system/df?type=image')).json<
        Record<string, unknown>
      >();
      assert.equal(images.Containers, null);
      assert.ok(Array.isArray(images.Images));
      const bad = await request(h.socketPath, 'GET', '/v1.43/system/df?type=nope');
      assert.equal(bad.status, 400);
      assert.deepEqual(bad.json(), { message: 'unknown object type: nope' });
    } finally {
      await request(h.socketPath, 'DELETE', `/containers/${cid}`);
    }
  });
});
