import type * as FsModule from "node:fs";
import path from "node:path";
import { CommandFailedError, type Runner } from "../lib/exec.js";
import { errorMessage } from "../errors.js";

/**
 * The fleet's files: the key and the peers' records. They live where users
 * may write (datadir, by default), so root reads and writes them only
 * through directories that no user controls, as sshd's StrictModes does:
 * each directory on the way is opened with O_NOFOLLOW, one component at a
 * time relative to the last (openat, through /proc/self/fd), and must be a
 * real directory owned by root (or the owner the administrator names) and
 * writable by no group or other. The key is read from one open that
 * refuses symlinks, checked on that same descriptor; a record is written to
 * an exclusively created, randomly named file and renamed into place.
 *
 * Like every access to datadir, each operation is a child process with a
 * timeout (observe/scan.ts), never a call in the daemon's own threads, which
 * a dead file server would hold. The child is node itself, running
 * `fleetIo` below: a plain function, so the same code is unit-tested in
 * process and survives bundling (its source is sent with `node -e`).
 */

export const FLEET_DIR = ".scratch_manager";
export const KEY_FILE = "peer.key";
export const RECORDS_DIR = "peers";

/** A directory reached by a walk: from `anchor` (followed as given, or its real path checked from / when `fromRoot`), then `parts`, each checked. */
export interface Walk {
  anchor: string;
  parts: string[];
  /** The anchor is checked too, from /, along its real path (a path the administrator configured outside datadir). */
  fromRoot: boolean;
  /** Uids that may own the directories. */
  owners: number[];
  /** Make missing parts (mode 0755) before checking them. */
  create: boolean;
}

export type FleetIoRequest =
  | { op: "read-key"; walk: Walk; file: string; keyOwners: number[]; maxBytes: number }
  | { op: "write-record"; walk: Walk; file: string }
  | { op: "remove-record"; walk: Walk; file: string }
  | { op: "read-records"; walk: Walk; maxFiles: number; maxFileBytes: number; maxTotalBytes: number };

/** What is wrong with a path, and the command that puts it right. */
export interface PathProblem {
  path: string;
  problem: string;
  fix: string;
}

export type FleetIoResult =
  | { ok: false; refused: PathProblem }
  | { ok: true; missing: true }
  | { ok: true; key: string }
  | { ok: true; written: true }
  | { ok: true; lines: string[]; cutFiles: number; cutBytes: number; skipped: number };

/*
 * The child's work, in a few functions. Each names nothing outside itself
 * but its arguments and Node's globals: they run as `node -e`, their source
 * sent as text (SCRIPT), and reach one another through `ops`. A refusal is
 * thrown as a plain { refused } object, since the functions share no class.
 */

type Refusal = { refused: PathProblem };

export interface FleetOps {
  walk: (fs: typeof FsModule, w: Walk, ops: FleetOps) => { fd: number; shown: string };
  openDir: (fs: typeof FsModule, parent: number, name: string, shown: string) => number;
  checkDir: (fs: typeof FsModule, fd: number, shown: string, owners: number[], onTheWay: boolean) => void;
  readRecords: (fs: typeof FsModule, req: Extract<FleetIoRequest, { op: "read-records" }>, ops: FleetOps) => FleetIoResult;
  readKey: (fs: typeof FsModule, req: Extract<FleetIoRequest, { op: "read-key" }>, dir: { fd: number; shown: string }) => FleetIoResult;
  writeRecord: (fs: typeof FsModule, req: Extract<FleetIoRequest, { op: "write-record" }>, dir: { fd: number; shown: string }, stdin: () => string) => FleetIoResult;
}

/** The directories from the anchor, each opened without following a link relative to the last, and checked on its descriptor. */
function walkDirs(fs: typeof FsModule, w: Walk, ops: FleetOps): { fd: number; shown: string } {
  const C = fs.constants;
  const join = (a: string, b: string) => (a.endsWith("/") ? a + b : `${a}/${b}`);
  let shown = w.anchor;
  let parts = w.parts;
  let fd: number;
  if (w.fromRoot) {
    const real = fs.realpathSync(w.anchor);
    parts = [...real.split("/").filter((p) => p !== ""), ...w.parts];
    shown = "/";
    fd = fs.openSync("/", C.O_RDONLY | C.O_DIRECTORY);
    ops.checkDir(fs, fd, "/", [0], parts.length > 0);
  } else fd = fs.openSync(w.anchor, C.O_RDONLY | C.O_DIRECTORY);
  for (const [i, part] of parts.entries()) {
    shown = join(shown, part);
    let next: number;
    try {
      next = ops.openDir(fs, fd, part, shown);
    } catch (e) {
      if ((e as { code?: string }).code !== "ENOENT" || !w.create) throw e;
      // mkdir never follows a symlink at its name (EEXIST): what it makes is checked like the rest.
      fs.mkdirSync(`/proc/self/fd/${fd}/${part}`, 0o755);
      next = ops.openDir(fs, fd, part, shown);
    }
    fs.closeSync(fd);
    fd = next;
    // Directories from / down to a configured path are root's; the records' own may be peer_dir_owner's.
    ops.checkDir(fs, fd, shown, w.fromRoot && i < parts.length - 1 - w.parts.length ? [0] : w.owners, i < parts.length - 1);
  }
  return { fd, shown };
}

