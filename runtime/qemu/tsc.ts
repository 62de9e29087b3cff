/**
 * The host's TSC rate, for TCG guests. Under TCG the guest's TSC is the host's (QEMU reads the
 * host's counter), but the guest kernel calibrates it against the emulated PIT, which fails now
 * and then on a busy host; with no HPET or ACPI PM timer on microvm the boot then hangs with its
 * clock stopped ("tsc: Unable to calibrate against PIT"). Measured here: 7 of 12 TCG boots hung
 * without tsc_early_khz=, none of 40 with it. So the runtime tells the guest the rate.
 *
 * Sources, best first: the host kernel's own calibration in the kernel log ("tsc: Refined TSC
 * clocksource calibration: …" or "tsc: Detected … MHz processor"), then /proc/cpuinfo's "cpu MHz"
 * (the calibrated rate when the CPU has no APERF/MPERF; otherwise a current clock, so only a
 * last resort).
 */
import { closeSync, openSync, readSync, constants as fsConstants } from 'node:fs';
import { readFile } from 'node:fs/promises';

export interface TscRate {
  khz: number;
  source: 'kmsg' | 'cpuinfo';
}

/** The TSC rate the kernel log reports, or undefined. Pure: takes the log text. */
export function tscKhzFromKernelLog(log: string): number | undefined {
  let detected: number | undefined;
  let refined: number | undefined;
  for (const line of log.split('\n')) {
    const r = /tsc: Refined TSC clocksource calibration: (\d+)\.(\d{3}) MHz/.exec(line);
    if (r) refined = Number(r[1]) * 1000 + Number(r[2]);
    const d = /tsc: Detected (\d+)\.(\d{3}) MHz processor/.exec(line);
    if (d) detected = Number(d[1]) * 1000 + Number(d[2]);
  }
  return refined ?? detected;
}

/** The TSC rate /proc/cpuinfo suggests, or undefined. Pure: takes the file's text. */
export function tscKhzFromCpuinfo(cpuinfo: string): number | undefined {
  const flags = /^flags\s*:(.*)$/m.exec(cpuinfo)?.[1]?.trim().split(/\s+/) ?? [];
  if (!flags.includes('tsc')) return undefined;
  const mhz = /^cpu MHz\s*:\s*([\d.]+)$/m.exec(cpuinfo)?.[1];
  if (mhz === undefined) return undefined;
  const khz = Math.round(Number(mhz) * 1000);
  return Number.isFinite(khz) && khz > 0 ? khz : undefined;
}

/** Reads every record of /dev/kmsg available now (root only), without blocking. */
function readKernelLog(): string {
  let fd: number;
  try {
    fd = openSync('/dev/kmsg', fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
  } catch {
    return '';
  }
  const chunks: string[] = [];
  const buf = Buffer.alloc(8192);
  try {
    for (let i = 0; i < 100_000; i++) {
      let n: number;
      try {
        n = readSync(fd, buf, 0, buf.length, null);
      } catch (err) {
        // EPIPE: a record was overwritten while we read; the next read goes on from the oldest.
        if ((err as NodeJS.ErrnoException).code === 'EPIPE') continue;
        break; // EAGAIN: no more records
      }
      if (n <= 0) break;
      chunks.push(buf.toString('utf8', 0, n));
    }
  } finally {
    closeSync(fd);
  }
  return chunks.join('');
}

let cached: Promise<TscRate | undefined> | undefined;

/** The host's TSC rate, or undefined when no source knows it. Computed once per process. */
export function hostTscRate(): Promise<TscRate | undefined> {
  cached ??= (async () => {
    const fromLog = tscKhzFromKernelLog(readKernelLog());
    if (fromLog !== undefined) return { khz: fromLog, source: 'kmsg' as const };
    const cpuinfo = await readFile('/proc/cpuinfo', 'utf8').catch(() => '');
    const fromCpuinfo = tscKhzFromCpuinfo(cpuinfo);
    return fromCpuinfo === undefined ? undefined : { khz: fromCpuinfo, source: 'cpuinfo' as const };
  })();
  return cached;
}
