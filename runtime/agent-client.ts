/**
 * The host's client of the guest agent (guest/protocol/agent.proto), over the unix socket of QEMU's
 * chardev for the VM's virtio-serial port `agent.0`.
 *
 * Connection: one gRPC channel per VM, never shared with another channel (local subchannel pool),
 * for the VM's whole life; QEMU accepts one chardev connection at a time, so a second channel would
 * queue behind the first. Each connection is a guest session that starts with the handshake of
 * agent.proto ("Transport": hello with a fresh nonce, drop everything before the guest's ack),
 * layered under HTTP/2 through grpc-js's connector hook; without it a reconnect can receive the
 * tail of the previous session's output. The channel connects at once, even before the guest opened
 * the port: QEMU holds the bytes until it does, so the first Check completes when the agent is up.
 * close() cancels the calls in flight: grpc-js otherwise keeps the connection until they end.
 *
 * Operations: a deadline on every unary call (none on WaitProcess and ReadOutput, which wait on the
 * container, nor on WriteStdin, which waits while the process does not read its stdin); retries
 * only for Check (idempotent). gRPC statuses become common/errdefs errors here and nowhere else; a
 * start failure keeps the exit status Docker records as `exitCode` on the error.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import type { Socket } from 'node:net';
import path from 'node:path';
import { Readable, Transform } from 'node:stream';
import {
  type CapsuleError,
  CanceledError,
  ConflictError,
  DeadlineError,
  InvalidParameterError,
  NotFoundError,
  NotImplementedError,
  SystemError,
  UnavailableError,
} from '../common/errdefs';
import type { Logger } from '../common/logger';
import type {
  ArchiveInOptions,
  ExitResult,
  GuestPathStat,
  GuestProcess,
  GuestStats,
  OutputChunk,
} from './types';

/** Trailer on failed CreateContainer/StartContainer: Docker's State.ExitCode for the failure. */
export const EXIT_CODE_TRAILER = 'capsule-exit-code';

export interface AgentCheck {
  agentVersion: string;
  kernelRelease: string;
  /** Guest uptime (ms) when the agent answered, when it started, when it began serving. */
  uptimeMs: number;
  agentStartMs: number;
  agentReadyMs: number;
}

export interface CreateContainerParams {
  containerId: string;
  /** The OCI runtime spec (runtime/oci-spec.ts). */
  ociSpec: object;
  rootfsGuestPath: string;
  /** Docker's User string, resolved in the guest. */
  user: string;
  openStdin: boolean;
  /** Docker's WorkingDir, created in the rootfs when missing ("" = none). */
  workingDir: string;
  /** The terminal's initial size when the spec's process.terminal is true (0 = default). */
  terminalRows?: number;
  terminalCols?: number;
}

/** A process to run in a running container (agent.proto RunExec). */
export interface ExecProcessParams {
  containerId: string;
  execId: string;
  args: string[];
  /** The complete environment (the container's merged with the exec's). */
  env: string[];
  /** "" = the container's. */
  workingDir: string;
  /** Docker's User string; "" = the container's. */
  user: string;
  openStdin: boolean;
  tty: boolean;
  /** The terminal's initial size (tty only; 0 = default). */
  terminalRows?: number;
  terminalCols?: number;
}

/** An exec that runs (AgentClient.runExec). */
export interface StartedExec {
  pid: number;
  /** OutputChunks in the order the agent read them; ends after the last one. */
  output: Readable;
  exited: Promise<ExitResult>;
}

/** RunExec's ExecEvent as @grpc/proto-loader decodes it (defaults: unset messages are null). */
interface ExecEventMessage {
  started?: { pid: number } | null;
  output?: { stream: number; data: Buffer } | null;
  exited?: { exit_code: number; oom_killed: boolean } | null;
}

/** An error from an agent call; `exitCode` is set when the agent said which status Docker records. */
export type AgentCallError = CapsuleError & { exitCode?: number; grpcCode?: number };

