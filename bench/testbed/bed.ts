/**
 * The two-tier testbed (item 1 of issue 6), built on one machine:
 *
 * - the slow tier: a sparse ext4 image on its own loop device, mounted with
 *   `mount -o loop` (autoclear: the device goes when the mount goes, even if
 *   this process dies), read-throttled by a blkio (cgroup v1) child group
 *   whose `blkio.throttle.read_bps_device` names that loop device; every
 *   process that must be throttled (the daemon, its rsync, the readers, the
 *   baseline `cat`) joins the group before it starts reading;
 * - the fast tier: a directory on the machine's own disk (real writes, real
 *   fsync), standing for the node's local SSD.
 *
 * It must run in a private mount namespace (testbed.ts re-executes itself
 * under `unshare --mount --propagation private`), so that no mount is ever
 * visible outside and all die with the namespace. Teardown releases only what
 * was made here: mounts under the root, loop devices backed by files under
 * the root, the cgroup; never `losetup -D` or `umount -a`.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, readdir, readFile, rm, rmdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { deadline, run, sleep } from "./exec.js";

export const MiB = 1024 ** 2;
export const GiB = 1024 ** 3;

const BLKIO = "/sys/fs/cgroup/blkio";

export interface BedOptions {
  /** Where everything lives; testbed.ts makes it (mkdtemp) and removes it. */
  root: string;
  /** Apparent size of the sparse ext4 image of the slow tier. */
  slowBytes: number;
}

/** A mount of /proc/self/mountinfo: its target and its source device. */
interface MountEntry {
  target: string;
  source: string;
}

export class Bed {
  readonly slowImage: string;
  /** The slow tier's mount point; datasets go to slowDir/data. */
  readonly slowDir: string;
  /** The fast tier: a directory of the root file system. */
  readonly fastDir: string;
  readonly cgroup: string;
  /** Bytes per second of the current read throttle; 0: none. */
  private throttleBps = 0;
  /** Holds the group open between two measured processes; see keepGroup(). */
  private keeper?: ChildProcess;

  private constructor(
    readonly root: string,
    /** /dev/loopN of the slow tier. */
    readonly slowDevice: string,
    /** "7:N", what blkio.throttle.* files take. */
    readonly slowMajMin: string,
  ) {
    this.slowImage = path.join(root, "slow.ext4");
    this.slowDir = path.join(root, "slow");
    this.fastDir = path.join(root, "fast");
    this.cgroup = path.join(BLKIO, path.basename(root));
  }

  static async create(options: BedOptions): Promise<Bed> {
    const { root } = options;
    const image = path.join(root, "slow.ext4");
    const slowDir = path.join(root, "slow");
    await mkdir(slowDir, { recursive: true });
    await mkdir(path.join(root, "fast"), { recursive: true });
    await run("truncate", ["-s", String(options.slowBytes), image]);
    // Inode tables and journal written now: ext4lazyinit would otherwise write in the background during the measurements.
    await run("mkfs.ext4", ["-q", "-F", "-m", "0", "-E", "lazy_itable_init=0,lazy_journal_init=0", image]);
    await run("mount", ["-t", "ext4", "-o", "loop,noatime", "--", image, slowDir]);
    const device = (await run("losetup", ["-n", "-O", "NAME", "-j", image])).stdout.trim().split("\n")[0] ?? "";
    if (!/^\/dev\/loop\d+$/.test(device)) throw new Error(`testbed: no loop device found for ${image} (losetup -j said ${JSON.stringify(device)})`);
    const majMin = (await readFile(`/sys/block/${path.basename(device)}/dev`, "utf8")).trim();
    const bed = new Bed(root, device, majMin);
    if (!existsSync(path.join(BLKIO, "blkio.throttle.read_bps_device"))) {
      throw new Error(`testbed: ${BLKIO}/blkio.throttle.read_bps_device is missing: this needs the cgroup v1 blkio controller`);
    }
    await mkdir(bed.cgroup);
    await bed.keepGroup();
    await mkdir(path.join(slowDir, "data"));
    return bed;
  }

