import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { JsonLogEncoder, MAX_LOG_LINE, encodeEntryText, splitEntries } from './log-encoder';
import { prng } from '../common/testing/prng';

const TIME = '2026-11-30T02:12:49.63390007Z';
const tail = (stream: 'stdout' | 'stderr'): string => `","stream":"${stream}","time":"${TIME}"}\n`;

/** The chunk encoder over data[0, end), resumed wherever it stops (buffer full or `stopEvery`). */
function encodeAll(data: Buffer, stream: 1 | 2, stopEvery?: () => number): Buffer {
  const encoder = new JsonLogEncoder(0);
  encoder.begin(stream, TIME);
  const parts: Buffer[] = [];
  let at = 0;
  while (at < data.length) {
    const stopAt = stopEvery ? encoder.size + stopEvery() : Infinity;
    const next = encoder.encode(data, at, data.length, stopAt);
    assert.ok(next > at || encoder.size > 0 || stopAt <= 0, 'the encoder makes progress');
    at = next;
    parts.push(Buffer.from(encoder.bytes()));
    encoder.reset();
  }
  return Buffer.concat(parts);
}

/** The plain way: cut with a byte loop, encode each entry on its own. */
function encodePlain(data: Buffer, stream: 1 | 2): Buffer {
  let out = '';
  let start = 0;
  for (let i = 0; i < data.length; i++) {
    if (data[i] === 0x0a || i + 1 - start === MAX_LOG_LINE || i + 1 === data.length) {
      out += encodeEntryText(data.subarray(start, i + 1), stream, TIME);
      start = i + 1;
    }
  }
  return Buffer.from(out, 'utf8');
}

// Pieces the random inputs are made of: what needs escaping, valid and invalid UTF-8, plain text.
const PIECES: Buffer[] = [
  'y\n',
  'y',
  'hello world',
  '\n',
  '"',
  '\\',
  '<',
  '>',
  '&',
  '\t',
  '\r',
  '\b',
  '\f',
  '\x00',
  '\x1b[0m',
  '\x7f',
  'é',
  '€',
  '😀',
  '\u2028',
  '\u2029',
  '\ufffd',
  '/',
  "'",
].map((s) => Buffer.from(s, 'utf8'));
PIECES.push(
  ...[
    [0xff],
    [0x80],
    [0xbf],
    [0xc0, 0xaf], // overlong "/"
    [0xc1, 0xbf],
    [0xc2],
    [0xe2, 0x82], // truncated "€"
    [0xe0, 0x80, 0x80], // overlong
    [0xed, 0xa0, 0x80], // surrogate
    [0xed, 0x9f, 0xbf], // U+D7FF, valid
    [0xef, 0xbf, 0xbf], // U+FFFF, valid
    [0xf0, 0x8f, 0xbf, 0xbf], // overlong
    [0xf4, 0x8f, 0xbf, 0xbf], // U+10FFFF, valid
    [0xf4, 0x90, 0x80, 0x80], // past U+10FFFF
    [0xf5, 0x80, 0x80, 0x80],
    [0xf0, 0x9f, 0x98], // truncated emoji
    [0xe2, 0x80, 0xa8], // U+2028
  ].map((b) => Buffer.from(b)),
);

function randomOutput(next: () => number): Buffer {
  const parts: Buffer[] = [];
  const n = Math.floor(next() * 200);
  for (let i = 0; i < n; i++) {
    const r = next();
    if (r < 0.03) {
      // A long line, to cross the 16 KiB cut (sometimes right at a multi-byte character).
      const fill = next() < 0.5 ? 'x' : '€';
      parts.push(Buffer.from(fill.repeat(Math.floor(next() * 2 * MAX_LOG_LINE))));
    } else if (r < 0.1) {
      parts.push(Buffer.from([Math.floor(next() * 256)]));
    } else {
      parts.push(PIECES[Math.floor(next() * PIECES.length)] as Buffer);
    }
  }
  return Buffer.concat(parts);
}

