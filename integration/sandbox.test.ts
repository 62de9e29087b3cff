/**
 * The whole sandbox: host overlay rootfs → virtiofsd → QEMU → guest agent over virtio-serial →
 * crun, through runtime/sandbox.ts, with the warm pool (a start takes a booted VM; the pool refills;
 * ports added live by QMP) and without it (pool size 0: a cold boot per start). Needs root, QEMU,
 * virtiofsd, the guest assets built from the current agent (`npm run build && guest/assets/build.sh`);
 * a missing or stale prerequisite fails the suite (it never skips). Every run must leave nothing
 * behind: no qemu or virtiofsd process, no mount, no socket, no run dir, no pool VM after shutdown.
 *
 * Prints start() to first output for a pool hit and for a cold boot (docs/guest.md):
 *
 *   CAPSULE_START_SAMPLES=5 node --test --test-reporter=spec dist/integration/sandbox.test.js
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, promises as fs, readFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import winston from 'winston';
import { InvalidParameterError } from '../common/errdefs';
import { createSilentLogger } from '../common/logger';
import { ProcessSupervisor } from '../common/processes';
import { chooseAccel, type AccelSetting } from '../runtime/accel';
import { AgentClient, exitCodeOf } from '../runtime/agent-client';
import { DEFAULT_GUEST_DIR, loadGuestAssets } from '../runtime/guest-assets';
import { buildOciSpec } from '../runtime/oci-spec';
import { bootVm, consoleTail, QEMU_BINARY, VIRTIOFSD_BINARY } from '../runtime/qemu/vm';
import { mountRootfs, unmountRootfs } from '../runtime/rootfs';
import { createSandboxRuntime, guestRootfsPath } from '../runtime/sandbox';
import type {
  OutputChunk,
  PortForward,
  ProcessSpec,
  RunningSandbox,
  SandboxRuntime,
  SandboxSpec,
} from '../runtime/types';
import { findLeaks } from './harness/leaks';

const ROOT = path.resolve(__dirname, '../..');
const GUEST_DIR = process.env.CAPSULE_GUEST_DIR ?? DEFAULT_GUEST_DIR;
const START_SAMPLES = Number(process.env.CAPSULE_START_SAMPLES ?? '1');

/** A logger that keeps what it is given, at debug level (a fake): tests read the runtime's lines. */
function capturingLogger(): { log: winston.Logger; entries: Record<string, unknown>[] } {
  const entries: Record<string, unknown>[] = [];
  const sink = new Writable({
    objectMode: true,
    write(info: Record<string, unknown>, _enc, done) {
      entries.push({ ...info });
      done();
    },
  });
  return {
    log: winston.createLogger({
      level: 'debug',
      transports: [new winston.transports.Stream({ stream: sink })],
    }),
    entries,
  };
}

async function until(what: string, cond: () => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor((sorted.length - 1) / 2)] ?? NaN;
}

async function freePort(): Promise<number> {
  const server = net.createServer().listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((r) => server.close(r));
  return port;
}

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

/** Test context shared by the suites: a busybox layer and a runtime with a capturing logger. */
class Bench {
  base = '';
  layer = '';
  runtime!: SandboxRuntime;
  logged: Record<string, unknown>[] = [];
  readonly supervisor = new ProcessSupervisor(createSilentLogger());
  private n = 0;

  async setUp(name: string, warmPoolSize: number): Promise<void> {
    requirePrerequisites();
    this.base = await fs.mkdtemp(path.join(os.tmpdir(), `capsule-${name}-`));
    this.layer = path.join(this.base, 'layer');
    await buildBusyboxLayer(this.layer);
    const { log, entries } = capturingLogger();
    this.logged = entries;
    const assets = await loadGuestAssets(GUEST_DIR);
    const accel = await chooseAccel((process.env.CAPSULE_ACCEL as AccelSetting | undefined) ?? 'auto', {
      supervisor: this.supervisor,
      log: createSilentLogger(),
      assets,
      stateDir: path.join(os.tmpdir(), 'capsule-test-accel'),
    });
    this.runtime = await createSandboxRuntime({
      supervisor: this.supervisor,
      log,
      assetsDir: GUEST_DIR,
      accel,
      execRoot: this.base,
      warmPoolSize,
    });
  }

