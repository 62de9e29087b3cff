import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Demuxer, demuxAll } from './streams/multiplex';
import { BUSYBOX, startHarness, type Harness } from './testing/harness';
import { RawConnection, containerEvents, eventually, request } from './testing/http';

let h: Harness;

before(async () => {
  h = await startHarness({ images: [BUSYBOX, { ref: 'tagged:1', config: { Cmd: ['echo', 'from-image'] } }] });
});
after(async () => {
  await h.close();
});

async function create(body: Record<string, unknown>, name?: string): Promise<string> {
  const reply = await request(h.socketPath, 'POST', `/containers/create${name ? `?name=${name}` : ''}`, {
    body: { Image: 'busybox', ...body },
  });
  assert.equal(reply.status, 201, reply.text);
  return reply.json<{ Id: string }>().Id;
}

describe('versions, headers and errors', () => {
  it('answers every version from 1.24 to 1.43 and unversioned paths', async () => {
    for (const prefix of ['', '/v1.24', '/v1.30', '/v1.41', '/v1.43']) {
      const reply = await request(h.socketPath, 'GET', `${prefix}/version`);
      assert.equal(reply.status, 200, prefix);
      const v = reply.json<{ ApiVersion: string; MinAPIVersion: string; Platform: { Name: string } }>();
      assert.equal(v.ApiVersion, '1.43');
      assert.equal(v.MinAPIVersion, '1.24');
      assert.match(v.Platform.Name, /^Capsule /);
    }
  });

  it('rejects a too new version with dockerd text', async () => {
    const reply = await request(h.socketPath, 'GET', '/v1.44/version');
    assert.equal(reply.status, 400);
    assert.equal(reply.headers['content-type'], 'application/json');
    assert.deepEqual(reply.json(), {
      message: 'client version 1.44 is too new. Maximum supported API version is 1.43',
    });
  });

  it('rejects a too old version with dockerd text', async () => {
    const reply = await request(h.socketPath, 'GET', '/v1.12/containers/json');
    assert.equal(reply.status, 400);
    assert.deepEqual(reply.json(), {
      message:
        'client version 1.12 is too old. Minimum supported API version is 1.24, please upgrade your client to a newer version',
    });
  });

  it('carries dockerd identity headers on every response', async () => {
    for (const path of ['/_ping', '/nothing', '/containers/nosuch/json']) {
      const reply = await request(h.socketPath, 'GET', path);
      assert.equal(reply.headers['api-version'], '1.43');
      assert.equal(reply.headers['ostype'], 'linux');
      assert.equal(reply.headers['docker-experimental'], 'false');
      assert.match(String(reply.headers['server']), /^Docker\/.+ \(linux\)$/);
    }
  });

  it('HEAD /_ping is 200 with an empty body; GET says OK', async () => {
    const head = await request(h.socketPath, 'HEAD', '/_ping');
    assert.equal(head.status, 200);
    assert.equal(head.headers['content-length'], '0');
    assert.equal(head.headers['cache-control'], 'no-cache, no-store, must-revalidate');
    const get = await request(h.socketPath, 'GET', '/v1.41/_ping');
    assert.equal(get.text, 'OK');
  });

  it('unknown route is 404 {"message":"page not found"} with Content-Type exactly application/json', async () => {
    const reply = await request(h.socketPath, 'GET', '/v1.41/no/such/route');
    assert.equal(reply.status, 404);
    assert.equal(reply.headers['content-type'], 'application/json');
    assert.deepEqual(reply.json(), { message: 'page not found' });
  });

  it('error bodies are {"message"} with Content-Type exactly application/json', async () => {
    const reply = await request(h.socketPath, 'POST', '/containers/nosuch/start');
    assert.equal(reply.status, 404);
    assert.equal(reply.headers['content-type'], 'application/json');
    assert.deepEqual(reply.json(), { message: 'No such container: nosuch' });
  });

  it('/info has the fields clients dereference', async () => {
    const info = (await request(h.socketPath, 'GET', '/info')).json<Record<string, unknown>>();
    for (const key of [
      'ID',
      'Containers',
      'Images',
      'OSType',
      'Architecture',
      'NCPU',
      'MemTotal',
      'Runtimes',
      'Labels',
    ]) {
      assert.ok(key in info, key);
    }
    assert.equal(info.OSType, 'linux');
    assert.equal(info.DefaultRuntime, 'capsule-vm');
    assert.deepEqual(info.Labels, []);
    assert.ok(JSON.stringify(info.DriverStatus).includes('"Acceleration","tcg"'));
    assert.equal(info.KernelVersion, '6.1.0-fake-cloud-amd64');
  });
});

