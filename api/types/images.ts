/** Docker's image wire shapes (list item and inspect), translated from the image service's records. */
import type { ImageRecord } from '../../daemon/types';
import { ZERO_TIME, parseRFC3339Nano, unixSeconds } from '../../daemon/time';

export interface ImageSummary {
  Containers: number;
  Created: number;
  Id: string;
  Labels: Record<string, string> | null;
  ParentId: string;
  RepoDigests: string[];
  RepoTags: string[];
  SharedSize: number;
  Size: number;
  VirtualSize: number;
}

export interface ImageInspect {
  Id: string;
  RepoTags: string[];
  RepoDigests: string[];
  Parent: string;
  Comment: string;
  Created: string;
  Container: string;
  /** Kept for docker-compose 1.29, which reads ContainerConfig.Volumes (moby dropped it in 1.45). */
  ContainerConfig: Record<string, unknown>;
  DockerVersion: string;
  Author: string;
  Config: Record<string, unknown>;
  Architecture: string;
  Variant?: string;
  Os: string;
  Size: number;
  VirtualSize: number;
  GraphDriver: { Data: Record<string, string> | null; Name: string };
  RootFS: { Type: string; Layers: string[] };
  Metadata: { LastTagTime: string };
}

function emptyConfig(): Record<string, unknown> {
  return {
    Hostname: '',
    Domainname: '',
    User: '',
    AttachStdin: false,
    AttachStdout: false,
    AttachStderr: false,
    Tty: false,
    OpenStdin: false,
    StdinOnce: false,
    Env: null,
    Cmd: null,
    Image: '',
    Volumes: null,
    WorkingDir: '',
    Entrypoint: null,
    OnBuild: null,
    Labels: null,
  };
}

/** Created as a unix time, tolerating missing or odd `created` strings. */
function createdSeconds(image: ImageRecord): number {
  return parseRFC3339Nano(image.created) === undefined ? 0 : unixSeconds(image.created);
}

export function toImageSummary(image: ImageRecord): ImageSummary {
  return {
    Containers: -1,
    Created: createdSeconds(image),
    Id: image.id,
    Labels: image.config.config?.Labels ?? null,
    ParentId: '',
    RepoDigests: image.repoDigests,
    RepoTags: image.repoTags,
    SharedSize: -1,
    Size: image.size,
    VirtualSize: image.size,
  };
}

export function toImageInspect(image: ImageRecord, storageDriver: string): ImageInspect {
  const rc = image.config.config ?? {};
  const config = emptyConfig();
  for (const [key, value] of Object.entries(rc)) {
    if (value !== undefined) config[key] = value;
  }
  const history = image.config.history ?? [];
  const inspect: ImageInspect = {
    Id: image.id,
    RepoTags: image.repoTags,
    RepoDigests: image.repoDigests,
    Parent: '',
    Comment: history[history.length - 1]?.comment ?? '',
    Created: image.created || ZERO_TIME,
    Container: '',
    ContainerConfig: emptyConfig(),
    DockerVersion: typeof image.config.docker_version === 'string' ? image.config.docker_version : '',
    Author: image.config.author ?? '',
    Config: config,
    Architecture: image.config.architecture,
    Os: image.config.os,
    Size: image.size,
    VirtualSize: image.size,
    GraphDriver: { Data: null, Name: storageDriver },
    RootFS: { Type: 'layers', Layers: image.config.rootfs.diff_ids },
    Metadata: { LastTagTime: ZERO_TIME },
  };
  if (image.config.variant) inspect.Variant = image.config.variant;
  return inspect;
}