export interface AgentClientOptions {
  /** QEMU's chardev socket for the agent port. */
  socketPath: string;
  /**
   * 'virtio-serial' (default): the socket is QEMU's chardev for the agent port, and each connection
   * starts with the session handshake. 'direct': the agent serves gRPC on the socket itself
   * (CAPSULE_AGENT_LISTEN, tests on the host).
   */
  transport?: 'virtio-serial' | 'direct';
  log?: Logger;
  /** agent.proto; found from the source tree by default. */
  protoPath?: string;
  /** Deadline of unary calls, ms (default 10 s). */
  callTimeoutMs?: number;
  /** Deadline of StartContainer, ms (default 60 s: crun sets up the container under TCG). */
  startTimeoutMs?: number;
}

/** The exit status Docker records for a failed start, from an error's cause chain. */
export function exitCodeOf(err: unknown): number | undefined {
  let current: unknown = err;
  for (let depth = 0; current !== undefined && current !== null && depth < 16; depth++) {
    const code = (current as { exitCode?: unknown }).exitCode;
    if (typeof code === 'number') return code;
    current = (current as { cause?: unknown }).cause;
  }
  return undefined;
}

/**
 * The one mapping from a gRPC status to the error taxonomy. The message is the agent's (`details`),
 * so what dockerd would have said reaches the API unchanged.
 */
export function errorFromStatus(err: Partial<grpc.ServiceError>): AgentCallError {
  const message = err.details || err.message || 'agent call failed';
  const options = { cause: err };
  let mapped: AgentCallError;
  switch (err.code) {
    case grpc.status.NOT_FOUND:
      mapped = new NotFoundError(message, options);
      break;
    case grpc.status.INVALID_ARGUMENT:
    case grpc.status.FAILED_PRECONDITION:
      mapped = new InvalidParameterError(message, options);
      break;
    case grpc.status.ALREADY_EXISTS:
      mapped = new ConflictError(message, options);
      break;
    case grpc.status.DEADLINE_EXCEEDED:
      mapped = new DeadlineError(message, options);
      break;
    case grpc.status.UNAVAILABLE:
      mapped = new UnavailableError(message, options);
      break;
    // Not in the original list, but the taxonomy has a class for each: a cancelled call (the host's
    // own close or destroy) is not a system failure, and an agent too old for a call says so.
    case grpc.status.CANCELLED:
      mapped = new CanceledError(message, options);
      break;
    case grpc.status.UNIMPLEMENTED:
      mapped = new NotImplementedError(message, options);
      break;
    default:
      mapped = new SystemError(message, options);
  }
  if (err.code !== undefined) mapped.grpcCode = err.code;
  const trailer = err.metadata?.get(EXIT_CODE_TRAILER)[0];
  if (trailer !== undefined) {
    const code = Number.parseInt(String(trailer), 10);
    if (Number.isInteger(code)) mapped.exitCode = code;
  }
  return mapped;
}

/** guest/protocol/agent.proto, from source (runtime/) or compiled (dist/runtime/) alike. */
export function findAgentProto(): string {
  const fromEnv = process.env.CAPSULE_AGENT_PROTO;
  if (fromEnv && existsSync(fromEnv)) return fromEnv;
  let dir = __dirname;
  for (let i = 0; i < 6; i++) {
    const candidate = path.join(dir, 'guest', 'protocol', 'agent.proto');
    if (existsSync(candidate)) return candidate;
    dir = path.dirname(dir);
  }
  throw new SystemError(`guest/protocol/agent.proto not found above ${__dirname}`);
}

/**
 * The session handshake of the virtio-serial transport (agent.proto, "Transport"): the guest sees
 * every host connection as one byte stream with no boundaries, so each connection starts with a
 * hello carrying a fresh nonce, and everything the guest sent before its ack of that nonce (the
 * tail of an earlier session) is dropped here.
 */
