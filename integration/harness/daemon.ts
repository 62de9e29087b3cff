/**
 * A private capsuled for integration tests (after moby's test daemon): its own socket, data root
 * and exec root under a temp dir, started from the built dist/, with its log captured so tests can
 * scan it. It can be stopped, killed with -9 and restarted on the same state.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, promises as fs } from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';

export const repoRoot = path.resolve(__dirname, '../../..');

export interface TestDaemonOptions {
  /** Extra capsuled flags. */
  args?: string[];
  /** Base dir for state; a new temp dir when absent. */
  baseDir?: string;
  /** Deadline for the daemon to answer /_ping. */
  startTimeoutMs?: number;
}

export class TestDaemon {
  readonly socketPath: string;
  readonly dataRoot: string;
  readonly execRoot: string;
  readonly logPath: string;
  private child: ChildProcess | undefined;
  private exited: Promise<number | null> | undefined;

  private constructor(
    readonly baseDir: string,
    private readonly options: TestDaemonOptions,
  ) {
    this.socketPath = path.join(baseDir, 'docker.sock');
    this.dataRoot = path.join(baseDir, 'root');
    // Exec root holds per-VM unix sockets: keep it short (108-byte sun_path limit).
    this.execRoot = path.join('/run/capsule-test', path.basename(baseDir));
    this.logPath = path.join(baseDir, 'capsuled.log');
  }

  static async start(options: TestDaemonOptions = {}): Promise<TestDaemon> {
    const baseDir = options.baseDir ?? (await fs.mkdtemp(path.join(os.tmpdir(), 'capsule-it-')));
    const daemon = new TestDaemon(baseDir, options);
    await daemon.launch();
    return daemon;
  }

  get dockerHost(): string {
    return `unix://${this.socketPath}`;
  }

  /** Environment for running the docker CLI against this daemon. */
  cliEnv(): NodeJS.ProcessEnv {
    return {
      ...process.env,
      DOCKER_HOST: this.dockerHost,
      DOCKER_CONFIG: path.join(this.baseDir, 'docker-cli'),
    };
  }

  async launch(): Promise<void> {
    const args = [
      path.join(repoRoot, 'dist/cmd/capsuled.js'),
      '--socket',
      this.socketPath,
      '--data-root',
      this.dataRoot,
      '--exec-root',
      this.execRoot,
      '--log-level',
      'debug',
      ...(this.options.args ?? []),
    ];
    const log = createWriteStream(this.logPath, { flags: 'a' });
    await new Promise((resolve) => log.once('open', resolve));
    const child = spawn(process.execPath, args, { stdio: ['ignore', log, log] });
    this.child = child;
    this.exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
    const deadline = Date.now() + (this.options.startTimeoutMs ?? 120_000);
    for (;;) {
      if (await this.ping()) return;
      const early = await Promise.race([this.exited, delay(200).then(() => 'waiting' as const)]);
      if (early !== 'waiting') {
        throw new Error(`capsuled exited (${String(early)}) before answering; log:\n${await this.logTail()}`);
      }
      if (Date.now() > deadline) {
        throw new Error(`capsuled did not answer /_ping in time; log:\n${await this.logTail()}`);
      }
    }
  }

  ping(): Promise<boolean> {
    return new Promise((resolve) => {
      const req = http.request(
        { socketPath: this.socketPath, path: '/_ping', method: 'GET', timeout: 2000 },
        (res) => {
          res.resume();
          resolve(res.statusCode === 200);
        },
      );
      req.on('error', () => resolve(false));
      req.on('timeout', () => {
        req.destroy();
        resolve(false);
      });
      req.end();
    });
  }

  pid(): number | undefined {
    return this.child?.pid;
  }

  async stop(): Promise<void> {
    if (!this.child || this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child?.kill('SIGKILL'), 30_000);
    await this.exited;
    clearTimeout(timer);
  }

  async kill9(): Promise<void> {
    if (!this.child || this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill('SIGKILL');
    await this.exited;
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.launch();
  }

  async logText(): Promise<string> {
    return fs.readFile(this.logPath, 'utf8').catch(() => '');
  }

  async logTail(lines = 60): Promise<string> {
    return (await this.logText()).split('\n').slice(-lines).join('\n');
  }

  /** Stops the daemon and removes its state (unless `keep`). */
  async cleanup(keep = false): Promise<void> {
    await this.stop();
    if (!keep) {
      await fs.rm(this.baseDir, { recursive: true, force: true });
      await fs.rm(this.execRoot, { recursive: true, force: true });
    }
  }
}

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `check` until it returns a truthy value or the deadline passes (never a bare sleep). */
export async function waitFor<T>(what: string, check: () => Promise<T> | T, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    }
    await delay(100);
  }
}
