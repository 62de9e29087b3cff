/**
 * The runtime's contract with the daemon: one sandbox (micro-VM) per container. The daemon never
 * sees QEMU, virtiofsd or the agent; it asks for a sandbox running a process and gets output,
 * stdin, signals and an exit status back.
 */
import type { Readable } from 'node:stream';

export type Accel = 'kvm' | 'tcg';

export interface ProcessSpec {
  /** argv after Docker's Entrypoint/Cmd merge; never empty. */
  args: string[];
  /** KEY=VALUE, image Env then container Env, with PATH defaulted as dockerd does. */
  env: string[];
  /** Docker's WorkingDir ("" means "/"). Created in the rootfs when missing. */
  cwd: string;
  /** Docker's User string, resolved inside the guest ("" = root). */
  user: string;
  openStdin: boolean;
  tty: boolean;
}

/** A published port: Docker's `-p [hostAddr:]hostPort:guestPort[/proto]`. */
export interface PortForward {
  proto: 'tcp' | 'udp';
  /** IPv4 address on the host to listen on; '' or '0.0.0.0' for every address. */
  hostAddr: string;
  hostPort: number;
  guestPort: number;
}

export interface SandboxSpec {
  /** Also names the rootfs in the VM: letters, digits, `_.-` (Docker's ids are 64 hex digits). */
  containerId: string;
  /** The container's hostname: set in its UTS namespace (OCI spec), not on the VM. */
  hostname: string;
  /** Unpacked image layer directories, lowest layer first (overlay lower dirs). */
  layerDirs: string[];
  /**
   * The container's persistent writable layer: the runtime keeps `upper/` and `work/` inside it.
   * It survives stop/start; the daemon removes it with the container.
   */
  containerLayerDir: string;
  /** Per-run scratch dir (sockets, shared dir, console log); the runtime empties it on teardown. */
  runDir: string;
  process: ProcessSpec;
  resources: { memoryMiB: number; vcpus: number };
  /** Published ports, forwarded from the host to the VM (which is the container's network). */
  portForwards?: PortForward[];
}

/** One chunk of process output; stream 1 = stdout, 2 = stderr (Docker's numbering). */
export interface OutputChunk {
  stream: 1 | 2;
  data: Buffer;
}

export interface ExitResult {
  /** The exit code, or 128 + signal number when the process was killed by a signal. */
  exitCode: number;
  oomKilled: boolean;
}

export interface RunningSandbox {
  /** QEMU's pid on the host (State.Pid). */
  readonly vmPid: number;
  /**
   * Object-mode stream of OutputChunk, in the order the guest produced it. It ends once the
   * process has exited and its output is drained. Not reading it pauses the process (backpressure).
   */
  readonly output: Readable;
  writeStdin(data: Buffer): Promise<void>;
  closeStdin(): Promise<void>;
  /** Sends a signal (number) to the container's init process. */
  signal(signo: number): Promise<void>;
  /**
   * Resolves after the process exited, its output ended, the VM is gone and the rootfs unmounted:
   * nothing of this run is left on the host but the container's writable layer.
   */
  readonly exited: Promise<ExitResult>;
  /** Kills the VM at once (rm -f, daemon shutdown); `exited` then resolves with 137. */
  destroy(): Promise<void>;
}

export interface RuntimeInfo {
  accel: Accel;
  /** Release of the guest kernel (what `uname -r` prints inside a container). */
  guestKernelRelease: string;
  hypervisor: string;
}

export interface SandboxRuntime {
  /**
   * Takes a booted VM from the warm pool when one fits (same resources), or boots one; shares the
   * container's rootfs with it, creates and starts its process. Each VM serves one container run
   * and is destroyed after it. Rejects with
   * a classified error (common/errdefs) carrying the OCI runtime's or the boot's reason, and
   * leaves no VM, process, mount or socket behind when it does.
   */
  start(spec: SandboxSpec): Promise<RunningSandbox>;
  info(): RuntimeInfo;
  /** Destroys every sandbox still running and the warm pool's VMs (daemon shutdown). */
  shutdown(): Promise<void>;
}
