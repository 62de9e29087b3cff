/**
 * The image service's contract with the daemon: pull, look up and list images, hand out the
 * unpacked layer directories a container's rootfs is built from, and the rest of what `docker
 * image …` does (tag, rmi, prune, history, push, save, load, import, system df).
 *
 * Field names are the domain's (camelCase); each method's comment says which dockerd wire shape
 * it maps to, so an API route translates field by field and writes the status dockerd writes.
 * Errors are the common taxonomy (NotFound → 404, InvalidParameter → 400, Conflict → 409, …)
 * with dockerd's message texts.
 */
import type { Readable } from 'node:stream';

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
  /** Parent image id (images made by commit or the classic builder); absent otherwise. */
  parent?: string;
  /** When a tag was last set on the image (inspect's Metadata.LastTagTime); absent when never. */
  lastTagTime?: string;
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
  /**
   * The API's `fromImage` without a `tag`: a reference with neither tag nor digest pulls every
   * tag of the repository (dockerd's, and `docker pull --all-tags`); otherwise ignored.
   */
  allTags?: boolean;
  signal?: AbortSignal;
}

/** A push progress line: a PullProgress-shaped status, or the final `aux` record. */
export type PushProgress =
  | PullProgress
  | { progressDetail: Record<string, never>; aux: { Tag: string; Digest: string; Size: number } };

export interface PushOptions {
  auth?: RegistryAuth;
  /** Overrides the reference's tag (the API's `?tag=`); without any tag every tag of the repository is pushed. */
  tag?: string;
  signal?: AbortSignal;
}

/** A load output line: "Loading layer" progress, or `{stream: "Loaded image: busybox:latest\n"}`. */
export type LoadProgress = PullProgress | { stream: string };

export interface LoadOptions {
  /** dockerd's `quiet` (its default is true): no "Loading layer" progress lines. */
  quiet?: boolean;
  signal?: AbortSignal;
}

export interface LoadResult {
  /** Ids of the loaded images, in archive order. */
  ids: string[];
  /** Familiar names of the tags set ("busybox:latest"). */
  tags: string[];
}

export interface ImportOptions {
  /** The API's `repo` ("imported", "imported:1", "127.0.0.1:5000/x:tag"); none: an untagged image. */
  repository?: string;
  /** The API's `tag` (replaces a tag given in `repository`). */
  tag?: string;
  /** Dockerfile-like lines: CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, ONBUILD, USER, VOLUME, WORKDIR. */
  changes?: string[];
  /** The commit message (config comment); default "Imported from <source>". */
  message?: string;
  /** Where the tarball came from, for the default message; default "-" (the request body). */
  source?: string;
  /**
   * The API's `fromSrc` when it is not "-": the tarball is downloaded from this URL (http:// is
   * added when it has no scheme) instead of read from the body, with dockerd's "Downloading from
   * <url>" and "Importing" progress lines sent to `onProgress`.
   */
  url?: string;
  /** Progress lines of a URL import. */
  onProgress?: (p: PullProgress) => void;
  signal?: AbortSignal;
}

/**
 * Who uses an image, for rmi and prune: a container's id (dockerd prints its first 12
 * characters) and whether it runs. Return a running container when there is one, else a stopped
 * one, else undefined. A bare string is taken as a stopped container's id.
 */
export type ImageUser = { id: string; running: boolean } | string;
export type ImageInUse = (imageId: string) => ImageUser | undefined;

/** One line of an rmi / prune answer: dockerd's `{"Untagged": …}` or `{"Deleted": …}`. */
export type ImageDeleteItem = { untagged: string } | { deleted: string };

export interface RemoveOptions {
  /** `?force=1`: remove references in use by stopped containers, untag images in several repositories. */
  force?: boolean;
  /** `?noprune=1`: keep untagged parents. */
  noprune?: boolean;
}

/** dockerd's filters.Args: filter name → values (the API's map form converted to lists). */
export type FilterArgs = Record<string, string[]>;

export interface PruneOptions {
  /** dangling (true|false|1|0, default true), until, label, label!. */
  filters?: FilterArgs;
}

