/**
 * Terminals (Docker's Tty) through the real docker CLI driven in tmux against a real capsuled whose
 * containers run in QEMU micro-VMs: `docker run -it`, `docker exec -it`, detach with ctrl-p ctrl-q
 * (and --detach-keys), `docker attach`, `docker start -ai`, and the terminal size following the
 * window. Expected screens and exit codes are what the reference dockerd 20.10 gives for the same
 * keystrokes (shared/tools/reference-dockerd, runc with a Tty): `docker run -it` detached exits 0
 * silently, `docker attach` detached prints "read escape sequence" and exits 1.
 *
 * tmux is Debian's (scripts/setup.sh); each test has its own tmux server socket, killed at the end.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { runCli, type CliResult } from './harness/cli';
import { session, type Session } from './harness/session';

let s: Session;
const suffix = `${process.pid}`;
const tmuxSocket = `capsule-tty-${suffix}`;
const created: string[] = [];
const docker = (args: string[]): Promise<CliResult> => runCli(s.cliEnv(), args);

function ok(r: CliResult): string {
  assert.equal(r.code, 0, `exit ${r.code}; stdout: ${r.stdout}; stderr: ${r.stderr}`);
  return r.stdout;
}

function tmux(...args: string[]): string {
  return execFileSync('tmux', ['-L', tmuxSocket, ...args], { encoding: 'utf8' });
}

const shellQuote = (v: string) => `'${v.replace(/'/g, `'\\''`)}'`;

/**
 * Runs `command` (docker CLI words) in a new detached tmux window of the given size; the pane
 * then prints EXIT:<status> and stays.
 */
function openWindow(name: string, command: string[], cols = 100, rows = 30): void {
  const env = s.cliEnv();
  const line =
    `DOCKER_HOST=${shellQuote(env.DOCKER_HOST ?? '')} DOCKER_CONFIG=${shellQuote(env.DOCKER_CONFIG ?? '')} ` +
    `docker ${command.map(shellQuote).join(' ')}; echo EXIT:$?; sleep 3600`;
  tmux('new-session', '-d', '-s', name, '-x', String(cols), '-y', String(rows), 'sh', '-c', line);
}

const screen = (name: string): string => tmux('capture-pane', '-p', '-J', '-S', '-200', '-t', name);

