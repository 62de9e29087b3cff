/**
 * Work that concurrent pulls share — one layer download, one config fetch, one layer unpack —,
 * reference-counted as dockerd's transfer manager does: it runs while any caller still waits for
 * it. A caller whose own signal aborts stops waiting (and fails as cancelled) without disturbing
 * the others; when the last one leaves, the work's signal aborts, so it stops and removes what it
 * had half written. Progress goes to every caller waiting at the time.
 */
import { CanceledError, CapsuleError } from '../common/errdefs';

/** A caller's cancellation as the image service reports it: its own error, else "context canceled". */
function cancelled(signal: AbortSignal | undefined): Error {
  return signal?.reason instanceof CapsuleError ? signal.reason : new CanceledError('context canceled');
}

export class SharedWork<T, P> {
  private readonly controller = new AbortController();
  private readonly listeners = new Set<(progress: P) => void>();
  private readonly done: Promise<T>;
  private waiters = 0;
  private ended = false;

  /** `onEnd` runs once, when the work settles or is abandoned, whichever comes first. */
  constructor(
    run: (signal: AbortSignal, emit: (progress: P) => void) => Promise<T>,
    private readonly onEnd: () => void,
  ) {
    this.done = run(this.controller.signal, (progress) => {
      for (const listener of this.listeners) listener(progress);
    });
    this.done.then(
      () => this.end(),
      () => this.end(),
    );
  }

  /** Waits for the work until it settles or `signal` aborts (then rejects as cancelled). */
  join(signal: AbortSignal | undefined, onProgress?: (progress: P) => void): Promise<T> {
    if (signal?.aborted) {
      if (this.waiters === 0) this.abandon(signal);
      return Promise.reject(cancelled(signal));
    }
    this.waiters++;
    if (onProgress !== undefined) this.listeners.add(onProgress);
    return new Promise<T>((resolve, reject) => {
      let left = false;
      const leave = (): boolean => {
        if (left) return false;
        left = true;
        signal?.removeEventListener('abort', onAbort);
        if (onProgress !== undefined) this.listeners.delete(onProgress);
        this.waiters--;
        return true;
      };
      const onAbort = (): void => {
        if (!leave()) return;
        if (this.waiters === 0) this.abandon(signal);
        reject(cancelled(signal));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.done.then(
        (value) => {
          if (leave()) resolve(value);
        },
        (err: unknown) => {
          if (leave()) reject(err instanceof Error ? err : new Error(String(err)));
        },
      );
    });
  }

  /** Nobody waits any more: stop the work; a later caller starts afresh (onEnd). */
  private abandon(signal: AbortSignal | undefined): void {
    if (this.ended) return;
    this.controller.abort(cancelled(signal));
    this.end();
  }

  private end(): void {
    if (this.ended) return;
    this.ended = true;
    this.onEnd();
  }
}
