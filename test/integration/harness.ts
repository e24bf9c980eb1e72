/**
 * Integration test harness: real squashfs images, the real daemon, real loop
 * mounts, inside the private mount namespace that `npm run test:integration`
 * creates with unshare. It judges with util-linux's own tools (findmnt,
 * losetup), not with the daemon's parsers.
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, statSync, utimesSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { majorMinorOf } from "../../src/observe/loops.js";

export const CLI = fileURLToPath(new URL("../../src/cli.js", import.meta.url));
/** The FUSE file system that stands for the file server (test/fixtures/faultfs.py). */
export const FAULTFS = fileURLToPath(new URL("../../../test/fixtures/faultfs.py", import.meta.url));

/** Refuse to run outside a private mount namespace: these tests mount and unmount. */
export function assertPrivateMountNamespace(): void {
  if (process.getuid?.() !== 0) throw new Error("integration tests need root (mount, losetup)");
  const outer = process.env.SM_OUTER_MNT_NS;
  if (!outer || readlinkSync("/proc/self/ns/mnt") === outer) {
    throw new Error("integration tests must run in a private mount namespace: use `npm run test:integration` (unshare --mount --propagation private)");
  }
}

export interface TestRoot {
  root: string;
  data: string;
  cache: string;
  mnt: string;
  work: string;
}

export function makeTestRoot(label: string): TestRoot {
  assertPrivateMountNamespace();
  const root = mkdtempSync(path.join("/tmp", `smtest-${label}-`));
  const dirs = { root, data: path.join(root, "data"), cache: path.join(root, "cache"), mnt: path.join(root, "mnt"), work: path.join(root, "work") };
  for (const d of [dirs.data, dirs.cache, dirs.mnt, dirs.work]) mkdirSync(d);
  return dirs;
}

/** File name -> content, or a number of random (incompressible) bytes. */
export type ImageFiles = Record<string, string | Buffer | number>;

let imageCounter = 0;

/**
 * Build a squashfs (or EROFS) image in `work`, then move it atomically to
 * `dest` as administrators are told to, with its mtime in the past so the
 * daemon takes it as stable at first sight.
 */
export interface ImageOptions {
  kind?: "squashfs" | "erofs";
  mtime?: Date;
  /** Runs on the source directory before the image is built (set modes, copy binaries). */
  prepare?: (srcDir: string) => void;
  /** Extra mksquashfs arguments (e.g. -p pseudo-file definitions). */
  mksquashfsArgs?: string[];
}

export function makeImage(root: TestRoot, dest: string, files: ImageFiles, options: ImageOptions = {}): string {
  const src = path.join(root.work, `src-${imageCounter++}`);
  mkdirSync(src, { recursive: true });
  for (const [name, content] of Object.entries(files)) {
    const file = path.join(src, name);
    mkdirSync(path.dirname(file), { recursive: true });
    writeFileSync(file, typeof content === "number" ? randomBytes(content) : content);
  }
  options.prepare?.(src);
  const tmp = path.join(root.work, `image-${imageCounter++}`);
  if (options.kind === "erofs") execFileSync("mkfs.erofs", ["--quiet", tmp, src], { stdio: "pipe" });
  else execFileSync("mksquashfs", [src, tmp, "-noappend", "-quiet", "-no-progress", "-noI", "-noD", "-noF", "-noX", ...(options.mksquashfsArgs ?? [])], { stdio: "pipe" });
  rmSync(src, { recursive: true });
  const mtime = options.mtime ?? new Date(Date.now() - 3600_000);
  utimesSync(tmp, mtime, mtime);
  execFileSync("mv", ["-T", tmp, dest]);
  return dest;
}

/**
 * A small ext4 file system on a loop device, mounted at root/<name>: a cache
 * file system that can really fill up. Torn down with the root.
 */
export function makeSmallFs(root: TestRoot, name: string, sizeMB: number): string {
  const image = path.join(root.work, `${name}.ext4`);
  execFileSync("truncate", ["-s", `${sizeMB}M`, image]);
  execFileSync("mkfs.ext4", ["-q", "-F", "-m", "0", image]);
  const dir = path.join(root.root, name);
  mkdirSync(dir);
  execFileSync("mount", ["-o", "loop", image, dir]);
  return dir;
}

export type FaultMode = "ok" | "hang" | "eio";

const faultFses = new Set<FaultFs>();