  /** Shuts the runtime down and asserts that nothing of it is left on the host. */
  async tearDown(): Promise<void> {
    await this.runtime?.shutdown();
    const leftovers = this.supervisor.running().map((p) => `${p.name} ${p.pid}`);
    await this.supervisor.terminateAll(1000);
    const leaks = this.base ? await findLeaks(this.base, [this.base]) : [];
    if (this.base) await fs.rm(this.base, { recursive: true, force: true });
    assert.deepEqual(leftovers, [], 'processes left running');
    assert.deepEqual(leaks, [], 'qemu/virtiofsd processes, mounts or sockets left');
  }

  /** A fresh run: its own container layer and a short run dir (socket paths must fit 108 bytes). */
  async specFor(p: ProcessSpec, over: Partial<SandboxSpec> = {}): Promise<SandboxSpec> {
    const id = `sbx${++this.n}${process.pid}`;
    const containerLayerDir = path.join(this.base, `layer-${this.n}`);
    await fs.mkdir(containerLayerDir);
    return {
      containerId: id,
      hostname: id,
      layerDirs: [this.layer],
      containerLayerDir,
      runDir: path.join(this.base, `r${this.n}`),
      process: p,
      resources: { memoryMiB: 256, vcpus: 1 },
      ...over,
    };
  }

  /** The `agent ready` line the runtime logged for a container. */
  agentReady(containerId: string): { bootMs: number; pooled: boolean; startMs: number } {
    const line = this.logged.find((e) => e.message === 'agent ready' && e.containerId === containerId);
    assert.ok(line, `no "agent ready" line for ${containerId}`);
    assert.equal(line.level, 'info');
    assert.equal(typeof line.bootMs, 'number');
    assert.equal(typeof line.startMs, 'number');
    assert.equal(typeof line.pooled, 'boolean');
    return line as unknown as { bootMs: number; pooled: boolean; startMs: number };
  }

  /** Warm VMs that became ready so far. */
  poolReadyCount(): number {
    return this.logged.filter((e) => e.message === 'warm pool: VM ready').length;
  }

  private takes = 0;
  started(): number {
    return this.takes;
  }

  /** Starts once a warm VM is ready and idle, so that the start is a pool hit. */
  async startWarm(spec: SandboxSpec): Promise<RunningSandbox> {
    await until('a warm VM ready', () => this.poolReadyCount() > this.takes, 180_000);
    this.takes++;
    return this.runtime.start(spec);
  }
}

function collect(sandbox: RunningSandbox): {
  chunks: OutputChunk[];
  text: (s: 1 | 2) => string;
  first: Promise<number>;
} {
  const chunks: OutputChunk[] = [];
  let firstAt!: (t: number) => void;
  const first = new Promise<number>((r) => (firstAt = r));
  sandbox.output.on('data', (c: OutputChunk) => {
    if (chunks.length === 0) firstAt(Date.now());
    chunks.push(c);
  });
  return {
    chunks,
    first,
    text: (s) => Buffer.concat(chunks.filter((c) => c.stream === s).map((c) => c.data)).toString('utf8'),
  };
}

async function assertNothingLeft(runDir: string): Promise<void> {
  assert.deepEqual(await findLeaks(runDir, [runDir]), []);
  assert.equal(existsSync(runDir), false, `${runDir} still exists`);
}

