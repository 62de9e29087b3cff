/**
 * Published ports (`-p`, `-P`): what a container asks for (HostConfig.PortBindings,
 * PublishAllPorts over the exposed ports), checked at create as dockerd checks it, and host ports
 * allocated at start as dockerd's port mapper does: a fixed port, the first free one of a range,
 * or an ephemeral one from the kernel's local port range, round robin. The VM's user-mode NIC
 * then listens on them (runtime PortForward); the daemon only checks beforehand that each is
 * free, so that a port in use fails the start with dockerd's message and nothing is left behind.
 *
 * Only IPv4 host addresses: QEMU's slirp listens on IPv4 only, so no "::" entries are reported
 * (dockerd 20.10 reports one per binding when the host has IPv6).
 */
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import { promises as fs } from 'node:fs';
import net from 'node:net';
import { InvalidParameterError, SystemError } from '../common/errdefs';
import type { ContainerConfig, HostConfig, PortBinding } from './types';

export type PortProto = 'tcp' | 'udp';

/** One binding to set up at start: container port and the host side as the user gave it. */
export interface PortRequest {
  /** "80/tcp": Docker's key, with the protocol. */
  key: string;
  proto: PortProto;
  containerPort: number;
  /** "" = every address. */
  hostIp: string;
  /** [first, last] of the host port range; [0, 0] = ephemeral. */
  hostPorts: [number, number];
}

/** A binding set up for a run. */
export interface PublishedPort {
  key: string;
  proto: PortProto;
  containerPort: number;
  /** "0.0.0.0" when the user gave none. */
  hostIp: string;
  hostPort: number;
}

/** NetworkSettings.Ports: every exposed or bound port, with its bindings or null. */
export type PortMap = Record<string, PortBinding[] | null>;

const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

/** nat.ParsePort / ParsePortRange: "80" or "8000-8010", each 0..65535. */
function parsePortRange(text: string): [number, number] | undefined {
  if (text === '') return [0, 0];
  const m = /^(\d+)(?:-(\d+))?$/.exec(text);
  if (!m) return undefined;
  const first = Number(m[1]);
  const last = m[2] === undefined ? first : Number(m[2]);
  if (first > 65535 || last > 65535 || last < first) return undefined;
  return [first, last];
}

/** "80/tcp" → [80, 'tcp']; Docker's keys without a protocol mean tcp. */
function parsePortKey(key: string): { port: number; proto: PortProto } {
  const [portText = '', protoText = 'tcp'] = key.split('/');
  const range = parsePortRange(portText);
  if (portText === '' || !range) throw new InvalidParameterError(`invalid port specification: "${portText}"`);
  const proto = protoText.toLowerCase();
  if (proto !== 'tcp' && proto !== 'udp') {
    throw new InvalidParameterError(
      `protocol ${protoText} is not supported for published ports; only tcp and udp are`,
    );
  }
  if (range[0] !== range[1] || range[0] === 0) {
    throw new InvalidParameterError(`invalid port specification: "${portText}"`);
  }
  return { port: range[0], proto };
}

function canonicalKey(key: string): string {
  const { port, proto } = parsePortKey(key);
  return `${port}/${proto}`;
}

/**
 * The bindings a container's start sets up, in dockerd's order (by container port, tcp before
 * udp). Throws dockerd's `invalid port specification` for a bad key or host port, which create
 * reports with status 400.
 */
export function portRequestsOf(config: ContainerConfig, hostConfig: HostConfig): PortRequest[] {
  const publishAll = hostConfig.passthrough.PublishAllPorts === true;
  const keys = new Set<string>();
  const bindingsOf = new Map<string, PortBinding[]>();
  for (const [key, list] of Object.entries(hostConfig.portBindings)) {
    const k = canonicalKey(key);
    keys.add(k);
    bindingsOf.set(k, [...(bindingsOf.get(k) ?? []), ...(list ?? [])]);
  }
  // An exposed port this cannot publish (sctp …) is only an error when asked to publish it.
  if (publishAll) for (const key of Object.keys(config.exposedPorts ?? {})) keys.add(canonicalKey(key));
  const sorted = [...keys].sort((a, b) => {
    const pa = parsePortKey(a);
    const pb = parsePortKey(b);
    return pa.port - pb.port || pa.proto.localeCompare(pb.proto);
  });
  const out: PortRequest[] = [];
  for (const key of sorted) {
    const { port, proto } = parsePortKey(key);
    let bindings = bindingsOf.get(key) ?? [];
    if (bindings.length === 0 && publishAll) bindings = [{ hostIp: '', hostPort: '' }];
    for (const b of bindings) {
      const hostPorts = parsePortRange(b.hostPort);
      if (!hostPorts) throw new InvalidParameterError(`invalid port specification: "${b.hostPort}"`);
      if (b.hostIp !== '' && !IPV4.test(b.hostIp)) {
        throw new InvalidParameterError(
          `invalid host IP ${JSON.stringify(b.hostIp)} for port ${key}: published ports need an IPv4 address`,
        );
      }
      out.push({ key, proto, containerPort: port, hostIp: b.hostIp, hostPorts });
    }
  }
  return out;
}

/** NetworkSettings.Ports of a running container: exposed-only ports map to null. */
export function portMapOf(
  config: ContainerConfig,
  hostConfig: HostConfig,
  published: PublishedPort[],
): PortMap {
  const map: PortMap = {};
  const keys = new Set<string>();
  for (const key of Object.keys(config.exposedPorts ?? {})) keys.add(safeKey(key));
  for (const key of Object.keys(hostConfig.portBindings)) keys.add(safeKey(key));
  for (const p of published) keys.add(p.key);
  for (const key of keys) map[key] = null;
  for (const p of published) {
    (map[p.key] ??= []).push({ hostIp: p.hostIp, hostPort: String(p.hostPort) });
  }
  return map;
}

