/**
 * Boots one Capsule VM: virtiofsd on the sandbox's shared dir, then QEMU (runtime/qemu/cmdline.ts)
 * with the guest assets. Both go through the ProcessSupervisor, so each is reaped and the daemon
 * can kill what is left on shutdown. bootVm returns once QEMU is up and its agent socket exists;
 * whether the guest agent answers is the caller's business (runtime/sandbox.ts, with a deadline,
 * since a TCG boot can still hang now and then).
 *
 * Invariant: whatever bootVm started is stopped again if it fails, and once a Vm's `exited`
 * resolves (QEMU gone for any reason, or stop()), virtiofsd is reaped too and the sockets of the
 * run dir are removed; the run dir itself and the console log stay for the caller to read.
 */
import { createReadStream } from 'node:fs';
import { mkdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { InvalidParameterError, SystemError, messageOf } from '../../common/errdefs';
import type { Logger } from '../../common/logger';
import type { ExitStatus, ProcessSupervisor, SupervisedProcess } from '../../common/processes';
import type { GuestAssets } from '../guest-assets';
import type { Accel } from '../types';
import { type HostForward, assertSocketPath, buildQemuArgs } from './cmdline';
import { hostTscRate } from './tsc';

export const QEMU_BINARY = 'qemu-system-x86_64';
export const VIRTIOFSD_BINARY = '/usr/lib/qemu/virtiofsd';
/**
 * TCG translation cache. QEMU's default (1 GiB) lets it grow with every translated page: a boot to
 * a serving agent used about 110 MiB of it; capped at 64 MiB the QEMU process was ~45 MiB smaller
 * with no measurable slow-down (docs/guest.md).
 */
export const DEFAULT_TCG_TB_SIZE_MIB = 64;
/** Where virtiofsd (QEMU 7.2's C version) keeps a pid file per socket; it never removes it. */
const VIRTIOFSD_PID_DIR = '/run/virtiofsd';

export interface VmOptions {
  /** Per-run dir (short: unix socket paths must fit 108 bytes), e.g. /run/capsule/vm/<12 hex>. */
  runDir: string;
  /** Host dir shared with the guest by virtiofs (guest: /run/capsule/shared). Must exist. */
  sharedDir: string;
  assets: GuestAssets;
  accel: Accel;
  memoryMiB: number;
  vcpus: number;
  /**
   * The VM's own hostname (capsule.hostname=); default `capsule`. A container's hostname is set in
   * its UTS namespace instead, so that any booted VM (the warm pool's) can serve any container.
   */
  hostname?: string;
  kernelArgs?: string[];
  hostForwards?: HostForward[];
  /** Time allowed for virtiofsd's and QEMU's sockets to appear (each); default 10 s. */
  startTimeoutMs?: number;
  /** TCG: the host's TSC rate; looked up (runtime/qemu/tsc.ts) when absent. */
  tscKhz?: number;
  /** TCG translation-cache size; default DEFAULT_TCG_TB_SIZE_MIB. */
  tcgTbSizeMiB?: number;
  /** Overrides for tests. */
  qemuBinary?: string;
  virtiofsdBinary?: string;
}

export interface Vm {
  /** QEMU's pid. */
  readonly pid: number;
  readonly virtiofsdPid: number;
  readonly runDir: string;
  /** Unix socket of the agent's virtio-serial port (QEMU is the server). */
  readonly agentSocketPath: string;
  readonly qmpSocketPath: string;
  readonly consoleLogPath: string;
  /** QEMU's exit; resolves after virtiofsd is reaped and the sockets are removed. */
  readonly exited: Promise<ExitStatus>;
  /** Kills QEMU, then virtiofsd; both reaped, sockets removed. Idempotent. */
  stop(): Promise<void>;
}

export function vmPaths(runDir: string): {
  agentSocketPath: string;
  qmpSocketPath: string;
  virtiofsSocketPath: string;
  consoleLogPath: string;
} {
  return {
    agentSocketPath: path.join(runDir, 'agent.sock'),
    qmpSocketPath: path.join(runDir, 'qmp.sock'),
    virtiofsSocketPath: path.join(runDir, 'virtiofsd.sock'),
    consoleLogPath: path.join(runDir, 'console.log'),
  };
}

/** The last `bytes` of the VM's console log ('' when there is none), for error messages. */
export async function consoleTail(vm: Pick<Vm, 'consoleLogPath'>, bytes = 4096): Promise<string> {
  return fileTail(vm.consoleLogPath, bytes);
}

async function fileTail(file: string, bytes: number): Promise<string> {
  let size: number;
  try {
    size = (await stat(file)).size;
  } catch {
    return '';
  }
  const start = Math.max(0, size - bytes);
  const chunks: Buffer[] = [];
  try {
    for await (const chunk of createReadStream(file, { start })) chunks.push(chunk as Buffer);
  } catch {
    return '';
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** Keeps the last `limit` bytes of a child's stderr (the supervisor pipes it; it must be drained). */
class StderrTail {
  private text = '';
  private readonly ended: Promise<void>;
  constructor(
    proc: SupervisedProcess,
    log: Logger,
    private readonly limit = 4096,
  ) {
    proc.child.stderr?.setEncoding('utf8');
    proc.child.stderr?.on('data', (chunk: string) => {
      this.text = (this.text + chunk).slice(-this.limit);
      for (const line of chunk.split('\n')) {
        if (line.trim() !== '') log.debug(line.trimEnd(), { process: proc.name });
      }
    });
    this.ended = new Promise((resolve) => {
      if (!proc.child.stderr) resolve();
      proc.child.stderr?.once('close', () => resolve());
      proc.child.stderr?.once('end', () => resolve());
    });
  }
  /** Waits (at most `ms`) for the rest of stderr after the process exited. */
  async settle(ms = 500): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.ended, new Promise<void>((r) => (timer = setTimeout(r, ms)))]);
    clearTimeout(timer);
  }
  toString(): string {
    return this.text.trim();
  }
}

