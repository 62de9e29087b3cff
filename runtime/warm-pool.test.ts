/**
 * The warm pool's bookkeeping against fake members (no VM): how many it keeps, one boot at a time,
 * probing before a hand-out, replacing dead members, back-off after failed boots, shutdown.
 */
import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';
import { createSilentLogger } from '../common/logger';
import { WarmPool, type WarmPoolOptions } from './warm-pool';

/** A fake member: a booted "VM" whose answering and death the test controls. */
class FakeMember {
  answers = true;
  discarded = false;
  private kill!: () => void;
  readonly dead = new Promise<void>((r) => (this.kill = r));
  constructor(readonly id: number) {}
  die(): void {
    this.answers = false;
    this.kill();
  }
}

/** A fake boot: each boot waits for the test to finish it (or fail it). */
class FakeBoots {
  readonly started: { id: number; finish: () => void; fail: (err: Error) => void; signal: AbortSignal }[] =
    [];
  readonly members: FakeMember[] = [];
  running = 0;
  maxRunning = 0;
  private next = 0;
  /** Set to finish every boot at once. */
  instant = false;

  boot = (signal: AbortSignal): Promise<FakeMember> => {
    const id = ++this.next;
    this.running++;
    this.maxRunning = Math.max(this.maxRunning, this.running);
    return new Promise<FakeMember>((resolve, reject) => {
      const done = () => this.running--;
      const finish = () => {
        done();
        const m = new FakeMember(id);
        this.members.push(m);
        resolve(m);
      };
      const fail = (err: Error) => {
        done();
        reject(err);
      };
      signal.addEventListener('abort', () => fail(new Error('aborted')), { once: true });
      this.started.push({ id, finish, fail, signal });
      if (this.instant) finish();
    });
  };

  /** Finishes the boot in flight (the last one started). */
  finishLast(): void {
    const b = this.started[this.started.length - 1];
    assert.ok(b, 'no boot started');
    b.finish();
  }
}

const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, cond: () => boolean, ms = 2000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await tick(2);
  }
}

