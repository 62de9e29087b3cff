/**
 * The container options the OCI spec applies inside the VM (--read-only, --tmpfs, --shm-size,
 * --ulimit, --init, --cap-add/--cap-drop, --privileged) and the VM's size (--cpus, --memory), as
 * the container sees them, through the real docker CLI against a real capsuled. The expected
 * values are what the same commands print under the reference dockerd 20.10 (capability masks,
 * ulimits, df sizes, the read-only error), except where a VM differs (noted).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { runCli, type CliResult } from './harness/cli';
import { session, type Session } from './harness/session';

let s: Session;
const docker = (args: string[]): Promise<CliResult> => runCli(s.cliEnv(), args);

function ok(r: CliResult): string {
  assert.equal(r.code, 0, `exit ${r.code}; stderr: ${r.stderr}`);
  return r.stdout;
}

/** `key: value` lines printed by the probe scripts below. */
function fields(out: string): Map<string, string> {
  const map = new Map<string, string>();
  for (const line of out.split('\n')) {
    const i = line.indexOf(':');
    if (i > 0) map.set(line.slice(0, i).trim(), line.slice(i + 1).trim());
  }
  return map;
}

describe('OCI options inside the VM', () => {
  before(async () => {
    s = await session();
  });
  after(async () => {
    await s.close();
  });

  it('--read-only --tmpfs --shm-size --ulimit --init --cap-add/--cap-drop: what the container sees', async () => {
    const probe = [
      'grep CapEff /proc/self/status',
      'echo "nofile: $(ulimit -n) $(ulimit -Hn)"',
      'echo "shm: $(df -k /dev/shm | tail -1 | awk \'{print $2}\')"',
      'echo "run: $(df -k /run | tail -1 | awk \'{print $2}\')"',
      'echo "rootfs: $(touch /x 2>&1)"',
      'echo "tmpfs writable: $(touch /run/ok && echo yes)"',
      "echo \"pid1: $(tr '\\0' ' ' </proc/1/cmdline)\"",
    ].join('; ');
    const out = ok(
      await docker([
        'run',
        '--rm',
        '--read-only',
        '--tmpfs',
        '/run:size=1m,exec',
        '--shm-size',
        '128m',
        '--ulimit',
        'nofile=100:200',
        '--init',
        '--cap-add',
        'sys_admin',
        '--cap-drop',
        'CAP_CHOWN',
        s.busybox,
        'sh',
        '-c',
        probe,
      ]),
    );
    const f = fields(out);
    // Docker's defaults without CAP_CHOWN, with CAP_SYS_ADMIN.
    assert.equal(f.get('CapEff'), '00000000a82425fa', out);
    assert.equal(f.get('nofile'), '100 200');
    assert.equal(f.get('shm'), '131072');
    assert.equal(f.get('run'), '1024');
    assert.equal(f.get('rootfs'), 'touch: /x: Read-only file system');
    assert.equal(f.get('tmpfs writable'), 'yes');
    assert.match(f.get('pid1') ?? '', /^\/sbin\/docker-init -- sh -c /);
  });

  it("the default capability set is dockerd's", async () => {
    const out = ok(await docker(['run', '--rm', s.busybox, 'grep', 'CapEff', '/proc/self/status']));
    assert.equal(fields(out).get('CapEff'), '00000000a80425fb');
  });

  it('--privileged --cpus 2 --memory 300m: every capability and device of the VM, two vCPUs, a 300m cgroup limit', async () => {
    const probe = [
      'grep CapEff /proc/self/status',
      'echo "kcore masked: $(grep -c " /proc/kcore " /proc/self/mounts)"',
      'echo "sys: $(grep " /sys " /proc/self/mounts | cut -d" " -f4 | cut -d, -f1)"',
      'echo "vda: $(test -b /dev/vda && echo block)"',
      'echo "nproc: $(nproc)"',
      'echo "memtotal: $(awk \'/MemTotal/ {print $2}\' /proc/meminfo)"',
      // The container's own cgroup: its /proc/self/cgroup path under the mount, or the mount itself
      // when the runtime mounted only the container's subtree there.
      'c=/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup); [ -f "$c/memory.max" ] || c=/sys/fs/cgroup',
      'echo "memory.max: $(cat "$c/memory.max")"',
    ].join('; ');
    const out = ok(
      await docker([
        'run',
        '--rm',
        '--privileged',
        '--cpus',
        '2',
        '--memory',
        '300m',
        s.busybox,
        'sh',
        '-c',
        probe,
      ]),
    );
    const f = fields(out);
    assert.equal(f.get('CapEff'), '000001ffffffffff', out);
    assert.equal(f.get('kcore masked'), '0');
    assert.equal(f.get('sys'), 'rw');
    assert.equal(f.get('vda'), 'block', "the VM's disks are in the privileged container's /dev");
    assert.equal(f.get('nproc'), '2');
    // -m limits the container's cgroup (as dockerd); the VM holds 128 MiB more for the guest kernel
    // and agent, of which the kernel keeps a little: MemTotal is a little under 428 MiB.
    assert.equal(f.get('memory.max'), String(300 * 1024 * 1024), out);
    const memKiB = Number(f.get('memtotal'));
    assert.ok(memKiB > 328 * 1024 && memKiB <= 428 * 1024, `MemTotal ${memKiB} kB`);
  });

  it("a bad option fails the create with dockerd's 400 text and leaves no container", async () => {
    const name = `it-badcap-${process.pid}`;
    const r = await docker(['create', '--name', name, '--cap-add', 'bogus', s.busybox]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /Error response from daemon: invalid CapAdd: unknown capability: "CAP_BOGUS"/);
    assert.equal((await docker(['inspect', name])).code, 1);
  });

  it("a bad tmpfs option fails the start with dockerd's 500 text, the container staying created", async () => {
    const name = `it-badtmpfs-${process.pid}`;
    try {
      const r = await docker(['run', '--name', name, '--tmpfs', '/x:bogus', s.busybox, 'true']);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /Error response from daemon: invalid tmpfs option \["bogus"\]/);
      const state = ok(await docker(['inspect', '-f', '{{.State.Status}} {{.State.ExitCode}}', name]));
      assert.equal(state, 'created 128\n');
    } finally {
      await docker(['rm', '-f', name]);
    }
  });
});