/**
 * A file server for the tests: a FUSE passthrough (Debian's python3-fusepy)
 * of `source`, mounted at `mountPoint`, that can be told to hang every call
 * (a hard NFS mount whose server is down), to fail with EIO (a soft mount
 * timing out), or to answer again; and be unmounted (`umount -l`, as an
 * automounter or an administrator would) and mounted again. Images are
 * dropped into `source`, as another client of the server would.
 * Every process it starts is ended by pid at teardown, and every mount of it
 * undone; `devices` are the st_dev of each mount it made, to find loop
 * devices left on its files even once the kernel names them from a detached
 * root.
 */
export class FaultFs {
  readonly source: string;
  readonly control: string;
  readonly devices = new Set<string>();
  private processes: ChildProcess[] = [];

  constructor(
    readonly root: TestRoot,
    readonly mountPoint: string,
    readonly options: { counts?: string; rate?: number; directIo?: boolean; noCache?: boolean } = {},
  ) {
    this.source = `${mountPoint}-src`;
    this.control = `${mountPoint}-control`;
    mkdirSync(this.source, { recursive: true });
    mkdirSync(mountPoint, { recursive: true });
    writeFileSync(this.control, "ok\n");
    faultFses.add(this);
  }

  static async start(root: TestRoot, mountPoint: string, options: FaultFs["options"] = {}): Promise<FaultFs> {
    const fs = new FaultFs(root, mountPoint, options);
    await fs.mount();
    return fs;
  }