function safeKey(key: string): string {
  try {
    return canonicalKey(key);
  } catch {
    return key;
  }
}

/** Can this process listen on proto/addr/port right now? (closed again at once) */
export async function portIsFree(proto: PortProto, addr: string, port: number): Promise<boolean> {
  if (proto === 'udp') {
    const sock = dgram.createSocket('udp4');
    return new Promise((resolve) => {
      sock.once('error', () => {
        sock.close();
        resolve(false);
      });
      sock.bind({ address: addr, port, exclusive: true }, () => sock.close(() => resolve(true)));
    });
  }
  const server = net.createServer();
  return new Promise((resolve) => {
    server.once('error', () => resolve(false));
    server.listen({ host: addr, port, exclusive: true }, () => server.close(() => resolve(true)));
  });
}

async function localPortRange(): Promise<[number, number]> {
  try {
    const text = await fs.readFile('/proc/sys/net/ipv4/ip_local_port_range', 'utf8');
    const [a, b] = text.trim().split(/\s+/).map(Number);
    if (a !== undefined && b !== undefined && a > 0 && b >= a && b <= 65535) return [a, b];
  } catch {
    // dockerd's fallback below
  }
  return [49153, 65535];
}

export interface PortAllocatorOptions {
  /** Test seam: whether a host port can be listened on. */
  isFree?: (proto: PortProto, addr: string, port: number) => Promise<boolean>;
  /** Test seam: the ephemeral range (default: the kernel's local port range). */
  ephemeralRange?: [number, number];
}

interface Held {
  owner: string;
  proto: PortProto;
  hostIp: string;
  hostPort: number;
}

/**
 * The host ports held by running containers. Callers serialise per container; allocate() is
 * atomic with respect to other containers (no await between the check and the record).
 */
export class PortAllocator {
  private readonly held: Held[] = [];
  private readonly isFree: (proto: PortProto, addr: string, port: number) => Promise<boolean>;
  private range?: [number, number];
  /** Next ephemeral candidate (dockerd's allocator goes round robin). */
  private next = 0;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly options: PortAllocatorOptions = {}) {
    this.isFree = options.isFree ?? portIsFree;
  }

  /**
   * Host ports for `requests`, held for `owner` until release(). On failure nothing stays held,
   * and the error is dockerd's (`driver failed programming external connectivity …`).
   */
  allocate(owner: string, endpointName: string, requests: PortRequest[]): Promise<PublishedPort[]> {
    const run = this.queue.then(() => this.allocateNow(owner, endpointName, requests));
    this.queue = run.catch(() => undefined);
    return run;
  }

  release(owner: string): void {
    for (let i = this.held.length - 1; i >= 0; i--) if (this.held[i]?.owner === owner) this.held.splice(i, 1);
  }

  private conflicts(proto: PortProto, hostIp: string, port: number): boolean {
    return this.held.some(
      (h) =>
        h.proto === proto &&
        h.hostPort === port &&
        (h.hostIp === hostIp || h.hostIp === '0.0.0.0' || hostIp === '0.0.0.0'),
    );
  }

  private async allocateNow(
    owner: string,
    endpointName: string,
    requests: PortRequest[],
  ): Promise<PublishedPort[]> {
    const out: PublishedPort[] = [];
    const fail = (reason: string): never => {
      this.release(owner);
      const endpointId = randomBytes(32).toString('hex');
      throw new SystemError(
        `driver failed programming external connectivity on endpoint ${endpointName} (${endpointId}): ${reason}`,
      );
    };
    for (const r of requests) {
      const hostIp = r.hostIp === '' ? '0.0.0.0' : r.hostIp;
      let port: number | undefined;
      if (r.hostPorts[0] === 0) {
        port = await this.ephemeral(r.proto, hostIp);
        if (port === undefined) fail(`Bind for ${hostIp}:0 failed: port is already allocated`);
      } else {
        const [first, last] = r.hostPorts;
        let lastReason = '';
        for (let p = first; p <= last; p++) {
          if (this.conflicts(r.proto, hostIp, p)) {
            lastReason = `Bind for ${hostIp}:${p} failed: port is already allocated`;
            continue;
          }
          if (!(await this.isFree(r.proto, hostIp, p))) {
            lastReason = `Error starting userland proxy: listen ${r.proto}4 ${hostIp}:${p}: bind: address already in use`;
            continue;
          }
          port = p;
          break;
        }
        if (port === undefined) fail(lastReason);
      }
      const hostPort = port as number;
      this.held.push({ owner, proto: r.proto, hostIp, hostPort });
      out.push({ key: r.key, proto: r.proto, containerPort: r.containerPort, hostIp, hostPort });
    }
    return out;
  }

  private async ephemeral(proto: PortProto, hostIp: string): Promise<number | undefined> {
    this.range ??= this.options.ephemeralRange ?? (await localPortRange());
    const [first, last] = this.range;
    const size = last - first + 1;
    if (this.next < first || this.next > last) this.next = first;
    for (let i = 0; i < size; i++) {
      const p = this.next;
      this.next = p >= last ? first : p + 1;
      if (this.conflicts(proto, hostIp, p)) continue;
      if (await this.isFree(proto, hostIp, p)) return p;
    }
    return undefined;
  }
}
