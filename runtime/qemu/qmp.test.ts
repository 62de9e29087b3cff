import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { DeadlineError, UnavailableError } from '../../common/errdefs';
import { type QmpEvent, QmpClient, QmpCommandError } from './qmp';

/** A fake QMP server: greets, answers by a handler table, records what it got. */
function fakeQmp(
  socketPath: string,
  handler: (cmd: { execute: string; arguments?: unknown; id?: string }, sock: net.Socket) => void,
  greeting = '{"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 22}}, "capabilities": []}}\n',
): net.Server {
  const server = net.createServer((sock) => {
    sock.write(greeting);
    let buf = '';
    sock.on('data', (chunk) => {
      buf += chunk.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        handler(JSON.parse(line) as { execute: string; id?: string }, sock);
      }
    });
    sock.on('error', () => undefined);
  });
  server.listen(socketPath);
  return server;
}

function reply(sock: net.Socket, id: string | undefined, value: unknown): void {
  sock.write(JSON.stringify({ return: value, id }) + '\n');
}

describe('QmpClient', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'qmp-test-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('negotiates, runs commands, matches replies by id and passes events on', async () => {
    const sock = path.join(dir, 'a.sock');
    const seen: string[] = [];
    const server = fakeQmp(sock, (cmd, s) => {
      seen.push(cmd.execute);
      if (cmd.execute === 'query-status') {
        s.write('{"event": "RESUME", "timestamp": {"seconds": 1, "microseconds": 2}}\n');
        reply(s, cmd.id, { status: 'running', running: true });
      } else if (cmd.execute === 'stop') {
        s.write(JSON.stringify({ error: { class: 'GenericError', desc: 'nope' }, id: cmd.id }) + '\n');
      } else {
        reply(s, cmd.id, {});
      }
    });
    const events: QmpEvent[] = [];
    const client = await QmpClient.connect(sock, { onEvent: (e) => events.push(e) });
    try {
      assert.deepEqual(await client.queryStatus(), { status: 'running', running: true });
      await assert.rejects(
        client.stop(),
        (err: unknown) => err instanceof QmpCommandError && /nope/.test(err.message),
      );
      await client.cont();
      assert.deepEqual(seen, ['qmp_capabilities', 'query-status', 'stop', 'cont']);
      assert.equal(events[0]?.event, 'RESUME');
    } finally {
      client.close();
      server.close();
    }
  });

  it('adds and removes port forwards through HMP, failing on HMP error text', async () => {
    const sock = path.join(dir, 'e.sock');
    const lines: string[] = [];
    const server = fakeQmp(sock, (cmd, s) => {
      const line = (cmd.arguments as { 'command-line'?: string } | undefined)?.['command-line'];
      if (line === undefined) return reply(s, cmd.id, {});
      lines.push(line);
      if (line.includes(':9-')) reply(s, cmd.id, "Could not set up host forwarding rule 'tcp::9-:80'\r\n");
      else if (line.startsWith('hostfwd_remove'))
        reply(s, cmd.id, `host forwarding rule for ${line.split(' ')[2]} removed\r\n`);
      else reply(s, cmd.id, '');
    });
    const client = await QmpClient.connect(sock);
    try {
      const fwd = { proto: 'tcp' as const, hostAddr: '127.0.0.1', hostPort: 8080, guestPort: 80 };
      await client.hostForwardAdd(fwd);
      await client.hostForwardRemove(fwd);
      await assert.rejects(client.hostForwardAdd({ ...fwd, hostAddr: '', hostPort: 9 }), /Could not set up/);
      assert.deepEqual(lines, [
        'hostfwd_add net0 tcp:127.0.0.1:8080-:80',
        'hostfwd_remove net0 tcp:127.0.0.1:8080',
        'hostfwd_add net0 tcp::9-:80',
      ]);
    } finally {
      client.close();
      server.close();
    }
  });

  it('times out a command that gets no reply', async () => {
    const sock = path.join(dir, 'b.sock');
    const server = fakeQmp(sock, (cmd, s) => {
      if (cmd.execute === 'qmp_capabilities') reply(s, cmd.id, {});
    });
    const client = await QmpClient.connect(sock);
    try {
      await assert.rejects(client.execute('query-status', undefined, 100), DeadlineError);
    } finally {
      client.close();
      server.close();
    }
  });

  it('counts quit as done when QEMU closes the connection', async () => {
    const sock = path.join(dir, 'c.sock');
    const server = fakeQmp(sock, (cmd, s) => {
      if (cmd.execute === 'quit') s.destroy();
      else reply(s, cmd.id, {});
    });
    const client = await QmpClient.connect(sock);
    await client.quit(1000);
    await assert.rejects(client.cont(), UnavailableError);
    client.close();
    server.close();
  });

  it('fails to connect with a deadline when nothing greets', async () => {
    const sock = path.join(dir, 'd.sock');
    const server = net.createServer(() => undefined).listen(sock);
    await assert.rejects(QmpClient.connect(sock, { timeoutMs: 100 }), DeadlineError);
    server.close();
    await assert.rejects(QmpClient.connect(path.join(dir, 'none.sock')), UnavailableError);
  });
});
