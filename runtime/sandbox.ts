/**
 * The SandboxRuntime (runtime/types.ts): one micro-VM per container run.
 *
 * start(): run dir and shared dir → host overlay rootfs mounted in the shared dir → VM boot (QEMU,
 * virtiofsd) → agent ready (a deadline per boot, up to three boots: TCG boots hang now and then,
 * DESIGN.md) → CreateContainer → ReadOutput opened → StartContainer. Every step that succeeded is
 * undone, newest first, when a later one fails, so a failed start leaves no VM, process, mount or
 * socket; the error is classified (common/errdefs), and a process that could not start keeps the
 * exit status Docker records as `exitCode` (agent-client.ts exitCodeOf).
 *
 * A run ends in one order: the process's exit status is known, its output has ended (drained by
 * the consumer), the guest syncs (PrepareShutdown), the VM stops, the rootfs is unmounted, the run
 * dir removed; only then does `exited` resolve. destroy() skips the waiting: it kills the VM at
 * once, and `exited` resolves with 137 unless the status was known already.
 */
import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { CapsuleError, DeadlineError, SystemError, UnavailableError, messageOf } from '../common/errdefs';
import type { Logger } from '../common/logger';
import type { ProcessSupervisor } from '../common/processes';
import { AgentClient, type AgentCheck } from './agent-client';
import { loadGuestAssets, type GuestAssets } from './guest-assets';
import { buildOciSpec } from './oci-spec';
import { bootVm, consoleTail, QEMU_BINARY, type Vm } from './qemu/vm';
import { mountRootfs, unmountRootfs } from './rootfs';
import type { Accel, ExitResult, RunningSandbox, RuntimeInfo, SandboxRuntime, SandboxSpec } from './types';

/** Where the shared dir (virtiofs tag `capsule`) appears in the guest; the rootfs is inside it. */
export const GUEST_SHARED_DIR = '/run/capsule/shared';
export const GUEST_ROOTFS = `${GUEST_SHARED_DIR}/rootfs`;

export interface SandboxRuntimeDeps {
  supervisor: ProcessSupervisor;
  log: Logger;
  /** The guest assets' cache dir (guest/assets/build.sh output). */
  assetsDir: string;
  /** Already chosen (runtime/accel.ts). */
  accel: Accel;
  /** The daemon's exec root (runtime state on tmpfs). */
  execRoot: string;
  /** Deadline for the agent to answer after a boot; default 30 s under TCG, 10 s with KVM. */
  bootTimeoutMs?: number;
  /** Boots tried before giving up (default 3). */
  bootAttempts?: number;
  /** Default qemu-system-x86_64. */
  qemuBinary?: string;
  /**
   * Test seams (runtime/sandbox.test.ts puts fakes here): the VM, the rootfs mount, the agent
   * transport, and the guest assets (loaded from assetsDir otherwise).
   */
  seams?: {
    bootVm?: typeof bootVm;
    mountRootfs?: typeof mountRootfs;
    unmountRootfs?: typeof unmountRootfs;
    agentTransport?: 'virtio-serial' | 'direct';
    assets?: GuestAssets;
    hypervisorVersion?: string;
  };
}

/** Lets shutdown() abort a start in flight: it stops the VM being booted. */
interface StartControl {
  aborted: boolean;
  vm?: Vm;
}

const KILLED: ExitResult = { exitCode: 137, oomKilled: false };

/** Runs cleanup steps newest first; a failing step is logged and the rest still run. */
class Undo {
  private readonly steps: { what: string; run: () => Promise<unknown> }[] = [];
  push(what: string, run: () => Promise<unknown>): void {
    this.steps.push({ what, run });
  }
  async run(log: Logger): Promise<void> {
    while (this.steps.length > 0) {
      const step = this.steps.pop() as { what: string; run: () => Promise<unknown> };
      try {
        await step.run();
      } catch (err) {
        log.error('teardown step failed', { step: step.what, error: messageOf(err) });
      }
    }
  }
}

function once<T>(fn: () => Promise<T>): () => Promise<T> {
  let p: Promise<T> | undefined;
  return () => (p ??= fn());
}

async function qemuVersion(binary: string): Promise<string> {
  return new Promise((resolve) => {
    execFile(binary, ['--version'], { timeout: 10_000 }, (err, stdout) => {
      const m = /version (\S+)/.exec(String(stdout));
      resolve(err || !m ? 'unknown' : (m[1] ?? 'unknown'));
    });
  });
}

function classify(err: unknown, what: string): CapsuleError {
  if (err instanceof CapsuleError) return err;
  return new SystemError(`${what}: ${messageOf(err)}`, { cause: err });
}

