import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  CanceledError,
  ConflictError,
  DeadlineError,
  InvalidParameterError,
  NotFoundError,
  NotImplementedError,
  SystemError,
  UnavailableError,
} from '../common/errdefs';
import net from 'node:net';
import {
  AgentClient,
  errorFromStatus,
  EXIT_CODE_TRAILER,
  exitCodeOf,
  findAgentProto,
  SESSION_ACK,
  SESSION_HELLO,
} from './agent-client';

function status(code: grpc.status, details: string, exitCode?: number): Partial<grpc.ServiceError> {
  const metadata = new grpc.Metadata();
  if (exitCode !== undefined) metadata.set(EXIT_CODE_TRAILER, String(exitCode));
  return { code, details, message: `${code} X: ${details}`, metadata };
}

describe('errorFromStatus: gRPC status → errdefs, once', () => {
  const cases: [grpc.status, new (...args: never[]) => Error][] = [
    [grpc.status.NOT_FOUND, NotFoundError],
    [grpc.status.INVALID_ARGUMENT, InvalidParameterError],
    [grpc.status.FAILED_PRECONDITION, InvalidParameterError],
    [grpc.status.ALREADY_EXISTS, ConflictError],
    [grpc.status.DEADLINE_EXCEEDED, DeadlineError],
    [grpc.status.UNAVAILABLE, UnavailableError],
    [grpc.status.CANCELLED, CanceledError],
    [grpc.status.UNIMPLEMENTED, NotImplementedError],
    [grpc.status.UNKNOWN, SystemError],
    [grpc.status.INTERNAL, SystemError],
    [grpc.status.PERMISSION_DENIED, SystemError],
  ];
  for (const [code, cls] of cases) {
    it(`${grpc.status[code]} → ${cls.name}, message kept`, () => {
      const err = errorFromStatus(status(code, 'the agent said so'));
      assert.ok(err instanceof cls);
      assert.equal(err.message, 'the agent said so');
      assert.equal(err.grpcCode, code);
      assert.equal(err.exitCode, undefined);
    });
  }

  it('carries the exit code trailer of a start failure', () => {
    const err = errorFromStatus(
      status(grpc.status.FAILED_PRECONDITION, 'exec: "nosuch": executable file not found', 127),
    );
    assert.ok(err instanceof InvalidParameterError);
    assert.equal(exitCodeOf(err), 127);
    assert.equal(exitCodeOf(new Error('wrapped', { cause: err })), 127);
  });
});

/** A fake agent: a grpc-js server on agent.proto whose handlers each test sets. */
class FakeAgent {
  readonly server = new grpc.Server();
  handlers: Record<string, grpc.UntypedHandleCall> = {};

  constructor() {
    const def = protoLoader.loadSync(findAgentProto(), { keepCase: true, longs: Number, defaults: true });
    const service = (
      grpc.loadPackageDefinition(def) as unknown as {
        capsule: { agent: { v1: { Agent: grpc.ServiceClientConstructor } } };
      }
    ).capsule.agent.v1.Agent.service;
    const impl: grpc.UntypedServiceImplementation = {};
    for (const name of Object.keys(service)) {
      impl[name] = ((call: unknown, cb: unknown) => {
        const h = this.handlers[name] as ((c: unknown, cb: unknown) => void) | undefined;
        if (h) h(call, cb);
        else (cb as grpc.sendUnaryData<unknown>)({ code: grpc.status.UNIMPLEMENTED, details: name });
      }) as grpc.UntypedHandleCall;
    }
    this.server.addService(service, impl);
  }

  listen(socket: string): Promise<void> {
    return new Promise((resolve, reject) =>
      this.server.bindAsync(`unix:${socket}`, grpc.ServerCredentials.createInsecure(), (err) =>
        err ? reject(err) : resolve(),
      ),
    );
  }
}

