import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import fc from 'fast-check';
import { InvalidParameterError } from '../common/errdefs';
import {
  familiarName,
  familiarString,
  fromImageReference,
  parseAnyReference,
  parseNormalizedNamed,
  pullTarget,
  referenceString,
  tagNameOnly,
} from './reference';

const D = 'sha256:' + 'ab'.repeat(32);

function rejectsWith(input: string, message: string): void {
  assert.throws(
    () => parseNormalizedNamed(input),
    (err: unknown) => err instanceof InvalidParameterError && err.message === message,
    `${JSON.stringify(input)} → ${message}`,
  );
}

describe('parseNormalizedNamed', () => {
  it('normalises Docker Hub names', () => {
    assert.deepEqual(parseNormalizedNamed('busybox'), { domain: 'docker.io', path: 'library/busybox' });
    assert.deepEqual(parseNormalizedNamed('busybox:1.36'), {
      domain: 'docker.io',
      path: 'library/busybox',
      tag: '1.36',
    });
    assert.deepEqual(parseNormalizedNamed('org/app'), { domain: 'docker.io', path: 'org/app' });
    assert.deepEqual(parseNormalizedNamed('docker.io/busybox'), {
      domain: 'docker.io',
      path: 'library/busybox',
    });
    assert.deepEqual(parseNormalizedNamed('index.docker.io/library/busybox'), {
      domain: 'docker.io',
      path: 'library/busybox',
    });
    assert.deepEqual(parseNormalizedNamed('docker.io/library/busybox:latest'), {
      domain: 'docker.io',
      path: 'library/busybox',
      tag: 'latest',
    });
  });

  it('recognises registries by a dot, a port or localhost', () => {
    assert.deepEqual(parseNormalizedNamed('127.0.0.1:5000/bb:v1'), {
      domain: '127.0.0.1:5000',
      path: 'bb',
      tag: 'v1',
    });
    assert.deepEqual(parseNormalizedNamed('localhost/bb'), { domain: 'localhost', path: 'bb' });
    assert.deepEqual(parseNormalizedNamed('localhost:5000/a/b/c'), {
      domain: 'localhost:5000',
      path: 'a/b/c',
    });
    assert.deepEqual(parseNormalizedNamed('registry.example.com/team/app@' + D), {
      domain: 'registry.example.com',
      path: 'team/app',
      digest: D,
    });
    assert.deepEqual(parseNormalizedNamed('[::1]:5000/bb'), { domain: '[::1]:5000', path: 'bb' });
    // "foo/bar": no dot, no port, not localhost → a Docker Hub org
    assert.deepEqual(parseNormalizedNamed('foo/bar'), { domain: 'docker.io', path: 'foo/bar' });
    // uppercase is allowed in the domain only
    assert.deepEqual(parseNormalizedNamed('Registry.Example.com/app'), {
      domain: 'Registry.Example.com',
      path: 'app',
    });
  });

  it('parses tags and digests together', () => {
    assert.deepEqual(parseNormalizedNamed(`busybox:1@${D}`), {
      domain: 'docker.io',
      path: 'library/busybox',
      tag: '1',
      digest: D,
    });
    // a name with no tag but a colon in the domain
    assert.deepEqual(parseNormalizedNamed('localhost:5000'), {
      domain: 'docker.io',
      path: 'library/localhost',
      tag: '5000',
    });
  });

  it('accepts separators in path components', () => {
    for (const ok of ['a.b', 'a_b', 'a__b', 'a-b', 'a---b', 'a.b-c_d__e']) {
      assert.equal(parseNormalizedNamed(ok).path, `library/${ok}`);
    }
  });

  it("rejects what dockerd rejects, with dockerd's messages", () => {
    rejectsWith('Busybox', 'invalid reference format: repository name must be lowercase');
    rejectsWith('127.0.0.1:5000/BB:v1', 'invalid reference format: repository name must be lowercase');
    rejectsWith('Foo/bar', 'invalid reference format: repository name must be lowercase');
    rejectsWith('', 'invalid reference format');
    rejectsWith(':tag', 'invalid reference format');
    rejectsWith('busybox:', 'invalid reference format');
    rejectsWith('busybox:-tag', 'invalid reference format');
    rejectsWith('busybox:' + 'x'.repeat(129), 'invalid reference format');
    rejectsWith('a..b', 'invalid reference format');
    rejectsWith('a_.b', 'invalid reference format');
    rejectsWith('-a', 'invalid reference format');
    rejectsWith('a/', 'invalid reference format');
    rejectsWith('a//b', 'invalid reference format');
    rejectsWith('a b', 'invalid reference format');
    rejectsWith('busybox@sha256:abc', 'invalid reference format');
    rejectsWith('busybox@md5:' + 'a'.repeat(32), 'unsupported digest algorithm');
    rejectsWith('busybox@sha256:' + 'a'.repeat(63) + 'A', 'invalid checksum digest format');
    rejectsWith('busybox@sha256:' + 'a'.repeat(66), 'invalid checksum digest length');
    rejectsWith(
      'a'.repeat(64),
      `invalid repository name (${'a'.repeat(64)}), cannot specify 64-byte hexadecimal strings`,
    );
    rejectsWith('x/' + 'a'.repeat(250), 'repository name must not be more than 255 characters');
    rejectsWith('x'.repeat(5000), 'invalid reference format');
  });
});

