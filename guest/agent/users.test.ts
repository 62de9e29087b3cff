import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseGroup, parsePasswd, resolveUser, UserLookupError } from './users';

// The same passwd/group as the image used to measure dockerd 20.10 on this machine; every expected
// value below is what dockerd put in config.json for that `--user`.
const passwd = parsePasswd(
  [
    'root:x:0:0:root:/root:/bin/sh',
    'user:x:1000:1000:u:/home/user:/bin/sh',
    'other:x:1001:1001::/home/other:/bin/sh',
    '',
    '# a comment',
  ].join('\n'),
);
const group = parseGroup(
  ['root:x:0:', 'wheel:x:10:root,user', 'user:x:1000:', 'staff:x:50:user,other', 'other:x:1001:'].join('\n'),
);

describe('resolveUser (dockerd semantics)', () => {
  const cases: [string, { uid: number; gid: number; additionalGids: number[]; home: string }][] = [
    ['', { uid: 0, gid: 0, additionalGids: [0, 10], home: '/root' }],
    ['1000', { uid: 1000, gid: 1000, additionalGids: [1000, 10, 50], home: '/home/user' }],
    ['user', { uid: 1000, gid: 1000, additionalGids: [1000, 10, 50], home: '/home/user' }],
    ['user:staff', { uid: 1000, gid: 50, additionalGids: [50], home: '/home/user' }],
    ['1000:50', { uid: 1000, gid: 50, additionalGids: [50], home: '/home/user' }],
    ['2000', { uid: 2000, gid: 0, additionalGids: [0], home: '/' }],
    ['2000:3000', { uid: 2000, gid: 3000, additionalGids: [3000], home: '/' }],
    ['other', { uid: 1001, gid: 1001, additionalGids: [1001, 50], home: '/home/other' }],
    ['root:wheel', { uid: 0, gid: 10, additionalGids: [10], home: '/root' }],
  ];
  for (const [spec, expected] of cases) {
    it(`--user ${JSON.stringify(spec)}`, () => {
      assert.deepEqual(resolveUser(spec, passwd, group), expected);
    });
  }

  it('a missing user name fails with dockerd message', () => {
    assert.throws(
      () => resolveUser('nobody', passwd, group),
      (err: unknown) =>
        err instanceof UserLookupError &&
        err.message === 'unable to find user nobody: no matching entries in passwd file',
    );
  });

  it('a missing group name fails with dockerd message', () => {
    assert.throws(
      () => resolveUser('user:nosuch', passwd, group),
      /^Error: unable to find group nosuch: no matching entries in group file$/,
    );
  });

  it('without /etc/passwd only numeric ids work', () => {
    assert.deepEqual(resolveUser('1000:1000', undefined, undefined), {
      uid: 1000,
      gid: 1000,
      additionalGids: [1000],
      home: '/',
    });
    assert.deepEqual(resolveUser('', undefined, undefined), {
      uid: 0,
      gid: 0,
      additionalGids: [0],
      home: '/',
    });
    assert.throws(() => resolveUser('user', undefined, undefined), /unable to find user user/);
  });

  it('rejects ids out of range', () => {
    assert.throws(() => resolveUser('4294967296', passwd, group), /range/);
  });
});
