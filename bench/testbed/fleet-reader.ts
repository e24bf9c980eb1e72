/**
 * The job's own reads in bench/fleet.ts: reads one file from start to end,
 * again and again, 1 MiB at a time, and prints `MS_SINCE_EPOCH BYTES_SO_FAR`
 * after each read, so that the parent can count what it read in any span of
 * time. The file is in the FUSE datadir, which is direct_io: every read
 * reaches the file server's rate limiter, no page cache answers it.
 *
 *   node build/bench/testbed/fleet-reader.js FILE
 *
 * SIGTERM (or SIGINT) ends it after the read in flight (so every byte the server sent
 * is counted here), with a last line `done BYTES`.
 */
import { open } from "node:fs/promises";

const CHUNK = 1024 * 1024;

async function main(file: string): Promise<void> {
  let stopping = false;
  // SIGINT too: a Ctrl-C of the benchmark reaches its whole process group.
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    process.on(signal, () => {
      stopping = true;
    });
  }
  const handle = await open(file, "r");
  const buffer = Buffer.allocUnsafe(CHUNK);
  let total = 0;
  let position = 0;
  try {
    while (!stopping) {
      const { bytesRead } = await handle.read(buffer, 0, CHUNK, position);
      if (bytesRead === 0) {
        if (position === 0) throw new Error(`fleet-reader: ${file} is empty`);
        position = 0;
        continue;
      }
      position += bytesRead;
      total += bytesRead;
      process.stdout.write(`${Date.now()} ${total}\n`);
    }
  } finally {
    await handle.close();
  }
  process.stdout.write(`done ${total}\n`);
}

const file = process.argv[2];
if (!file) {
  console.error("usage: fleet-reader.js FILE");
  process.exitCode = 2;
} else {
  await main(file);
}