describe('create', () => {
  it('validates names as dockerd', async () => {
    const reply = await request(h.socketPath, 'POST', '/containers/create?name=a', {
      body: { Image: 'busybox' },
    });
    assert.equal(reply.status, 400);
    assert.equal(
      reply.json<{ message: string }>().message,
      'Invalid container name (a), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed',
    );
  });

  it('answers 409 with dockerd text on a name conflict', async () => {
    const id = await create({ Cmd: ['true'] }, 'dup');
    const reply = await request(h.socketPath, 'POST', '/containers/create?name=dup', {
      body: { Image: 'busybox' },
    });
    assert.equal(reply.status, 409);
    assert.equal(
      reply.json<{ message: string }>().message,
      `Conflict. The container name "/dup" is already in use by container "${id}". You have to remove (or rename) that container to be able to reuse that name.`,
    );
  });

  it('answers 404 "No such image: x:latest" for a missing image', async () => {
    const reply = await request(h.socketPath, 'POST', '/v1.41/containers/create', {
      body: { Image: 'alpine' },
    });
    assert.equal(reply.status, 404);
    assert.deepEqual(reply.json(), { message: 'No such image: alpine:latest' });
  });

  it('answers 201 {"Id","Warnings":[]} and merges the image config', async () => {
    const reply = await request(h.socketPath, 'POST', '/containers/create', {
      body: { Image: 'tagged:1', Env: ['A=1'], Labels: { l: 'v' }, Volumes: {} },
    });
    assert.equal(reply.status, 201);
    const { Id, Warnings } = reply.json<{ Id: string; Warnings: string[] }>();
    assert.match(Id, /^[0-9a-f]{64}$/);
    assert.deepEqual(Warnings, []);
    const inspect = (await request(h.socketPath, 'GET', `/containers/${Id.slice(0, 10)}/json`)).json<{
      Path: string;
      Args: string[];
      Config: { Hostname: string; Cmd: string[]; Env: string[]; Volumes: unknown; Labels: unknown };
      Image: string;
      Name: string;
      State: { Status: string; StartedAt: string };
      HostConfig: { Runtime: string; LogConfig: { Type: string } };
      NetworkSettings: { Ports: unknown; Networks: Record<string, unknown> };
    }>();
    assert.equal(inspect.Path, 'echo');
    assert.deepEqual(inspect.Args, ['from-image']);
    assert.equal(inspect.Config.Hostname, Id.slice(0, 12));
    assert.deepEqual(inspect.Config.Env, ['A=1']);
    assert.equal(inspect.Config.Volumes, null);
    assert.deepEqual(inspect.Config.Labels, { l: 'v' });
    assert.match(inspect.Image, /^sha256:/);
    assert.equal(inspect.State.Status, 'created');
    assert.equal(inspect.State.StartedAt, '0001-01-01T00:00:00Z');
    assert.equal(inspect.HostConfig.Runtime, 'capsule-vm');
    assert.equal(inspect.HostConfig.LogConfig.Type, 'json-file');
    assert.deepEqual(inspect.NetworkSettings.Ports, {});
    assert.ok('bridge' in inspect.NetworkSettings.Networks);
  });
});