/** One directory, without following a link at its name (openat through /proc/self/fd). */
function openDir(fs: typeof FsModule, parent: number, name: string, shown: string): number {
  const C = fs.constants;
  try {
    return fs.openSync(`/proc/self/fd/${parent}/${name}`, C.O_RDONLY | C.O_DIRECTORY | C.O_NOFOLLOW);
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code !== "ELOOP" && code !== "ENOTDIR") throw e;
    // With O_DIRECTORY, Linux answers ENOTDIR for a symlink too: lstat tells which, for the message only.
    const link = fs.lstatSync(`/proc/self/fd/${parent}/${name}`).isSymbolicLink();
    const refusal: Refusal = { refused: { path: shown, problem: link ? "is a symbolic link, not a directory" : "is not a directory", fix: `rm ${shown}; install -d -o root -m 0755 ${shown}` } };
    throw refusal;
  }
}

/**
 * Owned by one of `owners`, writable by no group or other. `onTheWay`: a
 * directory passed through, not the one holding the files; a root-owned
 * sticky one (/tmp) is fine there: no one else can rename or remove root's
 * entries in it, and what the walk opens next is checked in turn.
 */
function checkDir(fs: typeof FsModule, fd: number, shown: string, owners: number[], onTheWay: boolean): void {
  const st = fs.fstatSync(fd);
  if (!owners.includes(st.uid)) {
    const refusal: Refusal = { refused: { path: shown, problem: `is owned by uid ${st.uid}, not by ${owners.map((u) => `uid ${u}`).join(" or ")}`, fix: `chown ${owners[owners.length - 1]} ${shown}` } };
    throw refusal;
  }
  const stickyRoot = onTheWay && st.uid === 0 && (st.mode & 0o1000) !== 0;
  if ((st.mode & 0o022) !== 0 && !stickyRoot) {
    const refusal: Refusal = { refused: { path: shown, problem: `is writable by group or others (mode ${(st.mode & 0o7777).toString(8)})`, fix: `chmod go-w ${shown}` } };
    throw refusal;
  }
}

/** Every *.json record that is a regular file within the bounds: its first line. */
function readRecordsOp(fs: typeof FsModule, req: Extract<FleetIoRequest, { op: "read-records" }>, ops: FleetOps): FleetIoResult {
  const C = fs.constants;
  let dir: { fd: number; shown: string };
  try {
    dir = ops.walk(fs, req.walk, ops);
  } catch (e) {
    if ((e as { code?: string }).code === "ENOENT") return { ok: true, lines: [], cutFiles: 0, cutBytes: 0, skipped: 0 };
    throw e;
  }
  const names = fs.readdirSync(`/proc/self/fd/${dir.fd}/`).filter((n) => n.endsWith(".json") && !n.startsWith("."));
  const cutFiles = Math.max(0, names.length - req.maxFiles);
  const lines: string[] = [];
  let total = 0;
  let cutBytes = 0;
  let skipped = 0;
  for (const name of names.slice(0, req.maxFiles)) {
    let fd: number;
    try {
      // O_NONBLOCK: a FIFO planted under a record's name must not hold the reader.
      fd = fs.openSync(`/proc/self/fd/${dir.fd}/${name}`, C.O_RDONLY | C.O_NOFOLLOW | C.O_NONBLOCK);
    } catch {
      skipped++;
      continue;
    }
    try {
      const st = fs.fstatSync(fd);
      if (!st.isFile() || st.size > req.maxFileBytes) skipped++;
      else if (total + st.size > req.maxTotalBytes) cutBytes++;
      else {
        const buf = Buffer.alloc(st.size);
        const n = fs.readSync(fd, buf, 0, st.size, 0);
        total += n;
        lines.push(buf.subarray(0, n).toString("utf8").split("\n")[0] ?? "");
      }
    } finally {
      fs.closeSync(fd);
    }
  }
  return { ok: true, lines, cutFiles, cutBytes, skipped };
}

