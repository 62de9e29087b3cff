/**
 * A warm pool: up to `size` members (booted VMs with a ready agent, runtime/sandbox.ts) kept ready
 * so that a sandbox start skips the boot. This module is only the bookkeeping, generic over the
 * member, so that it is tested with fakes; what a member is and how it boots, answers and dies is
 * the caller's (the callbacks).
 *
 * Invariants:
 * - at most one boot runs at a time, and the pool never holds more than `size` ready members;
 * - a member is handed out at most once, and only after `probe` said it still answers; one that
 *   fails its probe, or dies while it waits (`died` resolves), is discarded and replaced;
 * - a failed boot is retried after a back-off (doubling up to a ceiling), so a broken host does not
 *   boot VMs in a tight loop;
 * - after shutdown() nothing is ready, booting or scheduled, and every member not handed out has
 *   been discarded.
 *
 * Refilling is explicit: take() does not start a boot, so that the caller can first finish the
 * start it took a member for (a boot competes with it for the CPU); call fill() afterwards. Members
 * that die or fail their probe are replaced at once.
 */
import { messageOf } from '../common/errdefs';
import type { Logger } from '../common/logger';

export interface WarmPoolOptions<T> {
  /** Members to keep ready; 0 disables the pool (take() always answers undefined). */
  size: number;
  /** Boots one member; rejects when it cannot. Should give up soon once `signal` is aborted. */
  boot(signal: AbortSignal): Promise<T>;
  /** Whether the member still answers (its VM runs, its agent responds). Must not reject. */
  probe(member: T): Promise<boolean>;
  /** Destroys a member that will never be handed out. Must not reject. */
  discard(member: T): Promise<void>;
  /** Resolves when the member died by itself (its VM exited). */
  died(member: T): Promise<unknown>;
  log: Logger;
  /** Wait after a failed boot before the next one: doubling from min to max (default 1 s to 60 s). */
  backoffMs?: { min: number; max: number };
  /** How often idle members are probed (default 30 s; 0: only when taken). */
  probeIntervalMs?: number;
}

export interface WarmPoolStats {
  ready: number;
  booting: boolean;
  /** Members discarded so far (failed probe, died while idle, left over at shutdown). */
  discarded: number;
  /** Boots that failed so far. */
  failedBoots: number;
}

interface Boot<T> {
  /** Resolves with the member, or undefined when the boot failed. */
  readonly result: Promise<T | undefined>;
  readonly abort: AbortController;
  /** A take() is waiting for this boot: the member goes to it, not to the pool. */
  claimed: boolean;
}

export class WarmPool<T> {
  private readonly ready: T[] = [];
  private booting?: Boot<T>;
  private retryTimer?: NodeJS.Timeout;
  private probeTimer?: NodeJS.Timeout;
  private nextBackoffMs: number;
  private closed = false;
  private discarded = 0;
  private failedBoots = 0;
  /** Discards in flight; shutdown() waits for them. */
  private readonly discarding = new Set<Promise<void>>();

  constructor(private readonly opts: WarmPoolOptions<T>) {
    if (!Number.isInteger(opts.size) || opts.size < 0) {
      throw new RangeError(`warm pool size must be a whole number >= 0, not ${opts.size}`);
    }
    this.nextBackoffMs = opts.backoffMs?.min ?? 1000;
    const every = opts.probeIntervalMs ?? 30_000;
    if (opts.size > 0 && every > 0) {
      this.probeTimer = setInterval(() => void this.probeIdle(), every);
      this.probeTimer.unref();
    }
  }

  get size(): number {
    return this.opts.size;
  }

  stats(): WarmPoolStats {
    return {
      ready: this.ready.length,
      booting: this.booting !== undefined,
      discarded: this.discarded,
      failedBoots: this.failedBoots,
    };
  }

