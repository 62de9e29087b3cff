/**
 * The SandboxRuntime (runtime/types.ts): one micro-VM per container run.
 *
 * A VM is booted with an empty shared dir and nothing container-specific (the container's hostname
 * is set in its UTS namespace, not on the VM), so any booted VM can serve any container of its
 * size. The warm pool (runtime/warm-pool.ts) keeps such VMs booted with the default resources, each
 * having run one throwaway container (agent.proto WarmUp: a VM's first container is its slowest
 * under TCG); start() takes one when it fits, or boots one (a deadline per boot, up to three
 * boots: TCG boots hang now and then, DESIGN.md). Then: published ports (at boot, or added live by
 * QMP to a pooled VM) → the host overlay rootfs mounted inside the VM's shared dir under a fresh
 * name, `<shared>/<containerId>/rootfs` (made after boot, so the guest has no cached negative
 * dentry for it; the agent waits for it to show up) → CreateContainer → ReadOutput opened →
 * StartContainer. A failed start releases what it took, in one order (agent connection, VM,
 * mount, dirs), so it leaves no VM, process, mount or socket; the error is classified
 * (common/errdefs), and a process that could not start keeps the exit status Docker records as
 * `exitCode` (agent-client.ts exitCodeOf).
 *
 * A VM serves one container run, then is destroyed: pooled VMs are never reused (isolation). A run
 * ends in one order: the process's exit status is known, its output has ended (drained by the
 * consumer), the guest syncs (PrepareShutdown), the VM stops, the rootfs is unmounted, the dirs
 * removed; only then does `exited` resolve. destroy() skips the waiting: it kills the VM at once,
 * and `exited` resolves with 137 unless the status was known already.
 *
 * Each start logs one info line `agent ready` with {containerId, bootMs, pooled, startMs, vmPid,
 * steps}: bootMs is the boot of the VM used (boot start to agent ready), startMs the time spent in
 * start(), steps the ms of each of its steps (benchmarks parse `agent ready.*"bootMs":N`).
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import {
  CapsuleError,
  DeadlineError,
  InvalidParameterError,
  NotImplementedError,
  SystemError,
  UnavailableError,
  messageOf,
} from '../common/errdefs';
import type { Logger } from '../common/logger';
import type { ProcessSupervisor } from '../common/processes';
import { AgentClient, type AgentCheck } from './agent-client';
import { loadGuestAssets, type GuestAssets } from './guest-assets';
import { buildOciSpec } from './oci-spec';
import type { HostForward } from './qemu/cmdline';
import { QmpClient } from './qemu/qmp';
import { bootVm, consoleTail, QEMU_BINARY, type Vm } from './qemu/vm';
import { isMounted, mountPointsOf, mountRootfs, unmountRootfs } from './rootfs';
import { WarmPool } from './warm-pool';
import type {
  Accel,
  ArchiveInOptions,
  ExecSpec,
  ExitResult,
  GuestPathStat,
  GuestProcess,
  GuestStats,
  PortForward,
  RunningSandbox,
  RunningExec,
  RuntimeInfo,
  SandboxRuntime,
  SandboxSpec,
} from './types';

/** Where the shared dir (virtiofs tag `capsule`) appears in the guest; rootfs overlays are inside. */
export const GUEST_SHARED_DIR = '/run/capsule/shared';

/** The guest path of a container's rootfs: `<shared>/<containerId>/rootfs`. */
export function guestRootfsPath(containerId: string): string {
  return `${GUEST_SHARED_DIR}/${containerId}/rootfs`;
}

/** What a VM gets when the container asks for nothing else (Docker sets no limit by default). */
export const DEFAULT_SANDBOX_RESOURCES: Readonly<{ memoryMiB: number; vcpus: number }> = Object.freeze({
  memoryMiB: 256,
  vcpus: 1,
});

/** Warm VMs kept by default. */
export const DEFAULT_WARM_POOL_SIZE = 1;