/** The key from one open that follows no link; its type, owner and mode checked on that descriptor. */
function readKeyOp(fs: typeof FsModule, req: Extract<FleetIoRequest, { op: "read-key" }>, dir: { fd: number; shown: string }): FleetIoResult {
  const C = fs.constants;
  const shown = dir.shown.endsWith("/") ? dir.shown + req.file : `${dir.shown}/${req.file}`;
  const redo = `rm ${shown}, and make the key there itself`;
  let fd: number;
  try {
    fd = fs.openSync(`/proc/self/fd/${dir.fd}/${req.file}`, C.O_RDONLY | C.O_NOFOLLOW | C.O_NONBLOCK);
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === "ENOENT") return { ok: true, missing: true };
    if (code === "ELOOP") return { ok: false, refused: { path: shown, problem: "is a symbolic link", fix: redo } };
    throw e;
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) return { ok: false, refused: { path: shown, problem: "is not a regular file", fix: redo } };
    if (!req.keyOwners.includes(st.uid)) return { ok: false, refused: { path: shown, problem: `is owned by uid ${st.uid}, not root`, fix: `chown root ${shown}` } };
    if ((st.mode & 0o077) !== 0) return { ok: false, refused: { path: shown, problem: `is readable by others (mode ${(st.mode & 0o7777).toString(8)})`, fix: `chmod 600 ${shown}` } };
    const buf = Buffer.alloc(Math.min(st.size, req.maxBytes));
    const n = fs.readSync(fd, buf, 0, buf.length, 0);
    return { ok: true, key: buf.subarray(0, n).toString("base64") };
  } finally {
    fs.closeSync(fd);
  }
}

/** A new file no one else can have made (O_EXCL, a random name, no link followed), renamed over the record. */
function writeRecordOp(fs: typeof FsModule, req: Extract<FleetIoRequest, { op: "write-record" }>, dir: { fd: number; shown: string }, stdin: () => string): FleetIoResult {
  const C = fs.constants;
  const at = (name: string) => `/proc/self/fd/${dir.fd}/${name}`;
  const tmp = `.${req.file}.${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}.tmp`;
  const fd = fs.openSync(at(tmp), C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, 0o644);
  try {
    fs.fchmodSync(fd, 0o644);
    fs.writeSync(fd, stdin());
  } catch (e) {
    fs.closeSync(fd);
    fs.unlinkSync(at(tmp));
    throw e;
  }
  fs.closeSync(fd);
  try {
    fs.renameSync(at(tmp), at(req.file));
  } catch (e) {
    fs.unlinkSync(at(tmp));
    throw e;
  }
  return { ok: true, written: true };
}

const FLEET_OPS: FleetOps = { walk: walkDirs, openDir, checkDir, readRecords: readRecordsOp, readKey: readKeyOp, writeRecord: writeRecordOp };

/** One operation on the fleet's files (in the child; in process for the unit tests). */
export function fleetIo(fs: typeof FsModule, req: FleetIoRequest, stdin: () => string, ops: FleetOps = FLEET_OPS): FleetIoResult {
  try {
    if (req.op === "read-records") return ops.readRecords(fs, req, ops);
    const dir = ops.walk(fs, { ...req.walk, create: req.walk.create && req.op === "write-record" }, ops);
    if (req.op === "read-key") return ops.readKey(fs, req, dir);
    if (req.op === "write-record") return ops.writeRecord(fs, req, dir, stdin);
    try {
      fs.unlinkSync(`/proc/self/fd/${dir.fd}/${req.file}`);
    } catch (e) {
      if ((e as { code?: string }).code !== "ENOENT") throw e;
    }
    return { ok: true, written: true };
  } catch (e) {
    if (typeof e === "object" && e !== null && "refused" in e) return { ok: false, refused: (e as Refusal).refused };
    throw e;
  }
}

/** The child: `node -e SCRIPT REQUEST`; its answer is one line of JSON on stdout. */
// Records go out as they are, one a line, after a line of JSON: quoting them as JSON strings would make 48 MiB of records more than the 64 MiB the runner takes.
const SCRIPT = `const fs = require("node:fs");
const req = JSON.parse(process.argv[1]);
const ops = { ${Object.entries(FLEET_OPS)
  .map(([name, fn]) => `${name}: (${fn.toString()})`)
  .join(", ")} };
const r = (${fleetIo.toString()})(fs, req, () => fs.readFileSync(0, "utf8"), ops);
process.stdout.write(JSON.stringify({ ...r, lines: r.lines === undefined ? undefined : r.lines.length }) + "\\n" + (r.lines === undefined ? "" : r.lines.join("\\n")));`;

