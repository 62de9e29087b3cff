import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { gunzipSync } from 'node:zlib';
import { errorCodeOf } from '../common/errdefs';
import {
  JsonFileLogWriter,
  MAX_LOG_LINE,
  decodeEntry,
  fromHumanSize,
  parseLogOptions,
  readLogEntries,
  readLogFile,
  validateLogOptions,
} from './logs';
import type { LogEntry } from './types';
import { encodeEntryText } from './log-encoder';
import { formatRFC3339Nano } from './time';

let dir: string;
before(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'capsule-logs-'));
});
after(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

async function lines(file: string): Promise<Array<{ log: string; stream: string; time: string }>> {
  const text = await fs.readFile(file, 'utf8');
  return text
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as { log: string; stream: string; time: string });
}

const sizeOf = async (p: string): Promise<number> => (await fs.stat(p)).size;

async function collect(gen: AsyncIterable<LogEntry>): Promise<string[]> {
  const out: string[] = [];
  for await (const e of gen) out.push(`${e.stream}:${e.data.toString()}`);
  return out;
}

describe('json-file log writer', () => {
  it('backpressure: past the high-water mark write() hands back a promise; nothing is lost', async () => {
    const file = path.join(dir, 'bp-json.log');
    const w = await JsonFileLogWriter.open(file);
    w.beginRun();
    const chunk = Buffer.from('y\n'.repeat(64 * 1024)); // 128 KiB of lines
    let waits = 0;
    for (let i = 0; i < 32; i++) {
      // What the supervisor does: stop reading the container until the log caught up.
      const wait = w.write({ stream: 1, data: chunk });
      if (wait) {
        waits++;
        await wait;
      }
    }
    assert.ok(waits > 0, 'the writer asked the reader to wait');
    assert.equal(w.write({ stream: 1, data: Buffer.from('last\n') }), undefined, 'no wait once drained');
    await w.endRun();
    await w.close();
    const got = await lines(file);
    assert.equal(got.length, 32 * 64 * 1024 + 1);
    assert.equal(got.at(-1)?.log, 'last\n');
  });

  it('cuts lines at \\n, holds partial lines, flushes them at the end of the run', async () => {
    const file = path.join(dir, 'a-json.log');
    const w = await JsonFileLogWriter.open(file);
    w.beginRun();
    w.write({ stream: 1, data: Buffer.from('out1\npar') });
    w.write({ stream: 2, data: Buffer.from('err1\n') });
    w.write({ stream: 1, data: Buffer.from('tial more\nnoeol') });
    await w.endRun();
    await w.close();
    const got = await lines(file);
    assert.deepEqual(
      got.map((l) => [l.stream, l.log]),
      [
        ['stdout', 'out1\n'],
        ['stderr', 'err1\n'],
        ['stdout', 'partial more\n'],
        ['stdout', 'noeol'],
      ],
    );
    for (const l of got) assert.match(l.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/);
  });

  it('writes a partial message once a line reaches 16 KiB', async () => {
    const file = path.join(dir, 'b-json.log');
    const w = await JsonFileLogWriter.open(file);
    w.beginRun();
    w.write({ stream: 1, data: Buffer.alloc(MAX_LOG_LINE + 10, 'x') });
    await w.endRun();
    await w.close();
    const got = await lines(file);
    assert.equal(got.length, 2);
    assert.equal(got[0]?.log.length, MAX_LOG_LINE);
    assert.equal(got[1]?.log.length, 10);
  });

  it('a line over 16 KiB is cut at 16 KiB even when its newline came in the same chunk (dockerd)', async () => {
    const file = path.join(dir, 'long-json.log');
    const w = await JsonFileLogWriter.open(file);
    w.beginRun();
    w.write({ stream: 1, data: Buffer.from('a'.repeat(20000) + '\nb\n' + 'c'.repeat(MAX_LOG_LINE * 2 + 5)) });
    w.write({ stream: 1, data: Buffer.from('c\n') });
    await w.endRun();
    await w.close();
    const got = await lines(file);
    assert.deepEqual(
      got.map((l) => l.log.length),
      [MAX_LOG_LINE, 20001 - MAX_LOG_LINE, 2, MAX_LOG_LINE, MAX_LOG_LINE, 7],
    );
  });

  it("writes dockerd's bytes: escapes, invalid UTF-8, one file line per entry", async () => {
    // What dockerd 20.10 wrote for this output (recorded from the reference dockerd); times differ.
    const file = path.join(dir, 'bytes-json.log');
    const w = await JsonFileLogWriter.open(file);
    w.beginRun();
    w.write({ stream: 1, data: Buffer.from('a\tb\bc\fd\x01e\x7ff<g>h&i"j\\k\rl\n', 'latin1') });
    w.write({ stream: 2, data: Buffer.from([0xff, 0x78, 0xe2, 0x82, 0x79, 0x0a, 0xe2]) });
    w.write({ stream: 2, data: Buffer.from([0x82, 0xac, 0x0a, 0xe2, 0x82]) });
    await w.endRun();
    await w.close();
    const text = (await fs.readFile(file)).toString('latin1').replace(/"time":"[^"]+"/g, '"time":"T"');
    assert.equal(
      text,
      '{"log":"a\\u0009b\\u0008c\\u000cd\\u0001e\x7ff\\u003cg\\u003eh\\u0026i\\"j\\\\k\\rl\\n","stream":"stdout","time":"T"}\n' +
        '{"log":"\\ufffdx\\ufffd\\ufffdy\\n","stream":"stderr","time":"T"}\n' +
        // A "€" split across two chunks is one character; a truncated one at the end is two bad bytes.
        '{"log":"\xe2\x82\xac\\n","stream":"stderr","time":"T"}\n' +
        '{"log":"\\ufffd\\ufffd","stream":"stderr","time":"T"}\n',
    );
  });

  it('rotation is checked before each entry inside one chunk of many lines', async () => {
    const sub = path.join(dir, 'chunk-rot');
    await fs.mkdir(sub);
    const file = path.join(sub, 'r-json.log');
    const w = await JsonFileLogWriter.open(file, parseLogOptions({ 'max-size': '1k', 'max-file': '3' }));
    w.beginRun();
    w.write({ stream: 1, data: Buffer.from(Array.from({ length: 100 }, (_, i) => `line-${i}\n`).join('')) });
    await w.endRun();
    await w.close();
    assert.deepEqual((await fs.readdir(sub)).sort(), ['r-json.log', 'r-json.log.1', 'r-json.log.2']);
    await assertRotatedLines0To99(file);
  });

  it('a follower gets every entry of a many-line chunk, cut as in the file', async () => {
    const file = path.join(dir, 'fchunk-json.log');
    const w = await JsonFileLogWriter.open(file);
    w.beginRun();
    const { files, subscription } = await w.follow();
    await files.close();
    w.write({ stream: 2, data: Buffer.from('x'.repeat(MAX_LOG_LINE + 1) + '\n' + 'y\n'.repeat(1000)) });
    await w.endRun();
    const live: string[] = [];
    for (let e = await subscription.next(); e; e = await subscription.next())
      live.push(`${e.stream}:${e.data}`);
    assert.deepEqual(live, [
      `2:${'x'.repeat(MAX_LOG_LINE)}`,
      '2:x\n',
      ...Array.from({ length: 1000 }, () => '2:y\n'),
    ]);
    assert.deepEqual(
      (await lines(file)).map((l) => `2:${l.log}`),
      live,
    );
    await w.close();
  });

  it('escapes like Go and round-trips entries', () => {
    const entry: LogEntry = { stream: 2, data: Buffer.from('<a&b>\n'), timeNs: 1795976632_500000000n };
    const text = encodeEntryText(entry.data, entry.stream, formatRFC3339Nano(entry.timeNs));
    assert.equal(
      text,
      '{"log":"\\u003ca\\u0026b\\u003e\\n","stream":"stderr","time":"2026-11-29T18:23:52.5Z"}\n',
    );
    assert.deepEqual(decodeEntry(text.trim()), entry);
  });

  it('reads with tail, stream selection and since/until', async () => {
    const file = path.join(dir, 'c-json.log');
    const t = (s: number): string => new Date(s * 1000).toISOString();
    const rows = [
      { log: 'one\n', stream: 'stdout', time: t(100) },
      { log: 'two\n', stream: 'stderr', time: t(200) },
      { log: 'three\n', stream: 'stdout', time: t(300) },
    ];
    await fs.writeFile(file, rows.map((r) => JSON.stringify(r) + '\n').join(''));
    assert.deepEqual(await collect(readLogFile(file, { stdout: true, stderr: true })), [
      '1:one\n',
      '2:two\n',
      '1:three\n',
    ]);
    assert.deepEqual(await collect(readLogFile(file, { stdout: true, stderr: true, tail: 2 })), [
      '2:two\n',
      '1:three\n',
    ]);
    assert.deepEqual(await collect(readLogFile(file, { stdout: true, stderr: false, tail: 1 })), [
      '1:three\n',
    ]);
    assert.deepEqual(await collect(readLogFile(file, { stdout: true, stderr: true, tail: 0 })), []);
    assert.deepEqual(
      await collect(
        readLogFile(file, {
          stdout: true,
          stderr: true,
          sinceNs: 200_000_000_000n,
          untilNs: 250_000_000_000n,
        }),
      ),
      ['2:two\n'],
    );
    assert.deepEqual(
      await collect(readLogFile(path.join(dir, 'missing'), { stdout: true, stderr: true })),
      [],
    );
  });

  it('a follower sees the file up to where it subscribed, then live entries, none twice', async () => {
    const file = path.join(dir, 'd-json.log');
    const w = await JsonFileLogWriter.open(file);
    w.beginRun();
    w.write({ stream: 1, data: Buffer.from('before\n') });
    const following = w.follow();
    w.write({ stream: 1, data: Buffer.from('after\n') });
    const { files, subscription: sub } = await following;
    const replay = await collect(readLogEntries(files, { stdout: true, stderr: true }));
    assert.deepEqual(replay, ['1:before\n']);
    const live = await sub.next();
    assert.equal(live?.data.toString(), 'after\n');
    await w.endRun();
    assert.equal(await sub.next(), undefined);
    await w.close();
  });
});