/** Same rule as the guest agent's (guest/agent/containers.ts): the id also names a directory. */
const CONTAINER_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/** A pooled VM must answer Check within this long when taken, or it is replaced. */
const POOL_PROBE_TIMEOUT_MS = 2000;
/** The warm-up container (agent.proto WarmUp) of a pooled VM; under TCG it takes 1–2 s. */
const WARM_UP_TIMEOUT_MS = 60_000;
const WARM_UP_SPEC = buildOciSpec({
  containerId: 'capsule-warm-up',
  hostname: 'capsule-warm-up',
  process: { args: ['/bin/true'], env: ['PATH=/bin'], cwd: '', user: '', openStdin: false, tty: false },
});

export interface SandboxRuntimeDeps {
  supervisor: ProcessSupervisor;
  log: Logger;
  /** The guest assets' cache dir (guest/assets/build.sh output). */
  assetsDir: string;
  /** Already chosen (runtime/accel.ts). */
  accel: Accel;
  /**
   * The daemon's exec root (runtime state on tmpfs). The runtime owns `<execRoot>/pool` (the warm
   * VMs' dirs) and clears what a previous run left there: one runtime per exec root.
   */
  execRoot: string;
  /**
   * VMs kept booted and ready (the daemon's --warm-pool N); default 1, 0 disables the pool. They
   * have defaultResources; a start asking for other resources boots its own VM.
   */
  warmPoolSize?: number;
  /** Resources of the pooled VMs: what the daemon gives a container that sets no limit. */
  defaultResources?: { memoryMiB: number; vcpus: number };
  /** Deadline for the agent to answer after a boot; default 30 s under TCG, 10 s with KVM. */
  bootTimeoutMs?: number;
  /** Boots tried before giving up (default 3). */
  bootAttempts?: number;
  /** Default qemu-system-x86_64. */
  qemuBinary?: string;
  /**
   * Test seams (runtime/sandbox.test.ts puts fakes here): the VM, the rootfs mount, the agent
   * transport, live port forwards, the pool's back-off, and the guest assets (loaded from
   * assetsDir otherwise).
   */
  seams?: {
    bootVm?: typeof bootVm;
    mountRootfs?: typeof mountRootfs;
    unmountRootfs?: typeof unmountRootfs;
    agentTransport?: 'virtio-serial' | 'direct';
    addPortForwards?: (vm: Vm, forwards: readonly PortForward[]) => Promise<void>;
    poolBackoffMs?: { min: number; max: number };
    assets?: GuestAssets;
    hypervisorVersion?: string;
  };
}

/** A booted VM whose agent answered: what the pool keeps and what a start runs a container in. */
interface BootedVm {
  vm: Vm;
  client: AgentClient;
  /** The VM's own dir: sockets, console log, shared dir. */
  runDir: string;
  /** Host side of the guest's /run/capsule/shared. */
  sharedDir: string;
  resources: { memoryMiB: number; vcpus: number };
  /** Boot start to agent ready, ms (the attempt that succeeded). */
  bootMs: number;
  check: AgentCheck;
  /** Set once QEMU exited. */
  gone: boolean;
}

/** Lets shutdown() abort a start in flight: it stops the VM being booted. */
interface StartControl {
  aborted: boolean;
  vm?: Vm;
}

const KILLED: ExitResult = { exitCode: 137, oomKilled: false };

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

const aborted = () => new UnavailableError('sandbox start aborted: the runtime is shutting down');

/**
 * What one run holds on the host, released in one order whatever happened before: the agent
 * connection, the VM (virtiofsd holds files of the rootfs), the rootfs mount, the dirs. Each step
 * runs once; a failing step is logged and the rest still run.
 */
class RunHold {
  client?: AgentClient;
  stopVm?: () => Promise<void>;
  rootfsDir?: string;
  readonly dirs: string[] = [];

  constructor(private readonly unmount: (target: string) => Promise<void>) {}

  private released?: Promise<void>;

  release(log: Logger): Promise<void> {
    this.released ??= this.run(log);
    return this.released;
  }