describe('attach (hijack)', () => {
  it('answers 101 UPGRADED exactly, streams framed output, closes at exit', async () => {
    const id = await create({ Cmd: ['sh', '-c', 'echo out1; echo err1 >&2; exit 2'] });
    const conn = new RawConnection(h.socketPath);
    conn.write(
      `POST /v1.41/containers/${id}/attach?stream=1&stdout=1&stderr=1 HTTP/1.1\r\nHost: api.moby.localhost\r\n` +
        'Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n',
    );
    await conn.until((d) => d.includes('\r\n\r\n'));
    const { head } = conn.split();
    assert.match(head, /^HTTP\/1\.1 101 UPGRADED\r\n/);
    assert.match(head, /\r\nContent-Type: application\/vnd\.docker\.raw-stream\r\n/);
    assert.match(head, /\r\nConnection: Upgrade\r\n/);
    assert.match(head, /\r\nUpgrade: tcp\r\n/);
    assert.match(head, /\r\nApi-Version: 1\.43\r\n/);
    conn.socket.end(); // the CLI half-closes at once when it has no stdin: output must go on
    const start = await request(h.socketPath, 'POST', `/containers/${id}/start`);
    assert.equal(start.status, 204);
    await conn.untilEnd();
    const out = demuxAll(conn.split().body);
    assert.equal(out.stdout, 'out1\n');
    assert.equal(out.stderr, 'err1\n');
    // The exit is recorded before the stream closes.
    const state = (await request(h.socketPath, 'GET', `/containers/${id}/json`)).json<{
      State: { ExitCode: number };
    }>();
    assert.equal(state.State.ExitCode, 2);
  });

  it('uses the multiplexed content type for API >= 1.42', async () => {
    const id = await create({ Cmd: ['true'] });
    const conn = new RawConnection(h.socketPath);
    conn.write(
      `POST /v1.43/containers/${id}/attach?stream=1&stdout=1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n`,
    );
    await conn.until((d) => d.includes('\r\n\r\n'));
    assert.match(conn.split().head, /Content-Type: application\/vnd\.docker\.multiplexed-stream/);
    conn.close();
  });

  it('answers an ordinary 404 on an upgrade request for a missing container', async () => {
    const conn = new RawConnection(h.socketPath);
    conn.write(
      'POST /containers/nosuch/attach?stream=1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n',
    );
    await conn.untilEnd();
    const { head, body } = conn.split();
    assert.match(head, /^HTTP\/1\.1 404 Not Found\r\n/);
    assert.match(head, /\r\nContent-Type: application\/json\r\n/);
    assert.deepEqual(JSON.parse(body.toString()), { message: 'No such container: nosuch' });
  });

  it('without Upgrade: 200 raw stream, no length, no chunking, closed at the end', async () => {
    const id = await create({ Cmd: ['echo', 'plain'] });
    const conn = new RawConnection(h.socketPath);
    conn.write(
      `POST /containers/${id}/attach?stream=1&stdout=1&stderr=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n`,
    );
    await conn.until((d) => d.includes('\r\n\r\n'));
    const { head } = conn.split();
    assert.match(head, /^HTTP\/1\.1 200 OK\r\n/);
    assert.doesNotMatch(head, /Content-Length|Transfer-Encoding/i);
    await request(h.socketPath, 'POST', `/containers/${id}/start`);
    await conn.untilEnd();
    assert.equal(demuxAll(conn.split().body).stdout, 'plain\n');
  });

  it('buffers stdin and EOF sent before start, then closes stdin (StdinOnce)', async () => {
    const id = await create({
      Cmd: ['sh', '-c', 'cat; echo done-cat >&2'],
      OpenStdin: true,
      StdinOnce: true,
      AttachStdin: true,
    });
    const conn = new RawConnection(h.socketPath);
    conn.write(
      `POST /containers/${id}/attach?stream=1&stdin=1&stdout=1&stderr=1 HTTP/1.1\r\nHost: x\r\n` +
        'Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\nline1\n',
    );
    await conn.until((d) => d.includes('\r\n\r\n'));
    conn.write('line2\n');
    conn.socket.end();
    await new Promise((r) => setTimeout(r, 50));
    await request(h.socketPath, 'POST', `/containers/${id}/start`);
    await conn.untilEnd();
    const out = demuxAll(conn.split().body);
    assert.equal(out.stdout, 'line1\nline2\n');
    assert.equal(out.stderr, 'done-cat\n');
  });

  it('streams raw bytes for a TTY container', async () => {
    const id = await create({ Cmd: ['sh', '-c', 'echo tty-out; echo tty-err >&2'], Tty: true });
    const conn = new RawConnection(h.socketPath);
    conn.write(
      `POST /containers/${id}/attach?stream=1&stdout=1&stderr=1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n`,
    );
    await conn.until((d) => d.includes('\r\n\r\n'));
    await request(h.socketPath, 'POST', `/containers/${id}/start`);
    await conn.untilEnd();
    assert.equal(conn.split().body.toString(), 'tty-out\r\ntty-err\r\n');
  });

  it('replays the log with logs=1 and stream=0', async () => {
    const id = await create({ Cmd: ['sh', '-c', 'echo a; echo b >&2'] });
    await request(h.socketPath, 'POST', `/containers/${id}/start`);
    await (
      await request(h.socketPath, 'POST', `/containers/${id}/wait`)
    ).text;
    const conn = new RawConnection(h.socketPath);
    conn.write(
      `POST /containers/${id}/attach?logs=1&stdout=1&stderr=1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n`,
    );
    await conn.untilEnd();
    const out = demuxAll(conn.split().body);
    assert.equal(out.stdout, 'a\n');
    assert.equal(out.stderr, 'b\n');
  });
});

