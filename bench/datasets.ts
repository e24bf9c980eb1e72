import type { Dataset } from "../src/plan/catalog.js";

/**
 * A Dataset as the catalogue would build it, for code that only looks at
 * name, size and cache state (plan, admitCopies). The paths are never
 * touched: nothing in the benchmarks mounts or copies anything.
 */
export function makeDataset(name: string, size: number, cache: Dataset["cache"] = "none"): Dataset {
  const imageFile = `${name}.sqfs`;
  return {
    name,
    imageFile,
    imagePath: `/bench/data/${imageFile}`,
    kind: "squashfs",
    size,
    mtimeMs: 0,
    mountPoint: `/bench/mnt/${name}`,
    cachePath: `/bench/cache/${imageFile}`,
    tmpPath: `/bench/cache/.scratch_manager.${imageFile}.partial`,
    cache,
  };
}

export const GiB = 1024 ** 3;
export const MiB = 1024 ** 2;
export const TiB = 1024 ** 4;
