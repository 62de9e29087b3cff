/** Docker's image wire shapes (list item and inspect), translated from the image service's records. */
import type {
  HistoryEntry,
  ImageDeleteItem,
  ImageSummary as ImageSummaryView,
  PruneReport,
} from '../../daemon/daemon-images';
import type { ImageRecord } from '../../daemon/types';
import { ZERO_TIME } from '../../daemon/time';

/** A `GET /images/json` item (and `system df` image), keys in dockerd's order. */
export interface ImageSummary {
  Containers: number;
  Created: number;
  Id: string;
  Labels: Record<string, string> | null;
  ParentId: string;
  RepoDigests: string[] | null;
  RepoTags: string[] | null;
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

export function toImageSummary(s: ImageSummaryView): ImageSummary {
  return {
    Containers: s.containers,
    Created: s.created,
    Id: s.id,
    Labels: s.labels,
    ParentId: s.parentId,
    RepoDigests: s.repoDigests,
    RepoTags: s.repoTags,
    SharedSize: s.sharedSize,
    Size: s.size,
    VirtualSize: s.virtualSize,
  };
}

/** A `GET /images/{name}/history` item, keys in dockerd's order. */
export interface HistoryItem {
  Comment: string;
  Created: number;
  CreatedBy: string;
  Id: string;
  Size: number;
  Tags: string[] | null;
}

export function toHistoryItem(h: HistoryEntry): HistoryItem {
  return {
    Comment: h.comment,
    Created: h.created,
    CreatedBy: h.createdBy,
    Id: h.id,
    Size: h.size,
    Tags: h.tags,
  };
}

/** An rmi / prune line: `{"Untagged": …}` or `{"Deleted": …}`. */
export type DeleteResponseItem = { Untagged: string } | { Deleted: string };

export function toDeleteItem(item: ImageDeleteItem): DeleteResponseItem {
  return 'untagged' in item ? { Untagged: item.untagged } : { Deleted: item.deleted };
}

/** dockerd's ImagesPruneReport: null (not []) when nothing was deleted. */
export function toPruneReport(r: PruneReport): {
  ImagesDeleted: DeleteResponseItem[] | null;
  SpaceReclaimed: number;
} {
  return {
    ImagesDeleted: r.imagesDeleted.length > 0 ? r.imagesDeleted.map(toDeleteItem) : null,
    SpaceReclaimed: r.spaceReclaimed,
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
    Parent: image.parent ?? '',
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
    Metadata: { LastTagTime: image.lastTagTime ?? ZERO_TIME },
  };
  if (image.config.variant) inspect.Variant = image.config.variant;
  return inspect;
}