/** dockerd's ImagesPruneReport: `{"ImagesDeleted": [...]|null, "SpaceReclaimed": N}`. */
export interface PruneReport {
  imagesDeleted: ImageDeleteItem[];
  spaceReclaimed: number;
}

/** One `GET /images/{name}/history` entry: Id, Created (unix s), CreatedBy, Tags, Size, Comment. */
export interface HistoryEntry {
  /** The image id on the top entry (and on entries that are parent images), else "<missing>". */
  id: string;
  created: number;
  createdBy: string;
  /** Familiar "name:tag" strings of that image; null when it has none (dockerd writes null). */
  tags: string[] | null;
  size: number;
  comment: string;
}

export interface ImageListOptions {
  /** `?all=1`: also intermediate images (untagged parents of other images). */
  all?: boolean;
  /** dangling, label, reference, before, since. */
  filters?: FilterArgs;
}

/**
 * One `GET /images/json` entry (dockerd's ImageSummary). RepoTags/RepoDigests are null where
 * dockerd writes null and `["<none>:<none>"]` / `["<none>@<none>"]` for dangling images;
 * `containers` and `sharedSize` are -1 outside `system df`.
 */
export interface ImageSummary {
  id: string;
  parentId: string;
  repoTags: string[] | null;
  repoDigests: string[] | null;
  /** Unix seconds. */
  created: number;
  size: number;
  sharedSize: number;
  virtualSize: number;
  labels: Record<string, string> | null;
  containers: number;
}

/** The images part of `GET /system/df`: LayersSize and Images. */
export interface ImagesDiskUsage {
  layersSize: number;
  images: ImageSummary[];
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
  /**
   * Unpacked layer directories of an image, lowest first, for the container's overlay. In the
   * real service this also works for an image removed with force while a container still uses
   * it (only `image.id` is read).
   */
  layerDirs(image: ImageRecord): Promise<string[]>;
}

/** Names and removal: `docker tag`, `docker rmi`, `docker image prune`. */
export interface ImageNaming {
  /**
   * `POST /images/{name}/tag?repo=&tag=` → 201. Points `repository` (with `tag`, which replaces
   * a tag in `repository`; default "latest") at the image `source` names. Returns the new
   * reference's familiar string. Errors: NotFoundError "No such image: <source>";
   * InvalidParameterError for a bad repository or tag ("invalid reference format…", "invalid tag
   * format", "refusing to create a tag with a digest reference", "refusing to create an
   * ambiguous tag using digest algorithm as name"). (dockerd 20.10 answers 500 for the first two;
   * later versions 400.)
   */
  tag(source: string, repository: string, tag?: string): Promise<string>;

  /**
   * `DELETE /images/{name}?force=&noprune=` → 200 with the items as `[{"Untagged"}|{"Deleted"}]`,
   * dockerd's algorithm: a name untags (and drops that repository's digest references when its
   * last tag goes); the image itself is deleted when no reference remains, then its layers no
   * other image uses ("Deleted: <chain id>", top first), and untagged parents unless noprune.
   * Errors: NotFoundError "No such image: <ref>"; ConflictError (409) with dockerd's texts:
   * `conflict: unable to remove repository reference "busybox" (must force) - container
   * 1dac55f20c28 is using its referenced image 527d2931a77e`, `conflict: unable to delete
   * 527d2931a77e (must be forced) - image is referenced in multiple repositories`, `… (must be
   * forced) - image is being used by stopped container <id>`, `… (cannot be forced) - image is
   * being used by running container <id>`, `… (cannot be forced) - image has dependent child
   * images`. A forced delete of an image a stopped container uses reports "Deleted: <id>" but
   * keeps its layers until that container is gone (checked with `isInUse` on later removals).
   */
  remove(reference: string, options: RemoveOptions, isInUse: ImageInUse): Promise<ImageDeleteItem[]>;

  /**
   * `POST /images/prune?filters=` → 200 `{"ImagesDeleted","SpaceReclaimed"}`: deletes dangling
   * images (filters.dangling absent or true) or every image no container uses (dangling=false),
   * limited by until / label / label!. Images in use are skipped (as dockerd, an image with several
   * tags may lose all but its last). Errors: InvalidParameterError "Invalid filter 'x'",
   * "Invalid filter 'dangling=[maybe]'", `failed to parse value as time or duration: "x"`;
   * ConflictError "a prune operation is already running".
   */
  prune(options: PruneOptions, isInUse: ImageInUse): Promise<PruneReport>;
}

