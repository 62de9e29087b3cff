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
  /** The terminal's initial size (Docker's ConsoleSize: [rows, cols]); 0 = the default. */
  consoleSize?: [number, number];
}

/** A published port: Docker's `-p [hostAddr:]hostPort:guestPort[/proto]`. */
export interface PortForward {
  proto: 'tcp' | 'udp';
  /** IPv4 address on the host to listen on; '' or '0.0.0.0' for every address. */
  hostAddr: string;
  hostPort: number;
  guestPort: number;
}

/** A resource limit of the container's processes (Docker's --ulimit name=soft:hard). */
export interface Ulimit {
  /** Docker's name: nofile, nproc, core … (RLIMIT_<NAME>). */
  name: string;
  soft: number;
  hard: number;
}

/**
 * What Docker's HostConfig asks of the container inside its VM, applied by the OCI spec
 * (runtime/oci-spec.ts) as dockerd applies it; the daemon validated it at create.
 */
export interface ContainerOptions {
  readonlyRootfs?: boolean;
  /** /dev/shm size in bytes; 0 or absent = Docker's 64 MiB. */
  shmSizeBytes?: number;
  /** HostConfig.Tmpfs: container path → mount options ("size=1m,exec"). */
  tmpfs?: Record<string, string>;
  /** --cap-add / --cap-drop as given ("ALL", "sys_admin", "CAP_CHOWN"). */
  capAdd?: string[];
  capDrop?: string[];
  /** Every capability and device, no masked or read-only paths: of the VM, not of the host. */
  privileged?: boolean;
  ulimits?: Ulimit[];
  /** --init: tini from the agent disk runs as the container's pid 1 (/sbin/docker-init). */
  init?: boolean;
  /** `-m` in bytes: the container's cgroup memory limit (0/absent = none). */
  memoryLimitBytes?: number;
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
  /** The container's OCI options (read-only rootfs, tmpfs, capabilities, ulimits, init …). */
  options?: ContainerOptions;
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

/** dockerd's ContainerPathStat, as the guest agent found it (mode in Go's os.FileMode bits). */
export interface GuestPathStat {
  name: string;
  size: number;
  mode: number;
  mtimeNs: bigint;
  /** For a symlink: the container path it finally resolves to; else "". */
  linkTarget: string;
}

export interface ArchiveInOptions {
  noOverwriteDirNonDir: boolean;
  /** Entries get the uid/gid of `user` (Docker's User string) in the container. */
  copyUidGid: boolean;
  user: string;
}

/** An extra process in a running container (docker exec). */
export interface ExecSpec {
  /** Names the process in the guest: letters, digits, `_.-`. */
  execId: string;
  args: string[];
  /** The complete environment (the daemon merged the container's and the exec's). */
  env: string[];
  /** "" = the container's working dir. */
  cwd: string;
  /** Docker's User string; "" = the container's user. */
  user: string;
  openStdin: boolean;
  /** A terminal: the output is one stream (stdout, raw). */
  tty: boolean;
  /** The terminal's initial size ([rows, cols]; 0 = the default). */
  consoleSize?: [number, number];
}

export interface RunningExec {
  /** The process's pid in the guest (Docker's exec Pid). */
  readonly pid: number;
  /** Object-mode stream of OutputChunk; ends once the process exited and its output is drained. */
  readonly output: Readable;
  writeStdin(data: Buffer): Promise<void>;
  closeStdin(): Promise<void>;
  signal(signo: number): Promise<void>;
  /** Sets the terminal's size (a no-op without a terminal). */
  resize(rows: number, cols: number): Promise<void>;
  /** The exit status; 137 when the sandbox went away under the process. */
  readonly exited: Promise<ExitResult>;
}

/** One process of a container, as the guest lists it (docker top). */
export interface GuestProcess {
  pid: number;
  ppid: number;
  uid: number;
  /** From the container's /etc/passwd, else the uid in decimal. */
  user: string;
  startTimeSec: number;
  cpuTimeMs: number;
  elapsedMs: number;
  /** "?" or pts/N. */
  tty: string;
  /** The command line, or `[comm]` for a process without one. */
  cmd: string;
  /** The command name (/proc/<pid>/stat's, at most 15 bytes). */
  comm: string;
  /** The state letter (R, S, D, Z, T…). */
  state: string;
  nice: number;
  pgid: number;
  sid: number;
  /** The terminal's foreground process group; -1 without a terminal. */
  tpgid: number;
  /** Threads. */
  nlwp: number;
  vszKb: number;
  rssKb: number;
  lockedKb: number;
  /** The VM's MemTotal (KiB), the same for every process. */
  memTotalKb: number;
  /** /proc/<pid>/stat's flags, priority (20 = nice 0) and last CPU (ps's F, PRI, PSR). */
  flags: number;
  priority: number;
  processor: number;
  /** Where it waits in the kernel; "0" or "" when not waiting (ps's WCHAN "-"). */
  wchan: string;
  /** Its threads, main thread first, when it has more than one; else empty (ps -L, -T). */
  threads: GuestThread[];
}

/** A thread's own figures; the rest of a `ps -L` row is its process's. */
export interface GuestThread {
  tid: number;
  comm: string;
  state: string;
  cpuTimeMs: number;
  startTimeSec: number;
  elapsedMs: number;
  nice: number;
  flags: number;
  priority: number;
  processor: number;
  wchan: string;
}

/** A container's figures, read in the guest (docker stats). */
export interface GuestStats {
  /** The container cgroup's cpu.stat, ns. */
  cpuUsageNs: number;
  cpuUserNs: number;
  cpuSystemNs: number;
  throttlingPeriods: number;
  throttledPeriods: number;
  throttledTimeNs: number;
  /** The VM's CPU time over all its CPUs since boot, ns. */
  systemCpuNs: number;
  onlineCpus: number;
  memoryUsage: number;
  /** The VM's RAM. */
  memoryLimit: number;
  memoryStat: Record<string, number>;
  pidsCurrent: number;
  /** 0 = no limit. */
  pidsLimit: number;
  io: { major: number; minor: number; op: string; value: number }[];
  networks: {
    name: string;
    rxBytes: number;
    rxPackets: number;
    rxErrors: number;
    rxDropped: number;
    txBytes: number;
    txPackets: number;
    txErrors: number;
    txDropped: number;
  }[];
  /** Guest clock at the reading, ms since the epoch. */
  readTimeMs: number;
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
  /** Sets the size of the init process's terminal (a no-op for a container without a tty). */
  resize(rows: number, cols: number): Promise<void>;
  /**
   * docker pause: stops the whole VM (its vCPUs) until resume(); nothing in the guest runs, the
   * agent included, so other calls wait until then. destroy() works on a paused sandbox.
   */
  pause(): Promise<void>;
  /** docker unpause: lets the VM run again. */
  resume(): Promise<void>;
  /**
   * Resolves after the process exited, its output ended, the VM is gone and the rootfs unmounted:
   * nothing of this run is left on the host but the container's writable layer.
   */
  readonly exited: Promise<ExitResult>;
  /**
   * Resolves as soon as the container's process is known to have exited (or the VM is gone), before
   * the run is torn down: a healthcheck probe that failed because its container died is no probe
   * result (daemon/health.ts).
   */
  readonly processExited: Promise<void>;
  /**
   * docker cp / export of the running container, done by the guest agent: every path is resolved
   * in the guest, confined to the container's rootfs (the host never follows a container's
   * symlink). `containerName` only goes into error messages.
   */
  statPath(path: string, containerName: string): Promise<GuestPathStat>;
  /** The tar of `path` (cp's naming), or of the whole rootfs when `wholeRootfs` (export). */
  archiveOut(path: string, containerName: string, wholeRootfs: boolean): Readable;
  /** Extracts `tar` into the directory `path` of the container. */
  archiveIn(
    path: string,
    containerName: string,
    tar: AsyncIterable<Uint8Array>,
    options: ArchiveInOptions,
  ): Promise<void>;
  /** Kills the VM at once (rm -f, daemon shutdown); `exited` then resolves with 137. */
  destroy(): Promise<void>;
  /**
   * Starts an extra process in the container (docker exec) and resolves once it runs. A process
   * that cannot start rejects with dockerd's message and `exitCode` 126 on the error.
   */
  exec(spec: ExecSpec): Promise<RunningExec>;
  /** The container's processes (docker top). */
  top(): Promise<GuestProcess[]>;
  /** The container's resource figures (docker stats). */
  stats(): Promise<GuestStats>;
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