describe('AgentClient against a fake agent', () => {
  let dir: string;
  let socket: string;
  const fake = new FakeAgent();

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'capsule-agent-client-'));
    socket = path.join(dir, 'agent.sock');
  });
  after(async () => {
    fake.server.forceShutdown();
    await rm(dir, { recursive: true, force: true });
  });

  it('waitReady polls until the agent serves (socket appears later)', async () => {
    let checks = 0;
    fake.handlers.Check = ((_call: unknown, cb: grpc.sendUnaryData<object>) => {
      checks++;
      cb(null, {
        agent_version: '9',
        kernel_release: '6.1.0-fake',
        uptime_ms: 1234,
        agent_start_ms: 1000,
        agent_ready_ms: 1100,
      });
    }) as grpc.UntypedHandleCall;
    const client = new AgentClient({ socketPath: socket, transport: 'direct' });
    try {
      const ready = client.waitReady(5000);
      setTimeout(() => void fake.listen(socket), 300);
      const check = await ready;
      assert.equal(check.kernelRelease, '6.1.0-fake');
      assert.equal(check.uptimeMs, 1234);
      assert.equal(check.agentReadyMs, 1100);
      assert.equal(checks, 1);
    } finally {
      client.close();
    }
  });

  it('waitReady gives up with DeadlineError', async () => {
    const client = new AgentClient({
      socketPath: path.join(dir, 'nobody-listens.sock'),
      transport: 'direct',
    });
    try {
      const t0 = Date.now();
      await assert.rejects(client.waitReady(400), DeadlineError);
      assert.ok(Date.now() - t0 < 2000);
    } finally {
      client.close();
    }
  });

  it('a unary call that gets no answer fails at its deadline', async () => {
    fake.handlers.CreateContainer = (() => undefined) as grpc.UntypedHandleCall; // never answers
    const client = new AgentClient({ socketPath: socket, transport: 'direct', callTimeoutMs: 200 });
    try {
      await assert.rejects(
        client.createContainer({
          containerId: 'c',
          ociSpec: {},
          rootfsGuestPath: '/r',
          user: '',
          openStdin: false,
          workingDir: '',
        }),
        DeadlineError,
      );
    } finally {
      client.close();
    }
  });

  it('StartContainer failure arrives as InvalidParameterError with the exit code', async () => {
    fake.handlers.StartContainer = ((_call: unknown, cb: grpc.sendUnaryData<object>) => {
      const metadata = new grpc.Metadata();
      metadata.set(EXIT_CODE_TRAILER, '127');
      cb({
        code: grpc.status.FAILED_PRECONDITION,
        details: 'exec: "nosuch": executable file not found in $PATH',
        metadata,
      });
    }) as grpc.UntypedHandleCall;
    const client = new AgentClient({ socketPath: socket, transport: 'direct' });
    try {
      const err = await client.startContainer('c').then(
        () => assert.fail('should fail'),
        (e: unknown) => e,
      );
      assert.ok(err instanceof InvalidParameterError);
      assert.match(err.message, /executable file not found/);
      assert.equal(exitCodeOf(err), 127);
    } finally {
      client.close();
    }
  });

  it('readOutput yields OutputChunks and ends; waitProcess has no deadline', async () => {
    fake.handlers.ReadOutput = ((call: grpc.ServerWritableStream<unknown, object>) => {
      call.write({ stream: 1, data: Buffer.from('out') });
      call.write({ stream: 2, data: Buffer.from('err') });
      call.end();
    }) as grpc.UntypedHandleCall;
    fake.handlers.WaitProcess = ((_call: unknown, cb: grpc.sendUnaryData<object>) => {
      setTimeout(() => cb(null, { exit_code: 3, oom_killed: false }), 400);
    }) as grpc.UntypedHandleCall;
    const client = new AgentClient({ socketPath: socket, transport: 'direct', callTimeoutMs: 100 });
    try {
      const chunks: { stream: number; data: Buffer }[] = [];
      for await (const chunk of client.readOutput('c'))
        chunks.push(chunk as { stream: number; data: Buffer });
      assert.deepEqual(
        chunks.map((c) => [c.stream, c.data.toString()]),
        [
          [1, 'out'],
          [2, 'err'],
        ],
      );
      assert.deepEqual(await client.waitProcess('c'), { exitCode: 3, oomKilled: false });
    } finally {
      client.close();
    }
  });

  const execParams = {
    containerId: 'c',
    execId: 'e1',
    args: ['true'],
    env: [],
    workingDir: '',
    user: '',
    openStdin: false,
    tty: false,
  };

  it('runExec: started (pid), output chunks in order, then the exit — one stream', async () => {
    let request: Record<string, unknown> | undefined;
    fake.handlers.RunExec = ((call: grpc.ServerWritableStream<Record<string, unknown>, object>) => {
      request = call.request;
      call.write({ started: { pid: 42 } });
      call.write({ output: { stream: 1, data: Buffer.from('out') } });
      call.write({ output: { stream: 2, data: Buffer.from('err') } });
      call.write({ exited: { exit_code: 3, oom_killed: false } });
      call.end();
    }) as grpc.UntypedHandleCall;
    const client = new AgentClient({ socketPath: socket, transport: 'direct' });
    try {
      const started = await client.runExec({ ...execParams, terminalRows: 24, terminalCols: 80 });
      assert.equal(started.pid, 42);
      assert.equal(request?.exec_id, 'e1');
      assert.equal(request?.terminal_cols, 80);
      const chunks: { stream: number; data: Buffer }[] = [];
      for await (const chunk of started.output) chunks.push(chunk as { stream: number; data: Buffer });
      assert.deepEqual(
        chunks.map((c) => [c.stream, c.data.toString()]),
        [
          [1, 'out'],
          [2, 'err'],
        ],
      );
      assert.deepEqual(await started.exited, { exitCode: 3, oomKilled: false });
    } finally {
      client.close();
    }
  });

  it('runExec: a start failure rejects with the exit code trailer (126); no unhandled exit', async () => {
    fake.handlers.RunExec = ((call: grpc.ServerWritableStream<unknown, object>) => {
      const metadata = new grpc.Metadata();
      metadata.set(EXIT_CODE_TRAILER, '126');
      call.emit('error', {
        code: grpc.status.UNKNOWN,
        details: 'OCI runtime exec failed: exec failed: unable to start container process',
        metadata,
      });
    }) as grpc.UntypedHandleCall;
    const client = new AgentClient({ socketPath: socket, transport: 'direct' });
    try {
      const err = await client.runExec(execParams).then(
        () => assert.fail('should fail'),
        (e: unknown) => e,
      );
      assert.match(String(err), /unable to start container process/);
      assert.equal(exitCodeOf(err), 126);
    } finally {
      client.close();
    }
  });

  it('runExec: no start within the start timeout is a DeadlineError; a stream that ends without an exit rejects `exited`', async () => {
    fake.handlers.RunExec = (() => undefined) as grpc.UntypedHandleCall; // never starts
    const slow = new AgentClient({ socketPath: socket, transport: 'direct', startTimeoutMs: 200 });
    try {
      await assert.rejects(slow.runExec(execParams), DeadlineError);
    } finally {
      slow.close();
    }
    fake.handlers.RunExec = ((call: grpc.ServerWritableStream<unknown, object>) => {
      call.write({ started: { pid: 7 } });
      call.write({ output: { stream: 1, data: Buffer.from('partial') } });
      call.end();
    }) as grpc.UntypedHandleCall;
    const client = new AgentClient({ socketPath: socket, transport: 'direct' });
    try {
      const started = await client.runExec(execParams);
      for await (const _ of started.output) {
        // drain
      }
      await assert.rejects(started.exited, /without an exit/);
    } finally {
      client.close();
    }
  });

  it(
    'close() with a ReadOutput stream open ends the connection (the next client is not stuck behind it)',
    { timeout: 10_000 },
    async () => {
      let serverSawCancel!: () => void;
      const cancelled = new Promise<void>((r) => (serverSawCancel = r));
      fake.handlers.ReadOutput = ((call: grpc.ServerWritableStream<unknown, object>) => {
        const timer = setInterval(() => call.write({ stream: 1, data: Buffer.alloc(1024) }), 5);
        call.on('cancelled', () => {
          clearInterval(timer);
          serverSawCancel();
        });
      }) as grpc.UntypedHandleCall;
      const client = new AgentClient({ socketPath: socket, transport: 'direct' });
      const out = client.readOutput('c');
      out.on('error', () => undefined);
      await new Promise((r) => out.once('data', r));
      client.close();
      await cancelled;
    },
  );

  it('calls after close fail with UnavailableError', async () => {
    const client = new AgentClient({ socketPath: socket, transport: 'direct' });
    client.close();
    await assert.rejects(client.signalProcess('c', '', 9), UnavailableError);
  });
});

