/**
 * The image service's contract with the daemon: pull, look up and list images, and hand out the
 * unpacked layer directories a container's rootfs is built from.
 */

/** The image config as stored (OCI image config / Docker image JSON), kept verbatim. */
export interface ImageConfigFile {
  architecture: string;
  os: string;
  variant?: string;
  created?: string;
  author?: string;
  config?: ImageRuntimeConfig;
  rootfs: { type: 'layers'; diff_ids: string[] };
  history?: Array<{
    created?: string;
    created_by?: string;
    comment?: string;
    empty_layer?: boolean;
    author?: string;
  }>;
  [extra: string]: unknown;
}

/** The runtime part of an image config (Docker's capitalised names, as stored in the JSON). */
export interface ImageRuntimeConfig {
  User?: string;
  Env?: string[];
  Entrypoint?: string[] | null;
  Cmd?: string[] | null;
  WorkingDir?: string;
  Labels?: Record<string, string> | null;
  ExposedPorts?: Record<string, object>;
  Volumes?: Record<string, object>;
  StopSignal?: string;
  Healthcheck?: {
    Test?: string[];
    Interval?: number;
    Timeout?: number;
    StartPeriod?: number;
    Retries?: number;
  };
  [extra: string]: unknown;
}

export interface ImageRecord {
  /** "sha256:<hex>" — the digest of the config blob, as dockerd reports image ids. */
  id: string;
  /** "registry/repo:tag" names, in dockerd's familiar form (e.g. "busybox:latest"). */
  repoTags: string[];
  /** "registry/repo@sha256:…" — manifest digests this image was pulled by. */
  repoDigests: string[];
  /** ISO-8601 time from the config's `created`. */
  created: string;
  /** Sum of the unpacked layer sizes in bytes. */
  size: number;
  config: ImageConfigFile;
}

export interface RegistryAuth {
  username?: string;
  password?: string;
  identitytoken?: string;
  registrytoken?: string;
  serveraddress?: string;
}

/** One line of Docker's JSON progress stream, as the docker CLI renders it. */
export interface PullProgress {
  status: string;
  id?: string;
  progressDetail?: { current?: number; total?: number };
  progress?: string;
}

export interface PullOptions {
  auth?: RegistryAuth;
  /** "os/arch[/variant]"; default linux/amd64. */
  platform?: string;
  signal?: AbortSignal;
}

export interface ImageService {
  /**
   * Pulls `reference` ("busybox", "127.0.0.1:5000/busybox:latest", "repo@sha256:…"), reporting
   * progress as dockerd does. Each blob is verified before it is committed; a failed pull leaves
   * no image visible. Errors: NotFoundError (unknown repository/tag), InvalidParameterError (bad
   * reference), UnauthorizedError, UnavailableError (registry unreachable).
   */
  pull(reference: string, options: PullOptions, onProgress: (p: PullProgress) => void): Promise<ImageRecord>;
  /** By name[:tag], name@digest, full or short id; NotFoundError "No such image: <ref>". */
  get(reference: string): Promise<ImageRecord>;
  list(): Promise<ImageRecord[]>;
  /** Unpacked layer directories of an image, lowest first, for the container's overlay. */
  layerDirs(image: ImageRecord): Promise<string[]>;
}