export const SESSION_HELLO = '\0capsule-session-hello ';
export const SESSION_ACK = '\0capsule-session-ack ';
/** Stale bytes tolerated before the ack; more means the peer is not an agent. */
const MAX_STALE_BYTES = 256 * 1024 * 1024;

export function sessionHandshake(socket: Socket, nonce = randomBytes(16).toString('hex')): Promise<void> {
  const ack = Buffer.from(`${SESSION_ACK}${nonce}\n`, 'latin1');
  return new Promise<void>((resolve, reject) => {
    let tail = Buffer.alloc(0);
    let stale = 0;
    const done = (err?: Error) => {
      socket.off('data', onData);
      socket.off('close', onClose);
      socket.off('error', onError);
      if (err) reject(err);
      else resolve();
    };
    const onData = (chunk: Buffer) => {
      const buf = tail.length > 0 ? Buffer.concat([tail, chunk]) : chunk;
      const at = buf.indexOf(ack);
      if (at >= 0) {
        socket.pause();
        const rest = buf.subarray(at + ack.length);
        if (rest.length > 0) socket.unshift(rest); // http2 picks up what is buffered
        done();
        return;
      }
      const keep = Math.min(buf.length, ack.length - 1);
      stale += buf.length - keep;
      tail = Buffer.from(buf.subarray(buf.length - keep));
      if (stale > MAX_STALE_BYTES) done(new Error(`no session ack after ${stale} bytes`));
    };
    const onClose = () => done(new Error('connection closed before the agent acknowledged the session'));
    const onError = (err: Error) => done(err);
    socket.on('data', onData);
    socket.once('close', onClose);
    socket.once('error', onError);
    socket.write(`${SESSION_HELLO}${nonce}\n`, 'latin1');
  });
}

/**
 * Insecure channel credentials whose connector runs the session handshake on each new connection
 * before HTTP/2 starts: grpc-js's hook for layering a transport (it is how TLS is added).
 */
class AgentSessionCredentials extends grpc.ChannelCredentials {
  _isSecure(): boolean {
    return false;
  }
  _equals(other: grpc.ChannelCredentials): boolean {
    return other === this;
  }
  override compose(): grpc.ChannelCredentials {
    throw new Error('the agent channel takes no call credentials');
  }
  _createSecureConnector(): ReturnType<grpc.ChannelCredentials['_createSecureConnector']> {
    const callCredentials = grpc.CallCredentials.createEmpty();
    return {
      connect: async (socket: Socket) => {
        await sessionHandshake(socket);
        return { socket, secure: false };
      },
      waitForReady: () => Promise.resolve(),
      getCallCredentials: () => callCredentials,
      destroy: () => undefined,
    };
  }
}

const definitions = new Map<string, grpc.ServiceClientConstructor>();

function agentConstructor(protoPath: string): grpc.ServiceClientConstructor {
  let ctor = definitions.get(protoPath);
  if (!ctor) {
    const definition = protoLoader.loadSync(protoPath, {
      keepCase: true,
      longs: Number,
      enums: Number,
      defaults: true,
    });
    ctor = (
      grpc.loadPackageDefinition(definition) as unknown as {
        capsule: { agent: { v1: { Agent: grpc.ServiceClientConstructor } } };
      }
    ).capsule.agent.v1.Agent;
    definitions.set(protoPath, ctor);
  }
  return ctor;
}

type UnaryMethod = (
  request: unknown,
  metadata: grpc.Metadata,
  options: grpc.CallOptions,
  callback: (err: grpc.ServiceError | null, response?: unknown) => void,
) => grpc.ClientUnaryCall;
type StreamMethod = (request: unknown, options?: grpc.CallOptions) => grpc.ClientReadableStream<unknown>;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

interface CheckResponse {
  agent_version: string;
  kernel_release: string;
  uptime_ms: number;
  agent_start_ms: number;
  agent_ready_ms: number;
}

