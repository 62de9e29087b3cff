/**
 * Docker image references: parsing, normalisation and the familiar (display) form, with the
 * grammar and error texts of docker/distribution 2.8's `reference` package, which dockerd 20.10
 * vendors:
 *
 *   reference := name [ ":" tag ] [ "@" digest ]
 *   name      := [domain "/"] path-component ["/" path-component]*
 *   domain    := domain-component ["." domain-component]* [":" port]   (or "[" ipv6 "]" [":" port])
 *   path-component := [a-z0-9]+ (([._]|__|-+) [a-z0-9]+)*
 *   tag       := [\w][\w.-]{0,127}
 *   digest    := algorithm ":" hex{32,}
 *
 * The parser is hand-split (at "@", then at the tag colon) and matches each part with small
 * anchored regexps that cannot backtrack exponentially: Go's RE2 is linear, JavaScript's engine is
 * not, and references arrive straight from API requests.
 */
import { InvalidParameterError } from '../common/errdefs';

export const DEFAULT_DOMAIN = 'docker.io';
const LEGACY_DEFAULT_DOMAIN = 'index.docker.io';
const OFFICIAL_REPO_PREFIX = 'library/';
export const DEFAULT_TAG = 'latest';
const NAME_TOTAL_LENGTH_MAX = 255;
/** Far above any valid reference; bounds the work done on hostile input. */
const INPUT_LENGTH_MAX = 4096;

// Alphanumerics with inner dashes; written so that no two paths match the same text.
const DOMAIN_COMPONENT = '[a-zA-Z0-9]+(?:-+[a-zA-Z0-9]+)*';
const DOMAIN_RE = new RegExp(
  `^(?:${DOMAIN_COMPONENT}(?:\\.${DOMAIN_COMPONENT})*|\\[[a-fA-F0-9:]+\\])(?::[0-9]+)?$`,
);
const PATH_COMPONENT_RE = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG_RE = /^[\w][\w.-]{0,127}$/;
const DIGEST_RE = /^[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}$/;
const ANCHORED_IDENTIFIER_RE = /^[a-f0-9]{64}$/;
const SHA256_DIGEST_RE = /^sha256:[a-f0-9]{64}$/;

/** A normalised, named reference: always has a domain; tag and/or digest optional. */
export interface Reference {
  /** "docker.io", "127.0.0.1:5000", "[::1]:5000", "registry.example.com". */
  readonly domain: string;
  /** "library/busybox", "bb", "org/app". */
  readonly path: string;
  readonly tag?: string;
  /** "sha256:<64 hex>". */
  readonly digest?: string;
}

function invalid(message: string): InvalidParameterError {
  return new InvalidParameterError(message);
}

/** distribution's digest.Parse: only algorithms it knows, with the right length, lowercase hex. */
function validateDigest(digest: string): void {
  const colon = digest.indexOf(':');
  const algorithm = digest.slice(0, colon);
  const hex = digest.slice(colon + 1);
  const lengths: Record<string, number> = { sha256: 64, sha384: 96, sha512: 128 };
  const want = lengths[algorithm];
  if (want === undefined) throw invalid('unsupported digest algorithm');
  if (hex.length !== want) throw invalid('invalid checksum digest length');
  if (!/^[a-f0-9]+$/.test(hex)) throw invalid('invalid checksum digest format');
}

interface RawMatch {
  name: string;
  tag?: string;
  digest?: string;
}

/** The equivalent of matching distribution's anchored ReferenceRegexp; null when it does not match. */
function matchReference(s: string): RawMatch | null {
  let left = s;
  let digest: string | undefined;
  const at = s.indexOf('@');
  if (at >= 0) {
    digest = s.slice(at + 1);
    left = s.slice(0, at);
    if (!DIGEST_RE.test(digest)) return null;
  }
  let name = left;
  let tag: string | undefined;
  const colon = left.indexOf(':', left.lastIndexOf('/') + 1);
  if (colon >= 0) {
    tag = left.slice(colon + 1);
    name = left.slice(0, colon);
    if (!TAG_RE.test(tag)) return null;
  }
  const components = name.split('/');
  const pathsFrom = (start: number): boolean =>
    components.slice(start).every((component) => PATH_COMPONENT_RE.test(component));
  const [first] = components;
  const ok =
    pathsFrom(0) || (components.length > 1 && first !== undefined && DOMAIN_RE.test(first) && pathsFrom(1));
  if (!ok) return null;
  return { name, ...(tag !== undefined ? { tag } : {}), ...(digest !== undefined ? { digest } : {}) };
}

/** distribution's reference.Parse on an already domain-qualified string. */
function parseQualified(s: string): RawMatch {
  const match = matchReference(s);
  if (match === null) {
    if (s === '') throw invalid('repository name must have at least one component');
    if (matchReference(s.toLowerCase()) !== null) throw invalid('repository name must be lowercase');
    throw invalid('invalid reference format');
  }
  if (match.name.length > NAME_TOTAL_LENGTH_MAX) {
    throw invalid(`repository name must not be more than ${NAME_TOTAL_LENGTH_MAX} characters`);
  }
  if (match.digest !== undefined) validateDigest(match.digest);
  return match;
}