describe('sandbox: a container in its own VM, from the warm pool', { timeout: 900_000 }, () => {
  const bench = new Bench();

  before(async () => {
    await bench.setUp('sbx', 1);
  });

  after(async () => {
    await bench.tearDown();
  });

  it('a start from the pool: uname -r is the guest kernel; exit code 3 and stderr arrive; writes land in the container layer', async () => {
    const spec = await bench.specFor(
      proc([
        'sh',
        '-c',
        'uname -r; hostname; echo to-stderr >&2; echo hello > /written; head -c 4194304 /dev/zero | tr "\\0" x; exit 3',
      ]),
    );
    await until('the warm VM is ready', () => bench.poolReadyCount() >= 1, 180_000);
    const t0 = Date.now();
    const sandbox = await bench.startWarm(spec);
    const out = collect(sandbox);
    const result = await sandbox.exited;
    const ready = bench.agentReady(spec.containerId);
    process.stderr.write(
      `sandbox (pooled): first output after ${(await out.first) - t0} ms, start() ${ready.startMs} ms, VM boot ${ready.bootMs} ms\n`,
    );
    assert.equal(ready.pooled, true, 'the start did not take the warm VM');
    const [release, hostname] = out.text(1).split('\n');
    assert.equal(release, bench.runtime.info().guestKernelRelease);
    assert.notEqual(release, os.release());
    assert.equal(hostname, spec.hostname, 'the container has its own hostname (UTS namespace)');
    assert.equal(out.text(1).length, release!.length + hostname!.length + 2 + 4 * 1024 * 1024);
    assert.equal(out.text(2), 'to-stderr\n');
    assert.deepEqual(result, { exitCode: 3, oomKilled: false });
    assert.equal(await fs.readFile(path.join(spec.containerLayerDir, 'upper/written'), 'utf8'), 'hello\n');
    await assertNothingLeft(spec.runDir);
  });

  it('the pool refills after a start, and the next start takes the new VM', async () => {
    await until('the pool refilled', () => bench.poolReadyCount() >= 2, 180_000);
    const spec = await bench.specFor(proc(['cat', '/proc/sys/kernel/random/boot_id']));
    const sandbox = await bench.startWarm(spec);
    const out = collect(sandbox);
    assert.equal((await sandbox.exited).exitCode, 0);
    assert.equal(bench.agentReady(spec.containerId).pooled, true);
    assert.match(out.text(1), /^[0-9a-f-]{36}\n$/);
    await assertNothingLeft(spec.runDir);
  });

  it('a published port is added live to a pooled VM', async () => {
    const port = await freePort();
    const forward: PortForward = { proto: 'tcp', hostAddr: '127.0.0.1', hostPort: port, guestPort: 8080 };
    const spec = await bench.specFor(
      proc(['sh', '-c', 'echo listening; echo hello-from-guest | nc -l -p 8080']),
      {
        portForwards: [forward],
      },
    );
    const sandbox = await bench.startWarm(spec);
    const out = collect(sandbox);
    assert.equal(bench.agentReady(spec.containerId).pooled, true);
    await until('the container listens', () => out.text(1).includes('listening'), 30_000);
    // slirp accepts at once and connects to the guest behind it: retry until the guest answers.
    let answer = '';
    const deadline = Date.now() + 30_000;
    while (!answer.includes('hello-from-guest') && Date.now() < deadline) {
      answer = await new Promise<string>((resolve) => {
        const socket = net.connect(port, '127.0.0.1');
        let data = '';
        socket.on('data', (d) => (data += d.toString()));
        socket.on('close', () => resolve(data));
        socket.on('error', () => resolve(data));
        socket.setTimeout(5000, () => socket.destroy());
      });
      if (!answer.includes('hello-from-guest')) await new Promise((r) => setTimeout(r, 200));
    }
    assert.match(answer, /hello-from-guest/);
    assert.equal((await sandbox.exited).exitCode, 0);
    await assertNothingLeft(spec.runDir);
  });

  it('a missing executable fails the start with 127 and leaves nothing', async () => {
    const spec = await bench.specFor(proc(['nosuch']));
    const err = await bench.startWarm(spec).then(
      () => assert.fail('started'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof InvalidParameterError, String(err));
    assert.match(err.message, /exec: "nosuch": executable file not found in \$PATH/);
    assert.equal(exitCodeOf(err), 127);
    await assertNothingLeft(spec.runDir);
  });

  it('stdin reaches the process; destroy kills the VM at once (137) and leaves nothing', async () => {
    const spec = await bench.specFor(
      proc(['sh', '-c', 'read line; echo got:$line; sleep 1000'], { openStdin: true }),
    );
    const sandbox = await bench.startWarm(spec);
    const out = collect(sandbox);
    await sandbox.writeStdin(Buffer.from('hello\n'));
    await until('the echo of stdin', () => out.text(1).includes('got:hello'), 30_000);
    const t0 = Date.now();
    await sandbox.destroy();
    assert.deepEqual(await sandbox.exited, { exitCode: 137, oomKilled: false });
    assert.ok(Date.now() - t0 < 10_000, 'destroy took too long');
    await assertNothingLeft(spec.runDir);
  });

  it('SIGKILL through the agent ends the process with 137', async () => {
    const spec = await bench.specFor(proc(['sh', '-c', 'trap "" TERM; echo ready; sleep 1000']));
    const sandbox = await bench.startWarm(spec);
    const out = collect(sandbox);
    await until('ready', () => out.text(1).includes('ready'), 30_000);
    await sandbox.signal(9);
    assert.equal((await sandbox.exited).exitCode, 137);
    await assertNothingLeft(spec.runDir);
  });

  it(`start() to first output, warm pool hit (${START_SAMPLES} sample(s))`, async (t) => {
    const firsts: number[] = [];
    for (let i = 0; i < START_SAMPLES; i++) {
      const spec = await bench.specFor(proc(['uname', '-r']));
      await until('a warm VM ready', () => bench.poolReadyCount() > bench.started(), 180_000);
      const t0 = Date.now();
      const sandbox = await bench.startWarm(spec);
      const out = collect(sandbox);
      const first = (await out.first) - t0;
      await sandbox.exited;
      const ready = bench.agentReady(spec.containerId);
      assert.equal(ready.pooled, true);
      firsts.push(first);
      t.diagnostic(`pool hit ${i + 1}: first output after ${first} ms (start() ${ready.startMs} ms)`);
    }
    t.diagnostic(
      `pool hit: median start() to first output ${median(firsts)} ms of ${firsts.length} (load ${os.loadavg()[0]?.toFixed(2)})`,
    );
  });

  it('shutdown stops the warm VM: no qemu, virtiofsd, mount or socket is left', async (t) => {
    await until('the pool refilled', () => bench.poolReadyCount() > bench.started(), 180_000);
    const qemu = bench.supervisor.running().find((p) => p.name === 'qemu');
    assert.ok(qemu, 'the warm VM runs');
    // What an idle warm VM costs the host (docs/guest.md): QEMU's resident memory and CPU time.
    const cpuTicks = async () => {
      const stat = await fs.readFile(`/proc/${qemu.pid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      return Number(fields[11]) + Number(fields[12]); // utime + stime, clock ticks (100 Hz)
    };
    const ticks0 = await cpuTicks();
    await new Promise((r) => setTimeout(r, 10_000));
    const cpuPercent = ((await cpuTicks()) - ticks0) / 10; // 100 ticks/s over 10 s: % of one core
    const status = await fs.readFile(`/proc/${qemu.pid}/status`, 'utf8');
    const rssKiB = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1]);
    t.diagnostic(
      `idle warm VM (256 MiB guest): QEMU RSS ${Math.round(rssKiB / 1024)} MiB, CPU ${cpuPercent} % of a core`,
    );
    await bench.runtime.shutdown();
    assert.deepEqual(
      bench.supervisor.running().map((p) => p.name),
      [],
    );
    assert.deepEqual(await findLeaks(bench.base, [bench.base]), []);
    assert.deepEqual(await fs.readdir(path.join(bench.base, 'pool')), [], 'pool VM dirs left');
  });
});

describe('sandbox without a warm pool (size 0)', { timeout: 600_000 }, () => {
  const bench = new Bench();

  before(async () => {
    await bench.setUp('sbx0', 0);
  });

  after(async () => {
    await bench.tearDown();
  });

  it(`a cold start boots its own VM and runs the container (${START_SAMPLES} sample(s))`, async (t) => {
    const firsts: number[] = [];
    for (let i = 0; i < START_SAMPLES; i++) {
      const spec = await bench.specFor(proc(['uname', '-r']));
      const t0 = Date.now();
      const sandbox = await bench.runtime.start(spec);
      const out = collect(sandbox);
      const first = (await out.first) - t0;
      assert.equal((await sandbox.exited).exitCode, 0);
      assert.equal(out.text(1), `${bench.runtime.info().guestKernelRelease}\n`);
      const ready = bench.agentReady(spec.containerId);
      assert.equal(ready.pooled, false);
      assert.ok(ready.bootMs <= ready.startMs);
      firsts.push(first);
      t.diagnostic(
        `cold ${i + 1}: first output after ${first} ms (VM boot ${ready.bootMs} ms, start() ${ready.startMs} ms)`,
      );
      await assertNothingLeft(spec.runDir);
    }
    assert.equal(existsSync(path.join(bench.base, 'pool')), false, 'no pool dir without a pool');
    t.diagnostic(
      `cold boot: median start() to first output ${median(firsts)} ms of ${firsts.length} (load ${os.loadavg()[0]?.toFixed(2)})`,
    );
  });
});

describe('agent over virtio-serial: host sessions', { timeout: 300_000 }, () => {
  it('a client closed in the middle of a ReadOutput stream does not break the next session', async () => {
    requirePrerequisites();
    const base = await fs.mkdtemp(path.join(os.tmpdir(), 'capsule-vport-'));
    const supervisor = new ProcessSupervisor(createSilentLogger());
    const runDir = path.join(base, 'r');
    const rootfs = path.join(runDir, 'shared', 'flood', 'rootfs');
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
          rootfsGuestPath: guestRootfsPath('flood'),
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