class Sandbox implements RunningSandbox {
  readonly vmPid: number;
  readonly output: Readable;
  readonly exited: Promise<ExitResult>;
  private destroying = false;
  private signalDestroyed!: () => void;
  private readonly destroyed = new Promise<void>((r) => (this.signalDestroyed = r));
  private readonly stopVm: () => Promise<void>;

  constructor(
    private readonly id: string,
    private readonly vm: Vm,
    private readonly client: AgentClient,
    rawOutput: Readable,
    private readonly log: Logger,
    private readonly undo: Undo,
  ) {
    this.vmPid = vm.pid;
    this.stopVm = once(() => vm.stop());
    const output = new PassThrough({ objectMode: true, highWaterMark: 16 });
    rawOutput.on('error', (err) => {
      if (!this.destroying) log.warn('output stream broke', { error: err.message });
      output.end();
    });
    rawOutput.pipe(output);
    this.output = output;
    this.exited = this.lifecycle(output);
  }

  private async lifecycle(output: Readable): Promise<ExitResult> {
    let result: ExitResult;
    try {
      const waited = await Promise.race([
        this.client.waitProcess(this.id),
        this.destroyed.then(() => undefined),
        this.vm.exited.then(() => {
          throw new UnavailableError('the VM exited');
        }),
      ]);
      result = waited ?? KILLED;
    } catch (err) {
      // The VM went away under the process (crash, kill): as if killed.
      if (!this.destroying) this.log.error('lost the container process', { error: messageOf(err) });
      result = KILLED;
    }
    this.log.debug('process exited', { exitCode: result.exitCode });
    // Output is drained by the consumer (backpressure reaches the guest) before the VM goes.
    await Promise.race([finished(output).catch(() => undefined), this.destroyed]);
    if (!this.destroying) {
      await this.client
        .prepareShutdown(5000)
        .catch((err: unknown) => this.log.warn('PrepareShutdown failed', { error: messageOf(err) }));
    }
    this.client.close();
    await this.stopVm().catch((err: unknown) =>
      this.log.error('stopping the VM failed', { error: messageOf(err) }),
    );
    await this.undo.run(this.log);
    return result;
  }

  writeStdin(data: Buffer): Promise<void> {
    return this.client.writeStdin(this.id, '', data);
  }

  closeStdin(): Promise<void> {
    return this.client.closeStdin(this.id, '');
  }

  signal(signo: number): Promise<void> {
    return this.client.signalProcess(this.id, '', signo);
  }

  async destroy(): Promise<void> {
    if (!this.destroying) {
      this.destroying = true;
      this.signalDestroyed();
      void this.stopVm().catch(() => undefined);
    }
    await this.exited.catch(() => undefined);
  }
}

