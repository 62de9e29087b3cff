/**
 * Paths inside a container's rootfs, resolved the way the container would see them.
 *
 * Threat: the rootfs is image content, so any of its components may be a symlink planted to point
 * out of it (`/etc/passwd -> /agent/...`, `/work -> ../../run/capsule`). Reading the user database or
 * creating the working directory must never follow such a link outside the rootfs: every symlink is
 * resolved as if the rootfs were `/` (absolute targets restart at the rootfs, `..` stops at it), the
 * way securejoin and chroot lookups do. Nothing runs in the container while the agent does this
 * (CreateContainer comes before StartContainer), so no process races the lookup.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { resolveContainerPath } from '../../common/rootfs-archive';

/**
 * The host path of `p` inside `root`, every existing symlink resolved within `root`. Components
 * that do not exist are appended lexically. Throws on symlink loops. The walk is
 * common/rootfs-archive.ts's (docker cp uses it too): one implementation of the confinement.
 */
export async function resolveInRoot(root: string, p: string): Promise<string> {
  return path.join(root, await resolveContainerPath(root, p));
}

/** Reads `p` inside `root`; undefined when it does not exist. */
export async function readFileInRoot(root: string, p: string): Promise<string | undefined> {
  try {
    return await fs.readFile(await resolveInRoot(root, p), 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw err;
  }
}

/**
 * Creates directory `p` (and its parents) inside `root`, mode 0755, owned by the agent (root), as
 * dockerd creates a missing WorkingDir. Fails with dockerd's message when `p` or a parent exists
 * and is not a directory.
 */
export async function mkdirAllInRoot(root: string, p: string): Promise<void> {
  const notADirectory = () => new Error(`Cannot mkdir: ${p} is not a directory`);
  let target: string;
  try {
    target = await resolveInRoot(root, p);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOTDIR') throw notADirectory();
    throw err;
  }
  try {
    const stat = await fs.stat(target);
    if (stat.isDirectory()) return;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOTDIR') throw notADirectory();
    if (code !== 'ENOENT') throw err;
  }
  if (await exists(target)) throw notADirectory();
  // Every existing prefix of `target` is a real directory (resolveInRoot followed each symlink),
  // so the recursive mkdir only creates the missing tail.
  try {
    await fs.mkdir(target, { recursive: true, mode: 0o755 });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOTDIR' || code === 'EEXIST') throw notADirectory();
    throw err;
  }
}

async function exists(p: string): Promise<boolean> {
  try {
    await fs.lstat(p);
    return true;
  } catch {
    return false;
  }
}

/**
 * Waits until `rootfs` is a directory with at least one entry, polling until `timeoutMs` passed;
 * true once it is. The host mounts a container's rootfs into the virtiofs shared dir right before
 * CreateContainer (a warm VM booted long before), and the guest sees the mount within a moment:
 * until then the name may be missing, or an empty directory (the mount point without the mount).
 */
export async function waitForRootfs(rootfs: string, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (let delay = 5; ; delay = Math.min(delay * 2, 100)) {
    const entries = await fs.readdir(rootfs).catch(() => undefined);
    if (entries !== undefined && entries.length > 0) return true;
    if (Date.now() >= deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, Math.min(delay, Math.max(1, deadline - Date.now()))));
  }
}
