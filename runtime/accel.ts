/**
 * Choosing the accelerator (setting `accel`: auto|kvm|tcg). An openable /dev/kvm is not proof that
 * KVM boots our guest: on a paravirtual ("PVM") KVM host the stock kernel hangs right after
 * `Probing EDD` and `-cpu host` aborts (DESIGN.md). So `auto` probe-boots the guest kernel under
 * KVM with `capsule.probe=1` — /init prints `CAPSULE-PROBE-OK <release>` once its modules are
 * loaded and powers off — within a deadline, and falls back to TCG otherwise. The verdict is cached
 * in the state dir, keyed by QEMU version, guest kernel release and host kernel release, so later
 * daemon starts do not probe again.
 */
import { execFile } from 'node:child_process';
import { constants as fsConstants } from 'node:fs';
import { mkdir, mkdtemp, open, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { writeJsonAtomic } from '../common/atomic-write';
import { UnavailableError, messageOf } from '../common/errdefs';
import type { Logger } from '../common/logger';
import type { ProcessSupervisor } from '../common/processes';
import type { GuestAssets } from './guest-assets';
import { buildQemuArgs } from './qemu/cmdline';
import { hostTscRate } from './qemu/tsc';
import { QEMU_BINARY, describeExit } from './qemu/vm';
import type { Accel } from './types';

export type AccelSetting = 'auto' | Accel;

export const PROBE_MARKER = 'CAPSULE-PROBE-OK';
export const ACCEL_CACHE_FILE = 'accel-probe.json';
const DEFAULT_PROBE_TIMEOUT_MS = 10_000;

export interface ProbeResult {
  ok: boolean;
  /** Why not, or the marker line. */
  detail: string;
  elapsedMs: number;
  /** The whole console output of the probe boot. */
  console: string;
}

export interface AccelDeps {
  supervisor: ProcessSupervisor;
  log: Logger;
  assets: GuestAssets;
  /** Holds the probe cache (accel-probe.json). */
  stateDir: string;
  qemuBinary?: string;
  kvmDevice?: string;
  probeTimeoutMs?: number;
  /** Test seams. */
  kvmUsable?: () => Promise<boolean>;
  qemuVersion?: () => Promise<string>;
  probe?: (accel: Accel) => Promise<ProbeResult>;
}

interface CacheEntry {
  key: string;
  accel: Accel;
  detail: string;
  probedAt: string;
}

/** True when the KVM device can be opened read-write (what QEMU needs). */
export async function kvmUsable(device = '/dev/kvm'): Promise<boolean> {
  try {
    const fh = await open(device, fsConstants.O_RDWR);
    await fh.close();
    return true;
  } catch {
    return false;
  }
}

/** `qemu-system-x86_64 --version`'s first line. */
export async function qemuVersion(binary = QEMU_BINARY): Promise<string> {
  const { stdout } = await promisify(execFile)(binary, ['--version'], { timeout: 10_000 });
  return stdout.split('\n')[0]?.trim() ?? '';
}

/**
 * Boots the guest kernel and initramfs alone with `capsule.probe=1` and watches the console for
 * the marker. Leaves nothing behind: QEMU is reaped, the scratch dir removed.
 */
export async function probeBoot(
  supervisor: ProcessSupervisor,
  assets: Pick<GuestAssets, 'kernelPath' | 'initrdPath'>,
  accel: Accel,
  options: { timeoutMs?: number; qemuBinary?: string; tscKhz?: number } = {},
): Promise<ProbeResult> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_PROBE_TIMEOUT_MS;
  const dir = await mkdtemp(path.join(os.tmpdir(), 'capsule-probe-'));
  const consoleLogPath = path.join(dir, 'console.log');
  const started = Date.now();
  let consoleText = '';
  const readConsole = async (): Promise<string> => {
    consoleText = await readFile(consoleLogPath, 'utf8').catch(() => consoleText);
    return consoleText;
  };
  try {
    const tscKhz = accel === 'tcg' ? (options.tscKhz ?? (await hostTscRate())?.khz) : undefined;
    const argv = buildQemuArgs({
      accel,
      memoryMiB: 256,
      vcpus: 1,
      kernelPath: assets.kernelPath,
      initrdPath: assets.initrdPath,
      consoleLogPath,
      name: 'capsule-probe',
      kernelArgs: ['capsule.probe=1'],
      tscKhz,
    });
    const qemu = supervisor.spawn('qemu-probe', options.qemuBinary ?? QEMU_BINARY, argv);
    let stderr = '';
    qemu.child.stderr?.setEncoding('utf8');
    qemu.child.stderr?.on('data', (chunk: string) => (stderr = (stderr + chunk).slice(-2048)));
    try {
      const deadline = started + timeoutMs;
      for (;;) {
        const text = await readConsole();
        const line = text.split('\n').find((l) => l.startsWith(PROBE_MARKER));
        if (line !== undefined) {
          // It powers itself off right away; give it a moment before killing it.
          await Promise.race([qemu.exited, new Promise((r) => setTimeout(r, 2000))]);
          return { ok: true, detail: line.trim(), elapsedMs: Date.now() - started, console: text };
        }
        if (!qemu.isRunning()) {
          const status = await qemu.exited;
          await readConsole();
          const why = stderr.trim().split('\n').pop() ?? '';
          return {
            ok: false,
            detail: `qemu exited (${describeExit(status)}) before the marker${why ? ': ' + why : ''}`,
            elapsedMs: Date.now() - started,
            console: consoleText,
          };
        }
        if (Date.now() >= deadline) {
          return {
            ok: false,
            detail: `no marker within ${timeoutMs} ms`,
            elapsedMs: Date.now() - started,
            console: await readConsole(),
          };
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    } finally {
      await qemu.terminate('SIGKILL', 1000);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Picks the accelerator for `setting`; for `auto`, probes KVM once per (QEMU, kernel, host). */
export async function chooseAccel(setting: AccelSetting, deps: AccelDeps): Promise<Accel> {
  const log = deps.log.child({ component: 'accel' });
  const usable = await (deps.kvmUsable ?? (() => kvmUsable(deps.kvmDevice)))();
  if (setting === 'tcg') {
    log.info('accelerator: tcg (configured)');
    return 'tcg';
  }
  if (setting === 'kvm') {
    if (!usable)
      throw new UnavailableError(`accel is kvm but ${deps.kvmDevice ?? '/dev/kvm'} cannot be opened`);
    log.info('accelerator: kvm (configured)');
    return 'kvm';
  }
  if (!usable) {
    log.info('accelerator: tcg (no usable /dev/kvm)');
    return 'tcg';
  }

  const version = await (deps.qemuVersion ?? (() => qemuVersion(deps.qemuBinary)))();
  const key = `${version}|${deps.assets.kernelRelease}|${os.release()}`;
  const cacheFile = path.join(deps.stateDir, ACCEL_CACHE_FILE);
  try {
    const cached = JSON.parse(await readFile(cacheFile, 'utf8')) as Partial<CacheEntry>;
    if (cached.key === key && (cached.accel === 'kvm' || cached.accel === 'tcg')) {
      log.info(`accelerator: ${cached.accel} (cached probe: ${cached.detail ?? ''})`);
      return cached.accel;
    }
  } catch {
    // no cache or an unreadable one: probe
  }

  const probe =
    deps.probe ??
    ((accel: Accel) =>
      probeBoot(deps.supervisor, deps.assets, accel, {
        timeoutMs: deps.probeTimeoutMs,
        qemuBinary: deps.qemuBinary,
      }));
  let result: ProbeResult;
  let cacheable = true;
  try {
    result = await probe('kvm');
  } catch (err) {
    // Could not even try (e.g. no scratch dir): decide for this start only.
    result = { ok: false, detail: `probe failed: ${messageOf(err)}`, elapsedMs: 0, console: '' };
    cacheable = false;
  }
  const accel: Accel = result.ok ? 'kvm' : 'tcg';
  if (result.ok) {
    log.info(`accelerator: kvm (probe boot: ${result.detail} in ${result.elapsedMs} ms)`);
  } else {
    log.warn(`accelerator: tcg (KVM probe boot failed: ${result.detail}); guests run emulated, slowly`);
  }
  if (!cacheable) return accel;
  try {
    await mkdir(deps.stateDir, { recursive: true });
    const entry: CacheEntry = { key, accel, detail: result.detail, probedAt: new Date().toISOString() };
    await writeJsonAtomic(cacheFile, entry, 0o644);
  } catch (err) {
    log.warn('cannot cache the accelerator probe', { error: messageOf(err) });
  }
  return accel;
}
