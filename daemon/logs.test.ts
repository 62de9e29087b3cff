import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { JsonFileLogWriter, MAX_LOG_LINE, decodeEntry, encodeEntry, readLogFile } from './logs';
import type { LogEntry } from './types';

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

async function collect(gen: AsyncIterable<LogEntry>): Promise<string[]> {
  const out: string[] = [];
  for await (const e of gen) out.push(`${e.stream}:${e.data.toString()}`);
  return out;
}

describe('json-file log writer', () => {
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

  it('escapes like Go and round-trips entries', () => {
    const entry: LogEntry = { stream: 2, data: Buffer.from('<a&b>\n'), timeNs: 1795976632_500000000n };
    const text = encodeEntry(entry);
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
    await w.flushed();
    const sub = w.subscribe();
    w.write({ stream: 1, data: Buffer.from('after\n') });
    const replay = await collect(
      readLogFile(file, { stdout: true, stderr: true, endByte: sub.committedBytes }),
    );
    assert.deepEqual(replay, ['1:before\n']);
    const live = await sub.next();
    assert.equal(live?.data.toString(), 'after\n');
    await w.endRun();
    assert.equal(await sub.next(), undefined);
    await w.close();
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
