/**
 * Go-compatible JSON for the documents whose exact bytes matter because dockerd hashes or stores
 * them: the legacy v1 image JSON of a docker-archive tarball (its sha256 names the layer
 * directories, so `docker save` output is reproducible) and the config of an imported image.
 *
 * Go's encoding/json writes struct fields in declaration order, map keys sorted, omits
 * `omitempty` fields that are zero, writes nil slices and maps as `null`, and escapes `<`, `>`,
 * `&`, U+2028 and U+2029. The struct layouts below are those of dockerd 20.10's `image.V1Image`,
 * `container.Config` (api/types/container), `container.HealthConfig` and `image.History`.
 */
import { createHash } from 'node:crypto';

/** A JSON string as Go's encoder writes it. */
export function goString(s: string): string {
  return JSON.stringify(s).replace(
    /[<>&\u2028\u2029]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
}

/** Go's json.Marshal of a JSON-like value with maps (objects) written with sorted keys. */
export function goMarshal(value: unknown): string {
  if (value === null || value === undefined) return 'null';
  if (typeof value === 'string') return goString(value);
  if (typeof value === 'number') return Number.isFinite(value) ? JSON.stringify(value) : 'null';
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  if (Array.isArray(value)) return `[${value.map((v) => goMarshal(v)).join(',')}]`;
  const obj = value as Record<string, unknown>;
  const keys = Object.keys(obj)
    .filter((k) => obj[k] !== undefined)
    .sort(compareGoStrings);
  return `{${keys.map((k) => `${goString(k)}:${goMarshal(obj[k])}`).join(',')}}`;
}

/** Go sorts map keys by their bytes (UTF-8), not by UTF-16 code units. */
export function compareGoStrings(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

/** Ordered fields of a Go struct: [json key, already-encoded value]. */
export type GoFields = Array<[string, string]>;

export function goObject(fields: GoFields): string {
  return `{${fields.map(([k, v]) => `${goString(k)}:${v}`).join(',')}}`;
}

function str(v: unknown): string {
  return typeof v === 'string' ? v : '';
}

function bool(v: unknown): boolean {
  return v === true;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** []string: null stays null; non-strings are dropped (Go would refuse the document). */
function stringList(v: unknown): string {
  if (!Array.isArray(v)) return 'null';
  return goMarshal(v.filter((x): x is string => typeof x === 'string'));
}

/** strslice.StrSlice: a string or a list of strings; null when absent. */
function strSlice(v: unknown): string {
  if (typeof v === 'string') return goMarshal([v]);
  return stringList(v);
}

/** map[string]struct{}: keys sorted, each value `{}`. */
function setMap(v: unknown): string {
  if (!isRecord(v)) return 'null';
  const keys = Object.keys(v).sort(compareGoStrings);
  return `{${keys.map((k) => `${goString(k)}:{}`).join(',')}}`;
}

function stringMap(v: unknown): string {
  if (!isRecord(v)) return 'null';
  const out: Record<string, string> = {};
  for (const [k, val] of Object.entries(v)) if (typeof val === 'string') out[k] = val;
  return goMarshal(out);
}

function nonEmptyRecord(v: unknown): boolean {
  return isRecord(v) && Object.keys(v).length > 0;
}

function int(v: unknown): number {
  return typeof v === 'number' && Number.isSafeInteger(v) ? v : 0;
}

function healthConfig(v: Record<string, unknown>): string {
  const fields: GoFields = [];
  if (Array.isArray(v.Test) && v.Test.length > 0) fields.push(['Test', stringList(v.Test)]);
  for (const key of ['Interval', 'Timeout', 'StartPeriod', 'Retries']) {
    if (int(v[key]) !== 0) fields.push([key, String(int(v[key]))]);
  }
  return goObject(fields);
}

/** dockerd 20.10's container.Config as encoding/json writes it. */
export function goContainerConfig(raw: unknown): string {
  const c = isRecord(raw) ? raw : {};
  const fields: GoFields = [
    ['Hostname', goString(str(c.Hostname))],
    ['Domainname', goString(str(c.Domainname))],
    ['User', goString(str(c.User))],
    ['AttachStdin', String(bool(c.AttachStdin))],
    ['AttachStdout', String(bool(c.AttachStdout))],
    ['AttachStderr', String(bool(c.AttachStderr))],
  ];
  if (nonEmptyRecord(c.ExposedPorts)) fields.push(['ExposedPorts', setMap(c.ExposedPorts)]);
  fields.push(
    ['Tty', String(bool(c.Tty))],
    ['OpenStdin', String(bool(c.OpenStdin))],
    ['StdinOnce', String(bool(c.StdinOnce))],
    ['Env', stringList(c.Env)],
    ['Cmd', strSlice(c.Cmd)],
  );
  if (isRecord(c.Healthcheck)) fields.push(['Healthcheck', healthConfig(c.Healthcheck)]);
  if (bool(c.ArgsEscaped)) fields.push(['ArgsEscaped', 'true']);
  fields.push(
    ['Image', goString(str(c.Image))],
    ['Volumes', setMap(c.Volumes)],
    ['WorkingDir', goString(str(c.WorkingDir))],
    ['Entrypoint', strSlice(c.Entrypoint)],
  );
  if (bool(c.NetworkDisabled)) fields.push(['NetworkDisabled', 'true']);
  if (str(c.MacAddress) !== '') fields.push(['MacAddress', goString(str(c.MacAddress))]);
  fields.push(['OnBuild', stringList(c.OnBuild)], ['Labels', stringMap(c.Labels)]);
  if (str(c.StopSignal) !== '') fields.push(['StopSignal', goString(str(c.StopSignal))]);
  if (typeof c.StopTimeout === 'number') fields.push(['StopTimeout', String(int(c.StopTimeout))]);
  if (Array.isArray(c.Shell) && c.Shell.length > 0) fields.push(['Shell', strSlice(c.Shell)]);
  return goObject(fields);
}

const GO_ZERO_TIME = '0001-01-01T00:00:00Z';

/**
 * A timestamp as Go's time.Time marshals it (RFC 3339 with nanoseconds, trailing zeros dropped,
 * "Z" for a zero offset). Unparseable input becomes Go's zero time.
 */
export function goTime(value: unknown): string {
  if (typeof value !== 'string') return GO_ZERO_TIME;
  const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$/i.exec(value);
  if (!m) return GO_ZERO_TIME;
  const fraction = (m[2] ?? '').replace(/0+$/, '');
  const offset = m[3] === 'z' || m[3] === 'Z' || m[3] === '+00:00' || m[3] === '-00:00' ? 'Z' : (m[3] ?? 'Z');
  return `${m[1] ?? ''}${fraction === '' ? '' : `.${fraction}`}${offset}`;
}

/** The legacy v1 image fields (image.V1Image) a docker-archive layer directory describes. */
export interface V1Image {
  id?: string;
  parent?: string;
  comment?: string;
  /** Already in Go's time format (see goTime). */
  created: string;
  container?: string;
  /** Raw container_config object (zero Config when absent). */
  containerConfig?: unknown;
  dockerVersion?: string;
  author?: string;
  /** Raw config object; omitted when undefined. */
  config?: unknown;
  architecture?: string;
  variant?: string;
  os?: string;
  size?: number;
}

/** image.V1Image in struct order, for the layer directory's `json` file and CreateID. */
export function v1ImageFields(v: V1Image): GoFields {
  const fields: GoFields = [];
  const opt = (key: string, value: string | undefined): void => {
    if (value !== undefined && value !== '') fields.push([key, goString(value)]);
  };
  opt('id', v.id);
  opt('parent', v.parent);
  opt('comment', v.comment);
  fields.push(['created', goString(v.created)]);
  opt('container', v.container);
  fields.push(['container_config', goContainerConfig(v.containerConfig)]);
  opt('docker_version', v.dockerVersion);
  opt('author', v.author);
  if (v.config !== undefined && v.config !== null) fields.push(['config', goContainerConfig(v.config)]);
  opt('architecture', v.architecture);
  opt('variant', v.variant);
  opt('os', v.os);
  if (v.size !== undefined && v.size !== 0) fields.push(['Size', String(v.size)]);
  return fields;
}

/** The V1Image part of an image config document (what dockerd's image.Image embeds). */
export function v1ImageOfConfig(config: Record<string, unknown>): V1Image {
  return {
    comment: str(config.comment),
    created: goTime(config.created),
    container: str(config.container),
    containerConfig: config.container_config,
    dockerVersion: str(config.docker_version),
    author: str(config.author),
    ...(config.config !== undefined && config.config !== null ? { config: config.config } : {}),
    architecture: str(config.architecture),
    variant: str(config.variant),
    os: str(config.os),
    size: int(config.Size),
  };
}

function sha256Hex(data: string): string {
  return createHash('sha256').update(data, 'utf8').digest('hex');
}

/**
 * dockerd's v1.CreateID: the V1Image without its id, re-marshalled through a map (so keys come
 * out sorted) with `layer_id` (the chain ID) and `parent` (the parent's v1 digest) added.
 * Returns "sha256:<hex>".
 */
export function createV1Id(v: V1Image, chainId: string, parent?: string): string {
  const fields = v1ImageFields({ ...v, id: '' });
  fields.push(['layer_id', goString(chainId)]);
  if (parent !== undefined && parent !== '') fields.push(['parent', goString(parent)]);
  fields.sort((a, b) => compareGoStrings(a[0], b[0]));
  return `sha256:${sha256Hex(goObject(fields))}`;
}

/** Chain IDs of a layer stack (OCI image spec): chain[0] = diff[0], chain[n] = sha256(chain[n-1] + " " + diff[n]). */
export function chainIds(diffIds: readonly string[]): string[] {
  const out: string[] = [];
  for (const diffId of diffIds) {
    const parent = out.at(-1);
    out.push(parent === undefined ? diffId : `sha256:${sha256Hex(`${parent} ${diffId}`)}`);
  }
  return out;
}
