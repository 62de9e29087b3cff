/** Parsing and validation of an image config document (the blob an image id names). */
import { DataLossError } from '../common/errdefs';
import type { ImageConfigFile } from './types';

/**
 * Parses config bytes, checking what the service relies on: a JSON object whose rootfs is
 * `{"type":"layers","diff_ids":[sha256 digests]}`. DataLossError otherwise.
 */
export function parseImageConfig(bytes: Uint8Array, id: string): ImageConfigFile {
  let config: unknown;
  try {
    config = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch {
    throw new DataLossError(`image config ${id} is not valid JSON`);
  }
  if (typeof config !== 'object' || config === null || Array.isArray(config)) {
    throw new DataLossError(`image config ${id} is not a JSON object`);
  }
  const rootfs = (config as { rootfs?: unknown }).rootfs as
    { type?: unknown; diff_ids?: unknown } | undefined;
  if (
    typeof rootfs !== 'object' ||
    rootfs === null ||
    rootfs.type !== 'layers' ||
    !Array.isArray(rootfs.diff_ids) ||
    !rootfs.diff_ids.every((d) => typeof d === 'string' && /^sha256:[a-f0-9]{64}$/.test(d))
  ) {
    throw new DataLossError(`invalid rootfs in image configuration ${id}`);
  }
  return config as ImageConfigFile;
}