  /**
   * An empty cgroup v1 group can be removed by anyone, and is: systemd trims
   * the empty groups of every hierarchy it sees when it starts or stops (here
   * the packaging tests run systemd in a namespace now and then), and a
   * group removed between two measurements takes its throttle with it. A
   * process that does nothing (`cat` of a pipe only we write to) keeps the
   * group non-empty; it ends when its stdin closes, so even if this process
   * dies, it does not linger and hold the mount namespace.
   */
  private async keepGroup(): Promise<void> {
    const procs = path.join(this.cgroup, "cgroup.procs");
    const keeper = spawn("/bin/sh", ["-c", 'echo $$ > "$0" && exec cat >/dev/null', procs], { stdio: ["pipe", "ignore", "inherit"] });
    this.keeper = keeper;
    const deadline = performance.now() + 5000;
    while (!(await readFile(procs, "utf8")).split("\n").includes(String(keeper.pid))) {
      if (performance.now() > deadline || keeper.exitCode !== null) throw new Error(`testbed: the keeper process did not join ${this.cgroup}`);
      await sleep(10);
    }
  }

  private async releaseGroup(): Promise<void> {
    const keeper = this.keeper;
    if (!keeper || keeper.exitCode !== null || keeper.signalCode !== null) return;
    const exited = new Promise((resolve) => keeper.on("close", resolve));
    keeper.stdin?.end();
    await Promise.race([exited, deadline(5000).then(() => keeper.kill("SIGKILL"))]);
    await exited;
  }

  /** Limits reads of the slow tier's loop device by members of the cgroup; 0 lifts the limit. */
  async throttle(bytesPerSecond: number): Promise<void> {
    await writeFile(path.join(this.cgroup, "blkio.throttle.read_bps_device"), `${this.slowMajMin} ${Math.round(bytesPerSecond)}`);
    this.throttleBps = bytesPerSecond;
  }

  get throttled(): number {
    return this.throttleBps;
  }

  /**
   * argv that runs `argv` inside the cgroup: the shell writes its own pid to
   * cgroup.procs, then execs the program, which so starts (and reads) already
   * throttled; its children (rsync under the daemon) inherit the group.
   */
  inGroup(argv: readonly string[]): string[] {
    return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', path.join(this.cgroup, "cgroup.procs"), ...argv];
  }

  /** The group of a process in the blkio hierarchy, from /proc/PID/cgroup: how the write-up shows the daemon was inside. */
  static async blkioGroupOf(pid: number): Promise<string> {
    const text = await readFile(`/proc/${pid}/cgroup`, "utf8");
    const line = text.split("\n").find((l) => l.split(":")[1]?.split(",").includes("blkio"));
    return line?.split(":").slice(2).join(":") ?? "?";
  }

  /** Bytes the group has read from the slow tier's device since it was made (blkio.throttle.io_service_bytes). */
  async groupReadBytes(): Promise<number> {
    const text = await readFile(path.join(this.cgroup, "blkio.throttle.io_service_bytes"), "utf8");
    const line = text.split("\n").find((l) => l.startsWith(`${this.slowMajMin} Read `));
    return line ? Number(line.split(" ")[2]) : 0;
  }

  /** Cold page cache: dirty pages written first (drop_caches drops clean pages only). */
  async dropCaches(): Promise<void> {
    await run("sync", []);
    await writeFile("/proc/sys/vm/drop_caches", "3");
  }

  /** Mounts below the root, in mount order (a stacked mount after the one it covers). */
  async mounts(): Promise<MountEntry[]> {
    const text = await readFile("/proc/self/mountinfo", "utf8");
    const out: MountEntry[] = [];
    for (const line of text.split("\n")) {
      const fields = line.split(" ");
      const target = unescapeMountinfo(fields[4] ?? "");
      const dash = fields.indexOf("-");
      if (target === this.root || target.startsWith(`${this.root}/`)) out.push({ target, source: fields[dash + 2] ?? "" });
    }
    return out;
  }

  /** `NAME BACK-FILE` of the loop devices whose backing file is under the root, the slow tier's included. */
  async loopsUnderRoot(): Promise<string[]> {
    return loopsBackedUnder(this.root);
  }