  private async run(log: Logger): Promise<void> {
    const step = async (what: string, run: () => Promise<unknown>): Promise<void> => {
      try {
        await run();
      } catch (err) {
        log.error('teardown step failed', { step: what, error: messageOf(err) });
      }
    };
    this.client?.close();
    if (this.stopVm) await step('stop the VM', this.stopVm);
    const rootfs = this.rootfsDir;
    if (rootfs !== undefined) await step('unmount the rootfs', () => this.unmount(rootfs));
    for (const dir of this.dirs) {
      await step(`remove ${dir}`, () => fs.rm(dir, { recursive: true, force: true }));
    }
  }
}

class Sandbox implements RunningSandbox {
  readonly vmPid: number;
  readonly output: Readable;
  readonly exited: Promise<ExitResult>;
  readonly processExited: Promise<void>;
  private markProcessExited!: () => void;
  private destroying = false;
  private signalDestroyed!: () => void;
  private readonly destroyed = new Promise<void>((r) => (this.signalDestroyed = r));

  constructor(
    private readonly id: string,
    private readonly vm: Vm,
    private readonly client: AgentClient,
    rawOutput: Readable,
    private readonly log: Logger,
    private readonly hold: RunHold,
  ) {
    this.vmPid = vm.pid;
    const output = new PassThrough({ objectMode: true, highWaterMark: 16 });
    rawOutput.on('error', (err) => {
      if (!this.destroying) log.warn('output stream broke', { error: err.message });
      output.end();
    });
    rawOutput.pipe(output);
    this.output = output;
    this.processExited = new Promise((resolve) => (this.markProcessExited = resolve));
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
    this.markProcessExited();
    // Output is drained by the consumer (backpressure reaches the guest) before the VM goes.
    await Promise.race([finished(output).catch(() => undefined), this.destroyed]);
    if (!this.destroying) {
      await this.client
        .prepareShutdown(5000)
        .catch((err: unknown) => this.log.warn('PrepareShutdown failed', { error: messageOf(err) }));
    }
    await this.hold.release(this.log);
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

  pause(): Promise<void> {
    return this.qmp((qmp) => qmp.stop());
  }

  /**
   * Lets the VM run again, then brings the guest's clock to the host's: it stood still while the
   * VM was stopped (a container would otherwise be behind by every pause, commit included). The
   * clock sync is best effort: a container that runs with a late clock beats one that is not
   * resumed.
   */
  async resume(): Promise<void> {
    await this.qmp((qmp) => qmp.cont());
    try {
      const stepMs = await this.client.syncClock(Date.now());
      if (stepMs !== 0) this.log.debug('guest clock stepped after resume', { stepMs });
    } catch (err) {
      this.log.warn('guest clock not synced after resume', { error: messageOf(err) });
    }
  }

  /** One QMP command on this VM (QEMU serves one QMP connection at a time: open, run, close). */
  private async qmp(run: (qmp: QmpClient) => Promise<void>): Promise<void> {
    if (this.destroying) throw new UnavailableError('the sandbox is being destroyed');
    const qmp = await QmpClient.connect(this.vm.qmpSocketPath);
    try {
      await run(qmp);
    } finally {
      qmp.close();
    }
  }

  statPath(p: string, containerName: string): Promise<GuestPathStat> {
    return this.client.statPath(this.id, p, containerName);
  }

  archiveOut(p: string, containerName: string, wholeRootfs: boolean): Readable {
    return this.client.archiveOut(this.id, p, containerName, wholeRootfs);
  }

  archiveIn(
    p: string,
    containerName: string,
    tar: AsyncIterable<Uint8Array>,
    options: ArchiveInOptions,
  ): Promise<void> {
    return this.client.archiveIn(this.id, p, containerName, tar, options);
  }

  resize(rows: number, cols: number): Promise<void> {
    return this.client.resizeTerminal(this.id, '', rows, cols);
  }

  async exec(spec: ExecSpec): Promise<RunningExec> {
    const started = await this.client.runExec({
      containerId: this.id,
      execId: spec.execId,
      args: spec.args,
      env: spec.env,
      workingDir: spec.cwd,
      user: spec.user,
      openStdin: spec.openStdin,
      tty: spec.tty,
      terminalRows: spec.consoleSize?.[0] ?? 0,
      terminalCols: spec.consoleSize?.[1] ?? 0,
    });
    const pid = started.pid;
    const output = new PassThrough({ objectMode: true, highWaterMark: 16 });
    started.output.on('error', (err) => {
      if (!this.destroying)
        this.log.debug('exec output stream broke', { exec: spec.execId, error: err.message });
      output.end();
    });
    started.output.pipe(output);
    const exited = started.exited.catch((err: unknown) => {
      // The VM went away under the process (the container stopped): as if killed.
      this.log.debug('lost an exec process', { exec: spec.execId, error: messageOf(err) });
      return KILLED;
    });
    return {
      pid,
      output,
      writeStdin: (data) => this.client.writeStdin(this.id, spec.execId, data),
      closeStdin: () => this.client.closeStdin(this.id, spec.execId),
      signal: (signo) => this.client.signalProcess(this.id, spec.execId, signo),
      resize: (rows, cols) => this.client.resizeTerminal(this.id, spec.execId, rows, cols),
      exited,
    };
  }

  top(): Promise<GuestProcess[]> {
    return this.client.listProcesses(this.id);
  }

  stats(): Promise<GuestStats> {
    return this.client.statsContainer(this.id);
  }

  async destroy(): Promise<void> {
    if (!this.destroying) {
      this.destroying = true;
      this.signalDestroyed();
      void this.hold.stopVm?.().catch(() => undefined);
    }
    await this.exited.catch(() => undefined);
  }
}

/** Adds published ports to a running VM's user-mode NIC through QMP (hostfwd_add). */
async function addPortForwardsByQmp(vm: Vm, forwards: readonly PortForward[]): Promise<void> {
  const qmp = await QmpClient.connect(vm.qmpSocketPath);
  try {
    for (const fwd of forwards) await qmp.hostForwardAdd(fwd);
  } finally {
    qmp.close();
  }
}

/** Unmounts whatever a previous runtime left mounted below `dir`, then removes it. */
async function clearStaleDir(dir: string, unmount: (target: string) => Promise<void>, log: Logger) {
  const mountinfo = await fs.readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
  const below = mountPointsOf(mountinfo)
    .filter((p) => p.startsWith(dir + '/'))
    .sort((a, b) => b.length - a.length); // innermost first
  for (const target of below) {
    if (await isMounted(target)) {
      log.warn('unmounting a rootfs left by an earlier run', { target });
      await unmount(target).catch((err: unknown) =>
        log.error('cannot unmount a stale rootfs', { target, error: messageOf(err) }),
      );
    }
  }
  await fs.rm(dir, { recursive: true, force: true });
}

export async function createSandboxRuntime(deps: SandboxRuntimeDeps): Promise<SandboxRuntime> {
  const seams = deps.seams ?? {};
  const startVm = seams.bootVm ?? bootVm;
  const mountRoot = seams.mountRootfs ?? mountRootfs;
  const unmountRoot = seams.unmountRootfs ?? unmountRootfs;
  const addPortForwards = seams.addPortForwards ?? addPortForwardsByQmp;
  const [assets, version] = await Promise.all([
    seams.assets ?? loadGuestAssets(deps.assetsDir),
    seams.hypervisorVersion ?? qemuVersion(deps.qemuBinary ?? QEMU_BINARY),
  ]);
  const bootTimeoutMs = deps.bootTimeoutMs ?? (deps.accel === 'kvm' ? 10_000 : 30_000);
  const bootAttempts = deps.bootAttempts ?? 3;
  const poolResources = { ...(deps.defaultResources ?? DEFAULT_SANDBOX_RESOURCES) };
  const poolDir = path.join(deps.execRoot, 'pool');
  const live = new Set<Sandbox>();
  /** Starts in flight: shutdown aborts them (stops the VM booting) and waits for their teardown. */
  const starting = new Map<StartControl, Promise<unknown>>();
  let shuttingDown = false;

  /**
   * Boots until the agent answers; each failed attempt's VM is stopped before the next. The VM's
   * files go to `runDir`, its shared dir is `<runDir>/shared` (created, empty).
   */
  async function boot(
    runDir: string,
    resources: { memoryMiB: number; vcpus: number },
    hostForwards: readonly HostForward[],
    log: Logger,
    control: StartControl,
  ): Promise<BootedVm> {
    const sharedDir = path.join(runDir, 'shared');
    await fs.mkdir(sharedDir, { recursive: true, mode: 0o755 });
    let last: unknown;
    for (let attempt = 1; attempt <= bootAttempts; attempt++) {
      if (control.aborted) throw aborted();
      const t0 = Date.now();
      const vm = await startVm(deps.supervisor, log, {
        runDir,
        sharedDir,
        assets,
        accel: deps.accel,
        memoryMiB: resources.memoryMiB,
        vcpus: resources.vcpus,
        hostForwards: [...hostForwards],
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
        const bootMs = Date.now() - t0;
        log.debug('VM booted', {
          attempt,
          bootMs,
          guestAgentStartMs: check.agentStartMs,
          guestAgentReadyMs: check.agentReadyMs,
        });
        const booted: BootedVm = { vm, client, runDir, sharedDir, resources, bootMs, check, gone: false };
        void vm.exited.then(() => (booted.gone = true));
        return booted;
      } catch (err) {
        last = err;
        client.close();
        const tail = (await consoleTail(vm, 1500)).trim();
        await vm.stop();
        control.vm = undefined;
        log.warn('VM boot failed', { attempt, of: bootAttempts, error: messageOf(err), console: tail });
        if (control.aborted) throw aborted();
      }
    }
    throw new SystemError(
      `the VM did not boot: agent not ready after ${bootAttempts} attempts of ${bootTimeoutMs} ms: ${messageOf(last)}`,
      { cause: last instanceof DeadlineError ? last : undefined },
    );
  }

  async function discardBooted(b: BootedVm): Promise<void> {
    b.client.close();
    await b.vm
      .stop()
      .catch((err: unknown) => deps.log.error('stopping a warm VM failed', { error: messageOf(err) }));
    await fs.rm(b.runDir, { recursive: true, force: true });
  }

  const poolSize = deps.warmPoolSize ?? DEFAULT_WARM_POOL_SIZE;
  if (!Number.isInteger(poolSize) || poolSize < 0) {
    throw new InvalidParameterError(`warm pool size must be a whole number >= 0, not ${poolSize}`);
  }
  const poolLog = deps.log.child({ component: 'warm-pool' });
  const pool = new WarmPool<BootedVm>({
    size: poolSize,
    log: poolLog,
    backoffMs: seams.poolBackoffMs,
    boot: async (signal) => {
      const runDir = path.join(poolDir, randomBytes(6).toString('hex'));
      const control: StartControl = { aborted: false };
      const onAbort = () => {
        control.aborted = true;
        void control.vm?.stop().catch(() => undefined);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      const vmLog = poolLog.child({ vm: path.basename(runDir) });
      let booted: BootedVm | undefined;
      try {
        booted = await boot(runDir, poolResources, [], vmLog, control);
        // One throwaway container first: the code a start runs is then no longer run for the first
        // time in this VM, which under TCG roughly halves the first real start (docs/guest.md).
        const t0 = Date.now();
        try {
          await booted.client.warmUp(WARM_UP_SPEC, WARM_UP_TIMEOUT_MS);
          vmLog.debug('warm-up done', { ms: Date.now() - t0 });
        } catch (err) {
          if (!(err instanceof NotImplementedError)) throw err; // an agent without WarmUp: as is
        }
        if (control.aborted) throw aborted();
        return booted;
      } catch (err) {
        if (booted) {
          booted.client.close();
          await booted.vm.stop();
        }
        await fs.rm(runDir, { recursive: true, force: true });
        throw err;
      } finally {
        signal.removeEventListener('abort', onAbort);
      }
    },
    probe: async (b) => {
      if (b.gone) return false;
      try {
        await b.client.check(POOL_PROBE_TIMEOUT_MS);
        return !b.gone;
      } catch {
        return false;
      }
    },
    discard: discardBooted,
    died: (b) => b.vm.exited,
  });
  await clearStaleDir(poolDir, unmountRoot, deps.log);
  pool.fill();

  const fitsPool = (spec: SandboxSpec): boolean =>
    spec.resources.memoryMiB === poolResources.memoryMiB && spec.resources.vcpus === poolResources.vcpus;

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
    if (!CONTAINER_ID.test(spec.containerId)) {
      throw new InvalidParameterError(`invalid container id ${JSON.stringify(spec.containerId)}`);
    }
    const log = deps.log.child({ container: spec.containerId.slice(0, 12) });
    const hold = new RunHold(unmountRoot);
    const t0 = Date.now();
    const forwards = spec.portForwards ?? [];
    let tookFromPool = false;
    /** ms spent in each step, for the `agent ready` line. */
    const steps: Record<string, number> = {};
    let stepStart = t0;
    const stepDone = (name: string) => {
      const now = Date.now();
      steps[name] = now - stepStart;
      stepStart = now;
    };
    try {
      await fs.mkdir(spec.runDir, { recursive: true, mode: 0o700 });
      hold.dirs.push(spec.runDir);

      let booted: BootedVm | undefined;
      if (pool.size > 0 && fitsPool(spec)) {
        tookFromPool = true;
        booted = await pool.take();
      }
      const pooled = booted !== undefined;
      if (booted) {
        hold.dirs.unshift(booted.runDir);
      } else {
        if (control.aborted) throw aborted();
        booted = await boot(spec.runDir, spec.resources, forwards, log, control);
      }
      stepDone(pooled ? 'take' : 'boot');
      const { vm, client } = booted;
      control.vm = vm;
      hold.client = client;
      hold.stopVm = once(() => vm.stop());
      if (control.aborted) throw aborted();
      if (pooled && forwards.length > 0) await addPortForwards(vm, forwards);

      // A fresh name in the shared dir, made now: the guest never looked it up, so it has no
      // negative dentry cached for it, and sees the mount as soon as it looks.
      const containerDir = path.join(booted.sharedDir, spec.containerId);
      await fs.mkdir(containerDir, { mode: 0o755 });
      const rootfsDir = path.join(containerDir, 'rootfs');
      await fs.mkdir(rootfsDir, { mode: 0o755 });
      hold.rootfsDir = rootfsDir;
      await mountRoot(spec.layerDirs, spec.containerLayerDir, rootfsDir);
      stepDone('mount');

      const p = spec.process;
      await client.createContainer({
        containerId: spec.containerId,
        ociSpec: buildOciSpec({
          containerId: spec.containerId,
          hostname: spec.hostname,
          process: p,
          options: spec.options,
        }),
        rootfsGuestPath: guestRootfsPath(spec.containerId),
        user: p.user,
        openStdin: p.openStdin,
        workingDir: p.cwd,
        terminalRows: p.consoleSize?.[0] ?? 0,
        terminalCols: p.consoleSize?.[1] ?? 0,
      });
      stepDone('create');
      // Open before the start so that no byte of output is missed.
      const rawOutput = client.readOutput(spec.containerId);
      rawOutput.on('error', () => undefined); // until the Sandbox takes it over
      try {
        await client.startContainer(spec.containerId);
      } catch (err) {
        rawOutput.destroy();
        throw err;
      }
      stepDone('start');

      // The Sandbox owns the run from here: its lifecycle releases the hold.
      const sandbox = new Sandbox(spec.containerId, vm, client, rawOutput, log, hold);
      live.add(sandbox);
      void sandbox.exited.finally(() => live.delete(sandbox));
      log.info('agent ready', {
        containerId: spec.containerId,
        bootMs: booted.bootMs,
        pooled,
        startMs: Date.now() - t0,
        vmPid: vm.pid,
        steps,
      });
      if (shuttingDown) void sandbox.destroy();
      return sandbox;
    } catch (err) {
      await hold.release(log);
      log.warn('sandbox start failed', { ms: Date.now() - t0, error: messageOf(err) });
      throw classify(err, 'starting the sandbox');
    } finally {
      // Refill only now: a boot competes with this start for the CPU.
      if (tookFromPool && !shuttingDown) pool.fill();
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
      await Promise.all([pool.shutdown(), Promise.allSettled(inFlight.map(([, started]) => started))]);
      await Promise.all([...live].map((s) => s.destroy()));
    },
  };
}
