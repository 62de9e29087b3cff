/** Docker's /version and /info wire shapes, translated from the daemon's system view. */
import type { SystemInfo, VersionInfo } from '../../daemon/types';
import { formatRFC3339Nano } from '../../daemon/time';

export interface VersionComponent {
  Name: string;
  Version: string;
  Details?: Record<string, string>;
}

export interface VersionResponse {
  Platform: { Name: string };
  Components: VersionComponent[];
  Version: string;
  ApiVersion: string;
  MinAPIVersion: string;
  GitCommit: string;
  GoVersion: string;
  Os: string;
  Arch: string;
  KernelVersion: string;
  BuildTime: string;
}

export function toVersionResponse(
  v: VersionInfo,
  apiVersion: string,
  minApiVersion: string,
): VersionResponse {
  return {
    Platform: { Name: `Capsule ${v.version}` },
    Components: [
      {
        Name: 'Engine',
        Version: v.version,
        Details: {
          ApiVersion: apiVersion,
          Arch: v.arch,
          BuildTime: v.buildTime,
          Experimental: 'false',
          GitCommit: v.gitCommit,
          GoVersion: `node ${v.nodeVersion}`,
          KernelVersion: v.kernelVersion,
          MinAPIVersion: minApiVersion,
          Os: v.os,
        },
      },
      { Name: 'Hypervisor', Version: v.hypervisor, Details: { Accel: v.accel } },
    ],
    Version: v.version,
    ApiVersion: apiVersion,
    MinAPIVersion: minApiVersion,
    GitCommit: v.gitCommit,
    GoVersion: `node ${v.nodeVersion}`,
    Os: v.os,
    Arch: v.arch,
    KernelVersion: v.kernelVersion,
    BuildTime: v.buildTime,
  };
}

/** The storage driver name Capsule reports: host overlayfs shared into each VM. */
export const STORAGE_DRIVER = 'overlayfs';

const IPV4_CIDR = /^\d+\.\d+\.\d+\.\d+\/\d+$/;

/**
 * dockerd's RegistryConfig: insecure CIDRs (plus 127.0.0.0/8, always insecure) in
 * InsecureRegistryCIDRs, insecure names as non-secure IndexConfigs, mirrors on docker.io's
 * IndexConfig and in Mirrors.
 */
export function toRegistryConfig(insecure: string[], mirrors: string[]): Record<string, unknown> {
  const cidrs = insecure.filter((r) => IPV4_CIDR.test(r));
  if (!cidrs.includes('127.0.0.0/8')) cidrs.push('127.0.0.0/8');
  const names = insecure.filter((r) => !IPV4_CIDR.test(r));
  return {
    AllowNondistributableArtifactsCIDRs: [],
    AllowNondistributableArtifactsHostnames: [],
    InsecureRegistryCIDRs: cidrs,
    IndexConfigs: {
      'docker.io': { Name: 'docker.io', Mirrors: [...mirrors], Secure: true, Official: true },
      ...Object.fromEntries(names.map((r) => [r, { Name: r, Mirrors: [], Secure: false, Official: false }])),
    },
    Mirrors: [...mirrors],
  };
}

export function toInfoResponse(i: SystemInfo): Record<string, unknown> {
  return {
    ID: i.id,
    Containers: i.containers,
    ContainersRunning: i.containersRunning,
    ContainersPaused: i.containersPaused,
    ContainersStopped: i.containersStopped,
    Images: i.images,
    Driver: STORAGE_DRIVER,
    // `docker info` prints these pairs under "Storage Driver"; the acceleration shows there.
    DriverStatus: [
      ['Isolation', 'micro-VM per container'],
      ['Hypervisor', i.hypervisor],
      ['Acceleration', i.accel],
      ['Guest Kernel', i.kernelVersion],
    ],
    Plugins: {
      Volume: ['local'],
      Network: ['bridge', 'host', 'null'],
      Authorization: null,
      Log: ['json-file'],
    },
    MemoryLimit: true,
    SwapLimit: false,
    KernelMemory: false,
    KernelMemoryTCP: false,
    CpuCfsPeriod: true,
    CpuCfsQuota: true,
    CPUShares: false,
    CPUSet: false,
    PidsLimit: false,
    IPv4Forwarding: true,
    BridgeNfIptables: false,
    BridgeNfIp6tables: false,
    Debug: i.debug,
    NFd: 0,
    OomKillDisable: false,
    NGoroutines: 0,
    SystemTime: formatRFC3339Nano(i.systemTimeNs),
    LoggingDriver: 'json-file',
    CgroupDriver: 'none',
    CgroupVersion: '2',
    NEventsListener: i.eventsListeners,
    KernelVersion: i.kernelVersion,
    OperatingSystem: i.operatingSystem,
    OSVersion: i.osVersion,
    OSType: 'linux',
    Architecture: i.architecture,
    IndexServerAddress: 'https://index.docker.io/v1/',
    RegistryConfig: toRegistryConfig(i.insecureRegistries, i.registryMirrors),
    NCPU: i.ncpu,
    MemTotal: i.memTotal,
    GenericResources: null,
    DockerRootDir: i.dataRoot,
    HttpProxy: '',
    HttpsProxy: '',
    NoProxy: '',
    Name: i.name,
    Labels: [],
    ExperimentalBuild: false,
    ServerVersion: i.serverVersion,
    Runtimes: { [i.runtimeName]: { path: 'qemu-system-x86_64', runtimeArgs: [`-accel`, i.accel] } },
    DefaultRuntime: i.runtimeName,
    Swarm: {
      NodeID: '',
      NodeAddr: '',
      LocalNodeState: 'inactive',
      ControlAvailable: false,
      Error: '',
      RemoteManagers: null,
    },
    LiveRestoreEnabled: false,
    Isolation: '',
    InitBinary: '',
    ContainerdCommit: { ID: '', Expected: '' },
    RuncCommit: { ID: '', Expected: '' },
    InitCommit: { ID: '', Expected: '' },
    SecurityOptions: ['name=capsule-vm'],
    Warnings: null,
  };
}