/** Read-only views: `docker images`, `docker history`, `docker system df`. */
export interface ImageViews {
  /**
   * `GET /images/json?all=&filters=&digests=` → 200, newest first (RepoDigests is always
   * included; `digests` only changes what the CLI prints). Errors: InvalidParameterError "Invalid
   * filter 'x'", "Invalid filter 'dangling=[maybe]'", "syntax error in pattern"; NotFoundError for
   * an unknown before/since image.
   */
  listImages(options?: ImageListOptions): Promise<ImageSummary[]>;

  /** `GET /images/{name}/history` → 200, newest first. NotFoundError "No such image: …". */
  history(reference: string): Promise<HistoryEntry[]>;

  /**
   * The images part of `GET /system/df`: LayersSize (all unpacked layers) and every image with
   * `containers` (from `containersUsing`) and `sharedSize` (layers other images share).
   */
  diskUsage(containersUsing: (imageId: string) => number): Promise<ImagesDiskUsage>;
}

/** Moving images in and out: `docker push`, `docker save`, `docker load`, `docker import`. */
export interface ImageTransfer {
  /**
   * `POST /images/{name}/push?tag=` (X-Registry-Auth) → 200 progress stream: "The push refers to
   * repository [127.0.0.1:5000/bb]", per layer (top first) "Preparing", "Waiting", "Pushing" (with
   * progressDetail), "Pushed" / "Layer already exists" / "Mounted from <repo>", then per tag
   * "<tag>: digest: sha256:… size: N" and `{"progressDetail":{},"aux":{"Tag","Digest","Size"}}`.
   * Records the pushed manifest digest as a repo digest of the image. Throws
   * InvalidParameterError before any progress for a bad reference; after the first line:
   * NotFoundError "tag does not exist: <ref>" / "An image does not exist locally with the tag:
   * <name>", UnavailableError (registry unreachable, Go's dial text), UnauthorizedError,
   * ForbiddenError ("denied: requested access to the resource is denied").
   */
  push(reference: string, options: PushOptions, onProgress: (p: PushProgress) => void): Promise<void>;

  /**
   * `GET /images/get?names=…` (and `GET /images/{name}/get`) → 200 application/x-tar: a
   * docker-archive as dockerd 20.10 writes it. Every name is resolved before the stream is
   * returned, so lookup errors come first: NotFoundError "reference does not exist" (name:tag
   * unknown), "No such image: <name>". A failure while streaming destroys the stream.
   */
  save(references: string[]): Promise<Readable>;

  /**
   * `POST /images/load?quiet=` (body: a docker-archive or OCI-layout tarball, plain or gzip) →
   * 200 stream of "Loading layer" progress (unless quiet) and `{"stream":"Loaded image:
   * busybox:latest\n"}` / "Loaded image ID: sha256:…\n" / "The image x already exists, renaming
   * the old one with ID … to empty string\n" lines. dockerd reports every load error in the
   * stream (after a 200). Errors: DataLossError (corrupt archive, digest mismatch),
   * InvalidParameterError (bad tag, not an archive), NotImplementedError (compression).
   */
  load(
    archive: AsyncIterable<Uint8Array>,
    options: LoadOptions,
    onProgress: (p: LoadProgress) => void,
  ): Promise<LoadResult>;

  /**
   * `POST /images/create?fromSrc=-&repo=&tag=&changes=&message=` (body: a rootfs tarball, plain
   * or gzip) → 200 stream `{"status":"sha256:<id>"}` with the returned record's id: a new
   * single-layer image. Errors before reading the body: InvalidParameterError ("invalid reference
   * format: repository name must be lowercase", "cannot import digest reference", "run is not a
   * valid change command", "ENV must have two arguments", …).
   */
  import(tarball: AsyncIterable<Uint8Array>, options: ImportOptions): Promise<ImageRecord>;
}

/** Everything the image service does: what the API's image routes need. */
export interface ImageManagementService extends ImageService, ImageNaming, ImageViews, ImageTransfer {}
