/**
 * Published ports (`-p`, `-P`, `docker port`) and `docker pause`/`unpause` through the real
 * docker CLI and dockerode against a real capsuled whose containers run in QEMU micro-VMs. The
 * expected outputs are the reference dockerd 20.10's (client-traffic/port.out, pause.out), minus
 * its "::" entries: QEMU's user-mode NIC listens on IPv4 only.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { runCli, type CliResult } from './harness/cli';
import { waitFor } from './harness/daemon';
import { session, type Session } from './harness/session';

let s: Session;
const docker = (args: string[]): Promise<CliResult> => runCli(s.cliEnv(), args);
const suffix = `${process.pid}`;

function ok(r: CliResult): string {
  assert.equal(r.code, 0, `exit ${r.code}; stderr: ${r.stderr}`);
  return r.stdout;
}

interface PortsInspect {
  State: { Status: string; Running: boolean; Paused: boolean; ExitCode: number; Error: string };
  HostConfig: { PortBindings: Record<string, Array<{ HostIp: string; HostPort: string }> | null> };
  NetworkSettings: { Ports: Record<string, Array<{ HostIp: string; HostPort: string }> | null> };
}

async function inspect(name: string): Promise<PortsInspect> {
  const [c] = JSON.parse(ok(await docker(['inspect', name]))) as PortsInspect[];
  assert.ok(c);
  return c;
}

function httpGet(port: number, urlPath: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: urlPath, timeout: 5000 }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d));
      res.on('end', () =>
        res.statusCode === 200 ? resolve(body) : reject(new Error(`HTTP ${res.statusCode}`)),
      );
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

function listen(port = 0): Promise<net.Server> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen({ host: '0.0.0.0', port }, () => resolve(server));
  });
}

function freePortNow(port: number): Promise<boolean> {
  return listen(port).then(
    (server) => new Promise<boolean>((resolve) => server.close(() => resolve(true))),
    () => false,
  );
}

describe('published ports with real VMs', () => {
  const web = `it-ports-web-${suffix}`;
  let hostPort = 0;

  before(async () => {
    s = await session();
  });
  after(async () => {
    await docker([
      'rm',
      '-f',
      web,
      `it-ports-clash-${suffix}`,
      `it-ports-busy-${suffix}`,
      `it-ports-all-${suffix}`,
    ]);
    await s.close();
  });

  it('docker run -p 0:8080 publishes an ephemeral host port that reaches the container', async () => {
    ok(
      await docker([
        'run',
        '-d',
        '--name',
        web,
        '-p',
        '0:8080',
        s.busybox,
        'sh',
        '-c',
        'mkdir /www && hostname > /www/name && exec httpd -f -p 8080 -h /www',
      ]),
    );
    const c = await inspect(web);
    assert.deepEqual(c.HostConfig.PortBindings, { '8080/tcp': [{ HostIp: '', HostPort: '0' }] });
    const bindings = c.NetworkSettings.Ports['8080/tcp'];
    assert.ok(bindings && bindings.length === 1, JSON.stringify(c.NetworkSettings.Ports));
    assert.equal(bindings[0]?.HostIp, '0.0.0.0');
    assert.match(bindings[0]?.HostPort ?? '', /^[1-9]\d*$/);
    hostPort = Number(bindings[0]?.HostPort);
    // The container's hostname, served by busybox httpd inside the VM.
    const body = await waitFor('httpd through the published port', () => httpGet(hostPort, '/name'), 60_000);
    assert.match(body, /^[0-9a-f]{12}\n$/);

    assert.equal(ok(await docker(['port', web])), `8080/tcp -> 0.0.0.0:${hostPort}\n`);
    assert.equal(ok(await docker(['port', web, '8080'])), `0.0.0.0:${hostPort}\n`);
    const ps = ok(await docker(['ps', '--filter', `name=${web}`, '--format', '{{.Ports}}']));
    assert.equal(ps, `0.0.0.0:${hostPort}->8080/tcp\n`);
  });

  it('a host port another container holds fails the start as dockerd does, leaving the container created', async () => {
    assert.ok(hostPort > 0, 'needs the first test');
    const name = `it-ports-clash-${suffix}`;
    const r = await docker([
      'run',
      '-d',
      '--name',
      name,
      '-p',
      `127.0.0.1:${hostPort}:80`,
      s.busybox,
      'true',
    ]);
    assert.notEqual(r.code, 0);
    assert.match(
      r.stderr,
      new RegExp(
        `Error response from daemon: driver failed programming external connectivity on endpoint ${name} \\([0-9a-f]{64}\\): Bind for 127\\.0\\.0\\.1:${hostPort} failed: port is already allocated`,
      ),
    );
    const c = await inspect(name);
    assert.equal(c.State.Status, 'created');
    assert.equal(c.State.ExitCode, 128);
    assert.deepEqual(c.NetworkSettings.Ports, {});
  });

  it('a host port some other program listens on fails with the userland proxy error', async () => {
    const server = await listen();
    const busyPort = (server.address() as net.AddressInfo).port;
    const name = `it-ports-busy-${suffix}`;
    try {
      const r = await docker(['run', '-d', '--name', name, '-p', `${busyPort}:80`, s.busybox, 'true']);
      assert.notEqual(r.code, 0);
      assert.match(
        r.stderr,
        new RegExp(
          `Error starting userland proxy: listen tcp4 0\\.0\\.0\\.0:${busyPort}: bind: address already in use`,
        ),
      );
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it('PublishAllPorts publishes the exposed ports (tcp and udp), and a stop frees them', async () => {
    const name = `it-ports-all-${suffix}`;
    const container = await s.docker.createContainer({
      name,
      Image: s.busybox,
      Cmd: ['sleep', '600'],
      ExposedPorts: { '7000/tcp': {}, '7001/udp': {} },
      HostConfig: {
        PublishAllPorts: true,
        PortBindings: { '7002/tcp': [{ HostIp: '127.0.0.1', HostPort: '' }] },
      },
    });
    await container.start();
    const c = await inspect(name);
    const ports = c.NetworkSettings.Ports;
    assert.deepEqual(Object.keys(ports).sort(), ['7000/tcp', '7001/udp', '7002/tcp']);
    for (const [key, ip] of [
      ['7000/tcp', '0.0.0.0'],
      ['7001/udp', '0.0.0.0'],
      ['7002/tcp', '127.0.0.1'],
    ] as const) {
      const b = ports[key];
      assert.ok(
        b && b.length === 1 && b[0]?.HostIp === ip && /^\d+$/.test(b[0].HostPort),
        `${key}: ${JSON.stringify(b)}`,
      );
    }
    const tcpPort = Number(ports['7000/tcp']?.[0]?.HostPort);
    assert.equal(await freePortNow(tcpPort), false, 'the VM listens on the published port');
    const list = (await s.docker.listContainers({ filters: { name: [name] } }))[0];
    assert.ok(list);
    assert.equal(list.Ports.length, 3);
    assert.ok(
      list.Ports.some(
        (p) => p.PrivatePort === 7001 && p.Type === 'udp' && p.IP === '0.0.0.0' && p.PublicPort > 0,
      ),
    );

    ok(await docker(['stop', '-t', '0', name]));
    assert.deepEqual((await inspect(name)).NetworkSettings.Ports, {});
    assert.equal(await waitFor('the host port is free again', () => freePortNow(tcpPort)), true);
    assert.equal(ok(await docker(['port', name])), '');
  });
});

describe('docker pause / unpause with real VMs', () => {
  const name = `it-pause-${suffix}`;

  before(async () => {
    s = await session();
  });
  after(async () => {
    await docker(['rm', '-f', name]);
    await s.close();
  });

  const lines = async (): Promise<number> =>
    ok(await docker(['logs', name]))
      .split('\n')
      .filter(Boolean).length;

  it('stops the whole VM: no output while paused, output again after unpause', async () => {
    const since = (Date.now() / 1000 - 1).toFixed(3);
    const id = ok(
      await docker([
        'run',
        '-d',
        '--name',
        name,
        s.busybox,
        'sh',
        '-c',
        'while true; do date +%s; sleep 0.2; done',
      ]),
    ).trim();
    await waitFor('some output', async () => (await lines()) >= 3, 60_000);

    assert.equal(ok(await docker(['pause', name])), `${name}\n`);
    const c = await inspect(name);
    assert.equal(c.State.Status, 'paused');
    assert.equal(c.State.Paused, true);
    assert.equal(c.State.Running, true);
    assert.match(
      ok(await docker(['ps', '--filter', `name=${name}`, '--format', '{{.Status}}'])),
      /^Up .* \(Paused\)\n$/,
    );

    const again = await docker(['pause', name]);
    assert.equal(again.code, 1);
    assert.equal(again.stderr, `Error response from daemon: Container ${id} is already paused\n`);

    // Whatever the guest wrote before the pause may still be on its way: settle, then count.
    await new Promise((r) => setTimeout(r, 500));
    const paused = await lines();
    // A fixed wait is the point here: nothing may appear during it.
    await new Promise((r) => setTimeout(r, 2500));
    assert.equal(await lines(), paused, 'no output while paused');

    assert.equal(ok(await docker(['unpause', name])), `${name}\n`);
    await waitFor('output after unpause', async () => (await lines()) > paused + 2, 30_000);
    assert.equal((await inspect(name)).State.Status, 'running');
    // The guest's clock stood still for the ~3 s of the pause; unpause brings it back to the host's
    // (agent SyncClock), so the container is not left behind by it.
    const before = Date.now() / 1000;
    const guestNow = Number(ok(await docker(['exec', name, 'date', '+%s'])).trim());
    const after = Date.now() / 1000;
    assert.ok(
      guestNow >= Math.floor(before) - 1 && guestNow <= Math.ceil(after) + 1,
      `guest clock ${guestNow} vs host ${before.toFixed(1)}…${after.toFixed(1)}`,
    );
    const notPaused = await docker(['unpause', name]);
    assert.equal(notPaused.stderr, `Error response from daemon: Container ${id} is not paused\n`);

    const until = (Date.now() / 1000 + 0.05).toFixed(3);
    const events = ok(
      await docker([
        'events',
        '--since',
        since,
        '--until',
        until,
        '--filter',
        `container=${name}`,
        '--format',
        '{{.Action}}',
      ]),
    );
    assert.deepEqual(
      events.split('\n').filter((a) => a === 'pause' || a === 'unpause'),
      ['pause', 'unpause'],
    );
  });

  it('docker stop of a paused container stops it', async () => {
    ok(await docker(['pause', name]));
    assert.equal(ok(await docker(['stop', '-t', '1', name])), `${name}\n`);
    const c = await inspect(name);
    assert.equal(c.State.Status, 'exited');
    assert.equal(c.State.Paused, false);
    const r = await docker(['pause', name]);
    assert.match(r.stderr, /Error response from daemon: Container [0-9a-f]{64} is not running\n/);
  });
});