async function waitScreen(name: string, re: RegExp, timeoutMs = 60_000): Promise<string> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const text = screen(name);
    if (re.test(text)) return text;
    if (Date.now() > until) assert.fail(`screen of ${name} never matched ${re}:\n${text}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Types a line into the window (the shell in the container reads it from its terminal). */
const type = (name: string, text: string) => tmux('send-keys', '-t', name, '-l', text);
const enter = (name: string) => tmux('send-keys', '-t', name, 'Enter');
const line = (name: string, text: string) => {
  type(name, text);
  enter(name);
};

/** The interactive checks shared by run -it and exec -it: arithmetic, size, resize, ^C, exit 3. */
async function interact(win: string): Promise<string> {
  await waitScreen(win, /\/ # $/m);
  line(win, 'echo A:$((6*7))');
  await waitScreen(win, /^A:42\s*$/m);
  line(win, 'echo S1:$(stty size) T:$TERM');
  await waitScreen(win, /^S1:30 100 T:xterm\s*$/m);
  tmux('resize-window', '-t', win, '-x', '120', '-y', '40');
  // The CLI sends the new size on SIGWINCH; give it a moment before asking.
  await new Promise((r) => setTimeout(r, 1000));
  line(win, 'echo S2:$(stty size)');
  await waitScreen(win, /^S2:40 120\s*$/m);
  line(win, 'sleep 100');
  await new Promise((r) => setTimeout(r, 2000));
  tmux('send-keys', '-t', win, 'C-c');
  // Type only once the shell is back at its prompt: ash's line editor then asks the terminal for
  // the cursor position, and a line typed before that answer arrives gets the answer echoed after
  // its output ("B:alive^[[14;5R"), as on any terminal.
  await waitScreen(win, /\^C\s*\n\/ # $/m);
  await new Promise((r) => setTimeout(r, 500));
  line(win, 'echo B:alive');
  await waitScreen(win, /^B:alive\s*$/m, 20_000);
  line(win, 'exit 3');
  return waitScreen(win, /^EXIT:3\s*$/m);
}

describe('docker terminals (-it) against capsuled, in tmux', () => {
  before(async () => {
    s = await session();
    ok(await docker(['pull', '-q', s.busybox]));
  });
  after(async () => {
    try {
      tmux('kill-server');
    } catch {
      // no server left
    }
    for (const name of created) await docker(['rm', '-f', name]);
  });

  it('docker run -it: a shell on a terminal, size following the window, ^C, exit status', async () => {
    const name = `it-tty-run-${suffix}`;
    created.push(name);
    openWindow('run', ['run', '-it', '--name', name, s.busybox, 'sh']);
    await interact('run');
    assert.equal(
      ok(await docker(['inspect', '-f', '{{.State.ExitCode}} {{.Config.Tty}}', name])).trim(),
      '3 true',
    );
    // A tty container's log is the raw terminal output (one stream, \r\n).
    const logs = await docker(['logs', name]);
    assert.match(logs.stdout, /A:42\r\n/);
    assert.equal(logs.stderr, '');
  });

  it('docker exec -it: the same in a running container', async () => {
    const name = `it-tty-exec-${suffix}`;
    created.push(name);
    ok(await docker(['run', '-d', '--name', name, s.busybox, 'sleep', '1000']));
    openWindow('exec', ['exec', '-it', name, 'sh']);
    const screen = await interact('exec');
    // The CLI resizes right after the start: the daemon waits for the process as dockerd does.
    assert.doesNotMatch(screen, /failed to resize tty/);
    assert.equal(ok(await docker(['inspect', '-f', '{{.State.Running}}', name])).trim(), 'true');

    // Detaching from an exec (dockerd 20.10, measured): "read escape sequence", the CLI exits 1,
    // the shell runs on; no detach event.
    openWindow('exdet', ['exec', '-it', name, 'sh']);
    await waitScreen('exdet', /\/ # $/m);
    line('exdet', 'echo E1:$((6*7))');
    await waitScreen('exdet', /^E1:42\s*$/m);
    tmux('send-keys', '-t', 'exdet', 'C-p', 'C-q');
    const detached = await waitScreen('exdet', /EXIT:\d+\s*$/m, 20_000);
    assert.match(detached, /read escape sequence/);
    assert.match(detached, /EXIT:1\s*$/m);
    const top = ok(await docker(['top', name, '-o', 'pid,tty,comm']));
    assert.match(top, /pts\/\d+\s+sh$/m, top);
  });

  it('detach with ctrl-p ctrl-q leaves the container running; attach, --detach-keys, start -ai', async () => {
    const name = `it-tty-detach-${suffix}`;
    created.push(name);
    openWindow('det', ['run', '-it', '--name', name, s.busybox, 'sh']);
    await waitScreen('det', /\/ # $/m);
    line('det', 'X=kept; echo D1:$X');
    await waitScreen('det', /^D1:kept\s*$/m);
    tmux('send-keys', '-t', 'det', 'C-p', 'C-q');
    // dockerd: `docker run -it` detached exits 0 without a message.
    const detached = await waitScreen('det', /EXIT:\d+\s*$/m, 20_000);
    assert.match(detached, /EXIT:0\s*$/m);
    assert.equal(ok(await docker(['inspect', '-f', '{{.State.Running}}', name])).trim(), 'true');

    openWindow('att', ['attach', name], 80, 24);
    await new Promise((r) => setTimeout(r, 2000));
    line('att', 'echo D2:$X:$(stty size)');
    // The same shell (its variable), at the new window's size.
    await waitScreen('att', /^D2:kept:24 80\s*$/m);
    tmux('send-keys', '-t', 'att', 'C-p', 'C-q');
    const attDetached = await waitScreen('att', /EXIT:\d+\s*$/m, 20_000);
    assert.match(attDetached, /read escape sequence/);
    assert.match(attDetached, /EXIT:1\s*$/m);
    assert.equal(ok(await docker(['inspect', '-f', '{{.State.Running}}', name])).trim(), 'true');

    openWindow('keys', ['attach', '--detach-keys', 'ctrl-x,x', name], 80, 24);
    await new Promise((r) => setTimeout(r, 2000));
    // ctrl-x then x detaches.
    line('keys', 'echo D3:$X');
    await waitScreen('keys', /^D3:kept\s*$/m);
    tmux('send-keys', '-t', 'keys', 'C-x', 'x');
    assert.match(await waitScreen('keys', /EXIT:\d+\s*$/m, 20_000), /EXIT:1\s*$/m);

    openWindow('att2', ['attach', name], 80, 24);
    await new Promise((r) => setTimeout(r, 2000));
    line('att2', 'exit 4');
    await waitScreen('att2', /^EXIT:4\s*$/m);
    assert.equal(ok(await docker(['inspect', '-f', '{{.State.ExitCode}}', name])).trim(), '4');

    // docker start -ai runs the shell again on a fresh terminal.
    openWindow('sai', ['start', '-ai', name]);
    await waitScreen('sai', /\/ # $/m);
    line('sai', 'echo D4:$((2+3))');
    await waitScreen('sai', /^D4:5\s*$/m);
    line('sai', 'exit 5');
    await waitScreen('sai', /^EXIT:5\s*$/m);
  });
});