  /** Mount (again) at mountPoint; resolves once it answers. */
  async mount(): Promise<void> {
    const args = [FAULTFS, this.source, this.mountPoint, "--control", this.control];
    if (this.options.counts) args.push("--counts", this.options.counts);
    if (this.options.rate) args.push("--rate", String(this.options.rate));
    if (this.options.directIo) args.push("--direct-io");
    if (this.options.noCache) args.push("--no-cache");
    const child = spawn("/usr/bin/python3", args, { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    child.stderr?.setEncoding("utf8").on("data", (c: string) => (stderr += c));
    this.processes.push(child);
    const before = statSync(this.mountPoint).dev;
    await waitUntil(`faultfs mounted at ${this.mountPoint} (${stderr})`, () => {
      if (child.exitCode !== null) throw new Error(`faultfs exited ${child.exitCode}: ${stderr}`);
      return statSync(this.mountPoint).dev !== before;
    }, 10_000, 50);
    this.devices.add(majorMinorOf(statSync(this.mountPoint, { bigint: true }).dev));
  }

  /** Every call from now on hangs, fails with EIO, or is answered. Calls already hanging go on with "ok". */
  async set(mode: FaultMode): Promise<void> {
    writeFileSync(this.control, `${mode}\n`);
    // The file system polls its control file every 20 ms.
    await new Promise((r) => setTimeout(r, 200));
  }

  /** Detach it as `umount -l` does: datadir becomes the empty directory beneath; loop devices keep its files. */
  unmountLazy(): void {
    execFileSync("umount", ["--lazy", this.mountPoint], { stdio: "pipe" });
  }

  /** Processes of this file system still running (a lazily unmounted one serves on until its last file is closed). */
  get running(): number[] {
    return this.processes.filter((p) => p.exitCode === null && p.signalCode === null).map((p) => p.pid as number);
  }

  /** Answer every call, unmount what is still mounted, end our processes by pid. */
  async teardown(): Promise<void> {
    writeFileSync(this.control, "ok\n");
    await new Promise((r) => setTimeout(r, 100));
    for (const row of mountsUnder(this.mountPoint).reverse()) {
      try {
        execFileSync("umount", ["--lazy", row.target], { stdio: "pipe" });
      } catch {
        // gone with its parent
      }
    }
    for (const p of this.processes) {
      if (p.exitCode !== null || p.signalCode !== null) continue;
      const exited = new Promise((r) => p.once("exit", r));
      p.kill("SIGTERM");
      const late = setTimeout(() => p.kill("SIGKILL"), 3000);
      await exited;
      clearTimeout(late);
    }
    faultFses.delete(this);
  }
}

/** Loop devices whose backing file is on one of these devices ("major:minor"), whatever path the kernel gives it. */
export function loopsOnDevices(devices: ReadonlySet<string>): LoopRow[] {
  if (devices.size === 0) return [];
  const out = execFileSync("losetup", ["-J", "-l", "-O", "NAME,BACK-FILE,BACK-MAJ:MIN"], { encoding: "utf8", maxBuffer: 256 * 1024 * 1024 }).trim();
  if (out === "") return [];
  const rows = (JSON.parse(out) as { loopdevices: (LoopRow & { "back-maj:min"?: string })[] }).loopdevices;
  return rows.filter((r) => devices.has((r["back-maj:min"] ?? "").trim()));
}

export interface MountRow {
  id: number;
  parent: number;
  target: string;
  source: string;
  fstype: string;
  options: string;
  "maj:min": string;
}

export function mountsUnder(prefix: string): MountRow[] {
  const out = execFileSync("findmnt", ["-J", "-l", "-o", "ID,PARENT,TARGET,SOURCE,FSTYPE,OPTIONS,MAJ:MIN"], { encoding: "utf8" });
  const rows = (JSON.parse(out) as { filesystems: MountRow[] }).filesystems;
  return rows.filter((r) => r.target === prefix || r.target.startsWith(prefix + "/"));
}

/** The stack at one mount point, bottom first (findmnt lists in mountinfo order). */
export function stackAt(target: string): MountRow[] {
  return mountsUnder(target).filter((r) => r.target === target);
}

export interface LoopRow {
  name: string;
  "back-file": string | null;
}

export function loopsBackedUnder(prefix: string): LoopRow[] {
  const out = execFileSync("losetup", ["-J", "-l", "-O", "NAME,BACK-FILE"], { encoding: "utf8", maxBuffer: 256 * 1024 * 1024 }).trim();
  if (out === "") return [];
  const rows = (JSON.parse(out) as { loopdevices: LoopRow[] }).loopdevices;
  return rows.filter((r) => (r["back-file"] ?? "").startsWith(prefix + "/"));
}

/** The backing file of the loop device behind a mount row (from losetup, with " (deleted)" if so). */
export function backingFileOf(row: MountRow): string | undefined {
  const dev = path.basename(row.source);
  const out = execFileSync("losetup", ["-J", "-l", "-O", "NAME,BACK-FILE", `/dev/${dev}`], { encoding: "utf8" }).trim();
  return (JSON.parse(out) as { loopdevices: LoopRow[] }).loopdevices[0]?.["back-file"] ?? undefined;
}

/** Bytes read from a block device since it was attached (/proc/diskstats sectors are 512 bytes). */
export function deviceReadBytes(source: string): number {
  const dev = path.basename(source);
  for (const line of readFileSync("/proc/diskstats", "utf8").split("\n")) {
    const f = line.trim().split(/\s+/);
    if (f[2] === dev) return Number(f[5]) * 512;
  }
  throw new Error(`${dev} not in /proc/diskstats`);
}

export async function waitUntil<T>(what: string, probe: () => T | undefined | false, timeoutMs = 20_000, everyMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = probe();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

export interface LogLine {
  level: string;
  msg: string;
  dataset?: string;
  [key: string]: unknown;
}

export interface DaemonOptions {
  /** Config file text; written to root/scratch_manager.conf. */
  config?: string;
  args?: string[];
  /** Throttle rsync (KiB/s) through a wrapper first in PATH, to catch copies in flight. */
  copyKBps?: number;
  /** Programs to put first in PATH: name -> sh script body (after #!/bin/sh), e.g. a mount that fails. */
  bin?: Record<string, string>;
  /** Extra environment; NOTIFY_SOCKET is removed unless given here. */
  env?: Record<string, string>;
  /** Soft and hard limit of open files (prlimit), below Node's habit of raising the soft one to the hard one. */
  nofile?: number;
  /** A program that execs the daemon in its own place (e.g. nsenter -t PID -n -u -m --: a node of test/slurm/multinode.ts). */
  wrap?: string[];
}

/** The real CLI, as systemd would start it. */
export class Daemon {
  readonly child: ChildProcess;
  readonly logs: LogLine[] = [];
  stderr = "";
  private exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(readonly root: TestRoot, options: DaemonOptions = {}) {
    const args = [CLI, ...(options.args ?? [])];
    if (options.config !== undefined) {
      const file = path.join(root.root, "scratch_manager.conf");
      writeFileSync(file, options.config);
      args.push("--config", file);
    }
    const env: NodeJS.ProcessEnv = { ...process.env };
    delete env.NOTIFY_SOCKET;
    Object.assign(env, options.env);
    const wrappers = { ...options.bin };
    if (options.copyKBps !== undefined) {
      wrappers.rsync = `exec /usr/bin/rsync --bwlimit=${options.copyKBps} "$@"`;
      // The daemon copies with cp when copy_bwlimit is 0: the same slow copy, through rsync, to the same temporary file.
      wrappers.cp = `for a; do src=$dst; dst=$a; done; exec /usr/bin/rsync --inplace --times --bwlimit=${options.copyKBps} -- "$src" "$dst"`;
    }
    if (Object.keys(wrappers).length > 0) {
      const bin = path.join(root.root, "bin");
      mkdirSync(bin, { recursive: true });
      for (const [name, body] of Object.entries(wrappers)) writeFileSync(path.join(bin, name), `#!/bin/sh\n${body}\n`, { mode: 0o755 });
      env.PATH = `${bin}:${env.PATH ?? ""}`;
    }
    // Its own process group, so that teardown also kills the mount or rsync it may have running.
    // prlimit execs the daemon in its own place: the pid and the process group stay the daemon's.
    const [file, ...argv] = [...(options.wrap ?? []), ...(options.nofile === undefined ? [process.execPath, ...args] : ["prlimit", `--nofile=${options.nofile}:${options.nofile}`, "--", process.execPath, ...args])];
    this.child = spawn(file as string, argv, { env, stdio: ["ignore", "pipe", "pipe"], detached: true });
    let buffer = "";
    this.child.stdout?.setEncoding("utf8").on("data", (chunk: string) => {
      buffer += chunk;
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        try {
          this.logs.push(JSON.parse(line) as LogLine);
        } catch {
          this.logs.push({ level: "raw", msg: line });
        }
      }
    });
    this.child.stderr?.setEncoding("utf8").on("data", (chunk: string) => (this.stderr += chunk));
    // "close", not "exit": the last log lines are read by then.
    this.exited = new Promise((resolve) => this.child.on("close", (code, signal) => resolve({ code, signal })));
  }

  static standardConfig(root: TestRoot, extra: Record<string, string | number> = {}): string {
    // state_dir and runtime_dir too: a test writes nothing outside its root.
    const keys: Record<string, string | number> = {
      datadir: root.data,
      cachedir: root.cache,
      mountdir: root.mnt,
      capacity: "200MB",
      period: 4,
      interval: 0.3,
      state_dir: path.join(root.root, "state"),
      runtime_dir: path.join(root.root, "run"),
      ...extra,
    };
    return Object.entries(keys).map(([k, v]) => `${k} = ${v}`).join("\n") + "\n";
  }

  static start(root: TestRoot, extra: Record<string, string | number> = {}, options: Omit<DaemonOptions, "config"> = {}): Daemon {
    return new Daemon(root, { ...options, config: Daemon.standardConfig(root, extra), args: [...(options.args ?? []), "--verbose"] });
  }

  find(predicate: (l: LogLine) => boolean): LogLine | undefined {
    return this.logs.find(predicate);
  }

  async waitForLog(what: string, predicate: (l: LogLine) => boolean, timeoutMs = 20_000): Promise<LogLine> {
    return waitUntil(`log line: ${what}`, () => this.find(predicate), timeoutMs);
  }

  signal(sig: NodeJS.Signals): void {
    this.child.kill(sig);
  }

  /** SIGKILL to the daemon and every program it started (a mount in flight would land after teardown). */
  killAll(): void {
    killGroup(this.child);
  }

  async exit(timeoutMs = 20_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`daemon did not exit within ${timeoutMs} ms`)), timeoutMs);
    });
    try {
      return await Promise.race([this.exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  async stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return this.exited;
    this.signal("SIGTERM");
    return this.exit();
  }
}

function filesUnder(dir: string): string[] {
  const out = execFileSync("find", [dir, "-type", "f", "-print0"], { encoding: "utf8" });
  return out.split("\0").filter((f) => f !== "");
}

/**
 * Read every file under dir through the mount, dropping its pages afterwards
 * (dd iflag=nocache), so every call really reads the loop device again. Pages
 * another reader left behind (one killed mid-file keeps its readahead) are not
 * dropped: measure on files no killed reader has touched.
 * Returns the bytes read.
 */
export function readHard(dir: string): number {
  let bytes = 0;
  for (const f of filesUnder(dir)) {
    execFileSync("dd", [`if=${f}`, "of=/dev/null", "bs=1M", "iflag=nocache", "status=none"]);
    bytes += statSync(f).size;
  }
  return bytes;
}

const readers = new Set<ChildProcess>();

/** A job that keeps reading a dataset until stopped (or the test root is torn down). */
export function startReader(dir: string): { stop: () => Promise<void> } {
  const script = `while :; do find "$1" -type f -exec dd of=/dev/null bs=1M iflag=nocache status=none if={} \\; ; sleep 0.2; done`;
  // A process group of its own: stopping it stops the dd it is running too, which would hold the mount.
  const child = spawn("sh", ["-c", script, "reader", dir], { stdio: "ignore", detached: true });
  readers.add(child);
  return { stop: () => stopReader(child) };
}

function stopReader(child: ChildProcess): Promise<void> {
  readers.delete(child);
  return new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.on("exit", () => resolve());
    killGroup(child);
  });
}