export class AgentClient {
  private readonly client: grpc.Client;
  private readonly callTimeoutMs: number;
  private readonly startTimeoutMs: number;
  private closed = false;
  /** Calls in flight: close() cancels them, or the connection would stay open until they end. */
  private readonly active = new Set<{ cancel(): void }>();

  constructor(private readonly opts: AgentClientOptions) {
    const Agent = agentConstructor(opts.protoPath ?? findAgentProto());
    const credentials =
      opts.transport === 'direct' ? grpc.credentials.createInsecure() : new AgentSessionCredentials();
    this.client = new Agent(`unix:${opts.socketPath}`, credentials, {
      // One connection per VM: never reuse a subchannel another client opened to this socket.
      'grpc.use_local_subchannel_pool': 1,
      // Reconnecting means a new guest session, which is fine; do it promptly.
      'grpc.initial_reconnect_backoff_ms': 100,
      'grpc.max_reconnect_backoff_ms': 1000,
      'grpc.enable_retries': 0,
      'grpc.max_receive_message_length': 16 * 1024 * 1024,
    });
    this.callTimeoutMs = opts.callTimeoutMs ?? 10_000;
    this.startTimeoutMs = opts.startTimeoutMs ?? 60_000;
  }

  private unary<Res>(method: string, request: object, timeoutMs: number | null): Promise<Res> {
    if (this.closed) return Promise.reject(this.closedError());
    const fn = (this.client as unknown as Record<string, UnaryMethod>)[method];
    if (!fn) return Promise.reject(new SystemError(`agent has no method ${method}`));
    const options: grpc.CallOptions = timeoutMs === null ? {} : { deadline: Date.now() + timeoutMs };
    return new Promise<Res>((resolve, reject) => {
      const call: grpc.ClientUnaryCall = fn.call(
        this.client,
        request,
        new grpc.Metadata(),
        options,
        (err, response) => {
          this.active.delete(call);
          if (err) reject(errorFromStatus(err));
          else resolve(response as Res);
        },
      );
      this.active.add(call);
    });
  }

  /** Opens a server-streaming call, tracked so that close() cancels it. */
  private serverStream(method: string, request: object): grpc.ClientReadableStream<unknown> {
    const fn = (this.client as unknown as Record<string, StreamMethod>)[method] as StreamMethod;
    const call = fn.call(this.client, request);
    this.active.add(call);
    call.on('status', () => this.active.delete(call));
    return call;
  }

  private closedError(): UnavailableError {
    return new UnavailableError(`agent client for ${this.opts.socketPath} is closed`);
  }

  // ---- health -------------------------------------------------------------------------------

  private async checkOnce(timeoutMs: number): Promise<AgentCheck> {
    const r = await this.unary<CheckResponse>('Check', {}, timeoutMs);
    return {
      agentVersion: r.agent_version,
      kernelRelease: r.kernel_release,
      uptimeMs: Number(r.uptime_ms),
      agentStartMs: Number(r.agent_start_ms),
      agentReadyMs: Number(r.agent_ready_ms),
    };
  }

  /** Check, retried (it is idempotent) while the agent is unreachable, within one deadline. */
  async check(timeoutMs = this.callTimeoutMs): Promise<AgentCheck> {
    return this.retryCheck(timeoutMs, 3);
  }

  /**
   * Polls Check until the agent answers or `deadlineMs` passes (then DeadlineError): after boot,
   * the first call completes as soon as the agent serves.
   */
  async waitReady(deadlineMs: number): Promise<AgentCheck> {
    return this.retryCheck(deadlineMs, Number.POSITIVE_INFINITY);
  }

