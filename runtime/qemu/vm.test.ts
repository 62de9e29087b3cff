// bootVm's process handling, with fake qemu and virtiofsd scripts (no VM, no root): what it
// starts is stopped on every failure, and nothing is left once a VM is gone.
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { SystemError } from '../../common/errdefs';
import { createSilentLogger } from '../../common/logger';
import { ProcessSupervisor } from '../../common/processes';
import { type VmOptions, bootVm, consoleTail } from './vm';

// Serves a unix socket at the path given as --socket-path= until SIGTERM.
const FAKE_VIRTIOFSD = `#!/usr/bin/env node
const net = require('net');
const arg = process.argv.find((a) => a.startsWith('--socket-path='));
if (process.env.FAKE_VIRTIOFSD_MODE === 'silent') { setInterval(() => {}, 1000); return; }
net.createServer(() => {}).listen(arg.slice('--socket-path='.length));
process.on('SIGTERM', () => process.exit(0));
`;

// Serves the agent and QMP sockets named in its argv and writes a console line; FAKE_QEMU_MODE
// makes it fail at once or exit after a moment.
const FAKE_QEMU = `#!/usr/bin/env node
const net = require('net');
const fs = require('fs');
const mode = process.env.FAKE_QEMU_MODE || 'run';
if (mode === 'fail') { process.stderr.write('qemu-system-x86_64: -device foo: bad device\\n'); process.exit(1); }
const value = (prefix) => {
  const opt = process.argv.find((a) => a.startsWith(prefix));
  return opt && opt.slice(prefix.length).split(',')[0];
};
fs.writeFileSync(value('file,id=console,path='), 'capsule-init: started\\n');
for (const p of [value('socket,id=agent,path='), value('socket,id=qmp,path=')]) net.createServer(() => {}).listen(p);
process.on('SIGTERM', () => process.exit(0));
if (mode === 'exit') setTimeout(() => process.exit(3), 300);
`;

describe('bootVm (fake qemu and virtiofsd)', () => {
  let dir: string;
  let bin: string;
  before(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'vm-test-'));
    bin = path.join(dir, 'bin');
    mkdirSync(bin);
    writeFileSync(path.join(bin, 'virtiofsd'), FAKE_VIRTIOFSD);
    writeFileSync(path.join(bin, 'qemu'), FAKE_QEMU);
    chmodSync(path.join(bin, 'virtiofsd'), 0o755);
    chmodSync(path.join(bin, 'qemu'), 0o755);
  });
  after(() => {
    delete process.env.FAKE_QEMU_MODE;
    delete process.env.FAKE_VIRTIOFSD_MODE;
    rmSync(dir, { recursive: true, force: true });
  });

  function options(name: string): VmOptions {
    const runDir = path.join(dir, name);
    const sharedDir = path.join(runDir, 'shared');
    mkdirSync(sharedDir, { recursive: true });
    return {
      runDir,
      sharedDir,
      assets: { kernelPath: '/k', initrdPath: '/i', agentDiskPath: '/a', kernelRelease: 'test' },
      accel: 'tcg',
      memoryMiB: 256,
      vcpus: 1,
      hostname: 'test',
      tscKhz: 2000000,
      startTimeoutMs: 3000,
      qemuBinary: path.join(bin, 'qemu'),
      virtiofsdBinary: path.join(bin, 'virtiofsd'),
    };
  }

  const sockets = (runDir: string): string[] =>
    ['agent.sock', 'qmp.sock', 'virtiofsd.sock'].filter((s) => existsSync(path.join(runDir, s)));

  it('starts both, and stop() reaps both and removes the sockets (twice is fine)', async () => {
    const supervisor = new ProcessSupervisor(createSilentLogger());
    const opts = options('ok');
    const vm = await bootVm(supervisor, createSilentLogger(), opts);
    assert.ok(vm.pid > 0);
    assert.deepEqual(sockets(opts.runDir).sort(), ['agent.sock', 'qmp.sock', 'virtiofsd.sock']);
    assert.equal(supervisor.running().length, 2);
    assert.match(await consoleTail(vm, 100), /capsule-init: started/);
    await Promise.all([vm.stop(), vm.stop()]);
    await vm.stop();
    assert.equal(supervisor.running().length, 0);
    assert.deepEqual(sockets(opts.runDir), []);
    assert.equal((await vm.exited).code, 0);
  });

  it('cleans up when QEMU exits by itself', async () => {
    process.env.FAKE_QEMU_MODE = 'exit';
    const supervisor = new ProcessSupervisor(createSilentLogger());
    const opts = options('exits');
    const vm = await bootVm(supervisor, createSilentLogger(), opts);
    assert.equal((await vm.exited).code, 3);
    assert.equal(supervisor.running().length, 0);
    assert.deepEqual(sockets(opts.runDir), []);
    delete process.env.FAKE_QEMU_MODE;
  });

  it('stops virtiofsd and reports QEMU stderr when QEMU fails to start', async () => {
    process.env.FAKE_QEMU_MODE = 'fail';
    const supervisor = new ProcessSupervisor(createSilentLogger());
    const opts = options('fails');
    await assert.rejects(
      bootVm(supervisor, createSilentLogger(), opts),
      (err: unknown) =>
        err instanceof SystemError && /bad device/.test(err.message) && /exited/.test(err.message),
    );
    assert.equal(supervisor.running().length, 0);
    assert.deepEqual(sockets(opts.runDir), []);
    delete process.env.FAKE_QEMU_MODE;
  });

  it('gives up on a virtiofsd that never listens, within the start timeout', async () => {
    process.env.FAKE_VIRTIOFSD_MODE = 'silent';
    const supervisor = new ProcessSupervisor(createSilentLogger());
    const opts = { ...options('silent'), startTimeoutMs: 300 };
    await assert.rejects(
      bootVm(supervisor, createSilentLogger(), opts),
      /did not create .*virtiofsd\.sock within 300 ms/,
    );
    assert.equal(supervisor.running().length, 0);
    delete process.env.FAKE_VIRTIOFSD_MODE;
  });

  it('refuses a run dir whose socket paths would not fit', async () => {
    const supervisor = new ProcessSupervisor(createSilentLogger());
    const opts = { ...options('long'), runDir: path.join(dir, 'x'.repeat(100)) };
    await assert.rejects(bootVm(supervisor, createSilentLogger(), opts), /longer than 107 bytes/);
    assert.equal(supervisor.running().length, 0);
  });
});
