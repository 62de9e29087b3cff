/**
 * A container's root filesystem on the host: overlayfs with the image's unpacked layers as lower
 * dirs and the container's persistent writable layer (`upper/`, `work/` in its layer dir) on top,
 * mounted inside the sandbox's shared dir, which virtiofsd exports to the guest.
 *
 * Mounting goes through mount(8) (Node has no mount syscall). The overlay options travel in one
 * page (mount(2) copies at most PAGE_SIZE bytes of data), and overlay parses `:` and `,` in them.
 * When the absolute paths would not fit or contain those characters, the layers are reached
 * through short symlinks `l/<n>` in the container's layer dir and mount runs there, so the option
 * string holds only relative names (the overlay2 driver's approach): 127 layers fit easily.
 */
import { execFile } from 'node:child_process';
import { mkdir, readFile, readlink, realpath, rm, symlink } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { ConflictError, InvalidParameterError, SystemError } from '../common/errdefs';

const run = promisify(execFile);
const MOUNT_TIMEOUT_MS = 30_000;
/** mount(2) data is at most one page, NUL included; x86-64 pages are 4 KiB. */
export const MOUNT_DATA_LIMIT = 4095;

export interface OverlayPlan {
  /** The -o value for `mount -t overlay`. */
  options: string;
  /** Dir mount runs in when the options use relative paths. */
  cwd?: string;
  /** Symlinks to create first (absolute link path → target). */
  links: Array<{ link: string; target: string }>;
  /** Dirs to create first. */
  dirs: string[];
}

const SPECIAL = /[,:\\]/;

/**
 * The mount plan, without touching the filesystem. `layerDirs` lowest first; with no layers an
 * empty dir in the container's layer dir is the single lower dir (overlay needs one).
 */
export function overlayMountPlan(
  layerDirs: readonly string[],
  containerLayerDir: string,
  limit = MOUNT_DATA_LIMIT,
): OverlayPlan {
  for (const dir of [...layerDirs, containerLayerDir]) {
    if (!path.isAbsolute(dir)) throw new InvalidParameterError(`layer dir is not absolute: ${dir}`);
  }
  const upper = path.join(containerLayerDir, 'upper');
  const work = path.join(containerLayerDir, 'work');
  const dirs = [upper, work];
  let lowers = [...layerDirs].reverse(); // overlay lists the top layer first
  if (lowers.length === 0) {
    const empty = path.join(containerLayerDir, 'empty');
    dirs.push(empty);
    lowers = [empty];
  }
  const absolute = `lowerdir=${lowers.join(':')},upperdir=${upper},workdir=${work}`;
  if (absolute.length <= limit && ![...lowers, upper, work].some((p) => SPECIAL.test(p))) {
    return { options: absolute, links: [], dirs };
  }
  // Short relative names: l/0 is the lowest layer.
  const linkDir = path.join(containerLayerDir, 'l');
  const links = [...lowers].reverse().map((target, i) => ({ link: path.join(linkDir, String(i)), target }));
  const relative = `lowerdir=${links
    .map((l) => `l/${path.basename(l.link)}`)
    .reverse()
    .join(':')},upperdir=upper,workdir=work`;
  if (relative.length > limit) {
    throw new InvalidParameterError(`too many layers for one overlay mount (${layerDirs.length})`);
  }
  return { options: relative, cwd: containerLayerDir, links, dirs: [...dirs, linkDir] };
}

/** Mount points listed in a mountinfo text, unescaped (\040 → space …). Pure. */
export function mountPointsOf(mountinfo: string): string[] {
  const points: string[] = [];
  for (const line of mountinfo.split('\n')) {
    const field = line.split(' ')[4];
    if (field !== undefined) {
      points.push(field.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8))));
    }
  }
  return points;
}

async function canonical(target: string): Promise<string> {
  return realpath(target).catch(() => path.resolve(target));
}

/** True when something is mounted exactly at `target` (per /proc/self/mountinfo). */
export async function isMounted(target: string): Promise<boolean> {
  const want = await canonical(target);
  return mountPointsOf(await readFile('/proc/self/mountinfo', 'utf8')).includes(want);
}

async function ensureLink(link: string, target: string): Promise<void> {
  const current = await readlink(link).catch(() => undefined);
  if (current === target) return;
  if (current !== undefined) await rm(link, { force: true });
  await symlink(target, link);
}

/**
 * Mounts the overlay at `target` (created if missing). Layers lowest first; upper/ and work/ are
 * created in `containerLayerDir` when missing, so the writable layer survives stop/start.
 */
export async function mountRootfs(
  layerDirs: string[],
  containerLayerDir: string,
  target: string,
): Promise<void> {
  const plan = overlayMountPlan(layerDirs, containerLayerDir);
  for (const dir of plan.dirs) await mkdir(dir, { recursive: true, mode: 0o755 });
  for (const { link, target: to } of plan.links) await ensureLink(link, to);
  await mkdir(target, { recursive: true });
  if (await isMounted(target)) throw new ConflictError(`rootfs target ${target} is already a mount point`);
  try {
    await run('mount', ['-t', 'overlay', '-o', plan.options, 'overlay', target], {
      cwd: plan.cwd,
      timeout: MOUNT_TIMEOUT_MS,
    });
  } catch (err) {
    const stderr = String((err as { stderr?: unknown }).stderr ?? '').trim();
    throw new SystemError(`mounting the rootfs overlay at ${target} failed: ${stderr || String(err)}`, {
      cause: err,
    });
  }
}

/** Unmounts `target` (lazily when busy). Idempotent: nothing mounted is not an error. */
export async function unmountRootfs(target: string): Promise<void> {
  // Loop: a target mounted twice over needs two unmounts.
  for (let i = 0; i < 8 && (await isMounted(target)); i++) {
    try {
      await run('umount', [target], { timeout: MOUNT_TIMEOUT_MS });
    } catch (err) {
      try {
        // Busy (e.g. a virtiofsd still holds a file open): detach now, free when released.
        await run('umount', ['-l', target], { timeout: MOUNT_TIMEOUT_MS });
      } catch (lazyErr) {
        if (!(await isMounted(target))) return;
        const stderr = String((lazyErr as { stderr?: unknown }).stderr ?? '').trim();
        throw new SystemError(`unmounting the rootfs at ${target} failed: ${stderr || String(err)}`, {
          cause: lazyErr,
        });
      }
    }
  }
  if (await isMounted(target)) throw new SystemError(`rootfs at ${target} is still mounted`);
}
