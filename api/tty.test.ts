/**
 * Containers with a terminal (Tty) through the real API server on a daemon built on the fakes
 * (FakeSandboxRuntime): the raw stream, the detach keys and the end of the client's stdin as
 * dockerd's AttachConfig treats them (scanned and ending the attachment only with a Tty), the
 * terminal size (ConsoleSize at create, POST /containers/{id}/resize) reaching the sandbox. The
 * guest side is covered by guest/agent/terminal.test.ts, the whole path by integration/cli-tty.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startHarness, type Harness } from './testing/harness';
import { demuxAll } from './streams/multiplex';
import { eventually, RawConnection, request } from './testing/http';

let h: Harness;

before(async () => {
  h = await startHarness();
});
after(async () => {
  await h.close();
});

async function create(body: Record<string, unknown>): Promise<string> {
  const reply = await request(h.socketPath, 'POST', '/v1.43/containers/create', {
    body: { Image: 'busybox', ...body },
  });
  assert.equal(reply.status, 201, reply.text);
  return reply.json<{ Id: string }>().Id;
}

async function start(id: string): Promise<void> {
  const r = await request(h.socketPath, 'POST', `/containers/${id}/start`);
  assert.equal(r.status, 204, r.text);
}

/** Opens an upgraded attach and waits for the 101. */
async function attach(id: string, query: string): Promise<RawConnection> {
  const conn = new RawConnection(h.socketPath);
  conn.write(
    `POST /v1.41/containers/${id}/attach?${query} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n`,
  );
  await conn.until((d) => d.includes('\r\n\r\n'));
  assert.match(conn.split().head, /^HTTP\/1\.1 101 UPGRADED/);
  return conn;
}

const running = async (id: string) =>
  (await request(h.socketPath, 'GET', `/containers/${id}/json`)).json<{ State: { Running: boolean } }>().State
    .Running;

describe('Tty containers through the API', () => {
  it('ConsoleSize reaches the process spec; resize reaches the sandbox (with its event)', async () => {
    const id = await create({ Cmd: ['sleep', '100'], Tty: true, HostConfig: { ConsoleSize: [33, 101] } });
    await start(id);
    const sandbox = h.runtime.latest(id);
    assert.deepEqual(sandbox?.spec.process.consoleSize, [33, 101]);
    assert.equal(sandbox?.spec.process.tty, true);
    const r = await request(h.socketPath, 'POST', `/containers/${id}/resize?h=40&w=120`);
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(sandbox?.resizes, [[40, 120]]);
    await request(h.socketPath, 'DELETE', `/containers/${id}?force=1`);
    const gone = await request(h.socketPath, 'POST', `/containers/${id}/resize?h=1&w=1`);
    assert.equal(gone.status, 404);
  });

  it('a paused container accepts a resize without asking the (stopped) VM', async () => {
    const id = await create({ Cmd: ['sleep', '100'], Tty: true });
    await start(id);
    assert.equal((await request(h.socketPath, 'POST', `/containers/${id}/pause`)).status, 204);
    assert.equal((await request(h.socketPath, 'POST', `/containers/${id}/resize?h=5&w=6`)).status, 200);
    assert.deepEqual(h.runtime.latest(id)?.resizes, []);
    await request(h.socketPath, 'DELETE', `/containers/${id}?force=1`);
  });

  it('Tty attach: raw output, custom detach keys end it; stdin before them reaches the process', async () => {
    const id = await create({ Cmd: ['cat'], Tty: true, OpenStdin: true, StdinOnce: true });
    await start(id);
    const conn = await attach(id, 'stream=1&stdin=1&stdout=1&stderr=1&detachKeys=ctrl-x,x');
    conn.write('ab\x18c\x10\x11');
    await conn.until((d) => d.includes('ab\x18c\x10\x11'));
    conn.write('\x18x');
    await conn.untilEnd(5000);
    // Raw (no 8-byte frames), \r\n from the terminal.
    assert.equal(conn.split().body.toString(), 'ab\x18c\x10\x11');
    const sandbox = h.runtime.latest(id);
    assert.equal(await running(id), true);
    assert.equal(sandbox?.stdinClosed, false);
    await request(h.socketPath, 'DELETE', `/containers/${id}?force=1`);
  });

  it('Tty attach: the client closing its stdin ends the attachment, not the container stdin (StdinOnce)', async () => {
    const id = await create({ Cmd: ['cat'], Tty: true, OpenStdin: true, StdinOnce: true });
    await start(id);
    const conn = await attach(id, 'stream=1&stdin=1&stdout=1');
    conn.write('one');
    await conn.until((d) => d.includes('one'));
    conn.socket.end();
    await conn.untilEnd(5000);
    const sandbox = h.runtime.latest(id);
    assert.equal(sandbox?.stdinClosed, false);
    assert.equal(await running(id), true);
    // A later attach still reaches the same stdin.
    const again = await attach(id, 'stream=1&stdin=1&stdout=1');
    again.write('two');
    await again.until((d) => d.includes('two'));
    again.close();
    await request(h.socketPath, 'DELETE', `/containers/${id}?force=1`);
  });

  it('Tty attach without stdin: the client FIN does not end it (output goes on until the exit)', async () => {
    const id = await create({ Cmd: ['sh', '-c', 'sleep 0.3; echo late'], Tty: true });
    const conn = await attach(id, 'stream=1&stdout=1&stderr=1');
    conn.socket.end();
    await start(id);
    await conn.untilEnd(5000);
    assert.equal(conn.split().body.toString(), 'late\r\n');
  });

  it('without a Tty nothing is scanned: ctrl-p ctrl-q reach the process, EOF closes its stdin', async () => {
    const id = await create({ Cmd: ['cat'], OpenStdin: true, StdinOnce: true });
    await start(id);
    const conn = await attach(id, 'stream=1&stdin=1&stdout=1');
    conn.write(Buffer.from([0x61, 0x10, 0x11, 0x62]));
    conn.socket.end();
    await conn.untilEnd(5000);
    assert.equal(demuxAll(conn.split().body).stdout, 'a\x10\x11b');
    await eventually(async () => ((await running(id)) ? undefined : true), 5000);
  });

  it('a Tty container log is the raw terminal output', async () => {
    const id = await create({ Cmd: ['sh', '-c', 'echo out; echo err >&2'], Tty: true });
    await start(id);
    await request(h.socketPath, 'POST', `/containers/${id}/wait`);
    const logs = await request(h.socketPath, 'GET', `/containers/${id}/logs?stdout=1&stderr=1`);
    assert.equal(logs.body.toString(), 'out\r\nerr\r\n');
  });
});
