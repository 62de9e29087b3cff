/**
 * Live attach streams of one container and its stdin, across runs.
 *
 * An attacher that connects while the container is not running is bound to the next run (that is
 * how `docker run` attaches before `start`); one that connects while it runs is bound to the
 * current run. When a run ends, the attachers bound to it are closed.
 *
 * Stdin that arrives before the process runs (`echo x | docker run -i …` sends bytes and EOF before
 * `/start`) is buffered and delivered, in order, once the process starts; an EOF from an attacher
 * then closes the process's stdin if the container is StdinOnce.
 */
import type { Logger } from '../common/logger';
import type { AttachSink, OutputChunk } from './types';

export interface Attacher {
  readonly sink: AttachSink;
  readonly stdout: boolean;
  readonly stderr: boolean;
  /** The run this attacher follows; undefined = the next run to start. */
  runId: number | undefined;
  /** While replaying logs: live chunks wait here. */
  held: OutputChunk[] | undefined;
}

/** The process side of a run, as the hub needs it. */
export interface RunStdin {
  writeStdin(data: Buffer): Promise<void>;
  closeStdin(): Promise<void>;
}

export class AttachHub {
  private readonly attachers = new Set<Attacher>();
  private currentRun: number | undefined;
  private io: RunStdin | undefined;
  private stdinClosed = false;
  private pending: Buffer[] = [];
  private pendingEof = false;
  private stdinChain: Promise<void> = Promise.resolve();

  constructor(
    private readonly options: () => { openStdin: boolean; stdinOnce: boolean },
    private readonly log: Logger,
  ) {}

  get count(): number {
    return this.attachers.size;
  }

  add(sink: AttachSink, stdout: boolean, stderr: boolean, holdForReplay: boolean): Attacher {
    const attacher: Attacher = {
      sink,
      stdout,
      stderr,
      runId: this.currentRun,
      held: holdForReplay ? [] : undefined,
    };
    this.attachers.add(attacher);
    return attacher;
  }

  /** Ends the replay phase: held live chunks go out first. */
  release(attacher: Attacher): void {
    const held = attacher.held ?? [];
    attacher.held = undefined;
    for (const chunk of held) this.deliver(attacher, chunk);
  }

  remove(attacher: Attacher): void {
    this.attachers.delete(attacher);
  }

  /** Process output to every attacher of the current run; resolves when they can take more. */
  broadcast(chunk: OutputChunk): Promise<void> | undefined {
    let waits: Promise<void>[] | undefined;
    for (const attacher of this.attachers) {
      if (attacher.runId !== this.currentRun || this.currentRun === undefined) continue;
      if (attacher.held) {
        attacher.held.push(chunk);
        continue;
      }
      if (!this.deliver(attacher, chunk)) (waits ??= []).push(attacher.sink.drained());
    }
    return waits ? Promise.all(waits).then(() => undefined) : undefined;
  }

  private deliver(attacher: Attacher, chunk: OutputChunk): boolean {
    if (chunk.stream === 1 ? !attacher.stdout : !attacher.stderr) return true;
    return attacher.sink.write(chunk);
  }

  /** A run started: bind waiting attachers and hand over buffered stdin. */
  beginRun(runId: number, io: RunStdin): void {
    this.currentRun = runId;
    this.io = io;
    this.stdinClosed = false;
    for (const attacher of this.attachers) if (attacher.runId === undefined) attacher.runId = runId;
    const pending = this.pending;
    this.pending = [];
    for (const data of pending) this.forward(data);
    if (this.pendingEof) {
      this.pendingEof = false;
      this.closeStdin();
    }
  }

  /** The run ended: its attachers are closed; stdin buffered for it is dropped. */
  endRun(runId: number): void {
    if (this.currentRun === runId) {
      this.currentRun = undefined;
      this.io = undefined;
    }
    for (const attacher of [...this.attachers]) {
      if (attacher.runId !== runId) continue;
      this.attachers.delete(attacher);
      if (attacher.held) this.release(attacher);
      attacher.sink.close();
    }
  }

  /**
   * A start failed: attachers waiting for that run are closed (as dockerd resets the container's
   * streams), and stdin buffered for it is dropped.
   */
  failRun(): void {
    for (const attacher of [...this.attachers]) {
      if (attacher.runId !== undefined) continue;
      this.attachers.delete(attacher);
      if (attacher.held) this.release(attacher);
      attacher.sink.close();
    }
    this.pending = [];
    this.pendingEof = false;
  }

  /** Closes every attacher (container removed). */
  closeAll(): void {
    for (const attacher of [...this.attachers]) {
      this.attachers.delete(attacher);
      attacher.sink.close();
    }
    this.pending = [];
    this.pendingEof = false;
  }

  writeStdin(data: Buffer): void {
    if (!this.options().openStdin || data.length === 0) return;
    if (this.io === undefined) {
      if (!this.pendingEof) this.pending.push(Buffer.from(data));
      return;
    }
    this.forward(data);
  }

  /** An attacher's stdin reached EOF. */
  endStdin(): void {
    const { openStdin, stdinOnce } = this.options();
    if (!openStdin || !stdinOnce) return;
    if (this.io === undefined) {
      this.pendingEof = true;
      return;
    }
    this.closeStdin();
  }

  private forward(data: Buffer): void {
    const io = this.io;
    if (!io || this.stdinClosed) return;
    this.stdinChain = this.stdinChain
      .then(() => io.writeStdin(data))
      .catch((err: unknown) => {
        this.log.debug('stdin write failed', { error: String(err) });
      });
  }

  private closeStdin(): void {
    const io = this.io;
    if (!io || this.stdinClosed) return;
    this.stdinClosed = true;
    this.stdinChain = this.stdinChain
      .then(() => io.closeStdin())
      .catch((err: unknown) => {
        this.log.debug('stdin close failed', { error: String(err) });
      });
  }
}