async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch {
    return false;
  }
}

/** Polls for `file` until it exists; fails early when `proc` exits. */
async function waitForFile(file: string, proc: SupervisedProcess, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (let delay = 5; ; delay = Math.min(delay * 2, 50)) {
    if (await exists(file)) return;
    if (!proc.isRunning()) {
      const status = await proc.exited;
      throw new SystemError(`${proc.name} exited (${describeExit(status)}) before creating ${file}`);
    }
    if (Date.now() >= deadline)
      throw new SystemError(`${proc.name} did not create ${file} within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, delay));
  }
}

export function describeExit(status: ExitStatus): string {
  return status.signal ? `signal ${status.signal}` : `status ${String(status.code)}`;
}

function virtiofsdPidFile(socketPath: string): string {
  return path.join(VIRTIOFSD_PID_DIR, socketPath.replaceAll('/', '.') + '.pid');
}

/**
 * Starts virtiofsd and QEMU for one VM. Rejects with a SystemError carrying the reason, QEMU's
 * stderr and the console tail, after stopping whatever it started.
 */
export async function bootVm(supervisor: ProcessSupervisor, log: Logger, opts: VmOptions): Promise<Vm> {
  const paths = vmPaths(opts.runDir);
  for (const p of [paths.agentSocketPath, paths.qmpSocketPath, paths.virtiofsSocketPath]) assertSocketPath(p);
  const timeoutMs = opts.startTimeoutMs ?? 10_000;
  let tscKhz = opts.tscKhz;
  if (opts.accel === 'tcg' && tscKhz === undefined) {
    const rate = await hostTscRate();
    tscKhz = rate?.khz;
    if (!rate) log.warn('host TSC rate unknown: TCG boots may hang at TSC calibration now and then');
  }
  // Built first: a bad option fails before anything runs.
  const qemuArgs = buildQemuArgs({
    accel: opts.accel,
    memoryMiB: opts.memoryMiB,
    vcpus: opts.vcpus,
    kernelPath: opts.assets.kernelPath,
    initrdPath: opts.assets.initrdPath,
    agentDiskPath: opts.assets.agentDiskPath,
    consoleLogPath: paths.consoleLogPath,
    name: `capsule-${path.basename(opts.runDir)}`,
    hostname: opts.hostname,
    kernelArgs: opts.kernelArgs,
    tscKhz,
    tcgTbSizeMiB: opts.accel === 'tcg' ? (opts.tcgTbSizeMiB ?? DEFAULT_TCG_TB_SIZE_MIB) : undefined,
    agentSocketPath: paths.agentSocketPath,
    qmpSocketPath: paths.qmpSocketPath,
    virtiofsSocketPath: paths.virtiofsSocketPath,
    network: { hostForwards: opts.hostForwards ?? [] },
    entropy: true,
  });

  if (/[,\\]/.test(opts.sharedDir)) {
    // virtiofsd's -o list splits at commas.
    throw new InvalidParameterError(`shared dir path must not contain ',' or '\\': ${opts.sharedDir}`);
  }
  await mkdir(opts.runDir, { recursive: true, mode: 0o700 });
  if (!(await stat(opts.sharedDir).catch(() => undefined))?.isDirectory()) {
    throw new SystemError(`shared dir ${opts.sharedDir} is not a directory`);
  }
  const removeSockets = async (): Promise<void> => {
    await Promise.all(
      [
        paths.agentSocketPath,
        paths.qmpSocketPath,
        paths.virtiofsSocketPath,
        virtiofsdPidFile(paths.virtiofsSocketPath),
      ].map((p) => rm(p, { force: true })),
    );
  };
  await removeSockets(); // stale ones from a crashed run would make the servers fail

  const vmLog = log.child({ vm: path.basename(opts.runDir) });
  const virtiofsdBinary = opts.virtiofsdBinary ?? VIRTIOFSD_BINARY;
  const virtiofsd = supervisor.spawn('virtiofsd', virtiofsdBinary, [
    `--socket-path=${paths.virtiofsSocketPath}`,
    '-o',
    `source=${opts.sharedDir}`,
    '-o',
    // Not DESIGN.md's cache=auto: with auto, every open(2) in the guest drops the file's cached pages
    // (no FOPEN_KEEP_CACHE), so each exec(2) of a container binary re-reads it through FUSE; a
    // fork+exec of busybox took ~80 ms in the guest under TCG, ~21 ms with always (and a `docker
    // exec` median 181 → 155 ms, docs/performance.md). always is safe here because only the guest
    // writes a running container's rootfs: docker cp into a running container goes through the
    // agent, the host touches the overlay only while no VM runs it (daemon/archive.ts), and a VM
    // serves one run. Host-shared volumes, when they come, need their own cache policy.
    'cache=always',
    // The chroot sandbox (verified here, DESIGN.md; namespace mode needs namespaces a containerised
    // host may not grant); virtiofsd's seccomp filter stays on, its default.
    '-o',
    'sandbox=chroot',
  ]);
  const virtiofsdErr = new StderrTail(virtiofsd, vmLog);
  let qemu: SupervisedProcess | undefined;
  let qemuErr: StderrTail | undefined;

  let cleanup: Promise<void> | undefined;
  const stopAll = (): Promise<void> => {
    cleanup ??= (async () => {
      if (qemu) await qemu.terminate('SIGTERM', 2000);
      // virtiofsd exits by itself when QEMU disconnects; make sure (it buffers no writes).
      await virtiofsd.terminate('SIGTERM', 1000);
      await removeSockets();
    })();
    return cleanup;
  };

  try {
    await waitForFile(paths.virtiofsSocketPath, virtiofsd, timeoutMs);
    vmLog.debug('starting qemu', { argv: qemuArgs.join(' ') });
    qemu = supervisor.spawn('qemu', opts.qemuBinary ?? QEMU_BINARY, qemuArgs);
    qemuErr = new StderrTail(qemu, vmLog);
    // QEMU creates its server sockets before the guest runs.
    await waitForFile(paths.agentSocketPath, qemu, timeoutMs);
  } catch (err) {
    await stopAll();
    await Promise.all([qemuErr?.settle(), virtiofsdErr.settle()]);
    const details = [
      qemuErr?.toString() ? `qemu: ${qemuErr.toString()}` : '',
      virtiofsdErr.toString() ? `virtiofsd: ${virtiofsdErr.toString()}` : '',
    ].filter((d) => d !== '');
    const tail = (await fileTail(paths.consoleLogPath, 2048)).trim();
    if (tail) details.push(`console: ${tail}`);
    throw new SystemError(
      `VM boot failed: ${messageOf(err)}${details.length ? '\n' + details.join('\n') : ''}`,
      { cause: err },
    );
  }

  const qemuProc = qemu;
  const exited = qemuProc.exited.then(async (status) => {
    vmLog.debug('qemu exited', { ...status });
    await stopAll();
    return status;
  });
  vmLog.info('vm started', {
    pid: qemuProc.pid,
    accel: opts.accel,
    memoryMiB: opts.memoryMiB,
    vcpus: opts.vcpus,
  });
  return {
    pid: qemuProc.pid,
    virtiofsdPid: virtiofsd.pid,
    runDir: opts.runDir,
    agentSocketPath: paths.agentSocketPath,
    qmpSocketPath: paths.qmpSocketPath,
    consoleLogPath: paths.consoleLogPath,
    exited,
    stop: async () => {
      await stopAll();
      await exited;
    },
  };
}
