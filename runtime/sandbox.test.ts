/**
 * The sandbox's orchestration against fakes (no VM, no root): boot retries, teardown order, start
 * failures, destroy, and the warm pool (a start from a pooled VM, refill, resources that do not
 * fit, published ports, dead pooled VMs, shutdown). A fake VM is a fake agent (a grpc-js server on
 * agent.proto) listening on the VM's agent socket, or nothing at all for a boot that hangs.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { after, afterEach, before, beforeEach, describe, it } from 'node:test';
import winston from 'winston';
import { InvalidParameterError, SystemError } from '../common/errdefs';
import type { ExitStatus } from '../common/processes';
import { createSilentLogger } from '../common/logger';
import { ProcessSupervisor } from '../common/processes';
import { EXIT_CODE_TRAILER, exitCodeOf, findAgentProto } from './agent-client';
import type { Vm, VmOptions } from './qemu/vm';
import { createSandboxRuntime, guestRootfsPath, type SandboxRuntimeDeps } from './sandbox';
import type { OutputChunk, PortForward, SandboxRuntime, SandboxSpec } from './types';

type Handler = (call: unknown, callback: grpc.sendUnaryData<unknown>) => void;

/** A fake agent: answers Check, records calls, runs one scripted process. */
class FakeAgent {
  readonly server = new grpc.Server();
  readonly calls: string[] = [];
  createRequest?: Record<string, unknown>;
  startFailure?: { code: grpc.status; details: string; exitCode: number };
  /** WarmUp answers this error instead of succeeding. */
  warmUpFailure?: string;
  private exit?: (code: number) => void;
  private readonly exitCode = new Promise<number>((r) => (this.exit = r));

  constructor() {
    const def = protoLoader.loadSync(findAgentProto(), { keepCase: true, longs: Number, defaults: true });
    const service = (
      grpc.loadPackageDefinition(def) as unknown as {
        capsule: { agent: { v1: { Agent: grpc.ServiceClientConstructor } } };
      }
    ).capsule.agent.v1.Agent.service;
    const ok = (v: object = {}): Handler => ((_c, cb) => cb(null, v)) as Handler;
    const impl: Record<string, Handler | ((call: grpc.ServerWritableStream<unknown, unknown>) => void)> = {
      Check: ok({
        agent_version: 'fake',
        kernel_release: '6.1.0-fake',
        uptime_ms: 1,
        agent_start_ms: 0,
        agent_ready_ms: 0,
      }),
      CreateContainer: (call, cb) => {
        this.createRequest = (call as { request: Record<string, unknown> }).request;
        cb(null, {});
      },
      StartContainer: (_call, cb) => {
        const f = this.startFailure;
        if (!f) return cb(null, {});
        const metadata = new grpc.Metadata();
        metadata.set(EXIT_CODE_TRAILER, String(f.exitCode));
        cb({ code: f.code, details: f.details, metadata });
      },
      ReadOutput: (call: grpc.ServerWritableStream<unknown, unknown>) => {
        call.write({ stream: 1, data: Buffer.from('hello\n') });
        call.write({ stream: 2, data: Buffer.from('oops\n') });
        void this.exitCode.then(() => call.end());
      },
      WaitProcess: (_call, cb) =>
        void this.exitCode.then((code) => cb(null, { exit_code: code, oom_killed: false })),
      SignalProcess: (_call, cb) => {
        this.exit?.(137);
        cb(null, {});
      },
      PrepareShutdown: ok(),
      WarmUp: (_call, cb) =>
        this.warmUpFailure ? cb({ code: grpc.status.INTERNAL, details: this.warmUpFailure }) : cb(null, {}),
    };
    const wrapped: grpc.UntypedServiceImplementation = {};
    for (const name of Object.keys(service)) {
      const h = impl[name];
      wrapped[name] = ((call: unknown, cb: grpc.sendUnaryData<unknown>) => {
        this.calls.push(name);
        if (h) (h as Handler)(call, cb);
        else cb({ code: grpc.status.UNIMPLEMENTED });
      }) as grpc.UntypedHandleCall;
    }
    this.server.addService(service, wrapped);
  }

  exitWith(code: number): void {
    this.exit?.(code);
  }

