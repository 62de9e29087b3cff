/**
 * listProcesses against the host's real /proc: the cgroup dir is a stand-in (a temp dir whose
 * cgroup.procs names this test's own process, which Node runs with several threads), the rest is
 * what the guest reads for `docker top`.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile, mkdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { listProcesses } from './stats';

describe('listProcesses (real /proc)', () => {
  let dir: string;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'capsule-stats-'));
    await mkdir(path.join(dir, 'rootfs/etc'), { recursive: true });
    await writeFile(path.join(dir, 'rootfs/etc/passwd'), `me:x:${process.getuid?.() ?? 0}:0::/:/bin/sh\n`);
    await writeFile(path.join(dir, 'cgroup.procs'), `${process.pid}\n`);
  });

  after(() => rm(dir, { recursive: true, force: true }));

  it("a threaded process: its threads, main thread first, each with its own id and name; ps -l's figures", async () => {
    const [p, ...rest] = await listProcesses(dir, path.join(dir, 'rootfs'));
    assert.equal(rest.length, 0);
    assert.ok(p);
    assert.equal(p.pid, process.pid);
    assert.equal(p.user, 'me');
    assert.ok(p.nlwp > 1, `node runs threads (nlwp ${p.nlwp})`);
    assert.equal(p.threads.length, p.nlwp);
    assert.equal(p.threads[0]?.tid, process.pid, 'main thread first');
    assert.equal(new Set(p.threads.map((t) => t.tid)).size, p.threads.length);
    assert.ok(p.threads.slice(1).every((t) => t.tid !== process.pid && t.comm !== ''));
    // The kernel's priority is 20 at nice 0 (ps -l shows 80); flags carry PF_* bits.
    assert.equal(p.priority, 20 + p.nice);
    assert.ok(p.flags > 0);
    assert.ok(p.processor >= 0 && p.processor < os.cpus().length);
    assert.equal(typeof p.wchan, 'string');
  });

  it('a single-threaded process lists no threads', async () => {
    const { spawn } = await import('node:child_process');
    const child = spawn('sleep', ['30'], { stdio: 'ignore' });
    try {
      await new Promise((r) => child.once('spawn', r));
      await writeFile(path.join(dir, 'cgroup.procs'), `${child.pid}\n`);
      const [p] = await listProcesses(dir, path.join(dir, 'rootfs'));
      assert.equal(p?.nlwp, 1);
      assert.deepEqual(p?.threads, []);
    } finally {
      child.kill();
    }
  });
});
