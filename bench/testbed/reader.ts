/**
 * One job of a replayed trace: joins the throttled group, then reads the
 * files of a dataset's mount in turn, epoch after epoch, at most `rate`
 * bytes per second, until it has read `bytes`. Each file is opened anew
 * (a file opened before the cached copy is mounted over the slow mount keeps
 * reading the slow tier; the next open reads the cache), and its pages are
 * dropped from the page cache once read (`dd iflag=nocache count=0`: Node
 * has no posix_fadvise), so that the next epoch reads the storage again, as
 * a dataset larger than the node's memory would.
 *
 *   node build/bench/testbed/reader.js CGROUP_PROCS DIR RATE_BPS BYTES
 *
 * Prints one JSON line: { bytes, ms }.
 */
import { open, readdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { run, sleep } from "./exec.js";

const CHUNK = 1024 * 1024;

export interface ReaderResult {
  bytes: number;
  ms: number;
}

export async function readDataset(dir: string, rate: number, bytes: number): Promise<ReaderResult> {
  const files = (await readdir(dir)).filter((f) => f.endsWith(".bin")).sort();
  if (files.length === 0) throw new Error(`reader: no data file in ${dir}`);
  const buffer = Buffer.allocUnsafe(CHUNK);
  const started = performance.now();
  let done = 0;
  for (let i = 0; done < bytes; i = (i + 1) % files.length) {
    const file = path.join(dir, files[i] as string);
    const handle = await open(file, "r");
    try {
      for (;;) {
        const { bytesRead } = await handle.read(buffer, 0, Math.min(CHUNK, bytes - done), null);
        if (bytesRead === 0) break;
        done += bytesRead;
        if (done >= bytes) break;
        const due = started + (done / rate) * 1000;
        const ahead = due - performance.now();
        if (ahead > 1) await sleep(ahead);
      }
    } finally {
      await handle.close();
    }
    await run("dd", [`if=${file}`, "iflag=nocache", "count=0", "status=none"]);
  }
  return { bytes: done, ms: performance.now() - started };
}

async function main(argv: readonly string[]): Promise<number> {
  const [procs, dir, rate, bytes] = argv;
  if (!procs || !dir || !(Number(rate) > 0) || !(Number(bytes) > 0)) {
    console.error("usage: reader.js CGROUP_PROCS DIR RATE_BPS BYTES");
    return 2;
  }
  await writeFile(procs, String(process.pid));
  console.log(JSON.stringify(await readDataset(dir, Number(rate), Number(bytes))));
  return 0;
}

if (process.argv[1] && import.meta.url === new URL(`file://${path.resolve(process.argv[1])}`).href) {
  process.exitCode = await main(process.argv.slice(2));
}