  private async retryCheck(totalMs: number, attempts: number): Promise<AgentCheck> {
    const deadline = Date.now() + totalMs;
    let last: unknown;
    for (let attempt = 0; attempt < attempts; attempt++) {
      const remaining = deadline - Date.now();
      if (remaining <= 0) break;
      try {
        return await this.checkOnce(Math.min(remaining, 5000));
      } catch (err) {
        last = err;
        if (!(err instanceof UnavailableError || err instanceof DeadlineError) || this.closed) throw err;
        await sleep(Math.min(100, Math.max(0, deadline - Date.now())));
      }
    }
    throw new DeadlineError(
      `agent at ${this.opts.socketPath} not ready within ${totalMs} ms: ${last instanceof Error ? last.message : 'no answer'}`,
      { cause: last },
    );
  }

  // ---- containers ---------------------------------------------------------------------------

  async createContainer(p: CreateContainerParams): Promise<void> {
    await this.unary(
      'CreateContainer',
      {
        container_id: p.containerId,
        oci_spec_json: JSON.stringify(p.ociSpec),
        rootfs_guest_path: p.rootfsGuestPath,
        user: p.user,
        open_stdin: p.openStdin,
        working_dir: p.workingDir,
        terminal_rows: p.terminalRows ?? 0,
        terminal_cols: p.terminalCols ?? 0,
      },
      this.callTimeoutMs,
    );
  }

  async startContainer(containerId: string): Promise<void> {
    await this.unary('StartContainer', { container_id: containerId }, this.startTimeoutMs);
  }

  /**
   * The process's output as an object-mode Readable of OutputChunk, with backpressure down to the
   * guest's pipes. It ends when the process exited and its output is drained; it errors (with a
   * mapped error) if the stream breaks. Destroying it cancels the call.
   */
  readOutput(containerId: string, execId = ''): Readable {
    if (this.closed) {
      const failed = new Readable({ objectMode: true, read() {} });
      failed.destroy(this.closedError());
      return failed;
    }
    const call = this.serverStream('ReadOutput', { container_id: containerId, exec_id: execId });
    const out = new Transform({
      objectMode: true,
      transform(msg: { stream: number; data: Buffer }, _enc, done) {
        const chunk: OutputChunk = { stream: msg.stream === 2 ? 2 : 1, data: msg.data };
        done(null, chunk);
      },
    });
    call.on('error', (err: grpc.ServiceError) => out.destroy(errorFromStatus(err)));
    out.on('close', () => call.cancel());
    call.pipe(out);
    return out;
  }

  // ---- archive (docker cp, export): resolved in the guest, see guest/agent/archive.ts ----------

  async statPath(containerId: string, p: string, containerName: string): Promise<GuestPathStat> {
    const res = await this.unary<{
      name: string;
      size: number;
      mode: number;
      mtime_ns: string;
      link_target: string;
    }>('StatPath', { container_id: containerId, path: p, container_name: containerName }, this.callTimeoutMs);
    return {
      name: res.name,
      size: Number(res.size),
      mode: Number(res.mode),
      mtimeNs: BigInt(res.mtime_ns || '0'),
      linkTarget: res.link_target,
    };
  }

  /** The tar bytes of ArchiveOut; a mapped error destroys the stream. Destroying it cancels the call. */
  archiveOut(containerId: string, p: string, containerName: string, wholeRootfs: boolean): Readable {
    if (this.closed) {
      const failed = new Readable({ read() {} });
      failed.destroy(this.closedError());
      return failed;
    }
    const call = this.serverStream('ArchiveOut', {
      container_id: containerId,
      path: p,
      container_name: containerName,
      whole_rootfs: wholeRootfs,
    });
    const out = new Transform({
      readableObjectMode: false,
      writableObjectMode: true,
      transform(msg: { data: Buffer }, _enc, done) {
        done(null, msg.data);
      },
    });
    call.on('error', (err: grpc.ServiceError) => out.destroy(errorFromStatus(err)));
    out.on('close', () => call.cancel());
    call.pipe(out);
    return out;
  }

