import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { execHelperArgs, helperNamespaces, parseHelperStatus } from './exec-helper';
import { AgentError } from './errors';

const DOCKER_DEFAULT_CAPS = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_FSETID',
  'CAP_FOWNER',
  'CAP_MKNOD',
  'CAP_NET_RAW',
  'CAP_SETGID',
  'CAP_SETUID',
  'CAP_SETFCAP',
  'CAP_SETPCAP',
  'CAP_NET_BIND_SERVICE',
  'CAP_SYS_CHROOT',
  'CAP_KILL',
  'CAP_AUDIT_WRITE',
];

describe('capsule-exec command line', () => {
  it("Docker's default capabilities are the mask crun leaves in /proc/self/status (a80425fb)", () => {
    const argv = execHelperArgs(42, ['mnt', 'uts', 'pid', 'ipc'], {
      args: ['sh', '-c', 'echo hi'],
      env: ['PATH=/bin', 'A=b=c'],
      cwd: '/work',
      user: { uid: 1000, gid: 1000, additionalGids: [1000, 50] },
      capabilities: {
        bounding: DOCKER_DEFAULT_CAPS,
        effective: DOCKER_DEFAULT_CAPS,
        permitted: DOCKER_DEFAULT_CAPS,
      },
      noNewPrivileges: false,
      oomScoreAdj: 0,
    });
    assert.deepEqual(argv, [
      '--pid', '42',
      '--ns', 'mnt', '--ns', 'uts', '--ns', 'pid', '--ns', 'ipc',
      '--uid', '1000', '--gid', '1000', '--groups', '1000,50',
      '--cwd', '/work',
      '--env', 'PATH=/bin', '--env', 'A=b=c',
      '--cap-bounding', 'a80425fb', '--cap-effective', 'a80425fb', '--cap-permitted', 'a80425fb',
      '--cap-inheritable', '0', '--cap-ambient', '0',
      '--', 'sh', '-c', 'echo hi',
    ]); // prettier-ignore
  });

  it('rlimits by number (unlimited as -1), no_new_privs, a non-zero oom_score_adj, umask in octal', () => {
    const argv = execHelperArgs(7, [], {
      args: ['true'],
      env: [],
      cwd: '/',
      user: { uid: 0, gid: 0, umask: 0o027 },
      rlimits: [
        { type: 'RLIMIT_NOFILE', soft: 1024, hard: 2048 },
        { type: 'RLIMIT_CORE', soft: 2 ** 64 - 1, hard: 2 ** 64 - 1 },
      ],
      noNewPrivileges: true,
      oomScoreAdj: 500,
    });
    assert.deepEqual(argv, [
      '--pid', '7', '--uid', '0', '--gid', '0', '--groups', '', '--cwd', '/',
      '--rlimit', '7:1024:2048', '--rlimit', '4:-1:-1',
      '--no-new-privs', '--oom-score-adj', '500', '--umask', '27', '--', 'true',
    ]); // prettier-ignore
  });

  it('an unknown capability or rlimit is refused (126), not dropped', () => {
    const base = { args: ['true'], env: [], cwd: '/', user: { uid: 0, gid: 0 } };
    assert.throws(
      () => execHelperArgs(1, [], { ...base, capabilities: { bounding: ['CAP_NOPE'] } }),
      (err: unknown) => err instanceof AgentError && err.exitCode === 126 && /CAP_NOPE/.test(err.message),
    );
    assert.throws(
      () => execHelperArgs(1, [], { ...base, rlimits: [{ type: 'RLIMIT_NOPE', soft: 1, hard: 1 }] }),
      /RLIMIT_NOPE/,
    );
  });

  it('namespaces: OCI types to /proc/PID/ns names; a user namespace leaves the exec to crun', () => {
    assert.deepEqual(helperNamespaces(['mount', 'uts', 'pid', 'ipc', 'network', 'cgroup']), [
      'mnt',
      'uts',
      'pid',
      'ipc',
      'net',
      'cgroup',
    ]);
    assert.equal(helperNamespaces(['mount', 'user']), undefined);
  });

  it('status line: pid, error (the rest of the line), anything else unknown', () => {
    assert.deepEqual(parseHelperStatus('pid 123\n'), { pid: 123 });
    assert.deepEqual(parseHelperStatus('error chdir `/x`: No such file or directory\n'), {
      error: 'chdir `/x`: No such file or directory',
    });
    assert.equal(parseHelperStatus(''), undefined);
    assert.equal(parseHelperStatus('pid x'), undefined);
  });
});
