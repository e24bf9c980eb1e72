import { mkdir, rm, utimes } from "node:fs/promises";
import { run } from "./exec.js";

/**
 * A squashfs image of `files` files (part-0.bin, ...) holding `bytes`
 * pseudo-random bytes in all, written
 * straight to `file`: mksquashfs reads the content from a pseudo-file
 * command (AES-CTR of zeros, keyed by `seed`: incompressible, reproducible,
 * several times faster than /dev/urandom), so no source tree is written.
 * Uncompressed (-noD -noF -noI -noX), as `mksquashfs -noD -noF` images are
 * read at disk speed. The mtime is set an hour back: the daemon takes the
 * image as stable (fully written) at its first tick.
 */
export async function makeImage(file: string, bytes: number, seed: string, files = 1): Promise<void> {
  const empty = `${file}.empty`;
  await mkdir(empty, { recursive: true });
  const each = Math.floor(bytes / files);
  const pseudo = Array.from({ length: files }, (_, i) => {
    const n = i === files - 1 ? bytes - each * (files - 1) : each;
    const content = `openssl enc -aes-128-ctr -nosalt -pbkdf2 -pass pass:${seed}.${i} </dev/zero 2>/dev/null | head -c ${n}`;
    return ["-p", `part-${String(i).padStart(3, "0")}.bin f 644 0 0 ${content}`];
  }).flat();
  try {
    await run("mksquashfs", [empty, file, "-noappend", "-quiet", "-no-progress", "-all-root", "-noD", "-noF", "-noI", "-noX", ...pseudo], 600_000);
  } finally {
    await rm(empty, { recursive: true, force: true });
  }
  const anHourAgo = new Date(Date.now() - 3600_000);
  await utimes(file, anHourAgo, anHourAgo);
}

/** The first data file of an image, as the daemon mounts it. */
export const IMAGE_FILE = "part-000.bin";