/** SIGKILL to a child started with detached: true, and to every process of its group. */
function killGroup(child: ChildProcess): void {
  try {
    if (child.pid !== undefined) process.kill(-child.pid, "SIGKILL");
  } catch {
    // The group is gone; the child itself may not have been reaped yet.
    child.kill("SIGKILL");
  }
}

async function stopReaders(): Promise<void> {
  await Promise.all([...readers].map(stopReader));
}

/**
 * Tear a test root down: unmount what is left under it (top first), then
 * check that every loop device backed by its files went away with its
 * mount (autoclear), then remove the files. Returns the leaked loop devices,
 * which it also detaches, so one failing test does not poison the next.
 */
export async function teardown(root: TestRoot, daemon?: Daemon): Promise<LoopRow[]> {
  const fuse = [...faultFses].filter((f) => f.root === root);
  // A hanging file system would hold every reader, unmount and loop release below.
  for (const f of fuse) writeFileSync(f.control, "ok\n");
  await stopReaders();
  if (daemon) await teardownDaemon(daemon);
  // Top first; again while some remain (a stack unmounted from the top shows its next layer).
  for (let pass = 0; pass < 5 && mountsUnder(root.root).length > 0; pass++) {
    for (const row of mountsUnder(root.root).reverse()) {
      try {
        execFileSync("umount", ["--lazy", row.target], { stdio: "pipe" });
      } catch {
        // already gone with its parent
      }
    }
  }
  // Autoclear releases a loop device asynchronously after the last umount.
  // On a FUSE file system detached meanwhile, the kernel names the backing file from its own root: found by device.
  const devices = new Set(fuse.flatMap((f) => [...f.devices]));
  const ours = () => [...loopsBackedUnder(root.root), ...loopsOnDevices(devices)];
  let leaked: LoopRow[] = [];
  try {
    await waitUntil("loop devices released", () => ours().length === 0, 5000);
  } catch {
    leaked = ours();
    for (const l of leaked) execFileSync("losetup", ["-d", l.name], { stdio: "pipe" });
  }
  for (const f of fuse) await f.teardown();
  const stillRunning = fuse.flatMap((f) => f.running);
  if (stillRunning.length > 0) throw new Error(`FUSE processes of the test still running: ${stillRunning.join(", ")}`);
  rmSync(root.root, { recursive: true, force: true });
  return leaked;
}