  /**
   * Starts a boot in the background if the pool is short of members and none is booting. Cheap
   * and idempotent: call it whenever a member may be missing.
   */
  fill(): void {
    if (this.closed || this.booting || this.retryTimer) return;
    if (this.ready.length >= this.opts.size) return;
    const abort = new AbortController();
    const result = this.opts.boot(abort.signal).then(
      (member) => {
        this.nextBackoffMs = this.opts.backoffMs?.min ?? 1000;
        return member;
      },
      (err: unknown) => {
        this.failedBoots++;
        if (!this.closed) {
          const delay = this.nextBackoffMs;
          this.nextBackoffMs = Math.min(delay * 2, this.opts.backoffMs?.max ?? 60_000);
          this.opts.log.warn('warm pool: boot failed', { error: messageOf(err), retryInMs: delay });
          this.retryTimer = setTimeout(() => {
            this.retryTimer = undefined;
            this.fill();
          }, delay);
          this.retryTimer.unref();
        }
        return undefined;
      },
    );
    const boot: Boot<T> = { result, abort, claimed: false };
    this.booting = boot;
    void result.then((member) => {
      this.booting = undefined;
      // A claimed boot's member went to take(), whose caller calls fill() when its start is done.
      if (boot.claimed) return;
      if (member !== undefined) {
        if (this.closed) this.drop(member);
        else this.addReady(member);
      }
      this.fill();
    });
  }

  /**
   * A member that answers, or undefined when none is ready (then the caller boots its own). With no
   * member ready but one booting, waits for that boot: it finishes before any the caller could
   * start, and two boots at once only slow each other down.
   */
  async take(): Promise<T | undefined> {
    while (!this.closed) {
      const member = this.ready.shift();
      if (member === undefined) break;
      if (await this.opts.probe(member)) {
        if (!this.closed) return member;
        this.drop(member);
        return undefined;
      }
      this.opts.log.warn('warm pool: a ready VM stopped answering; discarded');
      this.drop(member);
    }
    const boot = this.booting;
    if (this.closed || !boot || boot.claimed) return undefined;
    boot.claimed = true;
    const member = await boot.result;
    if (member !== undefined && this.closed) {
      this.drop(member);
      return undefined;
    }
    return member;
  }

  /** Stops filling, aborts the boot in flight, discards every ready member; waits for all of it. */
  async shutdown(): Promise<void> {
    this.closed = true;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    clearInterval(this.probeTimer);
    const boot = this.booting;
    boot?.abort.abort();
    for (const member of this.ready.splice(0)) this.drop(member);
    if (boot) await boot.result;
    while (this.discarding.size > 0) await Promise.all([...this.discarding]);
  }

  private addReady(member: T): void {
    this.ready.push(member);
    this.opts.log.debug('warm pool: VM ready', { ready: this.ready.length, of: this.opts.size });
    void this.opts.died(member).then(() => {
      const at = this.ready.indexOf(member);
      if (at < 0) return; // handed out or discarded already: not the pool's any more
      this.ready.splice(at, 1);
      this.opts.log.warn('warm pool: a ready VM died; replacing it');
      this.drop(member);
      this.fill();
    });
  }

  private drop(member: T): void {
    this.discarded++;
    const done: Promise<void> = this.opts
      .discard(member)
      .catch((err: unknown) => {
        this.opts.log.error('warm pool: discard failed', { error: messageOf(err) });
      })
      .finally(() => this.discarding.delete(done));
    this.discarding.add(done);
  }

  /** Probes the idle members one by one; replaces those that stopped answering. */
  private probing = false;
  private async probeIdle(): Promise<void> {
    if (this.probing || this.closed) return;
    this.probing = true;
    try {
      for (const member of [...this.ready]) {
        const ok = await this.opts.probe(member);
        const at = this.ready.indexOf(member);
        if (ok || at < 0 || this.closed) continue;
        this.ready.splice(at, 1);
        this.opts.log.warn('warm pool: an idle VM stopped answering; replacing it');
        this.drop(member);
        this.fill();
      }
    } finally {
      this.probing = false;
    }
  }
}
