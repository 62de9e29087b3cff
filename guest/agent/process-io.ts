/**
 * The stdio of one process the agent runs (a container's init or an exec): its stdout and stderr
 * pipes moved to one reader (ReadOutput) with backpressure, and its stdin pipe.
 *
 * The pipes are only read while a reader is attached and keeping up. Until then each pipe holds at
 * most Node's first read (one high-water mark, 16-64 KiB) plus the kernel pipe buffer, after which
 * the process blocks: backpressure, never loss. Chunks go to the reader in the order the agent reads
 * them; order across the two pipes is the order in which they became readable, as with Docker's two
 * FIFOs. The output ends (the reader's stream ends) once the owner said the process exited and both
 * pipes reached EOF.
 *
 * A process with a terminal runs under capsule-console (guest/console/): its one output stream is
 * the pty (stdout, delivered as stream 1), capsule-console's stderr carries only the OCI runtime's
 * own errors (logged, never delivered), and fd 3 takes "ROWS COLS\n" lines that resize the pty.
 */
import type { ChildProcess } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';
import { AgentError } from './errors';

/** Where a process's output goes: a ReadOutput stream, behind an interface so tests can fake it. */
export interface OutputSink {
  /** Returns false when the producer must wait for the drain listener before writing more. */
  write(stream: 1 | 2, data: Buffer): boolean;
  onceDrain(listener: () => void): void;
  end(): void;
}

interface Pipe {
  stream: 1 | 2;
  readable: Readable;
  ended: boolean;
}

export class ProcessIO {
  private pipes: Pipe[] = [];
  /** Chunks read but not yet taken by a reader (only ever non-empty across a reader change). */
  private pending: { stream: 1 | 2; data: Buffer }[] = [];
  private sink?: OutputSink;
  private outputDone = false;
  private exited = false;
  private stdinClosed = false;
  private stdinPipe?: Writable;
  private resizePipe?: Writable;

  /** `label` names the process in messages ("container X", "exec Y"). */
  constructor(
    private readonly label: string,
    readonly openStdin: boolean,
    private readonly log: (message: string, meta?: Record<string, unknown>) => void,
  ) {}

  /**
   * Takes over the child's pipes (spawned with stdio [pipe|ignore, pipe, pipe], and a 4th pipe, the
   * resize channel, when `terminal`).
   */
  wire(child: ChildProcess, terminal = false): void {
    this.stdinPipe = child.stdin ?? undefined;
    child.stdin?.on('error', () => undefined); // EPIPE once the process is gone: nothing to do.
    const streams: [1 | 2, Readable | null][] = [[1, child.stdout]];
    if (terminal) {
      const resize = child.stdio[3] as Writable | null | undefined;
      if (resize) {
        resize.on('error', () => undefined);
        this.resizePipe = resize;
      }
      // The runtime's own errors: the process's output is all on the pty (stdout).
      child.stderr?.on('data', (data: Buffer) =>
        this.log('console runtime stderr', { process: this.label, text: data.toString().trim() }),
      );
    } else {
      streams.push([2, child.stderr]);
    }
    for (const [stream, readable] of streams) {
      if (!readable) continue;
      const pipe: Pipe = { stream, readable, ended: false };
      // Paused before the 'data' listener goes on, so attaching it does not start the flow.
      readable.pause();
      readable.on('data', (data: Buffer) => this.deliver(stream, data));
      const finish = () => {
        if (pipe.ended) return;
        pipe.ended = true;
        this.maybeFinishOutput();
      };
      readable.on('end', finish);
      readable.on('error', (err) => {
        this.log('output pipe error', { process: this.label, stream, error: err.message });
        finish();
      });
      this.pipes.push(pipe);
    }
    if (this.sink) this.resumeOutput();
  }

  /** The process is gone: the output ends once the pipes are drained. */
  markExited(): void {
    this.exited = true;
    this.resizePipe?.end();
    this.maybeFinishOutput();
  }

  /** Drops whatever the pipes hold (a process that never started: its output is crun's error). */
  discard(): void {
    for (const p of this.pipes) {
      p.ended = true;
      p.readable.destroy();
    }
    this.pending = [];
    this.stdinPipe?.destroy();
    this.resizePipe?.destroy();
    this.markExited();
  }

  get finished(): boolean {
    return this.outputDone;
  }

  private deliver(stream: 1 | 2, data: Buffer) {
    const sink = this.sink;
    if (!sink) {
      // Cannot happen while the pipes are paused without a reader; keep the data rather than lose it.
      this.pauseOutput();
      this.pending.push({ stream, data });
      return;
    }
    if (!sink.write(stream, data)) {
      this.pauseOutput();
      sink.onceDrain(() => {
        if (this.sink === sink) this.resumeOutput();
      });
    }
  }

  private pauseOutput() {
    for (const p of this.pipes) p.readable.pause();
  }

  private resumeOutput() {
    const sink = this.sink;
    if (!sink) return;
    while (this.pending.length > 0) {
      const chunk = this.pending.shift() as { stream: 1 | 2; data: Buffer };
      if (!sink.write(chunk.stream, chunk.data)) {
        sink.onceDrain(() => {
          if (this.sink === sink) this.resumeOutput();
        });
        return;
      }
    }
    for (const p of this.pipes) if (!p.ended) p.readable.resume();
    this.maybeFinishOutput();
  }

  private maybeFinishOutput() {
    if (this.outputDone || !this.exited || this.pending.length > 0) return;
    if (this.pipes.some((p) => !p.ended)) return;
    this.outputDone = true;
    const sink = this.sink;
    this.sink = undefined;
    sink?.end();
  }

  /** Attaches the one reader; returns the function that detaches it (reader gone). */
  attachOutput(sink: OutputSink): () => void {
    if (this.sink) {
      throw new AgentError('AlreadyExists', `the output of ${this.label} is already being read`);
    }
    if (this.outputDone) {
      sink.end();
      return () => undefined;
    }
    this.sink = sink;
    this.resumeOutput();
    return () => {
      if (this.sink !== sink) return;
      this.sink = undefined;
      this.pauseOutput();
    };
  }

  private stdin(): Writable | undefined {
    if (!this.openStdin) {
      throw new AgentError('FailedPrecondition', `${this.label} was not created with an open stdin`);
    }
    if (this.stdinClosed || this.exited) return undefined;
    return this.stdinPipe;
  }

  /** Resolves once the pipe took the data (backpressure: waits while the process does not read). */
  async writeStdin(data: Buffer): Promise<void> {
    const stdin = this.stdin();
    if (!stdin || stdin.destroyed || data.length === 0) return;
    await new Promise<void>((resolve) => {
      const onDone = () => {
        stdin.off('close', onDone);
        stdin.off('drain', onDone);
        resolve();
      };
      stdin.once('close', onDone); // process gone: the data is dropped, as a closed pipe would
      if (stdin.write(data)) onDone();
      else stdin.once('drain', onDone);
    });
  }

  /** Sets the terminal's size (SIGWINCH in the process); a no-op without a terminal or once gone. */
  resize(rows: number, cols: number): void {
    const pipe = this.resizePipe;
    if (!pipe || pipe.destroyed || this.exited || rows === 0 || cols === 0) return;
    pipe.write(`${rows} ${cols}\n`);
  }

  /** Idempotent; a no-op for a process without an open stdin (it reads /dev/null). */
  closeStdin(): void {
    if (!this.openStdin) return;
    const stdin = this.stdin();
    this.stdinClosed = true;
    stdin?.end();
  }
}