describe('familiar forms', () => {
  const cases: Array<[string, string, string]> = [
    ['busybox', 'busybox', 'busybox:latest'],
    ['docker.io/library/busybox:1', 'busybox', 'busybox:1'],
    ['org/app', 'org/app', 'org/app:latest'],
    ['docker.io/library/a/b', 'library/a/b', 'library/a/b:latest'],
    ['127.0.0.1:5000/busybox', '127.0.0.1:5000/busybox', '127.0.0.1:5000/busybox:latest'],
    [`127.0.0.1:5000/bb@${D}`, '127.0.0.1:5000/bb', `127.0.0.1:5000/bb@${D}`],
  ];
  for (const [input, name, str] of cases) {
    it(`${input} → ${str}`, () => {
      const ref = parseNormalizedNamed(input);
      assert.equal(familiarName(ref), name);
      assert.equal(familiarString(tagNameOnly(ref)), str);
    });
  }

  it('pullTarget drops a tag beside a digest and adds latest otherwise', () => {
    assert.deepEqual(pullTarget(parseNormalizedNamed(`bb:1@${D}`)), {
      domain: 'docker.io',
      path: 'library/bb',
      digest: D,
    });
    assert.equal(pullTarget(parseNormalizedNamed('bb')).tag, 'latest');
  });

  it('fromImageReference joins fromImage and tag as the CLI sends them', () => {
    assert.equal(fromImageReference('docker.io/library/alpine', '3.19'), 'docker.io/library/alpine:3.19');
    assert.equal(fromImageReference('docker.io/library/busybox', D), `docker.io/library/busybox@${D}`);
    assert.equal(fromImageReference('127.0.0.1:5000/bb', ''), '127.0.0.1:5000/bb');
  });
});

describe('parseAnyReference', () => {
  it('treats 64 hex and sha256 digests as ids', () => {
    assert.deepEqual(parseAnyReference('ab'.repeat(32)), { kind: 'id', id: D });
    assert.deepEqual(parseAnyReference(D), { kind: 'id', id: D });
    assert.equal(parseAnyReference('527d2931a77e').kind, 'named');
  });
});

// ---- properties (time-boxed) -------------------------------------------------------------------

const alnum = fc.stringMatching(/^[a-z0-9]{1,6}$/);
const separator = fc.constantFrom('.', '_', '__', '-', '--');
const pathComponent = fc
  .tuple(alnum, fc.array(fc.tuple(separator, alnum), { maxLength: 2 }))
  .map(([first, rest]) => first + rest.map(([s, a]) => s + a).join(''));
const domain = fc.oneof(
  fc.constantFrom(
    'localhost',
    'localhost:5000',
    '127.0.0.1:5000',
    'docker.io',
    'index.docker.io',
    '[::1]:5000',
  ),
  fc
    .tuple(fc.stringMatching(/^[a-z][a-z0-9-]{0,5}[a-z0-9]$/), fc.constantFrom('.com', '.io', '.example.org'))
    .map(([a, b]) => a + b),
);
const tag = fc.stringMatching(/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}$/);
const digest = fc.stringMatching(/^[a-f0-9]{64}$/).map((h) => `sha256:${h}`);
const validRef = fc
  .record({
    domain: fc.option(domain, { nil: undefined }),
    path: fc.array(pathComponent, { minLength: 1, maxLength: 3 }),
    tag: fc.option(tag, { nil: undefined }),
    digest: fc.option(digest, { nil: undefined }),
  })
  .map(
    (r) =>
      (r.domain !== undefined ? `${r.domain}/` : '') +
      r.path.join('/') +
      (r.tag !== undefined ? `:${r.tag}` : '') +
      (r.digest !== undefined ? `@${r.digest}` : ''),
  )
  .filter((s) => !/^[a-f0-9]{64}$/.test(s));

const budget = { interruptAfterTimeLimit: 4000, numRuns: 3000 };

describe('reference properties', () => {
  it('valid references parse, and normalising is idempotent', () => {
    fc.assert(
      fc.property(validRef, (s) => {
        const ref = parseNormalizedNamed(s);
        assert.deepEqual(parseNormalizedNamed(referenceString(ref)), ref);
      }),
      budget,
    );
  });

  it('the familiar string parses back to the same reference', () => {
    fc.assert(
      fc.property(validRef, (s) => {
        const ref = parseNormalizedNamed(s);
        // As in Docker, a Hub repository whose first component looks like a registry
        // ("docker.io/a.b/c") has an ambiguous familiar form ("a.b/c" names registry a.b).
        const first = ref.path.split('/')[0] ?? '';
        fc.pre(ref.domain !== 'docker.io' || !(/[.:]/.test(first) || first === 'localhost'));
        assert.deepEqual(parseNormalizedNamed(familiarString(ref)), ref);
      }),
      budget,
    );
  });

  it('any string either parses or fails with InvalidParameterError, quickly', () => {
    const anyString = fc.oneof(
      fc.string({ maxLength: 80 }),
      fc.stringMatching(/^[a-zA-Z0-9:/@._\-[\]]{0,80}$/),
      validRef.map((s) => s.toUpperCase()),
    );
    fc.assert(
      fc.property(anyString, (s) => {
        try {
          const ref = parseNormalizedNamed(s);
          assert.equal(ref.path, ref.path.toLowerCase());
        } catch (err) {
          assert.ok(err instanceof InvalidParameterError, `unexpected ${String(err)}`);
        }
      }),
      budget,
    );
  });

  it('hostile inputs do not backtrack catastrophically', () => {
    const start = Date.now();
    for (const s of [
      'a'.repeat(4000) + '!',
      'a-'.repeat(2000) + '!',
      'a' + '_'.repeat(3000) + 'a!',
      'a.'.repeat(2000) + '/!',
      'a/'.repeat(2000) + '!',
    ]) {
      assert.throws(() => parseNormalizedNamed(s), InvalidParameterError);
    }
    assert.ok(Date.now() - start < 1000, `took ${Date.now() - start} ms`);
  });
});
