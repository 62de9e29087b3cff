/**
 * Pull progress in dockerd's JSON progress shape. The docker CLI renders `progressDetail` itself;
 * `progress` is the preformatted bar dockerd adds (pkg/jsonmessage JSONProgress.String with the
 * daemon's default width of 200 columns and no start time, so no "time left" box).
 */
import type { PullProgress } from './types';

const DECIMAL_UNITS = ['B', 'kB', 'MB', 'GB', 'TB', 'PB', 'EB', 'ZB', 'YB'];

/** go-units HumanSize: 4 significant digits, decimal units ("36.45kB", "3.001MB", "512B"). */
export function humanSize(bytes: number): string {
  let size = bytes;
  let unit = 0;
  while (size >= 1000 && unit < DECIMAL_UNITS.length - 1) {
    size /= 1000;
    unit++;
  }
  // Go's %.4g: 4 significant digits, no trailing zeros.
  return `${Number(size.toPrecision(4)).toString()}${DECIMAL_UNITS[unit] ?? ''}`;
}

/** JSONProgress.String(): "[=====>      ]  1.5MB/3.001MB". */
export function progressBar(current: number, total: number): string {
  if (current <= 0 && total <= 0) return '';
  if (total <= 0) return humanSize(current).padStart(8);
  const percentage = Math.min(50, Math.trunc(Math.trunc((current / total) * 100) / 2));
  const bar = `[${'='.repeat(percentage)}>${' '.repeat(Math.max(0, 50 - percentage))}] `;
  const numbers =
    current > total
      ? humanSize(current).padStart(8)
      : `${humanSize(current).padStart(8)}/${humanSize(total)}`;
  return bar + numbers;
}

/** Layer ids in progress lines: the first 12 hex digits of the blob digest. */
export function shortLayerId(digest: string): string {
  const colon = digest.indexOf(':');
  return digest.slice(colon + 1, colon + 13);
}

/** A plain message: "Pulling from x" (with the tag as id), "Digest: …", "Status: …". */
export function messageLine(status: string, id?: string): PullProgress {
  return id === undefined ? { status } : { status, id };
}

/** A per-layer status without counts: "Pulling fs layer", "Waiting", "Pull complete", … */
export function layerLine(status: string, id: string): PullProgress {
  return { status, progressDetail: {}, id };
}

export function progressLine(status: string, id: string, current: number, total: number): PullProgress {
  return {
    status,
    progressDetail: { current, total },
    progress: progressBar(current, total),
    id,
  };
}

/**
 * Rate limits a byte counter's progress lines: the first update, then at most one per `intervalMs`,
 * and always the final one when asked (`force`).
 */
export class ProgressThrottle {
  private last = -Infinity;

  constructor(
    private readonly emit: (current: number) => void,
    private readonly intervalMs = 100,
    private readonly now: () => number = Date.now,
  ) {}

  update(current: number, force = false): void {
    const t = this.now();
    if (force || t - this.last >= this.intervalMs) {
      this.last = t;
      this.emit(current);
    }
  }
}
