import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  ALL_CAPABILITIES,
  buildOciSpec,
  containerCapabilities,
  DOCKER_DEFAULT_CAPABILITIES,
  normalizeCapabilities,
  tmpfsMountOptions,
  validateContainerOptions,
} from './oci-spec';
import type { ContainerOptions, ProcessSpec } from './types';

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

  it('sets process.terminal for a Tty container, as dockerd does for runc', () => {
    const s = buildOciSpec({ containerId: 'x', hostname: 'h', process: proc({ tty: true }) });
    assert.equal(s.process.terminal, true);
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

  it('-m: the container cgroup gets the limit and no swap; none without -m', () => {
    assert.equal(spec.linux.resources.memory, undefined);
    const limited = buildOciSpec({
      containerId: 'abc123',
      hostname: 'abc123',
      process: proc(),
      options: { memoryLimitBytes: 64 << 20 },
    });
    assert.deepEqual(limited.linux.resources.memory, { limit: 64 << 20, swap: 64 << 20 });
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

describe('buildOciSpec with Docker options (config.json of the reference dockerd 20.10 for the same flags)', () => {
  const build = (options: ContainerOptions) =>
    buildOciSpec({ containerId: 'c', hostname: 'h', process: proc({ args: ['sleep', '600'] }), options });
  const mount = (s: ReturnType<typeof build>, dest: string) => s.mounts.find((m) => m.destination === dest);

  it('--tmpfs /run:size=1m,exec --tmpfs /t2 --shm-size 128m --read-only --ulimit nofile=100:200 --ulimit nproc=50 --init', () => {
    const s = build({
      tmpfs: { '/t2': '', '/run': 'size=1m,exec' },
      shmSizeBytes: 134217728,
      readonlyRootfs: true,
      ulimits: [
        { name: 'nofile', soft: 100, hard: 200 },
        { name: 'nproc', soft: 50, hard: 50 },
      ],
      init: true,
    });
    assert.deepEqual(s.process.args, ['/sbin/docker-init', '--', 'sleep', '600']);
    assert.deepEqual(s.process.rlimits, [
      { type: 'RLIMIT_NOFILE', hard: 200, soft: 100 },
      { type: 'RLIMIT_NPROC', hard: 50, soft: 50 },
    ]);
    assert.equal(s.root.readonly, true);
    assert.deepEqual(
      s.mounts.slice(6).map((m) => [m.destination, m.type, m.source, m.options]),
      [
        ['/dev/shm', 'tmpfs', 'shm', ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=134217728']],
        ['/sbin/docker-init', 'bind', '/agent/bin/tini', ['bind', 'ro']],
        ['/run', 'tmpfs', 'tmpfs', ['nosuid', 'nodev', 'rprivate', 'size=1m', 'exec']],
        ['/t2', 'tmpfs', 'tmpfs', ['noexec', 'nosuid', 'nodev', 'rprivate']],
      ],
    );
  });

  it('no rlimits, 64 MiB /dev/shm and no init by default', () => {
    const s = build({});
    assert.equal(s.process.rlimits, undefined);
    assert.deepEqual(mount(s, '/dev/shm')?.options, [
      'nosuid',
      'noexec',
      'nodev',
      'mode=1777',
      'size=67108864',
    ]);
    assert.equal(mount(s, '/sbin/docker-init'), undefined);
  });

  it('--cap-add sys_admin --cap-drop CAP_CHOWN --cap-drop net_raw (moby TweakCapabilities)', () => {
    const s = build({ capAdd: ['sys_admin'], capDrop: ['CAP_CHOWN', 'net_raw'] });
    const expected = [
      'CAP_DAC_OVERRIDE',
      'CAP_FSETID',
      'CAP_FOWNER',
      'CAP_MKNOD',
      'CAP_SETGID',
      'CAP_SETUID',
      'CAP_SETFCAP',
      'CAP_SETPCAP',
      'CAP_NET_BIND_SERVICE',
      'CAP_SYS_CHROOT',
      'CAP_KILL',
      'CAP_AUDIT_WRITE',
      'CAP_SYS_ADMIN',
    ];
    assert.deepEqual(s.process.capabilities, {
      bounding: expected,
      effective: expected,
      permitted: expected,
    });
  });

  it('--cap-add ALL --cap-drop sys_admin, and --cap-drop ALL --cap-add chown', () => {
    assert.deepEqual(
      containerCapabilities({ capAdd: ['ALL'], capDrop: ['sys_admin'] }),
      ALL_CAPABILITIES.filter((c) => c !== 'CAP_SYS_ADMIN'),
    );
    assert.deepEqual(containerCapabilities({ capAdd: ['chown'], capDrop: ['all'] }), ['CAP_CHOWN']);
  });

  it('--privileged: every capability and device, /sys read-write, nothing masked', () => {
    const s = build({ privileged: true, capDrop: ['chown'] });
    assert.deepEqual(s.process.capabilities.bounding, [...ALL_CAPABILITIES]);
    assert.equal(ALL_CAPABILITIES.length, 41);
    assert.deepEqual(s.linux.maskedPaths, []);
    assert.deepEqual(s.linux.readonlyPaths, []);
    assert.deepEqual(s.linux.resources.devices, [{ allow: true, access: 'rwm' }]);
    assert.equal(mount(s, '/dev')?.type, 'devtmpfs');
    assert.deepEqual(mount(s, '/sys')?.options, ['nosuid', 'noexec', 'nodev']);
    assert.ok(!mount(s, '/sys/fs/cgroup')?.options?.includes('ro'));
  });

  it("rejects bad options with dockerd's texts: capabilities at create, tmpfs and ulimits at start", () => {
    assert.throws(
      () => normalizeCapabilities(['foo']),
      /^InvalidParameterError: unknown capability: "CAP_FOO"$/,
    );
    assert.throws(
      () => validateContainerOptions({ capDrop: ['chown', 'bogus'] }),
      /^InvalidParameterError: invalid CapDrop: unknown capability: "CAP_BOGUS"$/,
    );
    validateContainerOptions({ capAdd: ['NET_ADMIN', 'all'], capDrop: ['CAP_CHOWN'] });
    assert.throws(
      () => build({ tmpfs: { '/x': 'size=1m,bogus' } }),
      /^SystemError: invalid tmpfs option \["bogus"\]$/,
    );
    assert.throws(
      () => build({ ulimits: [{ name: 'nofiles', soft: 1, hard: 1 }] }),
      /^SystemError: wrong rlimit value: RLIMIT_NOFILES: unknown$/,
    );
  });

  it('tmpfs options: the last of a flag group or data key wins, order kept', () => {
    assert.deepEqual(tmpfsMountOptions('ro,size=1m,rw,size=2m,defaults'), [
      'noexec',
      'nosuid',
      'nodev',
      'rprivate',
      'rw',
      'size=2m',
    ]);
  });
});
