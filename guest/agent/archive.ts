/**
 * StatPath, ArchiveOut and ArchiveIn (agent.proto): `docker cp` and `docker export` of a running
 * container, done here in the guest on the rootfs as the container sees it, never on the host.
 *
 * Threat: the container runs while we work, and everything in its rootfs is under its control.
 * The host must never follow a container-made symlink (the rootfs the host shares is a live
 * overlay), so paths are resolved here, inside the VM, confined to the container's rootfs by the
 * shared rules of common/rootfs-archive.ts (chroot-like resolution, lstat walks, O_NOFOLLOW
 * opens, strict extraction). A process in the container can still race a resolution it sees; the
 * worst it reaches is the guest's own files, behind the VM boundary, and never the host's.
 */
import type { Readable } from 'node:stream';
// The shared archive rules are plain node + tar-stream with no host-side imports (the one module of
// common/ the layer rule lets the guest import); the bundle inlines them, so host and guest apply
// exactly the same checks.
import {
  archiveOut,
  exportRootfs,
  extractInto,
  RootfsArchiveError,
  statPath,
  userIdsInRoot,
  type PathStat,
} from '../../common/rootfs-archive';
import { AgentError, type AgentErrorKind } from './errors';

/** The container's rootfs in the guest (ContainerManager.describe). */
export type RootfsOf = (containerId: string) => string;

const KINDS: Record<RootfsArchiveError['kind'], AgentErrorKind> = {
  NotFound: 'NotFound',
  InvalidArgument: 'InvalidArgument',
  Conflict: 'FailedPrecondition',
  System: 'Unknown',
};

/** RootfsArchiveError → AgentError (the server maps those to gRPC statuses). */
export function toAgentError(err: unknown): unknown {
  if (err instanceof RootfsArchiveError) return new AgentError(KINDS[err.kind], err.message);
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (typeof code === 'string' && err instanceof Error) return new AgentError('Unknown', err.message);
  return err;
}

export interface WirePathStat {
  name: string;
  size: number;
  mode: number;
  mtime_ns: string;
  link_target: string;
}

export function toWireStat(stat: PathStat): WirePathStat {
  return {
    name: stat.name,
    size: stat.size,
    mode: stat.mode,
    mtime_ns: stat.mtimeNs.toString(),
    link_target: stat.linkTarget,
  };
}

export class ArchiveService {
  constructor(private readonly rootfsOf: RootfsOf) {}

  async stat(containerId: string, p: string, containerName: string): Promise<WirePathStat> {
    try {
      return toWireStat(await statPath(this.rootfsOf(containerId), p, containerName));
    } catch (err) {
      throw toAgentError(err);
    }
  }

  /** The tar of `p` (cp's naming), or of the whole rootfs when `wholeRootfs`. */
  async out(containerId: string, p: string, containerName: string, wholeRootfs: boolean): Promise<Readable> {
    try {
      const root = this.rootfsOf(containerId);
      if (wholeRootfs) return exportRootfs(root);
      return (await archiveOut(root, p, containerName)).stream;
    } catch (err) {
      throw toAgentError(err);
    }
  }

  async in(
    containerId: string,
    p: string,
    containerName: string,
    options: { noOverwriteDirNonDir: boolean; copyUidGid: boolean; user: string },
    input: AsyncIterable<Uint8Array>,
  ): Promise<void> {
    try {
      const root = this.rootfsOf(containerId);
      const chownTo = options.copyUidGid ? await userIdsInRoot(root, options.user) : undefined;
      await extractInto(root, p, containerName, input, {
        noOverwriteDirNonDir: options.noOverwriteDirNonDir,
        ...(chownTo ? { chownTo } : {}),
      });
    } catch (err) {
      throw toAgentError(err);
    }
  }
}
