/**
 * The agent's transport in a VM: the virtio-serial port named "agent.0", bridged to the agent's
 * own gRPC server on a local unix socket, one host session at a time.
 *
 * How the port behaves (Linux virtio_console; QEMU's chardev takes one host connection at a time):
 * - with no host connected, read(2) returns 0 at once, and write(2) blocks until a host connects,
 *   whose stream it then corrupts (the bytes land before the host's own);
 * - with a host connected, read(2) blocks until data arrives and returns 0 once the host went away;
 * - QEMU forwards guest output to whichever host is connected when it processes it, and a host that
 *   leaves and a new one that connects right after reach the guest as no gap at all (measured: a
 *   client that reconnects at once is the rule, not the exception, under TCG).
 * The port has no session framing, so the protocol adds one (agent.proto, "Transport"): every host
 * connection starts with a hello line carrying a nonce; the guest answers with an ack line carrying
 * the same nonce, then HTTP/2; the host drops whatever arrives before the ack (an earlier session's
 * output). Here:
 * - a read that starts with the hello starts a new session, whatever state the bridge is in (reads
 *   never mix two host connections: each returns one port buffer, filled from one chardev read);
 * - guest-to-host bytes are written by a helper process (`cat`, the initramfs's busybox) holding the
 *   port on its stdout. A write(2) stuck because the host left cannot be cancelled from Node's
 *   thread pool, but a process can be SIGKILLed: a session ends by killing its writer, and the next
 *   session's ack is written only once that writer is gone, so nothing of one session follows the
 *   next one's ack;
 * - each session gets its own connection to the local gRPC server, made when its hello arrives;
 *   when the host leaves (read returns 0) or the local server drops the connection, the session
 *   ends, and host bytes that are not a hello are dropped until the next hello.
 * Node cannot poll a character device, so while no host is connected the bridge polls with read(2)
 * (boot, and the rare reconnect: a host normally stays connected for the VM's whole life).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import net from 'node:net';
import path from 'node:path';

export interface BridgeOptions {
  /** Device node of the port, e.g. /dev/vport1p1. */
  devicePath: string;
  /** The local gRPC server's unix socket. */
  localSocket: string;
  /** How often to look for a host while none is connected. */
  idlePollMs?: number;
  /** Command that copies stdin to stdout (the port): `cat`. */
  writerCommand?: string;
  log: (message: string, meta?: Record<string, unknown>) => void;
}

/** Session hello (host → guest) and ack (guest → host): the magic, 32 hex digits of nonce, '\n'. */
export const SESSION_HELLO = Buffer.from('\0capsule-session-hello ', 'latin1');
export const SESSION_ACK = Buffer.from('\0capsule-session-ack ', 'latin1');
const NONCE = /^[0-9a-f]{32}$/;

/** The nonce of a read that starts with a complete hello line, and the bytes after it. */
export function parseHello(chunk: Buffer): { nonce: string; rest: Buffer } | undefined {
  if (!chunk.subarray(0, SESSION_HELLO.length).equals(SESSION_HELLO)) return undefined;
  const nl = chunk.indexOf(0x0a, SESSION_HELLO.length);
  if (nl < 0) return undefined;
  const nonce = chunk.subarray(SESSION_HELLO.length, nl).toString('latin1');
  return NONCE.test(nonce) ? { nonce, rest: chunk.subarray(nl + 1) } : undefined;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Finds /dev/<port> whose /sys/class/virtio-ports/<port>/name is `name`; waits for it to appear. */
export async function findVirtioPort(name: string, timeoutMs = 10_000): Promise<string> {
  const base = '/sys/class/virtio-ports';
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const entries = await fs.readdir(base).catch(() => [] as string[]);
    for (const entry of entries) {
      const portName = await fs.readFile(path.join(base, entry, 'name'), 'utf8').catch(() => '');
      if (portName.trim() !== name) continue;
      const dev = path.join('/dev', entry);
      if (
        await fs.stat(dev).then(
          () => true,
          () => false,
        )
      )
        return dev;
    }
    if (Date.now() > deadline) throw new Error(`no virtio-serial port named ${name} (looked in ${base})`);
    await sleep(20);
  }
}

interface Writer {
  process: ChildProcess;
  exited: Promise<void>;
}

interface Session {
  id: number;
  conn: net.Socket;
  writer: Writer;
}

export class VirtioBridge {
  private stopped = false;
  private sessions = 0;
  /** The current host session; none while no host is connected or after the local side dropped it. */
  private session?: Session;
  private spareWriter?: Writer;
  private discarded = 0;
  /** State changes run one at a time, in order (reads, the local side closing). */
  private chain: Promise<void> = Promise.resolve();
  private port?: fs.FileHandle;