describe('reading json-file lines', () => {
  it('the fast line decoder gives what JSON.parse gives, for lines of any shape', async () => {
    const file = path.join(dir, 'shapes-json.log');
    const t = '2026-11-30T02:12:49.63390007Z';
    const fileLines = [
      `{"log":"y\\n","stream":"stdout","time":"${t}"}`,
      `{"log":"y\\n","stream":"stderr","time":"${t}"}`,
      `{"log":"no newline","stream":"stdout","time":"${t}"}`,
      `{"log":"tab\\u0009\\u003c\\ufffd\\"q\\\\\\n","stream":"stdout","time":"${t}"}`,
      `{"log":"é€😀\\n","stream":"stderr","time":"${t}"}`,
      `{"log":"a\\/b\\n","stream":"stdout","time":"2026-11-30T02:12:49Z"}`,
      `{"log":"\\n\\n","stream":"stdout","time":"${t}"}`,
      `{"stream":"stdout","log":"key order\\n","time":"${t}"}`,
      `{"log":"attrs\\n","stream":"stdout","attrs":{"a":"b"},"time":"${t}"}`,
      `{"log":"offset\\n","stream":"stdout","time":"2026-11-30T03:12:49.5+01:00"}`,
      `{"log":"bad time\\n","stream":"stdout","time":"yesterday"}`,
      `{"log":"no stream\\n","time":"${t}"}`,
      `{"log":"spaces\\n", "stream":"stdout", "time":"${t}"}`,
      `{"log":"crlf\\n","stream":"stdout","time":"${t}"}\r`,
      `not json`,
      ``,
      `{"log":"trailing","stream":"stdout","time":"${t}"} x`,
      `{"log":"unterminated`,
      `{"log":"last, no newline at the end of the file\\n","stream":"stdout","time":"${t}"}`,
    ];
    await fs.writeFile(file, fileLines.join('\n'));
    const expected: string[] = [];
    for (const line of fileLines) {
      const e = line === '' ? undefined : decodeEntry(line);
      if (e) expected.push(`${e.stream}:${e.timeNs}:${e.data.toString('hex')}`);
    }
    const got: string[] = [];
    for await (const e of readLogFile(file, { stdout: true, stderr: true })) {
      got.push(`${e.stream}:${e.timeNs}:${e.data.toString('hex')}`);
    }
    assert.deepEqual(got, expected);
    assert.equal(got.length, 14);
  });
});