describe('warm pool (fake members)', () => {
  let pool: WarmPool<FakeMember> | undefined;
  afterEach(async () => {
    await pool?.shutdown();
    pool = undefined;
  });

  function makePool(boots: FakeBoots, over: Partial<WarmPoolOptions<FakeMember>> = {}): WarmPool<FakeMember> {
    pool = new WarmPool<FakeMember>({
      size: 2,
      boot: boots.boot,
      probe: async (m) => m.answers,
      discard: async (m) => {
        m.discarded = true;
      },
      died: (m) => m.dead,
      log: createSilentLogger(),
      backoffMs: { min: 20, max: 80 },
      probeIntervalMs: 0,
      ...over,
    });
    return pool;
  }

  it('fills up to its size, one boot at a time', async () => {
    const boots = new FakeBoots();
    const p = makePool(boots, { size: 3 });
    p.fill();
    p.fill(); // idempotent while a boot runs
    assert.equal(boots.started.length, 1);
    for (let i = 1; i <= 3; i++) {
      boots.finishLast();
      await until(`member ${i} ready`, () => p.stats().ready === i);
    }
    await tick(10);
    assert.equal(boots.started.length, 3, 'no boot beyond the size');
    assert.equal(boots.maxRunning, 1, 'two boots ran at once');
    assert.deepEqual(p.stats(), { ready: 3, booting: false, discarded: 0, failedBoots: 0 });
  });

  it('take hands out a ready member once; refilling waits for fill()', async () => {
    const boots = new FakeBoots();
    boots.instant = true;
    const p = makePool(boots, { size: 1 });
    p.fill();
    await until('ready', () => p.stats().ready === 1);
    const m = await p.take();
    assert.equal(m?.id, 1);
    await tick(10);
    assert.equal(boots.started.length, 1, 'take() itself must not start a boot');
    assert.equal(p.stats().ready, 0);
    p.fill();
    await until('refilled', () => p.stats().ready === 1);
    const again = await p.take();
    assert.equal(again?.id, 2, 'a member is handed out only once');
  });

  it('with nothing ready, take claims the boot in flight; a second take gets nothing', async () => {
    const boots = new FakeBoots();
    const p = makePool(boots, { size: 1 });
    p.fill();
    const first = p.take();
    const second = await p.take();
    assert.equal(second, undefined);
    boots.finishLast();
    assert.equal((await first)?.id, 1);
    await tick(10);
    assert.equal(p.stats().ready, 0, 'a claimed member does not also go to the pool');
    assert.equal(boots.started.length, 1, 'no refill before fill()');
  });

  it('a member that stops answering is discarded at take, and the next one is handed out', async () => {
    const boots = new FakeBoots();
    boots.instant = true;
    const p = makePool(boots, { size: 2 });
    p.fill();
    await until('two ready', () => p.stats().ready === 2);
    const [a, b] = boots.members as [FakeMember, FakeMember];
    a.answers = false;
    assert.equal(await p.take(), b);
    await until('discarded', () => a.discarded);
    assert.equal(p.stats().discarded, 1);
  });

  it('a ready member that dies is discarded and replaced at once', async () => {
    const boots = new FakeBoots();
    boots.instant = true;
    const p = makePool(boots, { size: 1 });
    p.fill();
    await until('ready', () => p.stats().ready === 1);
    const m = boots.members[0] as FakeMember;
    m.die();
    await until('replaced', () => boots.members.length === 2 && p.stats().ready === 1);
    assert.ok(m.discarded);
    assert.equal((await p.take())?.id, 2);
  });

  it('an idle member whose agent stopped answering is replaced by the periodic probe', async () => {
    const boots = new FakeBoots();
    boots.instant = true;
    const p = makePool(boots, { size: 1, probeIntervalMs: 10 });
    p.fill();
    await until('ready', () => p.stats().ready === 1);
    (boots.members[0] as FakeMember).answers = false;
    await until('replaced', () => boots.members.length === 2 && p.stats().ready === 1);
    assert.ok((boots.members[0] as FakeMember).discarded);
  });

  it('a failed boot is retried after a back-off that doubles', async () => {
    const boots = new FakeBoots();
    const p = makePool(boots, { size: 1, backoffMs: { min: 40, max: 1000 } });
    p.fill();
    const t0 = Date.now();
    (boots.started[0] as FakeBoots['started'][0]).fail(new Error('no agent'));
    await until('second boot', () => boots.started.length === 2);
    const firstWait = Date.now() - t0;
    assert.ok(firstWait >= 35, `retried after ${firstWait} ms`);
    p.fill(); // does not bypass the back-off
    const t1 = Date.now();
    (boots.started[1] as FakeBoots['started'][0]).fail(new Error('no agent'));
    await until('third boot', () => boots.started.length === 3);
    assert.ok(Date.now() - t1 >= 75, 'the back-off did not double');
    boots.finishLast();
    await until('ready', () => p.stats().ready === 1);
    assert.equal(p.stats().failedBoots, 2);
  });

  it('shutdown aborts the boot in flight and discards every ready member', async () => {
    const boots = new FakeBoots();
    const p = makePool(boots, { size: 2 });
    p.fill();
    boots.finishLast();
    await until('one ready, one booting', () => p.stats().ready === 1 && p.stats().booting);
    await p.shutdown();
    assert.ok((boots.started[1] as FakeBoots['started'][0]).signal.aborted);
    assert.ok((boots.members[0] as FakeMember).discarded);
    assert.deepEqual(p.stats().ready, 0);
    assert.equal(p.stats().booting, false);
    assert.equal(await p.take(), undefined);
    p.fill();
    assert.equal(boots.started.length, 2, 'no boot after shutdown');
  });

  it('a boot claimed by a take that finishes after shutdown is discarded, not handed out', async () => {
    const boots = new FakeBoots();
    const p = makePool(boots, {
      size: 1,
      // A boot that does not heed the abort: shutdown must still not hand its member out.
      boot: (signal) => boots.boot(new AbortController().signal).finally(() => void signal),
    });
    p.fill();
    const taking = p.take();
    const closing = p.shutdown();
    boots.finishLast();
    await closing;
    assert.equal(await taking, undefined);
    assert.ok((boots.members[0] as FakeMember).discarded);
  });

  it('size 0: nothing boots and take answers undefined', async () => {
    const boots = new FakeBoots();
    const p = makePool(boots, { size: 0 });
    p.fill();
    assert.equal(await p.take(), undefined);
    assert.equal(boots.started.length, 0);
  });

  it('a negative size is refused', () => {
    assert.throws(() => makePool(new FakeBoots(), { size: -1 }), RangeError);
    pool = undefined;
  });
});
