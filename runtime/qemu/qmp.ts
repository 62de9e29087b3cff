/**
 * A small QMP (QEMU Machine Protocol) client: JSON lines over the VM's QMP unix socket. Every
 * command carries a deadline; replies are matched to commands by `id`; asynchronous events go to
 * an optional listener. One client per VM; QEMU's QMP chardev serves one connection at a time.
 */
import net from 'node:net';
import { DeadlineError, SystemError, UnavailableError, messageOf } from '../../common/errdefs';
import { type HostForward, hostForwardOption } from './cmdline';

export const DEFAULT_QMP_TIMEOUT_MS = 5000;

export interface QmpEvent {
  event: string;
  data?: unknown;
  timestamp?: { seconds: number; microseconds: number };
}

export interface QmpStatus {
  status: string;
  running: boolean;
}

interface Pending {
  command: string;
  resolve(value: unknown): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

/** A QMP error reply ({"error": {"class", "desc"}}). */
export class QmpCommandError extends SystemError {
  constructor(
    readonly command: string,
    readonly errorClass: string,
    desc: string,
  ) {
    super(`QMP ${command}: ${errorClass}: ${desc}`);
  }
}

/** Reads the `{"QMP": …}` greeting line; returns what arrived after it. */
function readGreeting(socket: net.Socket, socketPath: string, timeoutMs: number): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    let text = '';
    const timer = setTimeout(() => {
      cleanup();
      reject(new DeadlineError(`QMP ${socketPath}: no greeting within ${timeoutMs} ms`));
    }, timeoutMs);
    const onData = (chunk: Buffer): void => {
      text += chunk.toString('utf8');
      const nl = text.indexOf('\n');
      if (nl < 0) return;
      cleanup();
      // Nothing else comes before the client speaks; pause so no byte is dropped meanwhile.
      socket.pause();
      try {
        const msg = JSON.parse(text.slice(0, nl)) as { QMP?: unknown };
        if (msg.QMP === undefined) throw new Error('not a QMP greeting');
        resolve(text.slice(nl + 1));
      } catch (err) {
        reject(new SystemError(`QMP ${socketPath}: bad greeting: ${messageOf(err)}`));
      }
    };
    const onError = (err: Error): void => {
      cleanup();
      reject(new UnavailableError(`QMP ${socketPath}: ${err.message}`, { cause: err }));
    };
    const onClose = (): void => {
      cleanup();
      reject(new UnavailableError(`QMP ${socketPath}: closed before the greeting`));
    };
    const cleanup = (): void => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('error', onError);
      socket.off('close', onClose);
    };
    socket.on('data', onData);
    socket.on('error', onError);
    socket.on('close', onClose);
  });
}

export class QmpClient {
  private buffer = '';
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private closedError: Error | undefined;

