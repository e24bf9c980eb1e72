import { createHash } from "node:crypto";
import { open, type FileHandle } from "node:fs/promises";
import { systemClock, type Clock } from "../lib/clock.js";

/** Read size of one step; the copies are read from the local SSD's page cache, just written. */
const CHUNK = 1024 * 1024;
/** Pause before looking again at a file that has not grown. */
const POLL_MS = 25;

export class FollowEnded extends Error {
  override name = "FollowEnded";
}

export interface FollowOptions {
  /** The first byte to read. */
  from: number;
  /** The file's final size: reading ends there. */
  size: number;
  /** Whether the writer is still at it; once false, bytes missing up to `size` will not come. */
  growing: () => boolean;
  /** Give up after the file has not grown for this long. */
  stallMs: number;
  signal?: AbortSignal;
  /** Durations are measured on its monotonic time; the system's by default. */
  clock?: Clock;
}

/**
 * The bytes of a file from `from` to `size`, as they are written: a copy
 * in progress (cp or a peer transfer writing it in order) is followed, so
 * that its checksum is computed and other nodes are served while it is
 * made, not after. Reads through one open descriptor: a copy renamed into
 * place meanwhile is the same file. Throws FollowEnded when the writer
 * stopped short (its copy failed) or stalled.
 */
export async function* followFile(handle: FileHandle, options: FollowOptions): AsyncGenerator<Buffer> {
  const clock = options.clock ?? systemClock;
  let offset = options.from;
  let movedAt = clock.monotonic();
  while (offset < options.size) {
    if (options.signal?.aborted) throw new FollowEnded("cancelled");
    const want = Math.min(CHUNK, options.size - offset);
    const buffer = Buffer.allocUnsafe(want);
    // Whether the writer was still going before this read: if not, a short read is the end.
    const growing = options.growing();
    const { bytesRead } = await handle.read(buffer, 0, want, offset);
    if (bytesRead > 0) {
      offset += bytesRead;
      movedAt = clock.monotonic();
      yield bytesRead === want ? buffer : buffer.subarray(0, bytesRead);
      continue;
    }
    if (!growing) throw new FollowEnded(`the copy ended at byte ${offset} of ${options.size}`);
    if (clock.monotonic() - movedAt > options.stallMs) throw new FollowEnded(`the copy did not grow for ${Math.round(options.stallMs / 1000)} s at byte ${offset} of ${options.size}`);
    await clock.sleep(POLL_MS, options.signal);
  }
}

/** SHA-256 (hex) of a local file's bytes as they are written (see followFile). */
export async function hashFollowing(file: string, options: Omit<FollowOptions, "from">): Promise<string> {
  const hash = createHash("sha256");
  // The copy may not have created the file yet.
  const handle = await openWhenThere(file, options);
  try {
    for await (const chunk of followFile(handle, { ...options, from: 0 })) hash.update(chunk);
  } finally {
    await handle.close();
  }
  return hash.digest("hex");
}

/** Open a copy's file, waiting (while its writer goes on, at most stallMs) for the writer to create it. */
export async function openWhenThere(file: string, options: Pick<FollowOptions, "growing" | "stallMs" | "signal" | "clock">): Promise<FileHandle> {
  const clock = options.clock ?? systemClock;
  const started = clock.monotonic();
  for (;;) {
    try {
      return await open(file, "r");
    } catch (err) {
      const missing = (err as NodeJS.ErrnoException).code === "ENOENT";
      if (!missing || !options.growing() || options.signal?.aborted || clock.monotonic() - started > options.stallMs) throw err;
      await clock.sleep(POLL_MS, options.signal);
    }
  }
}

/** SHA-256 (hex) of a whole local file (a cached copy made before peer fill was on). */
export async function hashFile(file: string, signal?: AbortSignal): Promise<string> {
  const hash = createHash("sha256");
  const handle = await open(file, "r");
  try {
    const { size } = await handle.stat();
    for await (const chunk of followFile(handle, { from: 0, size, growing: () => false, stallMs: 0, signal })) hash.update(chunk);
  } finally {
    await handle.close();
  }
  return hash.digest("hex");
}