  listen(socket: string): Promise<void> {
    return new Promise((resolve, reject) =>
      this.server.bindAsync(`unix:${socket}`, grpc.ServerCredentials.createInsecure(), (err) =>
        err ? reject(err) : resolve(),
      ),
    );
  }
}

/** A logger that keeps what it is given (a fake): tests read the `agent ready` line from it. */
function capturingLogger(): { log: winston.Logger; entries: Record<string, unknown>[] } {
  const entries: Record<string, unknown>[] = [];
  const sink = new Writable({
    objectMode: true,
    write(info: Record<string, unknown>, _enc, done) {
      entries.push({ ...info });
      done();
    },
  });
  const log = winston.createLogger({
    level: 'debug',
    transports: [new winston.transports.Stream({ stream: sink })],
  });
  return { log, entries };
}

const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await tick(5);
  }
}

describe('sandbox runtime (fake VM, fake agent, fake mount)', () => {
  let base: string;
  let events: string[];
  let boots: ('ok' | 'hang')[];
  let agents: FakeAgent[];
  let vms: { id: number; crash: () => void; opts: VmOptions }[];
  let forwardsAdded: string[];
  let runtime: SandboxRuntime;
  let logged: Record<string, unknown>[];
  let n = 0;
  let execRoot: string;
  /** Given to the agent of the next VM that boots. */
  let nextStartFailure: FakeAgent['startFailure'];
  let nextWarmUpFailure: string | undefined;

  const rel = (p: string) => path.relative(base, p).replace(/pool\/[0-9a-f]{12}/, 'pool/<vm>');

  /** bootVm's fake: each boot takes the next scripted outcome; 'hang' never serves the agent. */
  async function fakeBootVm(_s: ProcessSupervisor, _l: unknown, opts: VmOptions): Promise<Vm> {
    const outcome = boots.shift() ?? 'ok';
    const id = ++n;
    const agentSocketPath = path.join(opts.runDir, `agent-${id}.sock`);
    await mkdir(opts.runDir, { recursive: true });
    assert.ok(existsSync(opts.sharedDir), 'the shared dir exists before the boot');
    assert.deepEqual(await readdir(opts.sharedDir), [], 'a VM boots with an empty shared dir');
    assert.equal(opts.hostname, undefined, 'the container hostname goes to its UTS namespace, not the VM');
    const consoleLogPath = path.join(opts.runDir, 'console.log');
    await writeFile(consoleLogPath, outcome === 'hang' ? 'tsc: Unable to calibrate against PIT\n' : 'ok\n');
    const fwd = (opts.hostForwards ?? []).map((f) => `${f.hostPort}->${f.guestPort}`).join(',');
    events.push(
      `boot ${id} ${outcome} ${opts.memoryMiB}M in ${rel(opts.runDir)}${fwd ? ` ports ${fwd}` : ''}`,
    );
    const agent = new FakeAgent();
    agent.startFailure = nextStartFailure;
    agent.warmUpFailure = nextWarmUpFailure;
    agents.push(agent);
    if (outcome === 'ok') await agent.listen(agentSocketPath);
    let stopped!: (s: ExitStatus) => void;
    const exited = new Promise<ExitStatus>((r) => (stopped = r));
    let stopping: Promise<void> | undefined;
    vms.push({
      id,
      opts,
      crash: () => {
        events.push(`crash vm ${id}`);
        agent.server.forceShutdown();
        stopped({ code: null, signal: 'SIGKILL' });
      },
    });
    return {
      pid: 1000 + id,
      virtiofsdPid: 2000 + id,
      runDir: opts.runDir,
      agentSocketPath,
      qmpSocketPath: path.join(opts.runDir, 'qmp.sock'),
      consoleLogPath,
      exited,
      stop: () =>
        (stopping ??= (async () => {
          events.push(`stop vm ${id}`);
          agent.server.forceShutdown();
          stopped({ code: 0, signal: null });
        })()),
    };
  }

  async function makeRuntime(over: Partial<SandboxRuntimeDeps> = {}): Promise<SandboxRuntime> {
    const capture = capturingLogger();
    logged = capture.entries;
    execRoot = path.join(base, `exec${++n}`);
    runtime = await createSandboxRuntime({
      supervisor: new ProcessSupervisor(createSilentLogger()),
      log: capture.log,
      assetsDir: '/nonexistent',
      accel: 'tcg',
      execRoot,
      bootTimeoutMs: 600,
      warmPoolSize: 0,
      ...over,
      seams: {
        bootVm: fakeBootVm,
        mountRootfs: async (layers, _upper, target) => {
          events.push(`mount ${layers.length} layer(s) at ${rel(target)}`);
          await writeFile(path.join(target, 'mounted'), '');
        },
        unmountRootfs: async (target) => {
          events.push(`unmount ${rel(target)}`);
        },
        addPortForwards: async (vm, forwards: readonly PortForward[]) => {
          forwardsAdded.push(
            `vm ${vm.pid - 1000}: ${forwards.map((f) => `${f.hostPort}->${f.guestPort}`).join(',')}`,
          );
        },
        agentTransport: 'direct',
        poolBackoffMs: { min: 50, max: 200 },
        assets: { kernelPath: 'k', initrdPath: 'i', agentDiskPath: 'a', kernelRelease: '6.1.0-fake' },
        hypervisorVersion: '7.2.0-fake',
        ...over.seams,
      },
    });
    return runtime;
  }

  before(async () => {
    base = await mkdtemp(path.join(os.tmpdir(), 'capsule-sandbox-unit-'));
  });
  after(async () => {
    await rm(base, { recursive: true, force: true });
  });

  beforeEach(() => {
    events = [];
    boots = [];
    agents = [];
    vms = [];
    forwardsAdded = [];
    n = 0;
    nextStartFailure = undefined;
    nextWarmUpFailure = undefined;
  });
  afterEach(async () => {
    await runtime?.shutdown();
  });

  function spec(name: string, over: Partial<SandboxSpec> = {}): SandboxSpec {
    return {
      containerId: `${name}0123456789abcdef`,
      hostname: name,
      layerDirs: ['/layers/1'],
      containerLayerDir: path.join(base, `${name}-layer`),
      runDir: path.join(base, name),
      process: {
        args: ['sh', '-c', 'x'],
        env: ['PATH=/bin'],
        cwd: '/w',
        user: '1000',
        openStdin: false,
        tty: false,
      },
      resources: { memoryMiB: 256, vcpus: 1 },
      ...over,
    };
  }

  const agentReadyLines = () => logged.filter((e) => e.message === 'agent ready');

  it('info reports accel, guest kernel and hypervisor', async () => {
    await makeRuntime();
    assert.deepEqual(runtime.info(), {
      accel: 'tcg',
      guestKernelRelease: '6.1.0-fake',
      hypervisor: 'qemu 7.2.0-fake',
    });
  });

  it('a boot that hangs is killed and retried; the run then tears down in order', async () => {
    await makeRuntime();
    boots = ['hang', 'ok'];
    const s = spec('retry');
    const sandbox = await runtime.start(s);
    assert.equal(sandbox.vmPid, 1003);
    const agent = agents[1] as FakeAgent;
    assert.equal(agent.createRequest?.rootfs_guest_path, guestRootfsPath(s.containerId));
    assert.equal(agent.createRequest?.rootfs_guest_path, `/run/capsule/shared/${s.containerId}/rootfs`);
    assert.equal(agent.createRequest?.user, '1000');
    assert.equal(agent.createRequest?.working_dir, '/w');
    const oci = JSON.parse(String(agent.createRequest?.oci_spec_json)) as {
      hostname: string;
      process: { args: string[] };
      linux: { namespaces: { type: string }[] };
    };
    assert.equal(oci.hostname, 'retry');
    assert.ok(
      oci.linux.namespaces.some((ns) => ns.type === 'uts'),
      'hostname needs a UTS namespace',
    );
    assert.deepEqual(oci.process.args, ['sh', '-c', 'x']);

    const chunks: OutputChunk[] = [];
    sandbox.output.on('data', (c: OutputChunk) => chunks.push(c));
    agent.exitWith(3);
    assert.deepEqual(await sandbox.exited, { exitCode: 3, oomKilled: false });
    assert.deepEqual(
      chunks.map((c) => `${c.stream}:${c.data.toString()}`),
      ['1:hello\n', '2:oops\n'],
    );
    const rootfs = `retry/shared/${s.containerId}/rootfs`;
    assert.deepEqual(events, [
      'boot 2 hang 256M in retry',
      'stop vm 2',
      'boot 3 ok 256M in retry',
      `mount 1 layer(s) at ${rootfs}`,
      'stop vm 3',
      `unmount ${rootfs}`,
    ]);
    assert.ok(
      agent.calls.indexOf('ReadOutput') < agent.calls.indexOf('StartContainer'),
      'output opened first',
    );
    assert.ok(agent.calls.includes('PrepareShutdown'));
    assert.ok(!agent.calls.includes('WarmUp'), 'a cold VM serves its container at once');
    assert.equal(existsSync(s.runDir), false);
    const [line] = agentReadyLines();
    assert.equal(line?.level, 'info');
    assert.equal(line?.containerId, s.containerId);
    assert.equal(line?.pooled, false);
    assert.equal(typeof line?.bootMs, 'number');
    assert.equal(typeof line?.startMs, 'number');
    assert.ok((line?.startMs as number) >= (line?.bootMs as number));
  });

  it('three hung boots: a system error, and nothing left', async () => {
    await makeRuntime();
    boots = ['hang', 'hang', 'hang'];
    const s = spec('hung');
    await assert.rejects(runtime.start(s), (err: unknown) => {
      assert.ok(err instanceof SystemError);
      assert.match(err.message, /did not boot: agent not ready after 3 attempts/);
      return true;
    });
    assert.deepEqual(events.filter((e) => e.startsWith('stop')).length, 3);
    assert.ok(!events.some((e) => e.startsWith('mount')), 'nothing mounted for a VM that never booted');
    assert.equal(existsSync(s.runDir), false);
  });

  it('a process that cannot start: the OCI message and its exit code, and nothing left', async () => {
    await makeRuntime();
    boots = ['ok'];
    const s = spec('nostart');
    nextStartFailure = {
      code: grpc.status.FAILED_PRECONDITION,
      details:
        'OCI runtime create failed: crun: unable to start container process: exec: "nosuch": executable file not found in $PATH',
      exitCode: 127,
    };
    const err = await runtime.start(s).then(
      () => assert.fail('started'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof InvalidParameterError);
    assert.match(err.message, /exec: "nosuch": executable file not found/);
    assert.equal(exitCodeOf(err), 127);
    assert.deepEqual(events.slice(-2), ['stop vm 2', `unmount nostart/shared/${s.containerId}/rootfs`]);
    assert.equal(existsSync(s.runDir), false);
  });

  it('destroy stops the VM at once: 137, no PrepareShutdown', async () => {
    await makeRuntime();
    boots = ['ok'];
    const s = spec('destroy');
    const sandbox = await runtime.start(s);
    sandbox.output.resume();
    await sandbox.destroy();
    assert.deepEqual(await sandbox.exited, { exitCode: 137, oomKilled: false });
    assert.ok(!(agents[0] as FakeAgent).calls.includes('PrepareShutdown'));
    assert.deepEqual(events.slice(-2), ['stop vm 2', `unmount destroy/shared/${s.containerId}/rootfs`]);
    assert.equal(existsSync(s.runDir), false);
  });

  it('shutdown destroys every running sandbox', async () => {
    await makeRuntime();
    boots = ['ok', 'ok'];
    const a = await runtime.start(spec('sa'));
    const b = await runtime.start(spec('sb'));
    a.output.resume();
    b.output.resume();
    await runtime.shutdown();
    assert.equal((await a.exited).exitCode, 137);
    assert.equal((await b.exited).exitCode, 137);
    await assert.rejects(runtime.start(spec('late')), { code: 'Unavailable' });
  });

  it('a mount failure stops the VM and removes the run dir', async () => {
    await makeRuntime({
      seams: {
        mountRootfs: async () => {
          throw new Error('mount: permission denied');
        },
      },
    });
    const s = spec('nomount');
    await assert.rejects(
      runtime.start(s),
      (err: unknown) => err instanceof SystemError && /mount/.test(err.message),
    );
    assert.deepEqual(events, [
      'boot 2 ok 256M in nomount',
      'stop vm 2',
      `unmount nomount/shared/${s.containerId}/rootfs`,
    ]);
    assert.equal(existsSync(s.runDir), false);
  });

  it('a container id that cannot name a directory is refused before anything runs', async () => {
    await makeRuntime();
    await assert.rejects(runtime.start(spec('../../etc')), InvalidParameterError);
    assert.deepEqual(events, []);
  });

  it('ports of a cold start are forwarded at boot', async () => {
    await makeRuntime();
    const s = spec('ports', {
      portForwards: [{ proto: 'tcp', hostAddr: '127.0.0.1', hostPort: 18080, guestPort: 80 }],
    });
    const sandbox = await runtime.start(s);
    assert.equal(events[0], 'boot 2 ok 256M in ports ports 18080->80');
    assert.deepEqual(forwardsAdded, []);
    sandbox.output.resume();
    await sandbox.destroy();
  });

  describe('warm pool', () => {
    /** Until the pooled VM's agent answered its first Check (the VM is then in the pool). */
    const poolVmReady = async (index = 0) => {
      await until('the pool VM is ready', () => agents[index]?.calls.includes('Check') === true);
      await tick(20);
    };
    const poolVmDir = (id: number) => (vms.find((v) => v.id === id) as { opts: VmOptions }).opts.runDir;

    it('a start takes the warm VM, mounts the rootfs inside its shared dir, and the pool refills after it', async () => {
      await makeRuntime({ warmPoolSize: 1 });
      await poolVmReady();
      assert.deepEqual(events, ['boot 2 ok 256M in exec1/pool/<vm>']);
      const s = spec('warm');
      const sandbox = await runtime.start(s);
      assert.equal(sandbox.vmPid, 1002, 'the pooled VM serves the container');
      const agent = agents[0] as FakeAgent;
      assert.deepEqual(
        agent.calls.filter((c) => c !== 'Check').slice(0, 2),
        ['WarmUp', 'CreateContainer'],
        'a pooled VM runs its warm-up container before it is offered',
      );
      assert.equal(agent.createRequest?.rootfs_guest_path, `/run/capsule/shared/${s.containerId}/rootfs`);
      assert.equal(JSON.parse(String(agent.createRequest?.oci_spec_json)).hostname, 'warm');
      const [line] = agentReadyLines();
      assert.equal(line?.pooled, true);
      assert.equal(line?.containerId, s.containerId);
      assert.equal(typeof line?.bootMs, 'number');
      assert.ok((line?.startMs as number) < 5000);
      await until('the pool refilled', () => events.some((e) => e.startsWith('boot 3')));
      assert.deepEqual(events, [
        'boot 2 ok 256M in exec1/pool/<vm>',
        `mount 1 layer(s) at exec1/pool/<vm>/shared/${s.containerId}/rootfs`,
        'boot 3 ok 256M in exec1/pool/<vm>',
      ]);
      assert.notEqual(poolVmDir(2), poolVmDir(3), 'each pooled VM has its own dir');

      sandbox.output.resume();
      agent.exitWith(0);
      assert.deepEqual(await sandbox.exited, { exitCode: 0, oomKilled: false });
      assert.ok(agent.calls.includes('PrepareShutdown'));
      assert.deepEqual(events.slice(-2), [
        'stop vm 2',
        `unmount exec1/pool/<vm>/shared/${s.containerId}/rootfs`,
      ]);
      assert.equal(existsSync(poolVmDir(2)), false, 'the used VM dir is removed');
      assert.equal(existsSync(s.runDir), false);

      // The next start gets the refilled VM: one VM per container, never reused.
      await poolVmReady(1);
      const next = await runtime.start(spec('warm2'));
      assert.equal(next.vmPid, 1003);
      next.output.resume();
      await next.destroy();

      await runtime.shutdown();
      await until('the last refill stopped', () => events.includes('stop vm 4'));
      assert.deepEqual(await readdir(path.join(execRoot, 'pool')), [], 'shutdown leaves no pool dir');
    });

    it('a start that needs other resources boots its own VM and leaves the warm one ready', async () => {
      await makeRuntime({ warmPoolSize: 1 });
      await poolVmReady();
      const s = spec('big', { resources: { memoryMiB: 512, vcpus: 2 } });
      const sandbox = await runtime.start(s);
      assert.equal(sandbox.vmPid, 1003);
      assert.equal(events[1], 'boot 3 ok 512M in big');
      assert.equal(agentReadyLines()[0]?.pooled, false);
      sandbox.output.resume();
      await sandbox.destroy();
      const warm = await runtime.start(spec('small'));
      assert.equal(warm.vmPid, 1002, 'the warm VM was still there');
      warm.output.resume();
      await warm.destroy();
    });

    it('published ports are added live to a pooled VM', async () => {
      await makeRuntime({ warmPoolSize: 1 });
      await poolVmReady();
      const s = spec('pports', {
        portForwards: [{ proto: 'tcp', hostAddr: '', hostPort: 18081, guestPort: 8080 }],
      });
      const sandbox = await runtime.start(s);
      assert.equal(sandbox.vmPid, 1002);
      assert.deepEqual(forwardsAdded, ['vm 2: 18081->8080']);
      sandbox.output.resume();
      await sandbox.destroy();
    });

    it('a warm VM that died is replaced, and a start while it boots waits for that boot', async () => {
      await makeRuntime({ warmPoolSize: 1 });
      await poolVmReady();
      vms[0]!.crash();
      await until('a replacement boots', () => events.some((e) => e.startsWith('boot 3')));
      const sandbox = await runtime.start(spec('after-crash'));
      assert.equal(sandbox.vmPid, 1003);
      assert.equal(agentReadyLines()[0]?.pooled, true);
      await until(
        'the dead VM was cleaned up',
        () => events.includes('stop vm 2') && !existsSync(poolVmDir(2)),
      );
      sandbox.output.resume();
      await sandbox.destroy();
    });

    it('a warm VM whose agent stopped answering is discarded; the start boots its own', async () => {
      await makeRuntime({ warmPoolSize: 1 });
      await poolVmReady();
      (agents[0] as FakeAgent).server.forceShutdown();
      const s = spec('mute');
      const sandbox = await runtime.start(s);
      assert.equal(sandbox.vmPid, 1003, events.join('; '));
      assert.equal(events[1], 'stop vm 2', events.join('; '));
      assert.equal(events[2], 'boot 3 ok 256M in mute', events.join('; '));
      assert.equal(agentReadyLines()[0]?.pooled, false);
      sandbox.output.resume();
      await sandbox.destroy();
    });

    it('a VM whose warm-up fails is not offered: it is stopped and another boots after a back-off', async () => {
      nextWarmUpFailure = 'crun: cannot set up the container';
      await makeRuntime({ warmPoolSize: 1 });
      await until(
        'the first VM is stopped and its dir removed',
        () => events.includes('stop vm 2') && !existsSync(poolVmDir(2)),
        5000,
      );
      nextWarmUpFailure = undefined;
      await until('a second VM boots', () => events.some((e) => e.startsWith('boot 3')), 5000);
      await poolVmReady(1);
      const sandbox = await runtime.start(spec('after-warm-up-failure'));
      assert.equal(sandbox.vmPid, 1003);
      assert.equal(agentReadyLines()[0]?.pooled, true);
      sandbox.output.resume();
      await sandbox.destroy();
    });

    it('shutdown while a start waits for the pool boot: the start fails, nothing is left', async () => {
      await makeRuntime({ warmPoolSize: 1 });
      boots = ['hang'];
      await until('the pool VM is booting', () => events.length === 1);
      const s = spec('aborted');
      const starting = runtime.start(s);
      await tick(20);
      await runtime.shutdown();
      await assert.rejects(starting, { code: 'Unavailable' });
      assert.ok(events.includes('stop vm 2'));
      assert.deepEqual(await readdir(path.join(execRoot, 'pool')), []);
      assert.equal(existsSync(s.runDir), false);
    });

    it('dirs an earlier runtime left in the pool dir are cleared at creation', async () => {
      const stale = path.join(base, 'exec1', 'pool', 'deadbeef0000', 'shared');
      await mkdir(stale, { recursive: true });
      await writeFile(path.join(stale, 'x'), '');
      await makeRuntime({ warmPoolSize: 1 });
      assert.equal(existsSync(path.dirname(stale)), false);
    });

    it('an invalid pool size is refused', async () => {
      await assert.rejects(makeRuntime({ warmPoolSize: -1 }), InvalidParameterError);
    });
  });
});
