/**
 * Exec, top and stats through the real API server on a daemon built on the fakes
 * (FakeSandboxRuntime runs execs through its fake shell). Expected answers are the reference
 * dockerd 20.10's for the same requests.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { PassThrough } from 'node:stream';
import Docker from 'dockerode';
import { demuxAll } from './streams/multiplex';
import { containerEvents, eventually, RawConnection, request } from './testing/http';
import { startHarness, type Harness } from './testing/harness';

/** The parts of StatsJSON the tests read. */
interface StatsJson {
  id: string;
  name: string;
  read: string;
  preread: string;
  cpu_stats: { cpu_usage: { total_usage: number }; system_cpu_usage: number };
  precpu_stats: { cpu_usage: { total_usage: number }; system_cpu_usage?: number };
  memory_stats: { limit?: number; stats?: Record<string, number> };
  pids_stats: { current?: number };
  blkio_stats: { io_service_bytes_recursive: unknown };
  networks: Record<string, { rx_bytes: number }>;
}

let h: Harness;
let docker: Docker;
let id: string;

before(async () => {
  h = await startHarness();
  docker = new Docker({ socketPath: h.socketPath });
  const c = await docker.createContainer({
    Image: 'busybox',
    Cmd: ['sleep', '1000'],
    Env: ['FROM_CONTAINER=yes'],
  });
  id = c.id;
  await c.start();
});
after(async () => {
  await h.close();
});

async function createExec(body: object): Promise<string> {
  const r = await request(h.socketPath, 'POST', `/v1.41/containers/${id}/exec`, { body });
  assert.equal(r.status, 201, r.text);
  return r.json<{ Id: string }>().Id;
}

