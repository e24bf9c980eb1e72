/**
 * Item 1 of issue 6, the check: does the blkio throttle of the slow tier's
 * loop device really hold, for a process in the group, both for a plain
 * read of a file of the slow tier and for a read through a squashfs image
 * that lives there? The second is the doubtful one: squashfs reads go to the
 * image's own loop device, whose worker thread (not the reader) then reads
 * the backing file from the slow tier. The kernel charges that I/O to the
 * reader's group (loop: "charge i/o to mem and blk cg", Linux 5.12) or not;
 * this measures it, rather than assuming either.
 */
import { readFile, mkdir } from "node:fs/promises";
import path from "node:path";
import { Bed, MiB } from "./bed.js";
import { run, runToNull } from "./exec.js";
import { IMAGE_FILE } from "./images.js";
import { fixed, markdownTable, mibps } from "../stats.js";

export interface ReadCheck {
  path: string;
  inGroup: boolean;
  bytes: number;
  ms: number;
  /** Bytes the group read from the slow tier's device meanwhile (blkio.throttle.io_service_bytes). */
  chargedBytes: number;
}

export interface VerifyResult {
  throttleBps: number;
  squashfsLoop: string;
  checks: ReadCheck[];
  /**
   * Both reads in the group ran at 80-105% of the throttle and were charged
   * to the group in full, and both reads from outside ran at least twice as
   * fast.
   */
  holds: boolean;
  table: string;
}

/** Reads `bytes` of `file` cold with dd, inside the group or not; the rate and what the group was charged. */
async function coldRead(bed: Bed, file: string, bytes: number, inGroup: boolean): Promise<ReadCheck> {
  await bed.dropCaches();
  const before = await bed.groupReadBytes();
  const dd = ["dd", `if=${file}`, "bs=1M", `count=${Math.round(bytes / MiB)}`, "status=none"];
  const argv = inGroup ? bed.inGroup(dd) : dd;
  const ms = await runToNull(argv[0] as string, argv.slice(1));
  return { path: file, inGroup, bytes, ms, chargedBytes: (await bed.groupReadBytes()) - before };
}

export async function verifyThrottle(bed: Bed, image: string, bytes: number): Promise<VerifyResult> {
  const mnt = path.join(bed.root, "verify");
  await mkdir(mnt, { recursive: true });
  // Mounted as the daemon mounts an image (util-linux, -o loop: autoclear).
  await run("mount", ["-t", "squashfs", "-o", "ro,nosuid,nodev,loop", "--", image, mnt]);
  const checks: ReadCheck[] = [];
  let squashfsLoop = "?";
  try {
    const dev = (await bed.mounts()).find((m) => m.target === mnt)?.source ?? "?";
    const dio = await readFile(`/sys/block/${path.basename(dev)}/loop/dio`, "utf8").catch(() => "?");
    squashfsLoop = `${dev} (dio=${dio.trim()})`;
    const inner = path.join(mnt, IMAGE_FILE);
    checks.push(await coldRead(bed, image, bytes, true));
    checks.push(await coldRead(bed, inner, bytes, true));
    checks.push(await coldRead(bed, inner, bytes, false));
    checks.push(await coldRead(bed, image, bytes, false));
  } finally {
    await bed.unmountUnder(mnt);
  }
  const limit = bed.throttled / MiB;
  const rate = (c: ReadCheck): number => mibps(c.bytes, c.ms);
  const [plainIn, sqIn, sqOut, plainOut] = checks as [ReadCheck, ReadCheck, ReadCheck, ReadCheck];
  const atLimit = (c: ReadCheck): boolean => rate(c) <= limit * 1.05 && rate(c) >= limit * 0.8 && c.chargedBytes >= c.bytes;
  const holds = atLimit(plainIn) && atLimit(sqIn) && rate(sqOut) >= limit * 2 && rate(plainOut) >= limit * 2;
  const label = (c: ReadCheck): string => (c.path === image ? "the image file on the slow tier (ext4)" : `a file inside the squashfs image, through ${squashfsLoop}`);
  const table = markdownTable(
    ["cold read of " + fixed(bytes / MiB) + " MiB", "reader in the group", "MiB/s", "/ throttle", "bytes charged to the group"],
    checks.map((c) => [
      label(c),
      c.inGroup ? "yes" : "no",
      fixed(rate(c)),
      fixed(rate(c) / limit, 2),
      `${fixed(c.chargedBytes / MiB)} MiB`,
    ]),
  );
  return { throttleBps: bed.throttled, squashfsLoop, checks, holds, table };
}