describe('wait', () => {
  it('flushes headers before the container exits; body is {"Error":null,"StatusCode":N}\\n', async () => {
    const id = await create({ Cmd: ['sh', '-c', 'sleep 0.2; exit 7'] });
    const conn = new RawConnection(h.socketPath);
    conn.write(
      `POST /v1.41/containers/${id}/wait?condition=next-exit HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n`,
    );
    await conn.until((d) => d.includes('\r\n\r\n'));
    assert.match(conn.split().head, /^HTTP\/1\.1 200 OK\r\n[\s\S]*Content-Type: application\/json\r\n/);
    await request(h.socketPath, 'POST', `/containers/${id}/start`);
    await conn.until((d) => d.includes('}\n'));
    const body = conn.split().body.toString();
    assert.match(body, /\{"Error":null,"StatusCode":7\}\n/);
    conn.close();
  });

  it('not-running returns at once for a container that is not running', async () => {
    const id = await create({ Cmd: ['true'] });
    const reply = await request(h.socketPath, 'POST', `/containers/${id}/wait`);
    assert.equal(reply.text, '{"Error":null,"StatusCode":0}\n');
  });

  it('removed fires only after AutoRemove removed the container', async () => {
    const id = await create({ Cmd: ['sh', '-c', 'exit 3'], HostConfig: { AutoRemove: true } });
    const waiting = request(h.socketPath, 'POST', `/containers/${id}/wait?condition=removed`);
    await new Promise((r) => setTimeout(r, 20));
    await request(h.socketPath, 'POST', `/containers/${id}/start`);
    const reply = await waiting;
    assert.equal(reply.text, '{"Error":null,"StatusCode":3}\n');
    const gone = await request(h.socketPath, 'GET', `/containers/${id}/json`);
    assert.equal(gone.status, 404);
  });

  it('reports a failed start in the wait body', async () => {
    const id = await create({ Cmd: ['nosuch'] });
    const start = await request(h.socketPath, 'POST', `/containers/${id}/start`);
    assert.equal(start.status, 400);
    assert.match(start.json<{ message: string }>().message, /executable file not found/);
    const reply = await request(h.socketPath, 'POST', `/containers/${id}/wait`);
    const body = reply.json<{ Error: { Message: string }; StatusCode: number }>();
    assert.equal(body.StatusCode, 127);
    assert.match(body.Error.Message, /executable file not found/);
    const inspect = (await request(h.socketPath, 'GET', `/containers/${id}/json`)).json<{
      State: { Status: string; ExitCode: number; Error: string };
    }>();
    assert.equal(inspect.State.Status, 'created');
    assert.equal(inspect.State.ExitCode, 127);
  });

  it('404 before any streaming for a missing container', async () => {
    const reply = await request(h.socketPath, 'POST', '/containers/nosuch/wait?condition=removed');
    assert.equal(reply.status, 404);
  });
});

