/**
 * The Agent service of guest/protocol/agent.proto over @grpc/grpc-js: decodes requests, calls the
 * ContainerManager, and maps AgentError kinds to gRPC statuses (the one place that does).
 */
import * as grpc from '@grpc/grpc-js';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import type { ContainerManager, OutputSink } from './containers';
import { AgentError, type AgentErrorKind } from './errors';

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
      try {
        detach = manager.attachOutput(call.request.container_id, call.request.exec_id, sink);
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
    PrepareShutdown: unary(() => runSync()),
    WarmUp: unary((req: { oci_spec_json: string }) => manager.warmUp(req.oci_spec_json)),
  };
}