/** Writes POST /exec/{id}/start with an upgrade, as the docker CLI sends it, on a new connection. */
function sendUpgradedStart(execId: string, start: Record<string, unknown>, version = 'v1.41'): RawConnection {
  const conn = new RawConnection(h.socketPath);
  const body = JSON.stringify(start);
  conn.write(
    `POST /${version}/exec/${execId}/start HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n` +
      `Content-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
  );
  return conn;
}

/** An upgraded start (stdin written, then the client's FIN); returns the whole answer. */
async function startUpgraded(execId: string, stdin?: string): Promise<{ head: string; body: Buffer }> {
  const conn = sendUpgradedStart(execId, { Detach: false, Tty: false });
  await conn.until((d) => d.includes('\r\n\r\n'));
  if (stdin !== undefined) {
    conn.write(stdin);
    conn.socket.end();
  }
  await conn.untilEnd(5000);
  return conn.split();
}

async function inspectExec(execId: string): Promise<Record<string, unknown>> {
  const r = await request(h.socketPath, 'GET', `/v1.41/exec/${execId}/json`);
  assert.equal(r.status, 200, r.text);
  return r.json();
}

describe('exec through the API', () => {
  it('create + upgraded start: 101, framed stdout/stderr, then ExitCode in exec inspect', async () => {
    const execId = await createExec({
      Cmd: ['sh', '-c', 'echo hi; echo err >&2; exit 3'],
      AttachStdout: true,
      AttachStderr: true,
    });
    assert.match(execId, /^[0-9a-f]{64}$/);
    const before = await inspectExec(execId);
    assert.equal(before.Running, false);
    assert.equal(before.ExitCode, null);
    assert.equal(before.Pid, 0);
    const { head, body } = await startUpgraded(execId);
    assert.match(head, /^HTTP\/1.1 101 UPGRADED\r\n/);
    assert.match(head, /Content-Type: application\/vnd.docker.raw-stream/);
    const out = demuxAll(body);
    assert.equal(out.stdout, 'hi\n');
    assert.equal(out.stderr, 'err\n');
    const after = await inspectExec(execId);
    assert.deepEqual(
      { ...after, Pid: undefined },
      {
        ID: execId,
        Running: false,
        ExitCode: 3,
        ProcessConfig: {
          tty: false,
          entrypoint: 'sh',
          arguments: ['-c', 'echo hi; echo err >&2; exit 3'],
          privileged: false,
        },
        OpenStdin: false,
        OpenStderr: true,
        OpenStdout: true,
        CanRemove: false,
        ContainerID: id,
        DetachKeys: '',
        Pid: undefined,
      },
    );
    assert.ok((after.Pid as number) > 0);
  });

  it('a second start of an exec that ran: the error is written into the stream', async () => {
    const execId = await createExec({ Cmd: ['true'], AttachStdout: true });
    await startUpgraded(execId);
    const { head, body } = await startUpgraded(execId);
    assert.match(head, /^HTTP\/1.1 101 UPGRADED/);
    assert.equal(demuxAll(body).stdout, `Error: Exec command ${execId} has already run\r\n`);
  });

  it('exec env is the container env with the exec env replacing or appending; cwd and user pass through', async () => {
    const execId = await createExec({
      Cmd: ['sh', '-c', 'env; pwd'],
      Env: ['A=1', 'FROM_CONTAINER=overridden'],
      WorkingDir: '/tmp',
      AttachStdout: true,
    });
    const out = demuxAll((await startUpgraded(execId)).body).stdout.split('\n');
    assert.ok(out.includes('PATH=/bin'), out.join('|'));
    assert.ok(out.includes('A=1'));
    assert.ok(out.includes('FROM_CONTAINER=overridden'));
    assert.ok(!out.includes('FROM_CONTAINER=yes'));
    assert.ok(out.some((l) => l.startsWith('HOSTNAME=')));
    assert.ok(out.includes('/tmp'));
  });

  it('AttachStdin: client bytes reach the process and the client FIN is its EOF', async () => {
    const execId = await createExec({ Cmd: ['cat'], AttachStdin: true, AttachStdout: true });
    const { body } = await startUpgraded(execId, 'hello stdin\n');
    assert.equal(demuxAll(body).stdout, 'hello stdin\n');
    assert.equal((await inspectExec(execId)).ExitCode, 0);
  });

  it('stdin and FIN sent before the process runs: the stdin EOF does not cut the output', async () => {
    // The VM takes a while to start an exec; the CLI sends stdin and its FIN at once.
    const sandbox = h.runtime.latest(id);
    assert.ok(sandbox);
    const exec = sandbox.exec.bind(sandbox);
    sandbox.exec = async (spec) => {
      await new Promise((r) => setTimeout(r, 300));
      return exec(spec);
    };
    try {
      const execId = await createExec({ Cmd: ['cat'], AttachStdin: true, AttachStdout: true });
      const { body } = await startUpgraded(execId, 'early stdin\n');
      assert.equal(demuxAll(body).stdout, 'early stdin\n');
    } finally {
      sandbox.exec = exec;
    }
  });

  it('a binary that cannot start: the message in the stream with ": unknown", ExitCode 126, no exec_die', async () => {
    const since = Math.floor(Date.now() / 1000) - 1;
    const execId = await createExec({ Cmd: ['nosuch'], AttachStdout: true, AttachStderr: true });
    const { body } = await startUpgraded(execId);
    assert.equal(
      demuxAll(body).stdout,
      'OCI runtime exec failed: exec failed: unable to start container process: exec: "nosuch": executable file not found in $PATH: unknown\r\n',
    );
    const inspect = await inspectExec(execId);
    assert.equal(inspect.ExitCode, 126);
    assert.equal(inspect.Running, false);
    const actions = (await containerEvents(h.socketPath, id, since))
      .filter((e) => e.Actor.Attributes.execID === execId)
      .map((e) => e.Action);
    assert.deepEqual(actions, ['exec_create: nosuch ', 'exec_start: nosuch ']);
  });

  it('exec_create, exec_start and exec_die events carry execID (and exitCode on die)', async () => {
    const since = Math.floor(Date.now() / 1000) - 1;
    const execId = await createExec({ Cmd: ['sh', '-c', 'exit 2'] });
    await startUpgraded(execId);
    const until = Math.ceil(Date.now() / 1000) + 1;
    const events = await request(h.socketPath, 'GET', `/v1.41/events?since=${since}&until=${until}`);
    const mine = events.text
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { Action: string; Actor: { Attributes: Record<string, string> } })
      .filter((e) => e.Actor.Attributes.execID === execId);
    assert.deepEqual(
      mine.map((e) => e.Action),
      ['exec_create: sh -c exit 2', 'exec_start: sh -c exit 2', 'exec_die'],
    );
    assert.equal(mine[2]?.Actor.Attributes.exitCode, '2');
  });

  it('detached start: 200 without a body; the exec is Running and in ExecIDs, then exits', async () => {
    const execId = await createExec({ Cmd: ['sleep', '0.3'] });
    const r = await request(h.socketPath, 'POST', `/v1.41/exec/${execId}/start`, { body: { Detach: true } });
    assert.equal(r.status, 200);
    assert.equal(r.body.length, 0);
    assert.equal((await inspectExec(execId)).Running, true);
    const c = await request(h.socketPath, 'GET', `/v1.41/containers/${id}/json`);
    assert.ok(c.json<{ ExecIDs: string[] | null }>().ExecIDs?.includes(execId));
    const resize = await request(h.socketPath, 'POST', `/v1.41/exec/${execId}/resize?h=10&w=20`);
    assert.equal(resize.status, 200);
    const second = await request(h.socketPath, 'POST', `/v1.41/exec/${execId}/start`, {
      body: { Detach: true },
    });
    assert.equal(second.status, 409);
    assert.equal(
      second.json<{ message: string }>().message,
      `Error: Exec command ${execId} is already running`,
    );
    await eventually(async () => ((await inspectExec(execId)).ExitCode === 0 ? true : undefined), 5000);
    const after = await request(h.socketPath, 'GET', `/v1.41/containers/${id}/json`);
    assert.ok(!(after.json<{ ExecIDs: string[] | null }>().ExecIDs ?? []).includes(execId));
  });

  it('errors as dockerd: no command 400, unknown exec 404, unknown container 404, not running 409', async () => {
    const noCmd = await request(h.socketPath, 'POST', `/v1.41/containers/${id}/exec`, { body: { Cmd: [] } });
    assert.equal(noCmd.status, 400);
    assert.deepEqual(noCmd.json(), { message: 'No exec command specified' });
    for (const [method, path] of [
      ['GET', '/v1.41/exec/nope/json'],
      ['POST', '/v1.41/exec/nope/start'],
      ['POST', '/v1.41/exec/nope/resize?h=1&w=1'],
    ] as const) {
      const r = await request(h.socketPath, method, path, method === 'POST' ? { body: {} } : {});
      assert.equal(r.status, 404, path);
      assert.deepEqual(r.json(), { message: 'No such exec instance: nope' });
    }
    const noContainer = await request(h.socketPath, 'POST', '/v1.41/containers/nope/exec', {
      body: { Cmd: ['x'] },
    });
    assert.equal(noContainer.status, 404);
    assert.deepEqual(noContainer.json(), { message: 'No such container: nope' });
    const stopped = await docker.createContainer({ Image: 'busybox', Cmd: ['true'] });
    const r = await request(h.socketPath, 'POST', `/v1.41/containers/${stopped.id}/exec`, {
      body: { Cmd: ['true'] },
    });
    assert.equal(r.status, 409);
    assert.deepEqual(r.json(), { message: `Container ${stopped.id} is not running` });
  });

  it('Tty exec: raw stream, ConsoleSize then resize reach the process, detach keys end the attachment only', async () => {
    const execId = await createExec({
      Cmd: ['sh', '-c', 'echo out; echo err >&2; cat'],
      Tty: true,
      AttachStdin: true,
      AttachStdout: true,
      AttachStderr: true,
      DetachKeys: 'ctrl-x,x',
    });
    const conn = sendUpgradedStart(execId, { Detach: false, Tty: true, ConsoleSize: [30, 100] }, 'v1.43');
    await conn.until((d) => d.includes('err\r\n'));
    const sandbox = h.runtime.latest(id);
    const exec = sandbox?.execs.find((e) => e.spec.execId === execId);
    assert.deepEqual(exec?.spec.consoleSize, [30, 100]);
    assert.equal(exec?.spec.tty, true);
    const resize = await request(h.socketPath, 'POST', `/v1.41/exec/${execId}/resize?h=40&w=120`);
    assert.equal(resize.status, 200);
    assert.deepEqual(exec?.process.resizes, [[40, 120]]);
    conn.write('ab\x18c\x18');
    await conn.until((d) => d.includes('ab\x18c'));
    conn.write('x'); // completes ctrl-x,x: the server ends the stream
    await conn.untilEnd(5000);
    const { head, body: raw } = conn.split();
    assert.match(head, /^HTTP\/1.1 101 UPGRADED\r\n/);
    assert.match(head, /Content-Type: application\/vnd.docker.raw-stream/);
    assert.equal(raw.toString(), 'out\r\nerr\r\nab\x18c');
    // The process goes on, its stdin still open.
    const view = await inspectExec(execId);
    assert.equal(view.Running, true);
    assert.equal(exec?.process.stdinClosed, false);
    await exec?.process.signal(9);
  });

  it('Tty exec: the end of the client stdin ends the attachment, not the process', async () => {
    const execId = await createExec({ Cmd: ['cat'], Tty: true, AttachStdin: true, AttachStdout: true });
    const { body } = await startUpgraded(execId, 'hello');
    assert.equal(body.toString(), 'hello');
    const exec = h.runtime.latest(id)?.execs.find((e) => e.spec.execId === execId);
    assert.equal((await inspectExec(execId)).Running, true);
    assert.equal(exec?.process.stdinClosed, false);
    await exec?.process.signal(9);
    await eventually(async () => ((await inspectExec(execId)).ExitCode === 137 ? true : undefined), 5000);
  });

  it('a resize sent while the exec is still starting waits for its process, as dockerd (no 404)', async () => {
    const sandbox = h.runtime.latest(id);
    assert.ok(sandbox);
    sandbox.execDelayMs = 400;
    try {
      const execId = await createExec({ Cmd: ['cat'], Tty: true, AttachStdin: true, AttachStdout: true });
      const conn = sendUpgradedStart(execId, { Detach: false, Tty: true }, 'v1.43');
      await conn.until((d) => d.includes('101 UPGRADED'));
      const resize = await request(h.socketPath, 'POST', `/v1.41/exec/${execId}/resize?h=33&w=99`);
      assert.equal(resize.status, 200, resize.text);
      const exec = sandbox.execs.find((e) => e.spec.execId === execId);
      assert.deepEqual(exec?.process.resizes, [[33, 99]]);
      await exec?.process.signal(9);
      await conn.untilEnd(5000);
    } finally {
      sandbox.execDelayMs = 0;
    }
  });

  it('exec resize of an exec without a tty is accepted and not passed on', async () => {
    const execId = await createExec({ Cmd: ['sleep', '0.5'] });
    await request(h.socketPath, 'POST', `/v1.41/exec/${execId}/start`, { body: { Detach: true } });
    const r = await request(h.socketPath, 'POST', `/v1.41/exec/${execId}/resize?h=5&w=6`);
    assert.equal(r.status, 200);
    const exec = h.runtime.latest(id)?.execs.find((e) => e.spec.execId === execId);
    assert.deepEqual(exec?.process.resizes, []);
  });

  it('dockerode (testcontainers path): exec, hijacked start, demux, inspect', async () => {
    const exec = await docker
      .getContainer(id)
      .exec({ Cmd: ['sh', '-c', 'echo out; echo err >&2'], AttachStdout: true, AttachStderr: true });
    const stream = await exec.start({ hijack: true, stdin: false });
    const out = new PassThrough();
    const err = new PassThrough();
    const got = { out: '', err: '' };
    out.on('data', (c: Buffer) => (got.out += c.toString()));
    err.on('data', (c: Buffer) => (got.err += c.toString()));
    docker.modem.demuxStream(stream, out, err);
    await new Promise((resolve) => stream.on('end', resolve));
    assert.deepEqual(got, { out: 'out\n', err: 'err\n' });
    assert.equal((await exec.inspect()).ExitCode, 0);
  });
});

describe('top and stats through the API', () => {
  it('GET /containers/{id}/top: ps -ef titles and one row per process', async () => {
    const r = await request(h.socketPath, 'GET', `/v1.41/containers/${id}/top`);
    assert.equal(r.status, 200);
    const top = r.json<{ Titles: string[]; Processes: string[][] }>();
    assert.deepEqual(top.Titles, ['UID', 'PID', 'PPID', 'C', 'STIME', 'TTY', 'TIME', 'CMD']);
    assert.deepEqual(top.Processes[0]?.slice(0, 3), ['root', '1', '0']);
    assert.equal(top.Processes[0]?.[7], 'sleep 1000');
    const stopped = await docker.createContainer({ Image: 'busybox', Cmd: ['true'] });
    // A bad ps_args is refused before the container's state matters (dockerd's order).
    const renamed = await request(
      h.socketPath,
      'GET',
      `/v1.41/containers/${stopped.id}/top?ps_args=-o+user%3DPID`,
    );
    assert.equal(renamed.status, 500);
    assert.deepEqual(renamed.json(), { message: 'specifying "user=PID" is not allowed' });
    const notRunning = await request(h.socketPath, 'GET', `/v1.41/containers/${stopped.id}/top`);
    assert.equal(notRunning.status, 409);
  });

  it('GET /containers/{id}/top honours ps_args (aux, -o), errors as dockerd words them', async () => {
    const get = (psArgs: string) =>
      request(
        h.socketPath,
        'GET',
        `/v1.41/containers/${id}/top?ps_args=${encodeURIComponent(psArgs).replace(/%20/g, '+')}`,
      );
    const aux = await get('aux');
    assert.equal(aux.status, 200);
    const auxTop = aux.json<{ Titles: string[]; Processes: string[][] }>();
    assert.deepEqual(auxTop.Titles, [
      'USER',
      'PID',
      '%CPU',
      '%MEM',
      'VSZ',
      'RSS',
      'TTY',
      'STAT',
      'START',
      'TIME',
      'COMMAND',
    ]);
    assert.deepEqual(auxTop.Processes[0]?.slice(0, 2), ['root', '1']);
    assert.equal(auxTop.Processes[0]?.[10], 'sleep 1000');
    const custom = await get('-o pid,comm');
    assert.equal(custom.status, 200);
    const customTop = custom.json<{ Titles: string[]; Processes: string[][] }>();
    assert.deepEqual(customTop.Titles, ['PID', 'COMMAND']);
    assert.deepEqual(customTop.Processes[0], ['1', 'sleep']);
    for (const [psArgs, message] of [
      ['--nosuch', 'ps: error: unknown gnu long option'],
      ['-o user,comm', "Couldn't find PID field in ps output"],
      ['-o pid,nosuchfield', 'ps: error: unknown user-defined format specifier "nosuchfield"'],
    ] as const) {
      const r = await get(psArgs);
      assert.equal(r.status, 500, psArgs);
      assert.deepEqual(r.json(), { message }, psArgs);
    }
  });

  it('stats stream=false: two samples so precpu is filled, dockerd v2 shape', async () => {
    const r = await request(h.socketPath, 'GET', `/v1.41/containers/${id}/stats?stream=false`);
    assert.equal(r.status, 200);
    const s = r.json<StatsJson>();
    assert.equal(s.id, id);
    assert.match(s.name, /^\//);
    assert.ok(s.cpu_stats.cpu_usage.total_usage > s.precpu_stats.cpu_usage.total_usage);
    assert.ok(s.cpu_stats.system_cpu_usage > (s.precpu_stats.system_cpu_usage ?? Infinity));
    assert.equal(s.memory_stats.limit, 256 * 1024 * 1024);
    assert.equal(s.memory_stats.stats?.inactive_file, 1024 * 1024);
    assert.equal(s.pids_stats.current, 1);
    assert.deepEqual(s.blkio_stats.io_service_bytes_recursive, [
      { major: 254, minor: 0, op: 'read', value: 4096 },
    ]);
    assert.equal(s.networks.eth0?.rx_bytes, 1000);
    assert.notEqual(s.preread, '0001-01-01T00:00:00Z');
  });

  it('stats one-shot: a single sample, precpu empty; a stopped container: one zeroed sample', async () => {
    const r = await request(h.socketPath, 'GET', `/v1.41/containers/${id}/stats?stream=false&one-shot=true`);
    const s = r.json<StatsJson>();
    assert.equal(s.preread, '0001-01-01T00:00:00Z');
    assert.equal(s.precpu_stats.cpu_usage.total_usage, 0);
    const stopped = await docker.createContainer({ Image: 'busybox', Cmd: ['true'] });
    const z = await request(h.socketPath, 'GET', `/v1.41/containers/${stopped.id}/stats?stream=false`);
    assert.equal(z.status, 200);
    const zs = z.json<StatsJson>();
    assert.equal(zs.read, '0001-01-01T00:00:00Z');
    assert.deepEqual(zs.memory_stats, {});
    const missing = await request(h.socketPath, 'GET', '/v1.41/containers/nope/stats?stream=false');
    assert.equal(missing.status, 404);
  });
});
