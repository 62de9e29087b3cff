/**
 * The Agent service of guest/protocol/agent.proto over @grpc/grpc-js: decodes requests, calls the
 * ContainerManager, and maps AgentError kinds to gRPC statuses (the one place that does).
 */
import * as grpc from '@grpc/grpc-js';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import { ArchiveService } from './archive';
import { syncClock, type ClockOptions } from './clock';
import type { ContainerManager, OutputSink } from './containers';
import { AgentError, type AgentErrorKind } from './errors';
import { containerStats, listProcesses } from './stats';

export const AGENT_VERSION = '0.1.0';
export const EXIT_CODE_TRAILER = 'capsule-exit-code';

/** Guest uptime in ms, from /proc/uptime (os.uptime() is whole seconds). */
export function uptimeMs(): number {
  try {
    return Math.round(Number.parseFloat(readFileSync('/proc/uptime', 'utf8').split(' ')[0] ?? '0') * 1000);
  } catch {
    return Math.round(os.uptime() * 1000);
  }
}

const STATUS: Record<AgentErrorKind, grpc.status> = {
  InvalidArgument: grpc.status.INVALID_ARGUMENT,
  NotFound: grpc.status.NOT_FOUND,
  AlreadyExists: grpc.status.ALREADY_EXISTS,
  FailedPrecondition: grpc.status.FAILED_PRECONDITION,
  Unknown: grpc.status.UNKNOWN,
  Internal: grpc.status.INTERNAL,
};

export function toServiceError(err: unknown): Partial<grpc.ServiceError> {
  if (err instanceof AgentError) {
    const metadata = new grpc.Metadata();
    if (err.exitCode !== undefined) metadata.set(EXIT_CODE_TRAILER, String(err.exitCode));
    return { code: STATUS[err.kind], details: err.message, metadata };
  }
  return { code: grpc.status.INTERNAL, details: err instanceof Error ? err.message : String(err) };
}

// Request shapes as @grpc/proto-loader decodes them (keepCase, defaults: every field present).
interface ProcessRef {
  container_id: string;
  exec_id: string;
}
interface CreateContainerRequest {
  container_id: string;
  oci_spec_json: string;
  rootfs_guest_path: string;
  user: string;
  open_stdin: boolean;
  working_dir: string;
  terminal_rows: number;
  terminal_cols: number;
}

interface ExecProcessRequest {
  container_id: string;
  exec_id: string;
  args: string[];
  env: string[];
  working_dir: string;
  user: string;
  open_stdin: boolean;
  tty: boolean;
  terminal_rows: number;
  terminal_cols: number;
}

type ExecEvent =
  | { started: { pid: number } }
  | { output: { stream: number; data: Buffer } }
  | { exited: { exit_code: number; oom_killed: boolean } };

/**
 * RunExec: starts the exec, then moves its output to the stream until the pipes are drained, then
 * reports the exit. `started` is written before the output is attached, so it comes first.
 */
async function runExec(
  manager: ContainerManager,
  call: grpc.ServerWritableStream<ExecProcessRequest, ExecEvent>,
): Promise<void> {
  const req = call.request;
  const containerId = req.container_id;
  const execId = req.exec_id;
  const pid = await manager.exec({
    containerId,
    execId,
    args: req.args,
    env: req.env,
    workingDir: req.working_dir,
    user: req.user,
    openStdin: req.open_stdin,
    tty: req.tty,
    rows: req.terminal_rows,
    cols: req.terminal_cols,
  });
  call.write({ started: { pid } });
  const drained = new Promise<void>((resolve) => {
    const detach = manager.attachOutput(containerId, execId, {
      write: (stream, data) => call.write({ output: { stream, data } }),
      onceDrain: (listener) => call.once('drain', listener),
      end: () => {
        manager.outputFinished(containerId, execId);
        resolve();
      },
    });
    // The host went away or cancelled: stop moving output (the process runs on).
    call.on('cancelled', detach);
  });
  const status = await manager.wait(containerId, execId);
  await drained;
  call.write({ exited: { exit_code: status.exitCode, oom_killed: status.oomKilled } });
  call.end();
}

function unary<Req, Res>(
  handler: (request: Req) => Promise<Res> | Res,
): grpc.handleUnaryCall<Req, Res | Record<string, never>> {
  return (call, callback) => {
    Promise.resolve()
      .then(() => handler(call.request))
      .then(
        (response) => callback(null, response ?? {}),
        (err: unknown) => callback(toServiceError(err)),
      );
  };
}