describe('tail over a long log', () => {
  it('keeps the last N entries in order', async () => {
    const file = path.join(dir, 'e-json.log');
    const rows: string[] = [];
    for (let i = 1; i <= 1000; i++) {
      rows.push(
        JSON.stringify({ log: `${i}\n`, stream: 'stdout', time: new Date(i * 1000).toISOString() }) + '\n',
      );
    }
    await fs.writeFile(file, rows.join(''));
    assert.deepEqual(await collect(readLogFile(file, { stdout: true, stderr: true, tail: 3 })), [
      '1:998\n',
      '1:999\n',
      '1:1000\n',
    ]);
    assert.equal((await collect(readLogFile(file, { stdout: true, stderr: true, tail: 5000 }))).length, 1000);
  });
});

describe('json-file rotation (--log-opt max-size/max-file/compress)', () => {
  const line = (i: number): string => `line-${i}\n`;
  async function writeLines(file: string, opts: Record<string, string>, n: number): Promise<void> {
    const w = await JsonFileLogWriter.open(file, parseLogOptions(opts));
    w.beginRun();
    for (let i = 0; i < n; i++) w.write({ stream: 1, data: Buffer.from(line(i)) });
    await w.endRun();
    await w.close();
  }
  it('rotates like dockerd: checks before each entry, <log>.1 … .N-1, reads oldest first', async () => {
    const file = path.join(dir, 'rot-json.log');
    // dockerd with max-size=1k max-file=3 and 100 lines of "line-N": 13 entries per full file.
    await writeLines(file, { 'max-size': '1k', 'max-file': '3' }, 100);
    const names = (await fs.readdir(dir)).filter((n) => n.startsWith('rot-json.log')).sort();
    assert.deepEqual(names, ['rot-json.log', 'rot-json.log.1', 'rot-json.log.2']);
    await assertRotatedLines0To99(file);
    assert.deepEqual(await collect(readLogFile(file, { stdout: true, stderr: true, tail: 2, maxFiles: 3 })), [
      '1:line-98\n',
      '1:line-99\n',
    ]);
  });

  it('max-file=1 keeps the previous file as .1 but reads only the current one (dockerd 20.10)', async () => {
    const sub = path.join(dir, 'one');
    await fs.mkdir(sub);
    const file = path.join(sub, 'x-json.log');
    await writeLines(file, { 'max-size': '1k' }, 100);
    assert.deepEqual((await fs.readdir(sub)).sort(), ['x-json.log', 'x-json.log.1']);
    const got = await collect(readLogFile(file, { stdout: true, stderr: true, maxFiles: 1 }));
    // Where the rotation falls depends on entry lengths, and RFC3339Nano times trim trailing zeros,
    // so the exact boundary moves by a line with the clock: check the shape, not the line number.
    assertContiguousTail(got, 99);
    assert.ok(
      got.length >= 8 && got.length <= 10,
      `expected about 9 lines in the current file, got ${got.length}`,
    );
  });

  it('compress=true gzips rotated files to .N.gz and reads through them', async () => {
    const sub = path.join(dir, 'gz');
    await fs.mkdir(sub);
    const file = path.join(sub, 'z-json.log');
    await writeLines(file, { 'max-size': '1k', 'max-file': '3', compress: 'true' }, 100);
    assert.deepEqual((await fs.readdir(sub)).sort(), ['z-json.log', 'z-json.log.1.gz', 'z-json.log.2.gz']);
    const first =
      gunzipSync(await fs.readFile(`${file}.2.gz`))
        .toString()
        .split('\n')[0] ?? '';
    const firstLine = (JSON.parse(first) as { log: string }).log;
    const got = await collect(readLogFile(file, { stdout: true, stderr: true, maxFiles: 3 }));
    // As above, the exact first line moves with entry lengths; reading must start at the oldest
    // kept entry and run without gap or repeat to the last one.
    assert.equal(got[0], `1:${firstLine}`);
    assertContiguousTail(got, 99);
    assert.ok(got.length >= 32 && got.length <= 38, `expected about 35 lines, got ${got.length}`);
  });

  it('a follower that subscribed before a rotation misses nothing and sees nothing twice', async () => {
    const sub = path.join(dir, 'follow');
    await fs.mkdir(sub);
    const file = path.join(sub, 'f-json.log');
    const w = await JsonFileLogWriter.open(file, parseLogOptions({ 'max-size': '200', 'max-file': '5' }));
    w.beginRun();
    for (let i = 0; i < 5; i++) w.write({ stream: 1, data: Buffer.from(line(i)) });
    const following = w.follow();
    for (let i = 5; i < 20; i++) w.write({ stream: 1, data: Buffer.from(line(i)) });
    const { files, subscription } = await following;
    await w.endRun();
    const seen = await collect(readLogEntries(files, { stdout: true, stderr: true }));
    for (;;) {
      const e = await subscription.next();
      if (!e) break;
      seen.push(`${e.stream}:${e.data.toString()}`);
    }
    assert.deepEqual(
      seen,
      Array.from({ length: 20 }, (_, i) => `1:${line(i)}`),
    );
    await w.close();
  });

  it('log options are checked as dockerd: unknown keys at create (400), bad values at start (500)', () => {
    assert.throws(() => validateLogOptions({ bogus: '3' }), {
      message: "unknown log opt 'bogus' for json-file log driver",
    });
    validateLogOptions({
      'max-size': 'abc',
      labels: 'a',
      env: 'b',
      'env-regex': 'c',
      tag: 'x',
      compress: 'x',
    });
    const startError = (config: Record<string, string>): string => {
      try {
        parseLogOptions(config);
        return 'ok';
      } catch (err) {
        assert.equal(errorCodeOf(err), 'System');
        return (err as Error).message;
      }
    };
    assert.equal(
      startError({ 'max-size': 'abc' }),
      "failed to initialize logging driver: invalid size: 'abc'",
    );
    assert.equal(startError({ 'max-size': '-1' }), "failed to initialize logging driver: invalid size: '-1'");
    assert.equal(
      startError({ 'max-size': '0' }),
      'failed to initialize logging driver: max-size must be a positive number',
    );
    assert.equal(
      startError({ 'max-file': '0' }),
      'failed to initialize logging driver: max-file cannot be less than 1',
    );
    assert.equal(
      startError({ 'max-size': '1k', 'max-file': 'x' }),
      'failed to initialize logging driver: strconv.Atoi: parsing "x": invalid syntax',
    );
    assert.equal(
      startError({ 'max-size': '1k', compress: 'maybe' }),
      'failed to initialize logging driver: strconv.ParseBool: parsing "maybe": invalid syntax',
    );
    assert.equal(
      startError({ 'max-size': '1k', compress: 'true' }),
      'failed to initialize logging driver: compress cannot be true when max-file is less than 2 or max-size is not set',
    );
    assert.equal(startError({ 'max-file': '3' }), 'ok');
    assert.equal(fromHumanSize('10k'), 10_000);
    assert.equal(fromHumanSize('1.5m'), 1_500_000);
    assert.equal(fromHumanSize('2 GB'), 2e9);
  });
});

/**
 * `line-0` … `line-99` written with max-size=1k max-file=3: two full rotated files of about 1 KiB
 * and, read back oldest first, about 35 entries (13 per full file; the exact count moves by one
 * with entry lengths, since RFC3339Nano times trim trailing zeros), no gap, no repeat.
 */
async function assertRotatedLines0To99(file: string): Promise<void> {
  for (const rotated of [`${file}.1`, `${file}.2`]) {
    const size = await sizeOf(rotated);
    assert.ok(size >= 1000 && size < 1100, `${rotated} holds ${size} bytes`);
  }
  const got = await collect(readLogFile(file, { stdout: true, stderr: true, maxFiles: 3 }));
  assert.ok(got.length >= 32 && got.length <= 38, `expected about 35 lines, got ${got.length}`);
  assertContiguousTail(got, 99);
}

/** `got` is `1:line-K\n` … `1:line-last\n` with no gap and no repeat. */
function assertContiguousTail(got: string[], last: number): void {
  const first = last - got.length + 1;
  assert.deepEqual(
    got,
    Array.from({ length: got.length }, (_, i) => `1:line-${first + i}\n`),
  );
}