/** Run one operation in a child process with a timeout. */
export async function runFleetIo(run: Runner, req: FleetIoRequest, options: { timeoutMs: number; signal?: AbortSignal; input?: string }): Promise<FleetIoResult> {
  let stdout: string;
  try {
    ({ stdout } = await run(process.execPath, ["-e", SCRIPT, JSON.stringify(req)], { timeoutMs: options.timeoutMs, signal: options.signal, input: options.input ?? "" }));
  } catch (err) {
    if (err instanceof CommandFailedError) {
      // The child's own error, not the command line (which holds the whole script).
      const why = err.timedOut ? `timed out after ${err.ms} ms` : err.aborted ? "cancelled" : (err.stderr.split("\n").find((l) => /^\w*Error/.test(l)) ?? `exited with status ${err.exitCode}`);
      throw new Error(why);
    }
    throw err;
  }
  const end = stdout.indexOf("\n");
  const head = JSON.parse(end < 0 ? stdout : stdout.slice(0, end)) as FleetIoResult | (Extract<FleetIoResult, { lines: string[] }> & { lines: number });
  if ("lines" in head && typeof head.lines === "number") {
    const rest = stdout.slice(end + 1);
    return { ...head, lines: head.lines === 0 ? [] : rest.split("\n") };
  }
  return head as FleetIoResult;
}

/** Where the key and the records are, and how to reach them safely. */
export interface FleetLayout {
  keyDir: Walk;
  keyFile: string;
  recordsDir: Walk;
  /** For messages. */
  keyPath: string;
  recordsPath: string;
}

export function fleetLayout(config: { datadir: string; peerKey?: string; peerDir?: string; peerDirOwner: number }): FleetLayout {
  const owners = [...new Set([0, config.peerDirOwner])];
  const keyDir: Walk = config.peerKey
    ? { anchor: path.dirname(config.peerKey), parts: [], fromRoot: true, owners: [0], create: false }
    : { anchor: config.datadir, parts: [FLEET_DIR], fromRoot: false, owners, create: false };
  const recordsDir: Walk = config.peerDir
    ? { anchor: config.peerDir, parts: [], fromRoot: true, owners, create: false }
    : { anchor: config.datadir, parts: [FLEET_DIR, RECORDS_DIR], fromRoot: false, owners, create: true };
  return {
    keyDir,
    keyFile: config.peerKey ? path.basename(config.peerKey) : KEY_FILE,
    recordsDir,
    keyPath: config.peerKey ?? path.join(config.datadir, FLEET_DIR, KEY_FILE),
    recordsPath: config.peerDir ?? path.join(config.datadir, FLEET_DIR, RECORDS_DIR),
  };
}

/** The smallest key accepted: 32 bytes, as `head -c 32 /dev/urandom` makes. */
export const MIN_KEY_BYTES = 32;
const MAX_KEY_BYTES = 4096;

export type KeyRead = { kind: "key"; bytes: Buffer } | { kind: "problem"; problem: string };

/** The key, or why it cannot be used, in one line that says what to do. */
export async function readFleetKey(run: Runner, layout: FleetLayout, ownUid: number, timeoutMs: number, signal?: AbortSignal): Promise<KeyRead> {
  const file = layout.keyPath;
  const make = `make it once with: (umask 077; head -c 32 /dev/urandom > ${file})`;
  let result: FleetIoResult;
  try {
    result = await runFleetIo(run, { op: "read-key", walk: layout.keyDir, file: layout.keyFile, keyOwners: [...new Set([0, ownUid])], maxBytes: MAX_KEY_BYTES + 1 }, { timeoutMs, signal });
  } catch (err) {
    throw new Error(`reading the fleet key ${file}: ${errorMessage(err)}`);
  }
  if (!result.ok) {
    const { path: where, problem, fix } = result.refused;
    return { kind: "problem", problem: `${where === file ? "the fleet key " : ""}${where} ${problem}; ${fix}` };
  }
  if ("missing" in result) return { kind: "problem", problem: `the fleet key ${file} does not exist; ${make}` };
  if (!("key" in result)) throw new Error(`reading the fleet key ${file}: unexpected answer`);
  const bytes = Buffer.from(result.key, "base64");
  if (bytes.length < MIN_KEY_BYTES) return { kind: "problem", problem: `the fleet key ${file} has ${bytes.length} bytes, fewer than ${MIN_KEY_BYTES}; ${make}` };
  if (bytes.length > MAX_KEY_BYTES) return { kind: "problem", problem: `the fleet key ${file} has more than ${MAX_KEY_BYTES} bytes; ${make}` };
  return { kind: "key", bytes };
}
