/**
 * Durable state writes (after moby's ioutils.AtomicWriteFile and containerd's directory sync):
 * write a temp file in the same directory, fsync it, rename it over the target, fsync the
 * directory. A crash leaves either the old file or the new one, never a torn one. The target is
 * replaced by rename, so a symlink planted at the target path is replaced, never followed.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs, constants as fsConstants } from 'node:fs';
import * as path from 'node:path';

export async function writeFileAtomic(
  target: string,
  data: string | Uint8Array,
  mode = 0o600,
): Promise<void> {
  const dir = path.dirname(target);
  const tmp = path.join(dir, `.${path.basename(target)}.${randomBytes(6).toString('hex')}.tmp`);
  // O_EXCL|O_NOFOLLOW: never write through something that already exists at the temp name.
  const handle = await fs.open(
    tmp,
    fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW,
    mode,
  );
  try {
    await handle.writeFile(data);
    await handle.sync();
  } catch (err) {
    await handle.close();
    await fs.rm(tmp, { force: true });
    throw err;
  }
  await handle.close();
  try {
    await fs.rename(tmp, target);
  } catch (err) {
    await fs.rm(tmp, { force: true });
    throw err;
  }
  await syncDir(dir);
}

export async function writeJsonAtomic(target: string, value: unknown, mode = 0o600): Promise<void> {
  await writeFileAtomic(target, JSON.stringify(value, null, 2) + '\n', mode);
}

export async function syncDir(dir: string): Promise<void> {
  const handle = await fs.open(dir, fsConstants.O_RDONLY | fsConstants.O_DIRECTORY);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
