/**
 * The whole sandbox: host overlay rootfs → virtiofsd → QEMU → guest agent over virtio-serial →
 * crun, through runtime/sandbox.ts. Needs root, QEMU, virtiofsd, the guest assets built from the
 * current agent (`npm run build && guest/assets/build.sh`); a missing or stale prerequisite fails
 * the suite (it never skips). Every run must leave nothing behind: no qemu or virtiofsd process,
 * no mount, no socket, no run dir.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, promises as fs, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { InvalidParameterError } from '../common/errdefs';
import { createSilentLogger } from '../common/logger';
import { ProcessSupervisor } from '../common/processes';
import { chooseAccel, type AccelSetting } from '../runtime/accel';
import { AgentClient, exitCodeOf } from '../runtime/agent-client';
import { DEFAULT_GUEST_DIR, loadGuestAssets } from '../runtime/guest-assets';
import { buildOciSpec } from '../runtime/oci-spec';
import { bootVm, consoleTail, QEMU_BINARY, VIRTIOFSD_BINARY } from '../runtime/qemu/vm';
import { mountRootfs, unmountRootfs } from '../runtime/rootfs';
import { createSandboxRuntime, GUEST_ROOTFS } from '../runtime/sandbox';
import type { OutputChunk, ProcessSpec, RunningSandbox, SandboxRuntime } from '../runtime/types';
import { findLeaks } from './harness/leaks';

const ROOT = path.resolve(__dirname, '../..');
const GUEST_DIR = process.env.CAPSULE_GUEST_DIR ?? DEFAULT_GUEST_DIR;

function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Fails loudly, naming what is missing and how to get it. */
function requirePrerequisites(): void {
  const missing: string[] = [];
  if (process.getuid?.() !== 0) missing.push('root');
  if (spawnSync(QEMU_BINARY, ['--version']).status !== 0) missing.push(`${QEMU_BINARY} (qemu-system-x86)`);
  if (!existsSync(VIRTIOFSD_BINARY)) missing.push(`${VIRTIOFSD_BINARY} (qemu-system-common)`);
  if (!existsSync('/bin/busybox')) missing.push('/bin/busybox (busybox-static)');
  const bundle = path.join(ROOT, 'build/guest/agent.js');
  const manifest = path.join(GUEST_DIR, 'manifest.json');
  if (!existsSync(bundle)) missing.push(`${bundle} (npm run build)`);
  if (!existsSync(manifest)) missing.push(`${manifest} (guest/assets/build.sh)`);
  if (missing.length === 0) {
    // The agent disk must hold the agent this checkout builds, or the test tests something else.
    const disk = path.join(GUEST_DIR, 'agent.img');
    const onDisk = spawnSync('debugfs', ['-R', 'cat /agent.js', disk], { maxBuffer: 64 * 1024 * 1024 });
    if (onDisk.status !== 0) missing.push(`debugfs (e2fsprogs) to read ${disk}`);
    else if (sha256(onDisk.stdout) !== sha256(readFileSync(bundle))) {
      missing.push(`an agent disk built from the current build/guest/agent.js (run guest/assets/build.sh)`);
    }
  }
  if (missing.length > 0) throw new Error(`sandbox test prerequisites missing: ${missing.join(', ')}`);
}