describe('logs', () => {
  it('frames iff not Tty, honours stdout/stderr, tail and timestamps', async () => {
    const id = await create({ Cmd: ['sh', '-c', 'echo one; echo two >&2; echo three'] }, 'logsy');
    await request(h.socketPath, 'POST', `/containers/${id}/start`);
    await request(h.socketPath, 'POST', `/containers/${id}/wait`);
    const all = await request(h.socketPath, 'GET', '/containers/logsy/logs?stdout=1&stderr=1');
    const frames = new Demuxer().push(all.body);
    assert.deepEqual(
      frames.map((f) => [f.stream, f.payload.toString()]),
      [
        [1, 'one\n'],
        [2, 'two\n'],
        [1, 'three\n'],
      ],
    );
    const onlyOut = demuxAll((await request(h.socketPath, 'GET', '/containers/logsy/logs?stdout=1')).body);
    assert.equal(onlyOut.stdout, 'one\nthree\n');
    assert.equal(onlyOut.stderr, '');
    const tail = demuxAll(
      (await request(h.socketPath, 'GET', '/containers/logsy/logs?stdout=1&stderr=1&tail=1')).body,
    );
    assert.equal(tail.stdout, 'three\n');
    const stamped = demuxAll(
      (await request(h.socketPath, 'GET', '/containers/logsy/logs?stdout=1&timestamps=1')).body,
    );
    assert.match(stamped.stdout, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z one\n/);
    const none = await request(h.socketPath, 'GET', '/containers/logsy/logs');
    assert.equal(none.status, 400);
    assert.equal(
      none.json<{ message: string }>().message,
      'Bad parameters: you must choose at least one stream',
    );
  });

  it('follow streams until the container exits', async () => {
    const id = await create({ Cmd: ['sh', '-c', 'echo first; sleep 0.3; echo second'], Tty: true });
    await request(h.socketPath, 'POST', `/containers/${id}/start`);
    const reply = await request(h.socketPath, 'GET', `/containers/${id}/logs?follow=1&stdout=1`);
    assert.equal(reply.text, 'first\r\nsecond\r\n');
  });
});

describe('lifecycle statuses', () => {
  it('start 204, start again 304, stop 204, stop again 304, kill stopped 409', async () => {
    const id = await create({ Cmd: ['sleep', '100'] }, 'life');
    assert.equal((await request(h.socketPath, 'POST', '/containers/life/start')).status, 204);
    const again = await request(h.socketPath, 'POST', '/containers/life/start');
    assert.equal(again.status, 304);
    assert.equal(again.body.length, 0);
    assert.equal((await request(h.socketPath, 'POST', '/containers/life/stop?t=1')).status, 204);
    assert.equal((await request(h.socketPath, 'POST', '/containers/life/stop')).status, 304);
    const kill = await request(h.socketPath, 'POST', '/containers/life/kill');
    assert.equal(kill.status, 409);
    assert.equal(
      kill.json<{ message: string }>().message,
      `Cannot kill container: life: Container ${id} is not running`,
    );
    const inspect = (await request(h.socketPath, 'GET', '/containers/life/json')).json<{
      State: { ExitCode: number; Pid: number };
    }>();
    assert.equal(inspect.State.ExitCode, 143);
    assert.equal(inspect.State.Pid, 0);
  });

  it('kill validates the signal; rm refuses a running container without force', async () => {
    const id = await create({ Cmd: ['sleep', '100'] });
    await request(h.socketPath, 'POST', `/containers/${id}/start`);
    const bad = await request(h.socketPath, 'POST', `/containers/${id}/kill?signal=FOO`);
    assert.equal(bad.status, 400);
    assert.equal(bad.json<{ message: string }>().message, 'Invalid signal: FOO');
    const rm = await request(h.socketPath, 'DELETE', `/containers/${id}`);
    assert.equal(rm.status, 409);
    assert.equal(
      rm.json<{ message: string }>().message,
      `You cannot remove a running container ${id}. Stop the container before attempting removal or force remove`,
    );
    assert.equal((await request(h.socketPath, 'POST', `/containers/${id}/resize?h=40&w=100`)).status, 200);
    assert.equal((await request(h.socketPath, 'POST', `/containers/${id}/kill?signal=hup`)).status, 204);
    await eventually(async () => {
      const s = (await request(h.socketPath, 'GET', `/containers/${id}/json`)).json<{
        State: { Running: boolean };
      }>();
      return s.State.Running ? undefined : true;
    });
    assert.equal((await request(h.socketPath, 'DELETE', `/containers/${id}?force=1`)).status, 204);
    assert.equal((await request(h.socketPath, 'GET', `/containers/${id}/json`)).status, 404);
  });

  it('an ambiguous id prefix is an error, a unique one resolves', async () => {
    const ids = [await create({ Cmd: ['true'] }), await create({ Cmd: ['true'] })];
    const reply = await request(h.socketPath, 'GET', `/containers/${ids[0]?.slice(0, 12)}/json`);
    assert.equal(reply.status, 200);
    const list = (await request(h.socketPath, 'GET', '/containers/json?all=1')).json<Array<{ Id: string }>>();
    for (const digit of '0123456789abcdef') {
      const matching = list.filter((c) => c.Id.startsWith(digit));
      if (matching.length > 1) {
        const ambiguous = await request(h.socketPath, 'GET', `/containers/${digit}/json`);
        assert.equal(ambiguous.status, 500);
        assert.equal(
          ambiguous.json<{ message: string }>().message,
          `Multiple IDs found with provided prefix: ${digit}`,
        );
        return;
      }
    }
  });
});

