import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { buildOciSpec, DOCKER_DEFAULT_CAPABILITIES } from './oci-spec';
import type { ProcessSpec } from './types';

const proc = (over: Partial<ProcessSpec> = {}): ProcessSpec => ({
  args: ['sh', '-c', 'echo hi'],
  env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'FOO=bar'],
  cwd: '',
  user: '',
  openStdin: false,
  tty: false,
  ...over,
});

describe('buildOciSpec', () => {
  const spec = buildOciSpec({ containerId: 'abc123', hostname: 'abc123', process: proc() });

  it('has the process, with HOSTNAME after PATH as dockerd orders the environment', () => {
    assert.deepEqual(spec.process.args, ['sh', '-c', 'echo hi']);
    assert.deepEqual(spec.process.env, [
      'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
      'HOSTNAME=abc123',
      'FOO=bar',
    ]);
    assert.equal(spec.process.cwd, '/');
    assert.equal(spec.process.terminal, false);
    assert.equal(spec.process.noNewPrivileges, false);
    assert.equal(spec.hostname, 'abc123');
    assert.equal(spec.root.readonly, false);
  });

  it('keeps a HOSTNAME the container sets and a working dir', () => {
    const s = buildOciSpec({
      containerId: 'x',
      hostname: 'h',
      process: proc({ env: ['HOSTNAME=mine', 'PATH=/bin'], cwd: '/srv' }),
    });
    assert.deepEqual(s.process.env, ['HOSTNAME=mine', 'PATH=/bin']);
    assert.equal(s.process.cwd, '/srv');
  });

  it("has Docker's 14 default capabilities in bounding, effective and permitted, and no ambient", () => {
    assert.equal(DOCKER_DEFAULT_CAPABILITIES.length, 14);
    for (const set of ['bounding', 'effective', 'permitted'] as const) {
      assert.deepEqual(spec.process.capabilities[set], [...DOCKER_DEFAULT_CAPABILITIES]);
    }
    assert.ok(!('ambient' in spec.process.capabilities));
    assert.ok(!spec.process.capabilities.bounding.includes('CAP_SYS_ADMIN'));
  });

  it('mounts what dockerd mounts, /dev/shm 64 MiB, sysfs and cgroup read-only', () => {
    assert.deepEqual(
      spec.mounts.map((m) => [m.destination, m.type]),
      [
        ['/proc', 'proc'],
        ['/dev', 'tmpfs'],
        ['/dev/pts', 'devpts'],
        ['/sys', 'sysfs'],
        ['/sys/fs/cgroup', 'cgroup'],
        ['/dev/mqueue', 'mqueue'],
        ['/dev/shm', 'tmpfs'],
      ],
    );
    const opts = (d: string) => spec.mounts.find((m) => m.destination === d)?.options ?? [];
    assert.ok(opts('/dev/shm').includes('size=67108864'));
    assert.ok(opts('/sys').includes('ro'));
    assert.ok(opts('/sys/fs/cgroup').includes('ro'));
  });

  it('has no network namespace: the container uses the VM network', () => {
    const types = spec.linux.namespaces.map((n) => n.type).sort();
    assert.deepEqual(types, ['ipc', 'mount', 'pid', 'uts']);
  });

  it("masks and read-only-mounts Docker's /proc and /sys paths", () => {
    for (const p of [
      '/proc/kcore',
      '/proc/keys',
      '/proc/timer_list',
      '/sys/firmware',
      '/proc/scsi',
      '/proc/acpi',
    ]) {
      assert.ok(spec.linux.maskedPaths.includes(p), p);
    }
    assert.deepEqual(spec.linux.readonlyPaths, [
      '/proc/bus',
      '/proc/fs',
      '/proc/irq',
      '/proc/sys',
      '/proc/sysrq-trigger',
    ]);
  });

  it('denies devices but the standard ones, as dockerd does', () => {
    const rules = spec.linux.resources.devices;
    assert.deepEqual(rules[0], { allow: false, access: 'rwm' });
    const allowed = rules.filter((r) => r.allow).map((r) => `${r.major}:${r.minor}`);
    assert.deepEqual(allowed.sort(), ['1:3', '1:5', '1:8', '1:9', '5:0', '5:1']);
  });

  it('leaves rlimits alone and sets no user (resolved in the guest)', () => {
    assert.ok(!('rlimits' in spec.process));
    assert.deepEqual(spec.process.user, { uid: 0, gid: 0 });
  });

  it('appends extra mounts after the defaults', () => {
    const s = buildOciSpec({
      containerId: 'x',
      hostname: 'h',
      process: proc(),
      extraMounts: [
        { destination: '/data', type: 'bind', source: '/run/capsule/shared/v', options: ['rbind'] },
      ],
    });
    assert.equal(s.mounts[s.mounts.length - 1]?.destination, '/data');
  });

  it('rejects an empty argv', () => {
    assert.throws(() => buildOciSpec({ containerId: 'x', hostname: 'h', process: proc({ args: [] }) }));
  });
});
