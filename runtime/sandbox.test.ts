/**
 * The sandbox's orchestration against fakes (no VM, no root): boot retries, teardown order, start
 * failures, destroy. A fake VM is a fake agent (a grpc-js server on agent.proto) listening on the
 * VM's agent socket, or nothing at all for a boot that hangs.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, beforeEach, describe, it } from 'node:test';
import { InvalidParameterError, SystemError } from '../common/errdefs';
import type { ExitStatus } from '../common/processes';
import { createSilentLogger } from '../common/logger';
import { ProcessSupervisor } from '../common/processes';
import { EXIT_CODE_TRAILER, exitCodeOf, findAgentProto } from './agent-client';
import type { Vm, VmOptions } from './qemu/vm';
import { createSandboxRuntime, GUEST_ROOTFS } from './sandbox';
import type { OutputChunk, SandboxRuntime, SandboxSpec } from './types';

type Handler = (call: unknown, callback: grpc.sendUnaryData<unknown>) => void;

/** A fake agent: answers Check, records calls, runs one scripted process. */
class FakeAgent {
  readonly server = new grpc.Server();
  readonly calls: string[] = [];
  createRequest?: Record<string, unknown>;
  startFailure?: { code: grpc.status; details: string; exitCode: number };
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

describe('sandbox runtime (fake VM, fake agent, fake mount)', () => {
  let base: string;
  let events: string[];
  let boots: ('ok' | 'hang')[];
  let agents: FakeAgent[];
  let runtime: SandboxRuntime;
  let n = 0;
  /** Given to the agent of the next VM that boots. */
  let nextStartFailure: FakeAgent['startFailure'];

  /** bootVm's fake: each boot takes the next scripted outcome; 'hang' never serves the agent. */
  async function fakeBootVm(_s: ProcessSupervisor, _l: unknown, opts: VmOptions): Promise<Vm> {
    const outcome = boots.shift() ?? 'ok';
    const id = ++n;
    const agentSocketPath = path.join(opts.runDir, `agent-${id}.sock`);
    await mkdir(opts.runDir, { recursive: true });
    const consoleLogPath = path.join(opts.runDir, 'console.log');
    await writeFile(consoleLogPath, outcome === 'hang' ? 'tsc: Unable to calibrate against PIT\n' : 'ok\n');
    events.push(`boot ${id} ${outcome} (hostname ${opts.hostname})`);
    const agent = new FakeAgent();
    agent.startFailure = nextStartFailure;
    agents.push(agent);
    if (outcome === 'ok') await agent.listen(agentSocketPath);
    let stopped!: (s: ExitStatus) => void;
    const exited = new Promise<ExitStatus>((r) => (stopped = r));
    let stopping: Promise<void> | undefined;
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

  before(async () => {
    base = await mkdtemp(path.join(os.tmpdir(), 'capsule-sandbox-unit-'));
  });
  after(async () => {
    await rm(base, { recursive: true, force: true });
  });

  beforeEach(async () => {
    events = [];
    boots = [];
    agents = [];
    n = 0;
    nextStartFailure = undefined;
    runtime = await createSandboxRuntime({
      supervisor: new ProcessSupervisor(createSilentLogger()),
      log: createSilentLogger(),
      assetsDir: '/nonexistent',
      accel: 'tcg',
      execRoot: base,
      bootTimeoutMs: 600,
      seams: {
        bootVm: fakeBootVm,
        mountRootfs: async (layers, upper, target) => {
          events.push(`mount ${layers.length} layer(s) at ${path.relative(base, target)}`);
          await writeFile(path.join(target, 'mounted'), '');
        },
        unmountRootfs: async (target) => {
          events.push(`unmount ${path.relative(base, target)}`);
        },
        agentTransport: 'direct',
        assets: { kernelPath: 'k', initrdPath: 'i', agentDiskPath: 'a', kernelRelease: '6.1.0-fake' },
        hypervisorVersion: '7.2.0-fake',
      },
    });
  });

  function spec(name: string): SandboxSpec {
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
    };
  }

  it('info reports accel, guest kernel and hypervisor', () => {
    assert.deepEqual(runtime.info(), {
      accel: 'tcg',
      guestKernelRelease: '6.1.0-fake',
      hypervisor: 'qemu 7.2.0-fake',
    });
  });

  it('a boot that hangs is killed and retried; the run then tears down in order', async () => {
    boots = ['hang', 'ok'];
    const s = spec('retry');
    const sandbox = await runtime.start(s);
    assert.equal(sandbox.vmPid, 1002);
    const agent = agents[1] as FakeAgent;
    assert.equal(agent.createRequest?.rootfs_guest_path, GUEST_ROOTFS);
    assert.equal(agent.createRequest?.user, '1000');
    assert.equal(agent.createRequest?.working_dir, '/w');
    const oci = JSON.parse(String(agent.createRequest?.oci_spec_json)) as {
      hostname: string;
      process: { args: string[] };
    };
    assert.equal(oci.hostname, 'retry');
    assert.deepEqual(oci.process.args, ['sh', '-c', 'x']);

    const chunks: OutputChunk[] = [];
    sandbox.output.on('data', (c: OutputChunk) => chunks.push(c));
    agent.exitWith(3);
    assert.deepEqual(await sandbox.exited, { exitCode: 3, oomKilled: false });
    assert.deepEqual(
      chunks.map((c) => `${c.stream}:${c.data.toString()}`),
      ['1:hello\n', '2:oops\n'],
    );
    assert.deepEqual(events, [
      'mount 1 layer(s) at retry/shared/rootfs',
      'boot 1 hang (hostname retry)',
      'stop vm 1',
      'boot 2 ok (hostname retry)',
      'stop vm 2',
      'unmount retry/shared/rootfs',
    ]);
    assert.ok(
      agent.calls.indexOf('ReadOutput') < agent.calls.indexOf('StartContainer'),
      'output opened first',
    );
    assert.ok(agent.calls.includes('PrepareShutdown'));
    assert.equal(existsSync(s.runDir), false);
  });

  it('three hung boots: a system error, and nothing left', async () => {
    boots = ['hang', 'hang', 'hang'];
    const s = spec('hung');
    await assert.rejects(runtime.start(s), (err: unknown) => {
      assert.ok(err instanceof SystemError);
      assert.match(err.message, /did not boot: agent not ready after 3 attempts/);
      return true;
    });
    assert.deepEqual(events.filter((e) => e.startsWith('stop')).length, 3);
    assert.equal(events[events.length - 1], 'unmount hung/shared/rootfs');
    assert.equal(existsSync(s.runDir), false);
  });

  it('a process that cannot start: the OCI message and its exit code, and nothing left', async () => {
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
    assert.deepEqual(events.slice(-2), ['stop vm 1', 'unmount nostart/shared/rootfs']);
    assert.equal(existsSync(s.runDir), false);
  });

  it('destroy stops the VM at once: 137, no PrepareShutdown', async () => {
    boots = ['ok'];
    const s = spec('destroy');
    const sandbox = await runtime.start(s);
    sandbox.output.resume();
    await sandbox.destroy();
    assert.deepEqual(await sandbox.exited, { exitCode: 137, oomKilled: false });
    assert.ok(!(agents[0] as FakeAgent).calls.includes('PrepareShutdown'));
    assert.deepEqual(events.slice(-2), ['stop vm 1', 'unmount destroy/shared/rootfs']);
    assert.equal(existsSync(s.runDir), false);
  });

  it('shutdown destroys every running sandbox', async () => {
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

  it('a mount failure boots nothing and removes the run dir', async () => {
    const failing = await createSandboxRuntime({
      supervisor: new ProcessSupervisor(createSilentLogger()),
      log: createSilentLogger(),
      assetsDir: '/nonexistent',
      accel: 'tcg',
      execRoot: base,
      seams: {
        bootVm: fakeBootVm,
        mountRootfs: async () => {
          throw new Error('mount: permission denied');
        },
        unmountRootfs: async () => undefined,
        agentTransport: 'direct',
        assets: { kernelPath: 'k', initrdPath: 'i', agentDiskPath: 'a', kernelRelease: 'r' },
        hypervisorVersion: 'x',
      },
    });
    const s = spec('nomount');
    await assert.rejects(
      failing.start(s),
      (err: unknown) => err instanceof SystemError && /mount/.test(err.message),
    );
    assert.deepEqual(events, []);
    assert.equal(existsSync(s.runDir), false);
  });
});