async function buildBusyboxLayer(dir: string): Promise<void> {
  for (const d of ['bin', 'etc', 'tmp', 'proc', 'sys', 'dev', 'root'])
    await fs.mkdir(path.join(dir, d), { recursive: true });
  await fs.copyFile('/bin/busybox', path.join(dir, 'bin/busybox'));
  await fs.chmod(path.join(dir, 'bin/busybox'), 0o755);
  const applets = spawnSync('/bin/busybox', ['--list'], { encoding: 'utf8' })
    .stdout.split('\n')
    .filter(Boolean);
  for (const applet of applets)
    if (applet !== 'busybox') await fs.symlink('busybox', path.join(dir, 'bin', applet));
  await fs.writeFile(path.join(dir, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  await fs.writeFile(path.join(dir, 'etc/group'), 'root:x:0:\n');
}

function proc(args: string[], over: Partial<ProcessSpec> = {}): ProcessSpec {
  return {
    args,
    env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
    cwd: '',
    user: '',
    openStdin: false,
    tty: false,
    ...over,
  };
}

describe('sandbox: a container in its own VM', { timeout: 600_000 }, () => {
  let base: string;
  let layer: string;
  let runtime: SandboxRuntime;
  const supervisor = new ProcessSupervisor(createSilentLogger());
  let n = 0;

  before(async () => {
    requirePrerequisites();
    base = await fs.mkdtemp(path.join(os.tmpdir(), 'capsule-sbx-'));
    layer = path.join(base, 'layer');
    await buildBusyboxLayer(layer);
    const log = createSilentLogger();
    const assets = await loadGuestAssets(GUEST_DIR);
    const accel = await chooseAccel((process.env.CAPSULE_ACCEL as AccelSetting | undefined) ?? 'auto', {
      supervisor,
      log,
      assets,
      stateDir: path.join(os.tmpdir(), 'capsule-test-accel'),
    });
    runtime = await createSandboxRuntime({ supervisor, log, assetsDir: GUEST_DIR, accel, execRoot: base });
  });

  after(async () => {
    await runtime?.shutdown();
    const leftovers = supervisor.running().map((p) => `${p.name} ${p.pid}`);
    await supervisor.terminateAll(1000);
    if (base) await fs.rm(base, { recursive: true, force: true });
    assert.deepEqual(leftovers, [], 'processes left running');
  });

  /** A fresh run: its own container layer and a short run dir (socket paths must fit 108 bytes). */
  async function specFor(p: ProcessSpec) {
    const id = `sbx${++n}${process.pid}`;
    const containerLayerDir = path.join(base, `layer-${n}`);
    await fs.mkdir(containerLayerDir);
    return {
      containerId: id,
      hostname: id,
      layerDirs: [layer],
      containerLayerDir,
      runDir: path.join(base, `r${n}`),
      process: p,
      resources: { memoryMiB: 256, vcpus: 1 },
    };
  }

  function collect(sandbox: RunningSandbox): { chunks: OutputChunk[]; text: (s: 1 | 2) => string } {
    const chunks: OutputChunk[] = [];
    sandbox.output.on('data', (c: OutputChunk) => chunks.push(c));
    return {
      chunks,
      text: (s) => Buffer.concat(chunks.filter((c) => c.stream === s).map((c) => c.data)).toString('utf8'),
    };
  }

  async function assertNothingLeft(runDir: string): Promise<void> {
    assert.deepEqual(await findLeaks(runDir, [runDir]), []);
    assert.equal(existsSync(runDir), false, `${runDir} still exists`);
  }

  it('uname -r is the guest kernel; exit code 3 and stderr arrive; writes land in the container layer', async () => {
    const spec = await specFor(
      proc([
        'sh',
        '-c',
        'uname -r; echo to-stderr >&2; echo hello > /written; head -c 4194304 /dev/zero | tr "\\0" x; exit 3',
      ]),
    );
    const t0 = Date.now();
    const sandbox = await runtime.start(spec);
    const started = Date.now() - t0;
    const out = collect(sandbox);
    const result = await sandbox.exited;
    process.stderr.write(`sandbox: started in ${started} ms, exited after ${Date.now() - t0} ms\n`);
    const stdout = out.text(1);
    const release = stdout.split('\n')[0];
    assert.equal(release, runtime.info().guestKernelRelease);
    assert.notEqual(release, os.release());
    assert.equal(stdout.length, release!.length + 1 + 4 * 1024 * 1024);
    assert.equal(out.text(2), 'to-stderr\n');
    assert.deepEqual(result, { exitCode: 3, oomKilled: false });
    assert.equal(await fs.readFile(path.join(spec.containerLayerDir, 'upper/written'), 'utf8'), 'hello\n');
    await assertNothingLeft(spec.runDir);
  });

  it('a missing executable fails the start with 127 and leaves nothing', async () => {
    const spec = await specFor(proc(['nosuch']));
    const err = await runtime.start(spec).then(
      () => assert.fail('started'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof InvalidParameterError, String(err));
    assert.match(err.message, /exec: "nosuch": executable file not found in \$PATH/);
    assert.equal(exitCodeOf(err), 127);
    await assertNothingLeft(spec.runDir);
  });

  it('stdin reaches the process; destroy kills the VM at once (137) and leaves nothing', async () => {
    const spec = await specFor(
      proc(['sh', '-c', 'read line; echo got:$line; sleep 1000'], { openStdin: true }),
    );
    const sandbox = await runtime.start(spec);
    const out = collect(sandbox);
    await sandbox.writeStdin(Buffer.from('hello\n'));
    const deadline = Date.now() + 30_000;
    while (!out.text(1).includes('got:hello')) {
      if (Date.now() > deadline) throw new Error(`no echo of stdin; output: ${out.text(1)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const t0 = Date.now();
    await sandbox.destroy();
    assert.deepEqual(await sandbox.exited, { exitCode: 137, oomKilled: false });
    assert.ok(Date.now() - t0 < 10_000, 'destroy took too long');
    await assertNothingLeft(spec.runDir);
  });

  it('SIGKILL through the agent ends the process with 137', async () => {
    const spec = await specFor(proc(['sh', '-c', 'trap "" TERM; echo ready; sleep 1000']));
    const sandbox = await runtime.start(spec);
    const out = collect(sandbox);
    const deadline = Date.now() + 30_000;
    while (!out.text(1).includes('ready')) {
      if (Date.now() > deadline) throw new Error('no ready');
      await new Promise((r) => setTimeout(r, 50));
    }
    await sandbox.signal(9);
    assert.equal((await sandbox.exited).exitCode, 137);
    await assertNothingLeft(spec.runDir);
  });
});

describe('agent over virtio-serial: host sessions', { timeout: 300_000 }, () => {
  it('a client closed in the middle of a ReadOutput stream does not break the next session', async () => {
    requirePrerequisites();
    const base = await fs.mkdtemp(path.join(os.tmpdir(), 'capsule-vport-'));
    const supervisor = new ProcessSupervisor(createSilentLogger());
    const runDir = path.join(base, 'r');
    const rootfs = path.join(runDir, 'shared', 'rootfs');
    let mounted = false;
    const clients: AgentClient[] = [];
    try {
      await buildBusyboxLayer(path.join(base, 'layer'));
      await fs.mkdir(path.join(base, 'cl'));
      await fs.mkdir(rootfs, { recursive: true });
      await mountRootfs([path.join(base, 'layer')], path.join(base, 'cl'), rootfs);
      mounted = true;
      const vm = await bootVm(supervisor, createSilentLogger(), {
        runDir,
        sharedDir: path.join(runDir, 'shared'),
        assets: await loadGuestAssets(GUEST_DIR),
        accel: (process.env.CAPSULE_ACCEL as 'kvm' | 'tcg' | undefined) ?? 'tcg',
        memoryMiB: 256,
        vcpus: 1,
        hostname: 'vport',
      });
      try {
        const connect = () => {
          const c = new AgentClient({ socketPath: vm.agentSocketPath });
          clients.push(c);
          return c;
        };
        let client = connect();
        await client.waitReady(60_000);
        const spec = buildOciSpec({
          containerId: 'flood',
          hostname: 'vport',
          process: proc(['sh', '-c', 'while :; do head -c 1048576 /dev/zero; done']),
        });
        await client.createContainer({
          containerId: 'flood',
          ociSpec: spec,
          rootfsGuestPath: GUEST_ROOTFS,
          user: '',
          openStdin: false,
          workingDir: '',
        });
        const read = async (c: AgentClient, bytes: number) => {
          const out = c.readOutput('flood');
          out.on('error', () => undefined);
          let got = 0;
          for await (const chunk of out) {
            got += (chunk as OutputChunk).data.length;
            if (got >= bytes) break;
          }
          return got;
        };
        const first = read(client, 1 << 20);
        await client.startContainer('flood');
        assert.ok((await first) >= 1 << 20);
        // Leave while the guest is still pushing output at us, three times over.
        for (let round = 0; round < 3; round++) {
          const reader = read(client, Number.MAX_SAFE_INTEGER).catch(() => 0);
          await new Promise((r) => setTimeout(r, 500));
          client.close();
          await reader;
          client = connect();
          await client.waitReady(15_000);
          assert.ok((await read(client, 256 * 1024)) >= 256 * 1024, `output resumes in session ${round + 2}`);
        }
        await client.signalProcess('flood', '', 9);
        const flood = read(client, Number.MAX_SAFE_INTEGER).catch(() => 0);
        assert.equal((await client.waitProcess('flood')).exitCode, 137);
        await flood;
      } catch (err) {
        throw new Error(`${(err as Error).message}\nguest console:\n${await consoleTail(vm, 3000)}`, {
          cause: err,
        });
      } finally {
        for (const c of clients) c.close();
        await vm.stop();
      }
    } finally {
      if (mounted) await unmountRootfs(rootfs);
      await supervisor.terminateAll(1000);
      await fs.rm(base, { recursive: true, force: true });
    }
    assert.deepEqual(await findLeaks(base, [base]), []);
  });
});
