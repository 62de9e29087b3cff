import assert from 'node:assert/strict';
import net from 'node:net';
import { describe, it } from 'node:test';
import { PortAllocator, portIsFree, portMapOf, portRequestsOf, type PortProto } from './ports';
import type { ContainerConfig, HostConfig, PortBinding } from './types';

const config = (exposed: string[] = []): ContainerConfig =>
  ({ exposedPorts: Object.fromEntries(exposed.map((p) => [p, {}])) }) as unknown as ContainerConfig;
const hostConfig = (bindings: Record<string, PortBinding[] | null>, publishAll = false): HostConfig =>
  ({ portBindings: bindings, passthrough: { PublishAllPorts: publishAll } }) as unknown as HostConfig;
const bind = (hostIp: string, hostPort: string): PortBinding => ({ hostIp, hostPort });

/** A fake "is the host port free" with a set of ports in use by other programs. */
const fakeFree =
  (busy: number[] = []) =>
  async (_proto: PortProto, _addr: string, port: number) =>
    !busy.includes(port);

describe('published ports', () => {
  it('reads -p forms and -P over exposed ports, sorted by port and protocol', () => {
    const reqs = portRequestsOf(
      config(['443/tcp', '53/udp', '9000']),
      hostConfig(
        {
          '80/tcp': [bind('', '8080'), bind('127.0.0.1', '')],
          '53/udp': [bind('', '5353')],
          '90': [bind('', '9000-9010')],
        },
        true,
      ),
    );
    assert.deepEqual(
      reqs.map((r) => [r.key, r.hostIp, r.hostPorts]),
      [
        ['53/udp', '', [5353, 5353]],
        ['80/tcp', '', [8080, 8080]],
        ['80/tcp', '127.0.0.1', [0, 0]],
        ['90/tcp', '', [9000, 9010]],
        ['443/tcp', '', [0, 0]],
        ['9000/tcp', '', [0, 0]],
      ],
    );
  });

  it('exposed ports are not published without -P', () => {
    assert.deepEqual(portRequestsOf(config(['80/tcp']), hostConfig({})), []);
  });

  it('a bad port specification is rejected with dockerd message', () => {
    assert.throws(
      () => portRequestsOf(config(), hostConfig({ 'x/tcp': [bind('', '80')] })),
      /^InvalidParameterError: invalid port specification: "x"$/,
    );
    assert.throws(
      () => portRequestsOf(config(), hostConfig({ '80/tcp': [bind('', '70000')] })),
      /invalid port specification: "70000"/,
    );
    assert.throws(() => portRequestsOf(config(), hostConfig({ '80/tcp': [bind('::1', '80')] })), /IPv4/);
  });

  it('reports every exposed and bound port, unpublished ones as null, HostPort as a string', () => {
    const map = portMapOf(config(['443/tcp']), hostConfig({ '80/tcp': [bind('', '')] }), [
      { key: '80/tcp', proto: 'tcp', containerPort: 80, hostIp: '0.0.0.0', hostPort: 32768 },
    ]);
    assert.deepEqual(map, { '443/tcp': null, '80/tcp': [{ hostIp: '0.0.0.0', hostPort: '32768' }] });
  });

  it('allocates ephemeral ports round robin from the range and frees them on release', async () => {
    const ports = new PortAllocator({ isFree: fakeFree([40001]), ephemeralRange: [40000, 40003] });
    const req = portRequestsOf(config(['80/tcp']), hostConfig({}, true));
    const a = await ports.allocate('a', 'a', req);
    const b = await ports.allocate('b', 'b', req);
    assert.deepEqual([a[0]?.hostPort, b[0]?.hostPort], [40000, 40002]);
    ports.release('a');
    const c = await ports.allocate('c', 'c', req);
    assert.equal(c[0]?.hostPort, 40003);
    const d = await ports.allocate('d', 'd', req);
    assert.equal(d[0]?.hostPort, 40000, 'wraps around to the released port');
  });

  it('a port another container holds fails with dockerd "port is already allocated", holding nothing', async () => {
    const ports = new PortAllocator({ isFree: fakeFree() });
    await ports.allocate(
      'a',
      'first',
      portRequestsOf(config(), hostConfig({ '80/tcp': [bind('', '8080')] })),
    );
    await assert.rejects(
      ports.allocate(
        'b',
        'web',
        portRequestsOf(
          config(),
          hostConfig({ '81/tcp': [bind('', '9090')], '82/tcp': [bind('127.0.0.1', '8080')] }),
        ),
      ),
      (err: Error) =>
        /^driver failed programming external connectivity on endpoint web \([0-9a-f]{64}\): Bind for 127\.0\.0\.1:8080 failed: port is already allocated$/.test(
          err.message,
        ),
    );
    // 9090 was taken by b before its failure: released again.
    const again = await ports.allocate(
      'c',
      'c',
      portRequestsOf(config(), hostConfig({ '1/tcp': [bind('', '9090')] })),
    );
    assert.equal(again[0]?.hostPort, 9090);
    // udp is another space
    const udp = await ports.allocate(
      'd',
      'd',
      portRequestsOf(config(), hostConfig({ '1/udp': [bind('', '8080')] })),
    );
    assert.equal(udp[0]?.hostPort, 8080);
  });

  it('a port some other program listens on fails with the userland proxy message', async () => {
    const ports = new PortAllocator({ isFree: fakeFree([8080]) });
    await assert.rejects(
      ports.allocate('a', 'web', portRequestsOf(config(), hostConfig({ '80/tcp': [bind('', '8080')] }))),
      /: Error starting userland proxy: listen tcp4 0\.0\.0\.0:8080: bind: address already in use$/,
    );
  });

  it('a host port range takes its first free port', async () => {
    const ports = new PortAllocator({ isFree: fakeFree([9000]) });
    const got = await ports.allocate(
      'a',
      'a',
      portRequestsOf(config(), hostConfig({ '80': [bind('', '9000-9002')] })),
    );
    assert.equal(got[0]?.hostPort, 9001);
  });

  it('portIsFree sees a real listener', async () => {
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen({ host: '127.0.0.1', port: 0 }, resolve));
    const port = (server.address() as net.AddressInfo).port;
    try {
      assert.equal(await portIsFree('tcp', '127.0.0.1', port), false);
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
    assert.equal(await portIsFree('tcp', '127.0.0.1', port), true);
  });
});