/** Run a test body with a fresh root; always tear down, and fail if a loop device leaked. */
export async function withRoot(label: string, body: (root: TestRoot, track: (d: Daemon) => Daemon) => Promise<void>): Promise<void> {
  const root = makeTestRoot(label);
  const daemons: Daemon[] = [];
  let leaked: LoopRow[] = [];
  try {
    await body(root, (d) => {
      daemons.push(d);
      return d;
    });
  } catch (err) {
    for (const d of daemons) {
      process.stderr.write(`--- daemon log (${label}) ---\n${d.logs.map((l) => JSON.stringify(l)).join("\n")}\n${d.stderr}\n`);
    }
    throw err;
  } finally {
    for (const d of daemons.slice(0, -1)) await teardownDaemon(d);
    leaked = await teardown(root, daemons.at(-1));
  }
  if (leaked.length > 0) throw new Error(`loop devices leaked: ${leaked.map((l) => `${l.name} -> ${l["back-file"]}`).join(", ")}`);
  if (mountsUnder(root.root).length > 0) throw new Error(`mounts left under ${root.root}`);
}

/**
 * As systemd stops it: SIGTERM, so that an attach in flight ends with its
 * detach (a device killed between the two is released only by the next
 * start, from its journal: a test of its own); then SIGKILL to whatever of
 * its group is left.
 */
async function teardownDaemon(d: Daemon): Promise<void> {
  if (d.child.exitCode === null && d.child.signalCode === null) {
    d.signal("SIGTERM");
    await d.exit(10_000).catch(() => undefined);
  }
  d.killAll();
  await d.exit().catch(() => undefined);
}