  /**
   * Unmounts everything under `dir` (the daemon's mountdir, or an image
   * mount of our own), top mount first, and waits until the loop devices
   * they held are released.
   */
  async unmountUnder(dir: string): Promise<void> {
    // Again while some are left: a daemon stopped while mounting may have had mounts landing after the list was taken.
    for (let pass = 0; pass < 5; pass++) {
      const mine = (await this.mounts()).filter((m) => m.target === dir || m.target.startsWith(`${dir}/`)).reverse();
      if (mine.length === 0) break;
      // Hundreds of targets per umount(8): ten thousand mounts in seconds rather than a minute of process starts.
      for (let i = 0; i < mine.length; i += 500) await run("umount", ["--", ...mine.slice(i, i + 500).map((m) => m.target)]).catch(() => undefined);
      await sleep(200);
    }
    await this.waitLoopsReleased();
  }

  /** Autoclear releases a loop device shortly after its last mount goes; wait for it, or say which are stuck. */
  async waitLoopsReleased(timeoutMs = 10_000): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const left = (await this.loopsUnderRoot()).filter((l) => !l.endsWith(` ${this.slowImage}`));
      if (left.length === 0) return;
      if (performance.now() > deadline) throw new Error(`testbed: loop devices still attached: ${left.join(", ")}`);
      await sleep(50);
    }
  }

  /**
   * Releases everything: the mounts under the root (deepest and latest
   * first), the slow tier (its loop device goes with its mount), the cgroup.
   * Best effort: every step runs even if one fails, and the failures are
   * returned for the report.
   */
  async teardown(): Promise<string[]> {
    const problems: string[] = [];
    const attempt = async (what: string, f: () => Promise<unknown>): Promise<void> => {
      try {
        await f();
      } catch (err) {
        problems.push(`${what}: ${err instanceof Error ? err.message : String(err)}`);
      }
    };
    for (const m of (await this.mounts()).reverse()) {
      await attempt(`umount ${m.target}`, () => run("umount", ["--", m.target]));
    }
    await attempt("loop devices", () => this.waitLoopsReleased());
    await attempt("slow tier loop device", async () => {
      const deadline = performance.now() + 10_000;
      while ((await this.loopsUnderRoot()).length > 0) {
        if (performance.now() > deadline) throw new Error(`still attached: ${(await this.loopsUnderRoot()).join(", ")}`);
        await sleep(50);
      }
    });
    await attempt(`rmdir ${this.cgroup}`, async () => {
      await this.releaseGroup();
      if (!existsSync(this.cgroup)) throw new Error("already gone: something removed the group during the run");
      const members = (await readFile(path.join(this.cgroup, "cgroup.procs"), "utf8")).trim();
      if (members) throw new Error(`processes still in the group: ${members.split("\n").join(", ")}`);
      await rmdir(this.cgroup);
    });
    return problems;
  }
}

/** `NAME BACK-FILE` of every loop device whose backing file is under `dir`. */
export async function loopsBackedUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  let names: string[] = [];
  try {
    names = (await readdir("/sys/block")).filter((n) => n.startsWith("loop"));
  } catch {
    return out;
  }
  for (const name of names) {
    let backing = "";
    try {
      backing = (await readFile(`/sys/block/${name}/loop/backing_file`, "utf8")).trim();
    } catch {
      continue; // not attached
    }
    if (backing.startsWith(`${dir}/`)) out.push(`/dev/${name} ${backing}`);
  }
  return out;
}

/** Whether anything of a root survived: for the outer process, once the namespace is gone. */
export async function leftovers(root: string): Promise<string[]> {
  const found: string[] = [];
  const mountinfo = await readFile("/proc/self/mountinfo", "utf8");
  for (const line of mountinfo.split("\n")) {
    const target = unescapeMountinfo(line.split(" ")[4] ?? "");
    if (target === root || target.startsWith(`${root}/`)) found.push(`mount ${target}`);
  }
  for (const l of await loopsBackedUnder(root)) found.push(`loop device ${l}`);
  const group = path.join(BLKIO, path.basename(root));
  if (existsSync(group)) found.push(`cgroup ${group}`);
  return found;
}

/** Removes the root's files; only once no mount is left under it (rm -rf would otherwise reach into a mount). */
export async function removeRoot(root: string): Promise<void> {
  await rm(root, { recursive: true, force: true });
}

function unescapeMountinfo(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}