function splitDockerDomain(name: string): { domain: string; remainder: string } {
  const slash = name.indexOf('/');
  let domain: string;
  let remainder: string;
  const first = name.slice(0, slash);
  if (slash === -1 || (!/[.:]/.test(first) && first !== 'localhost')) {
    domain = DEFAULT_DOMAIN;
    remainder = name;
  } else {
    domain = first;
    remainder = name.slice(slash + 1);
  }
  if (domain === LEGACY_DEFAULT_DOMAIN) domain = DEFAULT_DOMAIN;
  if (domain === DEFAULT_DOMAIN && !remainder.includes('/')) remainder = OFFICIAL_REPO_PREFIX + remainder;
  return { domain, remainder };
}

/**
 * distribution's ParseNormalizedNamed: "busybox" → docker.io/library/busybox, no tag added.
 * Throws InvalidParameterError with distribution's message.
 */
export function parseNormalizedNamed(s: string): Reference {
  if (s.length > INPUT_LENGTH_MAX) throw invalid('invalid reference format');
  if (ANCHORED_IDENTIFIER_RE.test(s)) {
    throw invalid(`invalid repository name (${s}), cannot specify 64-byte hexadecimal strings`);
  }
  const { domain, remainder } = splitDockerDomain(s);
  const tagSep = remainder.indexOf(':');
  const remoteName = tagSep > -1 ? remainder.slice(0, tagSep) : remainder;
  if (remoteName.toLowerCase() !== remoteName) {
    throw invalid('invalid reference format: repository name must be lowercase');
  }
  const match = parseQualified(`${domain}/${remainder}`);
  const slash = match.name.indexOf('/');
  return {
    domain: match.name.slice(0, slash),
    path: match.name.slice(slash + 1),
    ...(match.tag !== undefined ? { tag: match.tag } : {}),
    ...(match.digest !== undefined ? { digest: match.digest } : {}),
  };
}

/** What a lookup string means: an image id (full or "sha256:…" digest) or a named reference. */
export type AnyReference = { kind: 'id'; id: string } | { kind: 'named'; ref: Reference };

/** distribution's ParseAnyReference: 64 hex or "sha256:<hex>" is an id, anything else a name. */
export function parseAnyReference(s: string): AnyReference {
  if (ANCHORED_IDENTIFIER_RE.test(s)) return { kind: 'id', id: `sha256:${s}` };
  if (SHA256_DIGEST_RE.test(s)) return { kind: 'id', id: s };
  return { kind: 'named', ref: parseNormalizedNamed(s) };
}

/** Adds the default tag to a reference that has neither tag nor digest. */
export function tagNameOnly(ref: Reference): Reference {
  if (ref.tag === undefined && ref.digest === undefined) return { ...ref, tag: DEFAULT_TAG };
  return ref;
}

/** What a pull fetches: by digest when there is one (a tag beside it is ignored), else by tag. */
export function pullTarget(ref: Reference): Reference {
  if (ref.digest !== undefined) return { domain: ref.domain, path: ref.path, digest: ref.digest };
  return tagNameOnly(ref);
}

/** "docker.io/library/busybox". */
export function fullName(ref: Reference): string {
  return `${ref.domain}/${ref.path}`;
}

/** "docker.io/library/busybox:latest@sha256:…" — the canonical, fully qualified string. */
export function referenceString(ref: Reference): string {
  return fullName(ref) + suffix(ref);
}

/** "busybox", "org/app", "127.0.0.1:5000/bb" — dockerd's FamiliarName. */
export function familiarName(ref: Reference): string {
  if (ref.domain !== DEFAULT_DOMAIN) return fullName(ref);
  if (ref.path.startsWith(OFFICIAL_REPO_PREFIX)) {
    const rest = ref.path.slice(OFFICIAL_REPO_PREFIX.length);
    if (!rest.includes('/')) return rest;
  }
  return ref.path;
}

/** "busybox:latest", "127.0.0.1:5000/bb@sha256:…" — dockerd's FamiliarString. */
export function familiarString(ref: Reference): string {
  return familiarName(ref) + suffix(ref);
}

function suffix(ref: Reference): string {
  return (ref.tag !== undefined ? `:${ref.tag}` : '') + (ref.digest !== undefined ? `@${ref.digest}` : '');
}

/**
 * The reference a `POST /images/create?fromImage=X&tag=Y` asks for: the CLI sends a digest in
 * `tag` ("sha256:…"), a tag otherwise; `tag` may also be empty.
 */
export function fromImageReference(fromImage: string, tag?: string): string {
  if (tag === undefined || tag === '') return fromImage;
  return SHA256_DIGEST_RE.test(tag) || tag.includes(':') ? `${fromImage}@${tag}` : `${fromImage}:${tag}`;
}

/** Whether `tag` is a valid tag (`[\w][\w.-]{0,127}`). */
export function isValidTag(tag: string): boolean {
  return TAG_RE.test(tag);
}

/** True for a well-formed "sha256:<64 lowercase hex>" — the only digests used as file names. */
export function isSha256Digest(s: string): boolean {
  return SHA256_DIGEST_RE.test(s);
}