function runSync(): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('sync', [], { stdio: 'ignore' });
    child.once('error', reject);
    child.once('exit', (code) =>
      code === 0 ? resolve() : reject(new Error(`sync exited with status ${code}`)),
    );
  });
}

export interface AgentTimes {
  startMs: number;
  readyMs: number;
}

export function createAgentService(
  manager: ContainerManager,
  times: AgentTimes,
  clock: ClockOptions,
): grpc.UntypedServiceImplementation {
  return {
    Check: unary(() => ({
      agent_version: AGENT_VERSION,
      kernel_release: os.release(),
      uptime_ms: uptimeMs(),
      agent_start_ms: times.startMs,
      agent_ready_ms: times.readyMs,
    })),

    CreateContainer: unary(async (req: CreateContainerRequest) => {
      await manager.create({
        containerId: req.container_id,
        ociSpecJson: req.oci_spec_json,
        rootfsGuestPath: req.rootfs_guest_path,
        user: req.user,
        openStdin: req.open_stdin,
        workingDir: req.working_dir,
        terminal: { rows: req.terminal_rows, cols: req.terminal_cols },
      });
    }),

    StartContainer: unary((req: { container_id: string }) => manager.start(req.container_id)),

    ReadOutput: (call: grpc.ServerWritableStream<ProcessRef, { stream: number; data: Buffer }>) => {
      const sink: OutputSink = {
        write: (stream, data) => call.write({ stream, data }),
        onceDrain: (listener) => call.once('drain', listener),
        end: () => call.end(),
      };
      let detach: () => void;
      const { container_id: containerId, exec_id: execId } = call.request;
      sink.end = () => {
        call.end();
        manager.outputFinished(containerId, execId);
      };
      try {
        detach = manager.attachOutput(containerId, execId, sink);
      } catch (err) {
        call.emit('error', toServiceError(err));
        return;
      }
      // The host went away (its session ended) or cancelled: stop moving output until a new reader.
      call.on('cancelled', detach);
      call.on('error', detach);
    },

    WriteStdin: unary((req: ProcessRef & { data: Buffer }) =>
      manager.writeStdin(req.container_id, req.exec_id, req.data),
    ),
    CloseStdin: unary((req: ProcessRef) => manager.closeStdin(req.container_id, req.exec_id)),
    SignalProcess: unary((req: ProcessRef & { signal: number }) =>
      manager.signal(req.container_id, req.exec_id, req.signal),
    ),
    WaitProcess: unary(async (req: ProcessRef) => {
      const status = await manager.wait(req.container_id, req.exec_id);
      return { exit_code: status.exitCode, oom_killed: status.oomKilled };
    }),
    RunExec: (call: grpc.ServerWritableStream<ExecProcessRequest, ExecEvent>) => {
      // A cancelled call has nobody to tell.
      void runExec(manager, call).catch((err: unknown) => {
        if (!call.cancelled) call.emit('error', toServiceError(err));
      });
    },
    ResizeTerminal: unary((req: ProcessRef & { rows: number; cols: number }) =>
      manager.resize(req.container_id, req.exec_id, req.rows, req.cols),
    ),
    ListProcesses: unary(async (req: { container_id: string }) => {
      const c = manager.describe(req.container_id);
      const processes = await listProcesses(c.cgroupDir, c.rootfs);
      return {
        processes: processes.map((p) => ({
          pid: p.pid,
          ppid: p.ppid,
          uid: p.uid,
          user: p.user,
          start_time_sec: p.startTimeSec,
          cpu_time_ms: p.cpuTimeMs,
          elapsed_ms: Math.round(p.elapsedSec * 1000),
          tty: p.tty,
          cmd: p.cmd,
          comm: p.comm,
          state: p.state,
          nice: p.nice,
          pgid: p.pgid,
          sid: p.sid,
          tpgid: p.tpgid,
          nlwp: p.nlwp,
          vsz_kb: p.vszKb,
          rss_kb: p.rssKb,
          locked_kb: p.lockedKb,
          mem_total_kb: p.memTotalKb,
          flags: p.flags,
          priority: p.priority,
          processor: p.processor,
          wchan: p.wchan,
          threads: p.threads.map((t) => ({
            tid: t.tid,
            comm: t.comm,
            state: t.state,
            cpu_time_ms: t.cpuTimeMs,
            start_time_sec: t.startTimeSec,
            elapsed_ms: Math.round(t.elapsedSec * 1000),
            nice: t.nice,
            flags: t.flags,
            priority: t.priority,
            processor: t.processor,
            wchan: t.wchan,
          })),
        })),
      };
    }),
    StatsContainer: unary(async (req: { container_id: string }) => {
      const c = manager.describe(req.container_id);
      const s = await containerStats(c.cgroupDir);
      return {
        cpu_usage_ns: s.cpuUsageNs,
        cpu_user_ns: s.cpuUserNs,
        cpu_system_ns: s.cpuSystemNs,
        throttling_periods: s.throttlingPeriods,
        throttled_periods: s.throttledPeriods,
        throttled_time_ns: s.throttledTimeNs,
        system_cpu_ns: s.systemCpuNs,
        online_cpus: s.onlineCpus,
        memory_usage: s.memoryUsage,
        memory_limit: s.memoryLimit,
        memory_stat: s.memoryStat,
        pids_current: s.pidsCurrent,
        pids_limit: s.pidsLimit,
        io: s.io,
        networks: s.networks.map((n) => ({
          name: n.name,
          rx_bytes: n.rxBytes,
          rx_packets: n.rxPackets,
          rx_errors: n.rxErrors,
          rx_dropped: n.rxDropped,
          tx_bytes: n.txBytes,
          tx_packets: n.txPackets,
          tx_errors: n.txErrors,
          tx_dropped: n.txDropped,
        })),
        read_time_ms: Date.now(),
      };
    }),
    PrepareShutdown: unary(() => runSync()),
    SyncClock: unary(async (req: { host_unix_ms: number }) => ({
      step_ms: await syncClock(req.host_unix_ms, clock),
    })),
    WarmUp: unary((req: { oci_spec_json: string }) => manager.warmUp(req.oci_spec_json)),
    ...archiveHandlers(new ArchiveService((id) => manager.describe(id).rootfs)),
  };
}

