/**
 * Leak detection: what a container's run may leave on the host — qemu and virtiofsd processes,
 * mounts and sockets — looked up by the paths that belong to it.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';

/** Processes whose command line mentions `marker` (e.g. an exec root or a container id). */
export async function processesMentioning(marker: string): Promise<string[]> {
  const found: string[] = [];
  for (const entry of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await fs.readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (!cmdline) continue;
    const argv = cmdline.split('\0').filter(Boolean);
    const exe = path.basename(argv[0] ?? '');
    if (!/qemu|virtiofsd/.test(exe)) continue;
    if (cmdline.includes(marker)) found.push(`process ${entry}: ${argv.join(' ')}`);
  }
  return found;
}

/** Mount points below `prefix`. */
export async function mountsBelow(prefix: string): Promise<string[]> {
  const info = await fs.readFile('/proc/self/mountinfo', 'utf8');
  return info
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((mp): mp is string => !!mp && (mp === prefix || mp.startsWith(prefix + '/')))
    .map((mp) => `mount ${mp}`);
}

/** Unix sockets below `dir`. */
export async function socketsBelow(dir: string): Promise<string[]> {
  const found: string[] = [];
  async function walk(d: string): Promise<void> {
    const entries = await fs.readdir(d, { withFileTypes: true }).catch(() => []);
    for (const e of entries) {
      const p = path.join(d, e.name);
      if (e.isSocket()) found.push(`socket ${p}`);
      else if (e.isDirectory()) await walk(p);
    }
  }
  await walk(dir);
  return found;
}

/** Everything still present for `marker` (a container id, or a whole exec root). */
export async function findLeaks(marker: string, dirs: string[] = [marker]): Promise<string[]> {
  const leaks = await processesMentioning(marker);
  for (const d of dirs) {
    if (!path.isAbsolute(d)) continue;
    leaks.push(...(await mountsBelow(d)), ...(await socketsBelow(d)));
  }
  return leaks;
}

/**
 * The run dir of the VM whose QEMU has `pid` (from its console chardev path), or undefined when no
 * such process exists. Pooled VMs are booted before their container exists, so a container's VM is
 * found through State.Pid, not through its id.
 */
export async function vmRunDirOf(pid: number): Promise<string | undefined> {
  const cmdline = await fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
  const match = /file,id=console,path=([^\0]+?)\/[^/\0]+(?:\0|$)/.exec(cmdline);
  return match?.[1];
}

/** What is left of a VM after its container is gone: its QEMU, anything naming its run dir. */
export async function vmLeaks(pid: number, runDir: string): Promise<string[]> {
  const leaks: string[] = [];
  const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  if (stat && !/\) Z /.test(stat)) leaks.push(`process ${pid} (qemu) still running`);
  leaks.push(...(await findLeaks(runDir)));
  return leaks;
}
