/**
 * Which containers use an image, from the container store: what rmi and prune ask before they
 * remove an image (dockerd's conflict rules need a running user first, else a stopped one) and
 * what `system df` counts per image.
 */
import type { ImageInUse, ImageUser } from '../images/types';
import type { ContainerRecord } from './types';

/** The containers known to the daemon right now (the store's records). */
export type ContainerSource = () => readonly ContainerRecord[];

export function imageInUse(containers: ContainerSource): ImageInUse {
  return (imageId: string): ImageUser | undefined => {
    let stopped: string | undefined;
    for (const c of containers()) {
      if (c.imageId !== imageId) continue;
      if (c.state.running) return { id: c.id, running: true };
      stopped ??= c.id;
    }
    return stopped === undefined ? undefined : { id: stopped, running: false };
  };
}

/** Number of containers per image id, for `system df`. */
export function containersPerImage(containers: ContainerSource): (imageId: string) => number {
  const counts = new Map<string, number>();
  for (const c of containers()) counts.set(c.imageId, (counts.get(c.imageId) ?? 0) + 1);
  return (imageId) => counts.get(imageId) ?? 0;
}