/**
 * A fake of the guest's virtio-serial bridge: QEMU's chardev socket as the host sees it. Each
 * connection must start with the hello; the fake first sends what an earlier session left in flight
 * (garbage), then the ack, then proxies to the fake agent's gRPC socket.
 */
function fakeVirtioSerial(grpcSocket: string, stale: Buffer): net.Server {
  return net.createServer((host) => {
    let buf = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      const nl = buf.indexOf(0x0a);
      if (nl < 0) return;
      host.off('data', onData);
      const line = buf.subarray(0, nl).toString('latin1');
      assert.ok(line.startsWith(SESSION_HELLO), `hello expected, got ${JSON.stringify(line)}`);
      const nonce = line.slice(SESSION_HELLO.length);
      assert.match(nonce, /^[0-9a-f]{32}$/);
      const local = net.connect(grpcSocket);
      host.write(stale);
      host.write(`${SESSION_ACK}${nonce}\n`);
      const rest = buf.subarray(nl + 1);
      if (rest.length > 0) local.write(rest);
      host.pipe(local).pipe(host);
      host.on('error', () => local.destroy());
      local.on('error', () => host.destroy());
    };
    host.on('data', onData);
  });
}

describe('AgentClient over the virtio-serial session handshake', () => {
  let dir: string;
  const fake = new FakeAgent();
  let chardev: net.Server;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'capsule-agent-session-'));
    await fake.listen(path.join(dir, 'grpc.sock'));
    fake.handlers.Check = ((_call: unknown, cb: grpc.sendUnaryData<object>) =>
      cb(null, {
        agent_version: '1',
        kernel_release: 'fake',
        uptime_ms: 1,
        agent_start_ms: 0,
        agent_ready_ms: 0,
      })) as grpc.UntypedHandleCall;
    // What a cut-off ReadOutput stream of the previous session could leave in flight: HTTP/2 frames,
    // and a forged ack with another nonce.
    const stale = Buffer.concat([
      Buffer.alloc(70_000, 0x17),
      Buffer.from(`${SESSION_ACK}${'0'.repeat(32)}\n`),
    ]);
    chardev = fakeVirtioSerial(path.join(dir, 'grpc.sock'), stale);
    await new Promise<void>((r) => chardev.listen(path.join(dir, 'agent.sock'), r));
  });
  after(async () => {
    chardev.close();
    fake.server.forceShutdown();
    await rm(dir, { recursive: true, force: true });
  });

  it('drops what precedes the ack of its own nonce, then speaks gRPC; again on a new connection', async () => {
    for (let i = 0; i < 2; i++) {
      const client = new AgentClient({ socketPath: path.join(dir, 'agent.sock') });
      try {
        assert.equal((await client.waitReady(5000)).kernelRelease, 'fake');
      } finally {
        client.close();
      }
    }
  });
});
