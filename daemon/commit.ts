/**
 * `docker commit` (POST /commit): the container's writable layer becomes a new image on top of its
 * image (images/commit.ts builds and registers it). The layer is read on the host from the
 * overlay upper dir with lstat only; a running container's VM is paused meanwhile (dockerd pauses
 * the container by default, `pause=0` opts out) so the layer does not change under the reader.
 * The whole commit runs under the container lock (ContainerService.withFilesystem): no start,
 * stop bookkeeping or removal overlaps it.
 */
import { messageOf } from '../common/errdefs';
import type { Logger } from '../common/logger';
import { commitReference, type CommitRequest, type ImageCommitter } from '../images/commit';
import { familiarString } from '../images/reference';
import type { ImageRuntimeConfig } from '../images/types';
import type { FilesystemProvider } from './archive';
import { mergeImageConfig } from './merge';
import type { ContainerConfig } from './types';

export interface CommitOptions {
  container: string;
  repository?: string;
  tag?: string;
  comment?: string;
  author?: string;
  changes?: string[];
  /**
   * The new image's config as the client sent it (the body of POST /commit); what it leaves empty
   * comes from the container's, by the merge rules of a create (dockerd's merge()).
   */
  config?: ContainerConfig;
  /** dockerd's default is true. */
  pause: boolean;
}

/** HealthConfig in Docker's JSON shape (Test, Interval, …; zero fields left out, as Go's omitempty). */
function upperHealthcheck(
  hc: NonNullable<ContainerConfig['healthcheck']>,
): ImageRuntimeConfig['Healthcheck'] {
  const out: NonNullable<ImageRuntimeConfig['Healthcheck']> = {};
  if (hc.test && hc.test.length > 0) out.Test = [...hc.test];
  if (hc.interval) out.Interval = hc.interval;
  if (hc.timeout) out.Timeout = hc.timeout;
  if (hc.startPeriod) out.StartPeriod = hc.startPeriod;
  if (hc.retries) out.Retries = hc.retries;
  return out;
}

/** container.Config in Docker's JSON shape (what an image config's "config" holds). */
export function dockerConfigOf(c: ContainerConfig): ImageRuntimeConfig {
  return {
    Hostname: c.hostname,
    Domainname: c.domainname,
    User: c.user,
    AttachStdin: c.attachStdin,
    AttachStdout: c.attachStdout,
    AttachStderr: c.attachStderr,
    ...(c.exposedPorts ? { ExposedPorts: c.exposedPorts } : {}),
    Tty: c.tty,
    OpenStdin: c.openStdin,
    StdinOnce: c.stdinOnce,
    Env: c.env ?? [],
    Cmd: c.cmd,
    ...(c.healthcheck ? { Healthcheck: upperHealthcheck(c.healthcheck) } : {}),
    ArgsEscaped: c.argsEscaped,
    Image: c.image,
    Volumes: c.volumes ?? undefined,
    WorkingDir: c.workingDir,
    Entrypoint: c.entrypoint,
    NetworkDisabled: c.networkDisabled,
    MacAddress: c.macAddress,
    OnBuild: c.onBuild,
    Labels: c.labels ?? {},
    ...(c.stopSignal ? { StopSignal: c.stopSignal } : {}),
    ...(c.stopTimeout !== null ? { StopTimeout: c.stopTimeout } : {}),
    ...(c.shell ? { Shell: c.shell } : {}),
  };
}

/** The events a commit publishes (dockerd: pause, image tag, container commit, unpause). */
export interface CommitEvents {
  publishContainerEvent(containerId: string, action: string, extra: Record<string, string>): void;
  publishImageEvent(action: string, imageId: string, attributes: Record<string, string>): void;
}

export class ContainerCommitter {
  constructor(
    private readonly containers: FilesystemProvider,
    private readonly images: ImageCommitter,
    private readonly events: CommitEvents,
    private readonly dockerVersion: string,
    private readonly log: Logger,
  ) {}

  /** Returns the new image id. */
  async commit(options: CommitOptions): Promise<string> {
    return this.containers.withFilesystem(options.container, async (cfs) => {
      const { record } = cfs;
      const request: CommitRequest = {
        parentId: record.imageId,
        upperDir: cfs.upperDir,
        containerId: record.id,
        containerConfig: dockerConfigOf(
          options.config ? mergeImageConfig(options.config, dockerConfigOf(record.config)) : record.config,
        ),
        createdBy: [record.path, ...record.args].join(' '),
        dockerVersion: this.dockerVersion,
        ...(options.repository !== undefined ? { repository: options.repository } : {}),
        ...(options.tag !== undefined ? { tag: options.tag } : {}),
        ...(options.comment !== undefined ? { comment: options.comment } : {}),
        ...(options.author !== undefined ? { author: options.author } : {}),
        ...(options.changes !== undefined ? { changes: options.changes } : {}),
      };
      const sandbox = cfs.sandbox;
      const pause = options.pause && sandbox !== undefined && !record.state.paused;
      if (pause) {
        await sandbox.pause();
        this.events.publishContainerEvent(record.id, 'pause', {});
      }
      try {
        const image = await this.images.commit(request);
        // dockerd's order and attributes: the new name's `tag` event (with the image's labels),
        // then the container's `commit` naming the image.
        const ref = commitReference(options.repository, options.tag);
        const imageRef = ref ? familiarString(ref) : '';
        if (imageRef)
          this.events.publishImageEvent('tag', image.id, {
            ...(image.config.config?.Labels ?? {}),
            name: imageRef,
          });
        this.events.publishContainerEvent(record.id, 'commit', {
          comment: options.comment ?? '',
          imageID: image.id,
          imageRef,
        });
        return image.id;
      } finally {
        if (pause) {
          await sandbox.resume().then(
            () => this.events.publishContainerEvent(record.id, 'unpause', {}),
            (err: unknown) =>
              this.log.error('cannot resume a container after commit', {
                id: record.id,
                error: messageOf(err),
              }),
          );
        }
      }
    });
  }
}