interface PathRequest {
  container_id: string;
  path: string;
  container_name: string;
}
interface ArchiveInChunk extends PathRequest {
  no_overwrite_dir_non_dir: boolean;
  copy_uid_gid: boolean;
  user: string;
  data: Buffer;
}

/** StatPath, ArchiveOut, ArchiveIn (guest/agent/archive.ts does the work). */
function archiveHandlers(archive: ArchiveService): grpc.UntypedServiceImplementation {
  return {
    StatPath: unary((req: PathRequest) => archive.stat(req.container_id, req.path, req.container_name)),

    ArchiveOut: (
      call: grpc.ServerWritableStream<PathRequest & { whole_rootfs: boolean }, { data: Buffer }>,
    ) => {
      const req = call.request;
      void (async () => {
        const tar = await archive.out(req.container_id, req.path, req.container_name, req.whole_rootfs);
        call.on('cancelled', () => tar.destroy());
        for await (const chunk of tar as AsyncIterable<Buffer>) {
          if (!call.write({ data: chunk }))
            await new Promise<void>((resolve) => call.once('drain', () => resolve()));
        }
        call.end();
      })().catch((err: unknown) => call.emit('error', toServiceError(err)));
    },

    ArchiveIn: (
      call: grpc.ServerReadableStream<ArchiveInChunk, Record<string, never>>,
      callback: grpc.sendUnaryData<Record<string, never>>,
    ) => {
      const messages = call[Symbol.asyncIterator]() as AsyncIterator<ArchiveInChunk>;
      void (async () => {
        const first = await messages.next();
        if (first.done) throw new AgentError('InvalidArgument', 'ArchiveIn: no request');
        const head = first.value;
        async function* data(): AsyncGenerator<Buffer> {
          if (head.data.length > 0) yield head.data;
          for (;;) {
            const next = await messages.next();
            if (next.done) return;
            yield next.value.data;
          }
        }
        const input = data();
        await archive.in(
          head.container_id,
          head.path,
          head.container_name,
          {
            noOverwriteDirNonDir: head.no_overwrite_dir_non_dir,
            copyUidGid: head.copy_uid_gid,
            user: head.user,
          },
          input,
        );
        // Whatever follows the tar's end (padding) is read so the call can complete.
        for await (const _ of input) {
          // discard
        }
      })().then(
        () => callback(null, {}),
        (err: unknown) => callback(toServiceError(err)),
      );
    },
  };
}