export async function createSandboxRuntime(deps: SandboxRuntimeDeps): Promise<SandboxRuntime> {
  const seams = deps.seams ?? {};
  const startVm = seams.bootVm ?? bootVm;
  const mountRoot = seams.mountRootfs ?? mountRootfs;
  const unmountRoot = seams.unmountRootfs ?? unmountRootfs;
  const [assets, version] = await Promise.all([
    seams.assets ?? loadGuestAssets(deps.assetsDir),
    seams.hypervisorVersion ?? qemuVersion(deps.qemuBinary ?? QEMU_BINARY),
  ]);
  const bootTimeoutMs = deps.bootTimeoutMs ?? (deps.accel === 'kvm' ? 10_000 : 30_000);
  const bootAttempts = deps.bootAttempts ?? 3;
  const live = new Set<Sandbox>();
  /** Starts in flight: shutdown aborts them (stops the VM booting) and waits for their teardown. */
  const starting = new Map<StartControl, Promise<unknown>>();
  let shuttingDown = false;

  /** Boots until the agent answers; each failed attempt's VM is stopped before the next. */
  async function boot(
    spec: SandboxSpec,
    sharedDir: string,
    log: Logger,
    control: StartControl,
  ): Promise<{ vm: Vm; client: AgentClient; check: AgentCheck }> {
    let last: unknown;
    for (let attempt = 1; attempt <= bootAttempts; attempt++) {
      if (control.aborted) throw new UnavailableError('sandbox start aborted: the runtime is shutting down');
      const t0 = Date.now();
      const vm = await startVm(deps.supervisor, log, {
        runDir: spec.runDir,
        sharedDir,
        assets,
        accel: deps.accel,
        memoryMiB: spec.resources.memoryMiB,
        vcpus: spec.resources.vcpus,
        hostname: spec.hostname,
        qemuBinary: deps.qemuBinary,
      });
      control.vm = vm;
      const client = new AgentClient({
        socketPath: vm.agentSocketPath,
        log,
        transport: seams.agentTransport,
      });
      try {
        const check = await Promise.race([
          client.waitReady(bootTimeoutMs),
          vm.exited.then(() => {
            throw new UnavailableError('the VM exited during boot');
          }),
        ]);
        log.debug('agent ready', {
          attempt,
          ms: Date.now() - t0,
          guestAgentStartMs: check.agentStartMs,
          guestAgentReadyMs: check.agentReadyMs,
        });
        return { vm, client, check };
      } catch (err) {
        last = err;
        client.close();
        const tail = (await consoleTail(vm, 1500)).trim();
        await vm.stop();
        control.vm = undefined;
        log.warn('VM boot failed', { attempt, of: bootAttempts, error: messageOf(err), console: tail });
        if (control.aborted)
          throw new UnavailableError('sandbox start aborted: the runtime is shutting down');
      }
    }
    throw new SystemError(
      `the VM did not boot: agent not ready after ${bootAttempts} attempts of ${bootTimeoutMs} ms: ${messageOf(last)}`,
      { cause: last instanceof DeadlineError ? last : undefined },
    );
  }

  function start(spec: SandboxSpec): Promise<RunningSandbox> {
    if (shuttingDown) return Promise.reject(new UnavailableError('the runtime is shutting down'));
    const control: StartControl = { aborted: false };
    const started = startSandbox(spec, control);
    starting.set(control, started);
    void started.then(
      () => starting.delete(control),
      () => starting.delete(control),
    );
    return started;
  }

  async function startSandbox(spec: SandboxSpec, control: StartControl): Promise<RunningSandbox> {
    const log = deps.log.child({ container: spec.containerId.slice(0, 12) });
    const undo = new Undo();
    const t0 = Date.now();
    try {
      await fs.mkdir(spec.runDir, { recursive: true, mode: 0o700 });
      undo.push('remove the run dir', () => fs.rm(spec.runDir, { recursive: true, force: true }));
      const sharedDir = path.join(spec.runDir, 'shared');
      const rootfsDir = path.join(sharedDir, 'rootfs');
      await fs.mkdir(rootfsDir, { recursive: true, mode: 0o755 });
      await mountRoot(spec.layerDirs, spec.containerLayerDir, rootfsDir);
      undo.push('unmount the rootfs', () => unmountRoot(rootfsDir));

      const { vm, client } = await boot(spec, sharedDir, log, control);
      const stopVm = once(() => vm.stop());
      undo.push('stop the VM', stopVm);
      undo.push('close the agent client', async () => client.close());
      if (control.aborted) throw new UnavailableError('sandbox start aborted: the runtime is shutting down');

      const p = spec.process;
      await client.createContainer({
        containerId: spec.containerId,
        ociSpec: buildOciSpec({ containerId: spec.containerId, hostname: spec.hostname, process: p }),
        rootfsGuestPath: GUEST_ROOTFS,
        user: p.user,
        openStdin: p.openStdin,
        workingDir: p.cwd,
      });
      // Open before the start so that no byte of output is missed.
      const rawOutput = client.readOutput(spec.containerId);
      rawOutput.on('error', () => undefined); // until the Sandbox takes it over
      undo.push('cancel the output stream', async () => rawOutput.destroy());
      await client.startContainer(spec.containerId);

      // The Sandbox owns every resource from here: its lifecycle runs the teardown, the VM first.
      const owned = new Undo();
      owned.push('remove the run dir', () => fs.rm(spec.runDir, { recursive: true, force: true }));
      owned.push('unmount the rootfs', () => unmountRoot(rootfsDir));
      const sandbox = new Sandbox(spec.containerId, vm, client, rawOutput, log, owned);
      live.add(sandbox);
      void sandbox.exited.finally(() => live.delete(sandbox));
      log.info('sandbox started', { ms: Date.now() - t0, vmPid: vm.pid });
      if (shuttingDown) void sandbox.destroy();
      return sandbox;
    } catch (err) {
      await undo.run(log);
      log.warn('sandbox start failed', { ms: Date.now() - t0, error: messageOf(err) });
      throw classify(err, 'starting the sandbox');
    }
  }

  return {
    start,
    info: (): RuntimeInfo => ({
      accel: deps.accel,
      guestKernelRelease: assets.kernelRelease,
      hypervisor: `qemu ${version}`,
    }),
    async shutdown(): Promise<void> {
      shuttingDown = true;
      const inFlight = [...starting.entries()];
      for (const [control] of inFlight) {
        control.aborted = true;
        void control.vm?.stop().catch(() => undefined);
      }
      await Promise.allSettled(inFlight.map(([, started]) => started));
      await Promise.all([...live].map((s) => s.destroy()));
    },
  };
}