describe('images, events, upgrade bodies', () => {
  it('pull streams JSON progress with flushed headers; a mid-stream failure is an errorDetail line', async () => {
    await h.close();
    h = await startHarness({
      images: [BUSYBOX],
      registry: [
        { ref: 'registry.local:5000/team/app:v1' },
        { ref: 'broken:1', failMidway: 'registry went away' },
      ],
    });
    const ok = await request(
      h.socketPath,
      'POST',
      '/v1.41/images/create?fromImage=registry.local%3A5000%2Fteam%2Fapp&tag=v1',
    );
    assert.equal(ok.status, 200);
    assert.equal(ok.headers['content-type'], 'application/json');
    const lines = ok.text
      .split('\r\n')
      .filter((l) => l !== '')
      .map((l) => JSON.parse(l) as { status: string });
    assert.equal(lines[0]?.status, 'Pulling from registry.local:5000/team/app');
    assert.equal(
      lines[lines.length - 1]?.status,
      'Status: Downloaded newer image for registry.local:5000/team/app:v1',
    );

    const inspect = await request(h.socketPath, 'GET', '/images/registry.local:5000/team/app:v1/json');
    assert.equal(inspect.status, 200);
    assert.deepEqual(inspect.json<{ RepoTags: string[] }>().RepoTags, ['registry.local:5000/team/app:v1']);

    const broken = await request(h.socketPath, 'POST', '/images/create?fromImage=broken&tag=1');
    assert.equal(broken.status, 200);
    const last = broken.text.trim().split('\r\n').pop() ?? '';
    assert.deepEqual(JSON.parse(last), {
      errorDetail: { message: 'registry went away' },
      error: 'registry went away',
    });

    const missing = await request(h.socketPath, 'POST', '/images/create?fromImage=nosuch&tag=2');
    assert.equal(missing.status, 404);
    assert.equal(missing.headers['content-type'], 'application/json');

    const list = (await request(h.socketPath, 'GET', '/images/json')).json<
      Array<{ RepoTags: string[]; Containers: number }>
    >();
    assert.equal(list.length, 2);
    assert.equal(list[0]?.Containers, -1);
    const filtered = await request(
      h.socketPath,
      'GET',
      `/images/json?filters=${encodeURIComponent('{"reference":["busybox"]}')}`,
    );
    assert.deepEqual(
      filtered.json<Array<{ RepoTags: string[] }>>().map((i) => i.RepoTags),
      [['busybox:latest']],
    );
  });

  it('events: headers at once, then create/start/die NDJSON with legacy fields', async () => {
    const conn = new RawConnection(h.socketPath);
    const filters = encodeURIComponent('{"type":["container"]}');
    conn.write(`GET /v1.41/events?filters=${filters} HTTP/1.1\r\nHost: x\r\n\r\n`);
    await conn.until((d) => d.includes('\r\n\r\n'));
    assert.match(conn.split().head, /^HTTP\/1\.1 200 OK/);
    const id = await create({ Cmd: ['true'] }, 'evt');
    await request(h.socketPath, 'POST', `/containers/${id}/start`);
    await conn.until((d) => d.includes('"die"'));
    conn.close();
    const text = conn.split().body.toString();
    const actions = [...text.matchAll(/"Action":"(\w+)"/g)].map((m) => m[1]);
    assert.deepEqual(actions, ['create', 'start', 'die']);
    assert.match(text, new RegExp(`"status":"create","id":"${id}","from":"busybox"`));
    assert.match(text, /"Attributes":\{"image":"busybox","name":"evt"\}/);
  });

  it('reads a chunked request body on an upgraded connection and treats what follows as stdin', async () => {
    const id = await create({ Cmd: ['cat'], OpenStdin: true, StdinOnce: true });
    const conn = new RawConnection(h.socketPath);
    conn.write(
      `POST /containers/${id}/attach?stream=1&stdin=1&stdout=1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n` +
        'Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\nafter-body\n',
    );
    await conn.until((d) => d.includes('\r\n\r\n'));
    assert.match(conn.split().head, /^HTTP\/1\.1 101 UPGRADED/);
    conn.socket.end();
    await request(h.socketPath, 'POST', `/containers/${id}/start`);
    await conn.untilEnd();
    assert.equal(demuxAll(conn.split().body).stdout, 'after-body\n');
  });

  it('detach keys end the attach without stopping the container; a `detach` event as dockerd logs it', async () => {
    const since = Math.floor(Date.now() / 1000);
    const id = await create({ Cmd: ['sleep', '100'], OpenStdin: true, Tty: true });
    await request(h.socketPath, 'POST', `/containers/${id}/start`);
    const conn = new RawConnection(h.socketPath);
    conn.write(
      `POST /containers/${id}/attach?stream=1&stdin=1&stdout=1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n`,
    );
    await conn.until((d) => d.includes('\r\n\r\n'));
    conn.write(Buffer.from([0x10, 0x11]));
    await conn.untilEnd();
    const state = (await request(h.socketPath, 'GET', `/containers/${id}/json`)).json<{
      State: { Running: boolean };
    }>();
    assert.equal(state.State.Running, true);
    const actions = (await containerEvents(h.socketPath, id, since)).map((e) => e.Action);
    assert.deepEqual(
      actions.filter((a) => a === 'attach' || a === 'detach'),
      ['attach', 'detach'],
    );
    await request(h.socketPath, 'DELETE', `/containers/${id}?force=1`);
  });

  it('lists containers with dockerd shapes', async () => {
    const id = await create(
      { Cmd: ['sh', '-c', 'echo a b'], Labels: { k: 'v' }, ExposedPorts: { '80/tcp': {} } },
      'shape',
    );
    const list = (
      await request(
        h.socketPath,
        'GET',
        `/containers/json?all=1&filters=${encodeURIComponent('{"name":{"shape":true}}')}`,
      )
    ).json<Array<Record<string, unknown>>>();
    assert.equal(list.length, 1);
    const c = list[0] ?? {};
    assert.equal(c.Id, id);
    assert.deepEqual(c.Names, ['/shape']);
    assert.equal(c.Image, 'busybox');
    assert.equal(c.Command, "sh -c 'echo a b'");
    assert.equal(c.State, 'created');
    assert.equal(c.Status, 'Created');
    assert.deepEqual(c.Labels, { k: 'v' });
    assert.deepEqual(c.HostConfig, { NetworkMode: 'default' });
    assert.deepEqual(c.Mounts, []);
    assert.equal(typeof c.Created, 'number');
    const sized = (await request(h.socketPath, 'GET', '/containers/json?all=1&size=1&limit=1')).json<
      Array<Record<string, unknown>>
    >();
    assert.equal(sized.length, 1);
    assert.equal(typeof sized[0]?.SizeRw, 'number');
  });
});
