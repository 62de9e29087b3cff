/**
 * Process supervision. Every helper process the daemon starts (qemu, virtiofsd, registry in tests)
 * goes through one ProcessSupervisor, so that each is tracked until it is reaped and the daemon can
 * kill what is left on shutdown: no process outlives its owner unnoticed.
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import type { Logger } from './logger';

export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface SupervisedProcess {
  readonly name: string;
  readonly pid: number;
  readonly child: ChildProcess;
  /** Resolves once the process has exited and been reaped. */
  readonly exited: Promise<ExitStatus>;
  /** True until `exited` resolves. */
  isRunning(): boolean;
  /** Sends `signal`; after `graceMs` sends SIGKILL. Resolves when reaped. */
  terminate(signal?: NodeJS.Signals, graceMs?: number): Promise<ExitStatus>;
}

export class ProcessSupervisor {
  private readonly live = new Set<SupervisedProcess>();

  constructor(private readonly log: Logger) {}

  spawn(
    name: string,
    command: string,
    args: readonly string[],
    options: SpawnOptions = {},
  ): SupervisedProcess {
    const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'], ...options });
    if (child.pid === undefined) {
      // spawn failed synchronously (ENOENT is reported through 'error'); surface it as an exit.
      child.on('error', () => undefined);
    }
    let running = true;
    const exited = new Promise<ExitStatus>((resolve) => {
      child.once('error', (err) => {
        this.log.error('process failed to start', { name, command, error: err.message });
        running = false;
        resolve({ code: 127, signal: null });
      });
      child.once('exit', (code, signal) => {
        running = false;
        resolve({ code, signal });
      });
    });
    const proc: SupervisedProcess = {
      name,
      pid: child.pid ?? -1,
      child,
      exited,
      isRunning: () => running,
      terminate: async (signal: NodeJS.Signals = 'SIGTERM', graceMs = 3000) => {
        if (!running) return exited;
        child.kill(signal);
        const timer = setTimeout(() => {
          if (running) child.kill('SIGKILL');
        }, graceMs);
        try {
          return await exited;
        } finally {
          clearTimeout(timer);
        }
      },
    };
    this.live.add(proc);
    void exited.then((status) => {
      this.live.delete(proc);
      this.log.debug('process exited', { name, pid: proc.pid, ...status });
    });
    return proc;
  }

  running(): SupervisedProcess[] {
    return [...this.live];
  }

  /** Terminates every tracked process; used on daemon shutdown. */
  async terminateAll(graceMs = 3000): Promise<void> {
    await Promise.all([...this.live].map((p) => p.terminate('SIGTERM', graceMs)));
  }
}
