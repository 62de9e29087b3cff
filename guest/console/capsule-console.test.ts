/**
 * capsule-console (guest/console/capsule-console.c), compiled here with gcc and driven with a FAKE
 * runtime (testing/fake-runtime.py: a pty and SCM_RIGHTS, no container). The real path, with crun
 * inside the guest, is covered by integration/cli-tty.test.ts.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

// dist/guest/console → the sources stay in guest/console.
const SOURCE_DIR = path.resolve(__dirname, '../../../guest/console');
const FAKE_RUNTIME = path.join(SOURCE_DIR, 'testing', 'fake-runtime.py');

let dir: string;
let binary: string;

interface Run {
  output: string;
  status: number | null;
}

/** Runs a shell under capsule-console; `script` feeds stdin (and fd 3) step by step. */
function runConsole(
  rows: number,
  cols: number,
  script: (io: { input: (s: string) => void; resize: (r: number, c: number) => void }) => Promise<void>,
  command = ['/bin/sh', '-i'],
): Promise<Run> {
  const socketPath = path.join(dir, `console-${Math.random().toString(16).slice(2)}.sock`);
  const child = spawn(
    binary,
    [socketPath, String(rows), String(cols), '--', 'python3', FAKE_RUNTIME, socketPath, ...command],
    { stdio: ['pipe', 'pipe', 'pipe', 'pipe'], env: { PATH: process.env.PATH } },
  );
  let output = '';
  child.stdout.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr.on('data', (d: Buffer) => (output += d.toString()));
  const control = child.stdio[3] as NodeJS.WritableStream;
  const done = new Promise<Run>((resolve) =>
    child.on('exit', (status) => resolve({ output: output.replace(/\r/g, ''), status })),
  );
  void script({ input: (s) => child.stdin.write(s), resize: (r, c) => control.write(`${r} ${c}\n`) });
  return done;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('capsule-console', () => {
  before(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'capsule-console-'));
    binary = path.join(dir, 'capsule-console');
    // Fails (never skips) without gcc or python3: scripts/setup.sh installs gcc; python3 is on the machine.
    execFileSync('gcc', [
      '-O2',
      '-Wall',
      '-Wextra',
      '-Werror',
      '-static',
      '-o',
      binary,
      path.join(SOURCE_DIR, 'capsule-console.c'),
    ]);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('carries input and output, sets the initial size, exits with the runtime status', async () => {
    const run = await runConsole(33, 101, async ({ input }) => {
      input('echo in:$((6*7))\nstty size\nexit 5\n');
    });
    assert.equal(run.status, 5, run.output);
    assert.match(run.output, /in:42$/m);
    assert.match(run.output, /33 101$/m);
  });

  it('resizes the terminal from the control pipe (fd 3)', async () => {
    const run = await runConsole(24, 80, async ({ input, resize }) => {
      await sleep(300);
      resize(50, 200);
      await sleep(300);
      input('stty size\nexit 0\n');
    });
    assert.equal(run.status, 0, run.output);
    assert.match(run.output, /50 200$/m);
  });

  it('Ctrl-C reaches the foreground process through the line discipline', async () => {
    const started = Date.now();
    const run = await runConsole(24, 80, async ({ input }) => {
      input('sleep 30\n');
      await sleep(700);
      input('\x03');
      await sleep(300);
      input('echo alive\nexit 3\n');
    });
    assert.equal(run.status, 3, run.output);
    assert.match(run.output, /alive$/m);
    assert.ok(Date.now() - started < 20_000, 'sleep 30 was interrupted');
  });

  it('drains what the process wrote last before exiting', async () => {
    const run = await runConsole(24, 80, async () => undefined, ['/bin/sh', '-c', 'seq 1 20000; exit 9']);
    assert.equal(run.status, 9);
    assert.match(run.output, /^20000$/m);
  });

  it('a runtime that never sends a console: exits with its status, nothing hangs', async () => {
    const socketPath = path.join(dir, 'unused.sock');
    const status = await new Promise<number | null>((resolve) => {
      const child = spawn(binary, [socketPath, '0', '0', '--', '/bin/sh', '-c', 'exit 4'], {
        stdio: 'ignore',
      });
      child.on('exit', (code) => resolve(code));
    });
    assert.equal(status, 4);
  });
});