  constructor(private readonly opts: BridgeOptions) {}

  /** Serves host sessions until stop(); rejects only if the port cannot be opened at all. */
  async run(): Promise<void> {
    const port = await fs.open(this.opts.devicePath, 'r+');
    this.port = port;
    try {
      while (!this.stopped) {
        let chunk: Buffer;
        try {
          chunk = await this.read(port);
        } catch (err) {
          this.opts.log('agent port read failed', { error: (err as Error).message });
          await this.serialize(() => this.onHostGone());
          await sleep(100);
          continue;
        }
        if (chunk.length > 0) {
          await this.serialize(() => this.onHostData(chunk));
        } else if (!this.session) {
          // No host: poll. Have the next session's writer ready meanwhile.
          if (!this.spareWriter) this.spareWriter = this.spawnWriter(port);
          await sleep(this.opts.idlePollMs ?? 20);
        } else {
          await this.serialize(() => this.onHostGone());
        }
      }
    } finally {
      await this.serialize(() => this.endSession());
      this.spareWriter?.process.kill('SIGKILL');
      await this.spareWriter?.exited;
      await port.close();
    }
  }

  stop(): void {
    this.stopped = true;
  }

  private serialize(op: () => Promise<void> | void): Promise<void> {
    const next = this.chain.then(op);
    this.chain = next.catch((err: Error) => this.opts.log('agent port bridge error', { error: err.message }));
    return next;
  }

  private spawnWriter(port: fs.FileHandle): Writer {
    const child = spawn(this.opts.writerCommand ?? 'cat', [], { stdio: ['pipe', port.fd, 'ignore'] });
    child.on('error', (err) => this.opts.log('agent port writer failed', { error: err.message }));
    child.stdin?.on('error', () => undefined); // killed at the end of its session
    const exited = new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) resolve();
      child.once('exit', () => resolve());
      child.once('error', () => resolve());
    });
    return { process: child, exited };
  }

  private async onHostData(chunk: Buffer): Promise<void> {
    const hello = parseHello(chunk);
    if (hello) {
      if (this.discarded > 0)
        this.opts.log('dropped host bytes outside a session', { bytes: this.discarded });
      this.discarded = 0;
      await this.startSession(hello.nonce, hello.rest);
    } else if (this.session) {
      // Never waits for the local socket to drain: the reader must see the host leave even while
      // the gRPC server is stalled on its own output, and HTTP/2 flow control bounds what the host
      // sends meanwhile.
      this.session.conn.write(chunk);
    } else {
      this.discarded += chunk.length;
    }
  }

  private async onHostGone(): Promise<void> {
    if (!this.session) return;
    this.opts.log('host disconnected', { session: this.session.id });
    await this.endSession();
  }

  private async onLocalClosed(s: Session): Promise<void> {
    if (this.session !== s) return;
    this.opts.log('local agent connection closed; dropping host bytes until the next hello', {
      session: s.id,
    });
    await this.endSession();
  }

  private async startSession(nonce: string, first: Buffer): Promise<void> {
    await this.endSession(); // the previous writer is gone before this session's ack
    const port = this.port as fs.FileHandle;
    const writer = this.spareWriter ?? this.spawnWriter(port);
    this.spareWriter = undefined;
    writer.process.stdin?.write(Buffer.concat([SESSION_ACK, Buffer.from(`${nonce}\n`, 'latin1')]));
    const conn = net.connect(this.opts.localSocket);
    const s: Session = { id: ++this.sessions, conn, writer };
    conn.on('error', (err) =>
      this.opts.log('local agent connection error', { session: s.id, error: err.message }),
    );
    conn.once('close', () => {
      // Stop this session's output at once; the state change waits its turn.
      writer.process.kill('SIGKILL');
      void this.serialize(() => this.onLocalClosed(s));
    });
    if (writer.process.stdin) conn.pipe(writer.process.stdin);
    if (first.length > 0) conn.write(first);
    this.session = s;
    this.opts.log('host connected', { session: s.id });
  }

  private async endSession(): Promise<void> {
    const s = this.session;
    if (!s) return;
    this.session = undefined;
    s.conn.destroy();
    s.writer.process.kill('SIGKILL');
    await s.writer.exited;
  }

  /** A read buffer that came back empty, reused: idle polling should not churn 64 KiB buffers. */
  private spare?: Buffer;

  private async read(port: fs.FileHandle): Promise<Buffer> {
    const buf = this.spare ?? Buffer.allocUnsafe(64 * 1024);
    this.spare = undefined;
    const { bytesRead } = await port.read(buf, 0, buf.length, null);
    if (bytesRead === 0) this.spare = buf;
    return buf.subarray(0, bytesRead);
  }
}