describe('json-file entry encoder', () => {
  it("writes dockerd 20.10's bytes (recorded from the reference dockerd)", () => {
    // printf of each input in a busybox container under dockerd 20.10.24; its json-file lines.
    const cases: Array<[number[] | string, string]> = [
      [
        'a\tb\bc\fd\x01e\x7ff<g>h&i"j\\k\rl\n',
        '{"log":"a\\u0009b\\u0008c\\u000cd\\u0001e\x7ff\\u003cg\\u003eh\\u0026i\\"j\\\\k\\rl\\n',
      ],
      [
        [
          0xff, 0x78, 0xe2, 0x82, 0x79, 0xed, 0xa0, 0x80, 0x7a, 0xc0, 0xaf, 0x77, 0xf4, 0x90, 0x80, 0x80,
          0x76, 0x0a,
        ],
        '{"log":"\\ufffdx\\ufffd\\ufffdy\\ufffd\\ufffd\\ufffdz\\ufffd\\ufffdw\\ufffd\\ufffd\\ufffd\\ufffdv\\n',
      ],
      ['\ufffd \u2028 \u2029 😀 é\n', '{"log":"\ufffd \\u2028 \\u2029 😀 é\\n'],
      [[0xe2, 0x82], '{"log":"\\ufffd\\ufffd'],
    ];
    for (const [input, expected] of cases) {
      const data = typeof input === 'string' ? Buffer.from(input, 'latin1') : Buffer.from(input);
      const want = Buffer.from(expected + tail('stdout'), 'utf8');
      if (typeof input === 'string' && [...input].some((c) => c.charCodeAt(0) > 0x7f)) {
        const utf8 = Buffer.from(input, 'utf8');
        assert.deepEqual(encodeAll(utf8, 1), want);
        assert.deepEqual(encodePlain(utf8, 1), want);
        continue;
      }
      assert.deepEqual(encodeAll(data, 1), want, JSON.stringify(expected));
      assert.deepEqual(encodePlain(data, 1), want, JSON.stringify(expected));
    }
  });

  it('cuts entries at 16 KiB as dockerd does, splitting a UTF-8 character in two', () => {
    // dockerd 20.10: 20000 × "a" + "\n" is 16384 + 3617 bytes; 6000 × "€" + "\n" is cut inside a "€",
    // whose 3 bytes become one \ufffd at the end of the first entry and two at the start of the second.
    const a = encodeAll(Buffer.from('a'.repeat(20000) + '\n'), 1).toString();
    assert.deepEqual(a.split('\n').filter(Boolean), [
      `{"log":"${'a'.repeat(MAX_LOG_LINE)}${tail('stdout').trim()}`,
      `{"log":"${'a'.repeat(20000 - MAX_LOG_LINE)}\\n${tail('stdout').trim()}`,
    ]);
    const euro = encodeAll(Buffer.from('€'.repeat(6000) + '\n'), 2).toString();
    assert.deepEqual(euro.split('\n').filter(Boolean), [
      `{"log":"${'€'.repeat(5461)}\\ufffd${tail('stderr').trim()}`,
      `{"log":"\\ufffd\\ufffd${'€'.repeat(538)}\\n${tail('stderr').trim()}`,
    ]);
    assert.deepEqual(
      splitEntries(Buffer.from('a'.repeat(20000) + '\nb\n')).map((e) => e.length),
      [MAX_LOG_LINE, 20001 - MAX_LOG_LINE, 2],
    );
  });

  it("the chunk encoder gives the plain encoder's bytes for random output (seeded; replay with the seed)", () => {
    const deadline = Date.now() + 3000;
    let runs = 0;
    for (let seed = 1; seed <= 2000 && Date.now() < deadline; seed++) {
      const next = prng(seed);
      const data = randomOutput(next);
      const stream = next() < 0.5 ? 1 : 2;
      const want = encodePlain(data, stream);
      // Whole, and stopped at random points (as rotation and a full buffer stop it).
      assert.deepEqual(encodeAll(data, stream), want, `seed ${seed}`);
      assert.deepEqual(
        encodeAll(data, stream, () => Math.floor(next() * 300)),
        want,
        `seed ${seed}, stopped at random`,
      );
      // What comes out is one JSON object per entry, whose "log" is the entry's text when that is
      // valid UTF-8 (otherwise Go's per-byte U+FFFD, which node's decoder does not reproduce).
      const entries = splitEntries(data);
      const lines = want.toString('utf8').split('\n').filter(Boolean);
      assert.equal(lines.length, entries.length, `seed ${seed}`);
      for (const [i, line] of lines.entries()) {
        const parsed = JSON.parse(line) as { log: string; stream: string; time: string };
        const entry = entries[i] as Buffer;
        if (Buffer.from(entry.toString('utf8'), 'utf8').equals(entry)) {
          assert.ok(Buffer.from(parsed.log, 'utf8').equals(entry), `seed ${seed}, entry ${i}`);
        }
        assert.equal(parsed.stream, stream === 1 ? 'stdout' : 'stderr');
      }
      runs++;
    }
    assert.ok(runs >= 100, `only ${runs} random inputs in the time box`);
  });

  it('stops before an entry once stopAt bytes are encoded, never inside one', () => {
    const data = Buffer.from('one\ntwo\nthree\n');
    const encoder = new JsonLogEncoder(0);
    encoder.begin(1, TIME);
    const at = encoder.encode(data, 0, data.length, 1);
    assert.equal(at, 4, 'one entry, then it stops');
    assert.equal(encoder.bytes().toString(), `{"log":"one\\n${tail('stdout')}`);
    assert.equal(encoder.encode(data, at, data.length, encoder.size), at, 'nothing more at the limit');
  });
});