  /** Streams a tar to ArchiveIn in pieces of at most 1 MiB; resolves when the agent extracted it. */
  archiveIn(
    containerId: string,
    p: string,
    containerName: string,
    tar: AsyncIterable<Uint8Array>,
    options: ArchiveInOptions,
  ): Promise<void> {
    type ClientStream = (
      metadata: grpc.Metadata,
      options: grpc.CallOptions,
      callback: (err: grpc.ServiceError | null) => void,
    ) => grpc.ClientWritableStream<unknown>;
    const fn = (this.client as unknown as Record<string, ClientStream>).ArchiveIn as ClientStream;
    if (this.closed) return Promise.reject(this.closedError());
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      const call = fn.call(this.client, new grpc.Metadata(), {}, (err) => {
        settled = true;
        this.active.delete(call);
        if (err) reject(errorFromStatus(err));
        else resolve();
      });
      this.active.add(call);
      const head = {
        container_id: containerId,
        path: p,
        container_name: containerName,
        no_overwrite_dir_non_dir: options.noOverwriteDirNonDir,
        copy_uid_gid: options.copyUidGid,
        user: options.user,
      };
      void (async () => {
        call.write({ ...head, data: Buffer.alloc(0) });
        const piece = 1024 * 1024;
        for await (const chunk of tar) {
          for (let at = 0; at < chunk.length; at += piece) {
            if (settled) return;
            const ok = call.write({ data: Buffer.from(chunk.subarray(at, at + piece)) });
            if (!ok) await new Promise<void>((r) => call.once('drain', () => r()));
          }
        }
        call.end();
      })().catch((err: unknown) => {
        call.cancel();
        if (!settled) {
          settled = true;
          reject(err);
        }
      });
    });
  }

  /** Writes in pieces of at most 1 MiB (gRPC's default message limit is 4 MiB), in order. */
  async writeStdin(containerId: string, execId: string, data: Buffer): Promise<void> {
    const piece = 1024 * 1024;
    for (let at = 0; at < data.length; at += piece) {
      const chunk = data.subarray(at, at + piece);
      await this.unary('WriteStdin', { container_id: containerId, exec_id: execId, data: chunk }, null);
    }
  }

  async closeStdin(containerId: string, execId = ''): Promise<void> {
    await this.unary('CloseStdin', { container_id: containerId, exec_id: execId }, this.callTimeoutMs);
  }

  async signalProcess(containerId: string, execId: string, signal: number): Promise<void> {
    await this.unary(
      'SignalProcess',
      { container_id: containerId, exec_id: execId, signal },
      this.callTimeoutMs,
    );
  }

  /** Resolves when the process has exited (no deadline). */
  async waitProcess(containerId: string, execId = ''): Promise<ExitResult> {
    const r = await this.unary<{ exit_code: number; oom_killed: boolean }>(
      'WaitProcess',
      { container_id: containerId, exec_id: execId },
      null,
    );
    return { exitCode: r.exit_code, oomKilled: r.oom_killed };
  }

  /**
   * Starts an extra process in the running container (RunExec): resolves once it runs, with its
   * guest pid, its output (OutputChunks; ends after the last one) and its exit. A process that
   * cannot start rejects with dockerd's message and `exitCode` 126; one that does not start within
   * the start timeout rejects with DeadlineError. `exited` rejects when the stream breaks before the
   * exit was reported (the VM or the connection went away).
   */
  runExec(p: ExecProcessParams): Promise<StartedExec> {
    if (this.closed) return Promise.reject(this.closedError());
    const call = this.serverStream('RunExec', {
      container_id: p.containerId,
      exec_id: p.execId,
      args: p.args,
      env: p.env,
      working_dir: p.workingDir,
      user: p.user,
      open_stdin: p.openStdin,
      tty: p.tty,
      terminal_rows: p.terminalRows ?? 0,
      terminal_cols: p.terminalCols ?? 0,
    });
    let settleExit!: { resolve: (r: ExitResult) => void; reject: (e: Error) => void };
    const exited = new Promise<ExitResult>((resolve, reject) => (settleExit = { resolve, reject }));
    // Nobody waits on it when the start fails.
    exited.catch(() => undefined);
    let exit: ExitResult | undefined;
    return new Promise<StartedExec>((resolve, reject) => {
      let started = false;
      const timer = setTimeout(() => {
        reject(new DeadlineError(`exec ${p.execId} did not start within ${this.startTimeoutMs} ms`));
        call.cancel();
      }, this.startTimeoutMs);
      const output = new Transform({
        objectMode: true,
        highWaterMark: 16,
        transform(msg: ExecEventMessage, _enc, done) {
          if (msg.started) {
            started = true;
            clearTimeout(timer);
            resolve({ pid: msg.started.pid, output, exited });
            done();
          } else if (msg.output) {
            const chunk: OutputChunk = { stream: msg.output.stream === 2 ? 2 : 1, data: msg.output.data };
            done(null, chunk);
          } else {
            if (msg.exited) exit = { exitCode: msg.exited.exit_code, oomKilled: msg.exited.oom_killed };
            done();
          }
        },
        flush(done) {
          if (exit) settleExit.resolve(exit);
          else
            settleExit.reject(
              new UnavailableError(`exec ${p.execId}: the agent ended its stream without an exit`),
            );
          done();
        },
      });
      call.on('error', (err: grpc.ServiceError) => {
        const mapped = errorFromStatus(err);
        if (!started) {
          clearTimeout(timer);
          reject(mapped);
        }
        settleExit.reject(mapped);
        // Before the start nobody holds `output` (or listens for its errors).
        output.destroy(started ? mapped : undefined);
      });
      output.on('close', () => call.cancel());
      call.pipe(output);
    });
  }

  /** Sets the size of a process's terminal (a no-op in the guest for one without a terminal). */
  async resizeTerminal(containerId: string, execId: string, rows: number, cols: number): Promise<void> {
    await this.unary(
      'ResizeTerminal',
      { container_id: containerId, exec_id: execId, rows, cols },
      this.callTimeoutMs,
    );
  }

  async listProcesses(containerId: string): Promise<GuestProcess[]> {
    const r = await this.unary<{
      processes: {
        pid: number;
        ppid: number;
        uid: number;
        user: string;
        start_time_sec: number;
        cpu_time_ms: number;
        elapsed_ms: number;
        tty: string;
        cmd: string;
        comm: string;
        state: string;
        nice: number;
        pgid: number;
        sid: number;
        tpgid: number;
        nlwp: number;
        vsz_kb: number;
        rss_kb: number;
        locked_kb: number;
        mem_total_kb: number;
        flags?: number;
        priority?: number;
        processor?: number;
        wchan?: string;
        threads?: {
          tid: number;
          comm: string;
          state: string;
          cpu_time_ms: number | string;
          start_time_sec: number | string;
          elapsed_ms: number | string;
          nice: number;
          flags: number;
          priority: number;
          processor: number;
          wchan: string;
        }[];
      }[];
    }>('ListProcesses', { container_id: containerId }, this.callTimeoutMs);
    return r.processes.map((p) => ({
      pid: p.pid,
      ppid: p.ppid,
      uid: p.uid,
      user: p.user,
      startTimeSec: Number(p.start_time_sec),
      cpuTimeMs: Number(p.cpu_time_ms),
      elapsedMs: Number(p.elapsed_ms),
      tty: p.tty,
      cmd: p.cmd,
      comm: p.comm,
      state: p.state,
      nice: p.nice,
      pgid: p.pgid,
      sid: p.sid,
      tpgid: p.tpgid,
      nlwp: p.nlwp,
      vszKb: Number(p.vsz_kb),
      rssKb: Number(p.rss_kb),
      lockedKb: Number(p.locked_kb),
      memTotalKb: Number(p.mem_total_kb),
      flags: p.flags ?? 0,
      priority: p.priority ?? 0,
      processor: p.processor ?? 0,
      wchan: p.wchan ?? '',
      threads: (p.threads ?? []).map((t) => ({
        tid: t.tid,
        comm: t.comm,
        state: t.state,
        cpuTimeMs: Number(t.cpu_time_ms),
        startTimeSec: Number(t.start_time_sec),
        elapsedMs: Number(t.elapsed_ms),
        nice: t.nice,
        flags: t.flags,
        priority: t.priority,
        processor: t.processor,
        wchan: t.wchan,
      })),
    }));
  }

  async statsContainer(containerId: string): Promise<GuestStats> {
    type Net = Record<
      | 'rx_bytes'
      | 'rx_packets'
      | 'rx_errors'
      | 'rx_dropped'
      | 'tx_bytes'
      | 'tx_packets'
      | 'tx_errors'
      | 'tx_dropped',
      number
    > & { name: string };
    const r = await this.unary<
      Record<string, number> & {
        memory_stat: Record<string, number>;
        io: { major: number; minor: number; op: string; value: number }[];
        networks: Net[];
      }
    >('StatsContainer', { container_id: containerId }, this.callTimeoutMs);
    const n = (v: unknown) => Number(v ?? 0);
    const memoryStat: Record<string, number> = {};
    for (const [k, v] of Object.entries(r.memory_stat ?? {})) memoryStat[k] = n(v);
    return {
      cpuUsageNs: n(r.cpu_usage_ns),
      cpuUserNs: n(r.cpu_user_ns),
      cpuSystemNs: n(r.cpu_system_ns),
      throttlingPeriods: n(r.throttling_periods),
      throttledPeriods: n(r.throttled_periods),
      throttledTimeNs: n(r.throttled_time_ns),
      systemCpuNs: n(r.system_cpu_ns),
      onlineCpus: n(r.online_cpus),
      memoryUsage: n(r.memory_usage),
      memoryLimit: n(r.memory_limit),
      memoryStat,
      pidsCurrent: n(r.pids_current),
      pidsLimit: n(r.pids_limit),
      io: (r.io ?? []).map((e) => ({ major: e.major, minor: e.minor, op: e.op, value: n(e.value) })),
      networks: (r.networks ?? []).map((x) => ({
        name: x.name,
        rxBytes: n(x.rx_bytes),
        rxPackets: n(x.rx_packets),
        rxErrors: n(x.rx_errors),
        rxDropped: n(x.rx_dropped),
        txBytes: n(x.tx_bytes),
        txPackets: n(x.tx_packets),
        txErrors: n(x.tx_errors),
        txDropped: n(x.tx_dropped),
      })),
      readTimeMs: n(r.read_time_ms),
    };
  }

  /**
   * Has the agent run a throwaway container through the real path once (agent.proto WarmUp), so
   * that the VM's first real container starts faster. `ociSpec` as for createContainer.
   */
  async warmUp(ociSpec: object, timeoutMs = this.startTimeoutMs): Promise<void> {
    await this.unary('WarmUp', { oci_spec_json: JSON.stringify(ociSpec) }, timeoutMs);
  }

  /** Flushes the guest's filesystems before power-off. */
  /** Steps the guest's clock to `hostUnixMs` (after a pause); resolves with the step in ms. */
  async syncClock(hostUnixMs: number): Promise<number> {
    const r = await this.unary<{ step_ms: number }>(
      'SyncClock',
      { host_unix_ms: Math.round(hostUnixMs) },
      this.callTimeoutMs,
    );
    return Number(r.step_ms);
  }

  async prepareShutdown(timeoutMs = this.callTimeoutMs): Promise<void> {
    await this.unary('PrepareShutdown', {}, timeoutMs);
  }

  /**
   * Cancels every call in flight and closes the channel. grpc-js closes a connection gracefully,
   * after its last stream: without the cancel, an open ReadOutput would keep this host session (and
   * QEMU's one chardev connection) alive, and the next client would wait behind it.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const call of this.active) call.cancel();
    this.active.clear();
    this.client.close();
  }
}
