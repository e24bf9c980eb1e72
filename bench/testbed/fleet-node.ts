/**
 * What bench/fleet.ts reads of each node's mounts: which file the top mount
 * of mountdir/<name> serves (the image in datadir: the slow tier; a file in
 * the node's cachedir: the cache), from /proc/self/mountinfo and the loop
 * device's /sys/dev/block/<maj:min>/loop/backing_file; and the unmounting of
 * a node's mountdir after the run, top mount first, with `umount -l`.
 */
import { readFile } from "node:fs/promises";
import { run, sleep } from "./exec.js";
import { loopsBackedUnder } from "./bed.js";

interface Mount {
  id: number;
  parent: number;
  /** "7:12" */
  majMin: string;
  target: string;
}

/** mountinfo escapes space, tab, newline and backslash as \ooo. */
const unescape = (s: string): string => s.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));

async function mounts(): Promise<Mount[]> {
  const out: Mount[] = [];
  for (const line of (await readFile("/proc/self/mountinfo", "utf8")).split("\n")) {
    const f = line.split(" ");
    if (f.length < 5) continue;
    out.push({ id: Number(f[0]), parent: Number(f[1]), majMin: f[2] as string, target: unescape(f[4] as string) });
  }
  return out;
}

/** The mounts under `dir` (itself included) that nothing is mounted over: an overmount's parent is the mount it covers. */
function tops(all: readonly Mount[], dir: string): Mount[] {
  const under = all.filter((m) => m.target === dir || m.target.startsWith(`${dir}/`));
  const covered = new Set(under.filter((m) => under.some((o) => o.id === m.parent && o.target === m.target)).map((m) => m.parent));
  return under.filter((m) => !covered.has(m.id));
}

export type Tier = "none" | "slow" | "cache" | "other";

/** Where each mount point's top mount reads from: `slowFile` (the image in datadir), a file under `cachedir`, or nothing yet. */
export async function tierOf(points: readonly { target: string; slowFile: string; cachedir: string }[]): Promise<Tier[]> {
  const all = await mounts();
  return Promise.all(
    points.map(async (p): Promise<Tier> => {
      const top = tops(all, p.target).find((m) => m.target === p.target);
      if (!top) return "none";
      const backing = (await readFile(`/sys/dev/block/${top.majMin}/loop/backing_file`, "utf8").catch(() => "")).trim();
      if (backing === p.slowFile) return "slow";
      if (backing.startsWith(`${p.cachedir}/`)) return "cache";
      return "other";
    }),
  );
}

/**
 * Unmounts everything under `dir`, top mounts first (`umount -l`: a daemon's
 * mounts stay after SIGTERM by design, and nothing of ours may hold them).
 */
export async function unmountUnder(dir: string): Promise<void> {
  for (let pass = 0; pass < 10; pass++) {
    const top = tops(await mounts(), dir);
    if (top.length === 0) return;
    for (const m of top) await run("umount", ["-l", "--", m.target]).catch(() => undefined);
  }
  const left = (await mounts()).filter((m) => m.target === dir || m.target.startsWith(`${dir}/`));
  if (left.length > 0) throw new Error(`still mounted after 10 passes of umount -l: ${left.map((m) => m.target).join(", ")}`);
}

/** Waits until no loop device is backed by a file under `dir` (autoclear releases them once their mount is gone). */
export async function waitLoopsReleased(dir: string, timeoutMs = 15_000): Promise<void> {
  const until = performance.now() + timeoutMs;
  for (;;) {
    const left = await loopsBackedUnder(dir);
    if (left.length === 0) return;
    if (performance.now() > until) throw new Error(`loop devices still attached: ${left.join(", ")}`);
    await sleep(100);
  }
}