  private constructor(
    private readonly socket: net.Socket,
    private readonly onEvent?: (event: QmpEvent) => void,
  ) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.onData(chunk));
    socket.on('error', (err) =>
      this.fail(new UnavailableError(`QMP socket: ${err.message}`, { cause: err })),
    );
    socket.on('close', () => this.fail(new UnavailableError('QMP connection closed')));
    socket.resume();
  }

  /** Connects, reads the greeting and negotiates capabilities, all within `timeoutMs`. */
  static async connect(
    socketPath: string,
    options: { timeoutMs?: number; onEvent?: (event: QmpEvent) => void } = {},
  ): Promise<QmpClient> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_QMP_TIMEOUT_MS;
    const socket = net.connect(socketPath);
    let rest: string;
    try {
      rest = await readGreeting(socket, socketPath, timeoutMs);
    } catch (err) {
      socket.destroy();
      throw err;
    }
    const client = new QmpClient(socket, options.onEvent);
    client.onData(rest);
    try {
      await client.execute('qmp_capabilities', undefined, timeoutMs);
    } catch (err) {
      client.close();
      throw err;
    }
    return client;
  }

  /** Runs one command; rejects with QmpCommandError, DeadlineError or UnavailableError. */
  execute<T = unknown>(
    command: string,
    args?: Record<string, unknown>,
    timeoutMs = DEFAULT_QMP_TIMEOUT_MS,
  ): Promise<T> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = `capsule-${this.nextId++}`;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new DeadlineError(`QMP ${command}: no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      const msg = args === undefined ? { execute: command, id } : { execute: command, arguments: args, id };
      this.socket.write(JSON.stringify(msg) + '\n');
    });
  }

  async queryStatus(timeoutMs?: number): Promise<QmpStatus> {
    return this.execute<QmpStatus>('query-status', undefined, timeoutMs);
  }

  /** Pauses the vCPUs (docker pause). */
  async stop(timeoutMs?: number): Promise<void> {
    await this.execute('stop', undefined, timeoutMs);
  }

  /** Resumes the vCPUs (docker unpause). */
  async cont(timeoutMs?: number): Promise<void> {
    await this.execute('cont', undefined, timeoutMs);
  }

  /** Asks QEMU to exit. QEMU may close the connection before it replies: that counts as done. */
  async quit(timeoutMs?: number): Promise<void> {
    try {
      await this.execute('quit', undefined, timeoutMs);
    } catch (err) {
      if (err instanceof UnavailableError) return;
      throw err;
    }
  }

  /** Adds a port forward on the running VM's user-mode NIC (HMP `hostfwd_add`, no QMP command). */
  async hostForwardAdd(fwd: HostForward, timeoutMs?: number): Promise<void> {
    const rule = hostForwardOption(fwd).slice('hostfwd='.length);
    await this.hmp(`hostfwd_add net0 ${rule}`, timeoutMs);
  }

  /** Removes a port forward added at boot or by hostForwardAdd. */
  async hostForwardRemove(fwd: HostForward, timeoutMs?: number): Promise<void> {
    const rule = hostForwardOption(fwd).slice('hostfwd='.length);
    const [proto, addr, ports] = rule.split(':');
    await this.hmp(`hostfwd_remove net0 ${proto}:${addr}:${ports?.split('-')[0] ?? ''}`, timeoutMs);
  }

  /** An HMP command; HMP reports failure as output text, so any output other than success fails. */
  private async hmp(commandLine: string, timeoutMs?: number): Promise<string> {
    const out = await this.execute<string>(
      'human-monitor-command',
      { 'command-line': commandLine },
      timeoutMs,
    );
    const text = typeof out === 'string' ? out.trim() : '';
    if (text !== '' && !/^host forwarding rule for .* removed$/.test(text)) {
      throw new SystemError(`${commandLine}: ${text}`);
    }
    return text;
  }

  close(): void {
    this.fail(new UnavailableError('QMP client closed'));
    this.socket.destroy();
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    let nl: number;
    while ((nl = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, nl).trim();
      this.buffer = this.buffer.slice(nl + 1);
      if (line !== '') this.onMessage(line);
    }
  }

  private onMessage(line: string): void {
    let msg: { id?: unknown; return?: unknown; error?: { class?: string; desc?: string }; event?: string };
    try {
      msg = JSON.parse(line) as typeof msg;
    } catch {
      return; // not JSON: nothing we asked for
    }
    if (typeof msg.event === 'string') {
      this.onEvent?.(msg as QmpEvent);
      return;
    }
    if (typeof msg.id !== 'string') return;
    const pending = this.pending.get(msg.id);
    if (!pending) return; // timed out already
    this.pending.delete(msg.id);
    clearTimeout(pending.timer);
    if (msg.error) {
      pending.reject(
        new QmpCommandError(pending.command, msg.error.class ?? 'GenericError', msg.error.desc ?? ''),
      );
    } else {
      pending.resolve(msg.return);
    }
  }

  private fail(err: Error): void {
    this.closedError ??= err;
    for (const [id, pending] of this.pending) {
      this.pending.delete(id);
      clearTimeout(pending.timer);
      pending.reject(err);
    }
  }
}
