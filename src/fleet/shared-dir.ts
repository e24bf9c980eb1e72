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

/**
 * The child's work. Self-contained: it runs as `node -e`, so it names
 * nothing outside itself but its arguments and Node's globals.
 */
export function fleetIo(fs: typeof FsModule, req: FleetIoRequest, stdin: () => string): FleetIoResult {
  const C = fs.constants;
  const join = (a: string, b: string) => (a.endsWith("/") ? a + b : `${a}/${b}`);
  const at = (fd: number, name: string) => `/proc/self/fd/${fd}/${name}`;
  const code = (e: unknown) => (e as { code?: string }).code;
  class Refused extends Error {
    constructor(readonly detail: { path: string; problem: string; fix: string }) {
      super(detail.problem);
    }
  }
  // `onTheWay`: a directory passed through, not the one holding the files. A root-owned sticky one
  // (/tmp) is fine there: no one else can rename or remove root's entries in it, and what the walk
  // opens next is checked in turn.
  const checkDir = (fd: number, shown: string, owners: number[], onTheWay: boolean) => {
    const st = fs.fstatSync(fd);
    if (!owners.includes(st.uid)) throw new Refused({ path: shown, problem: `is owned by uid ${st.uid}, not by ${owners.map((u) => `uid ${u}`).join(" or ")}`, fix: `chown ${owners[owners.length - 1]} ${shown}` });
    const stickyRoot = onTheWay && st.uid === 0 && (st.mode & 0o1000) !== 0;
    if ((st.mode & 0o022) !== 0 && !stickyRoot) throw new Refused({ path: shown, problem: `is writable by group or others (mode ${(st.mode & 0o7777).toString(8)})`, fix: `chmod go-w ${shown}` });
  };
  const openDir = (parent: number, name: string, shown: string) => {
    try {
      return fs.openSync(at(parent, name), C.O_RDONLY | C.O_DIRECTORY | C.O_NOFOLLOW);
    } catch (e) {
      if (code(e) !== "ELOOP" && code(e) !== "ENOTDIR") throw e;
      // With O_DIRECTORY, Linux answers ENOTDIR for a symlink too: lstat tells which, for the message only.
      const link = fs.lstatSync(at(parent, name)).isSymbolicLink();
      throw new Refused({ path: shown, problem: link ? "is a symbolic link, not a directory" : "is not a directory", fix: `rm ${shown}; install -d -o root -m 0755 ${shown}` });
    }
  };
  const walk = (w: Walk) => {
    let shown = w.anchor;
    let parts = w.parts;
    let fd: number;
    if (w.fromRoot) {
      const real = fs.realpathSync(w.anchor);
      parts = [...real.split("/").filter((p) => p !== ""), ...w.parts];
      shown = "/";
      fd = fs.openSync("/", C.O_RDONLY | C.O_DIRECTORY);
      checkDir(fd, "/", [0], parts.length > 0);
    } else fd = fs.openSync(w.anchor, C.O_RDONLY | C.O_DIRECTORY);
    for (const [i, part] of parts.entries()) {
      shown = join(shown, part);
      let next: number;
      try {
        next = openDir(fd, part, shown);
      } catch (e) {
        if (code(e) !== "ENOENT" || !w.create) throw e;
        // mkdir never follows a symlink at its name (EEXIST): what it makes is checked like the rest.
        fs.mkdirSync(at(fd, part), 0o755);
        next = openDir(fd, part, shown);
      }
      fs.closeSync(fd);
      fd = next;
      checkDir(fd, shown, w.fromRoot && i < parts.length - 1 - w.parts.length ? [0] : w.owners, i < parts.length - 1);
    }
    return { fd, shown };
  };
  try {
    if (req.op === "read-records") {
      let dir: { fd: number; shown: string };
      try {
        dir = walk(req.walk);
      } catch (e) {
        if (code(e) === "ENOENT") return { ok: true, lines: [], cutFiles: 0, cutBytes: 0, skipped: 0 };
        throw e;
      }
      const names = fs.readdirSync(at(dir.fd, "")).filter((n) => n.endsWith(".json") && !n.startsWith("."));
      const cutFiles = Math.max(0, names.length - req.maxFiles);
      const lines: string[] = [];
      let total = 0;
      let cutBytes = 0;
      let skipped = 0;
      for (const name of names.slice(0, req.maxFiles)) {
        let fd: number;
        try {
          // O_NONBLOCK: a FIFO planted under a record's name must not hold the reader.
          fd = fs.openSync(at(dir.fd, name), C.O_RDONLY | C.O_NOFOLLOW | C.O_NONBLOCK);
        } catch {
          skipped++;
          continue;
        }
        try {
          const st = fs.fstatSync(fd);
          if (!st.isFile() || st.size > req.maxFileBytes) {
            skipped++;
            continue;
          }
          if (total + st.size > req.maxTotalBytes) {
            cutBytes++;
            continue;
          }
          const buf = Buffer.alloc(st.size);
          const n = fs.readSync(fd, buf, 0, st.size, 0);
          total += n;
          lines.push(buf.subarray(0, n).toString("utf8").split("\n")[0] ?? "");
        } finally {
          fs.closeSync(fd);
        }
      }
      return { ok: true, lines, cutFiles, cutBytes, skipped };
    }
    const dir = walk({ ...req.walk, create: req.walk.create && req.op === "write-record" });
    if (req.op === "read-key") {
      const shown = join(dir.shown, req.file);
      let fd: number;
      try {
        fd = fs.openSync(at(dir.fd, req.file), C.O_RDONLY | C.O_NOFOLLOW | C.O_NONBLOCK);
      } catch (e) {
        if (code(e) === "ENOENT") return { ok: true, missing: true };
        if (code(e) === "ELOOP") return { ok: false, refused: { path: shown, problem: "is a symbolic link", fix: `rm ${shown}, and make the key there itself` } };
        throw e;
      }
      try {
        const st = fs.fstatSync(fd);
        if (!st.isFile()) return { ok: false, refused: { path: shown, problem: "is not a regular file", fix: `rm ${shown}, and make the key there itself` } };
        if (!req.keyOwners.includes(st.uid)) return { ok: false, refused: { path: shown, problem: `is owned by uid ${st.uid}, not root`, fix: `chown root ${shown}` } };
        if ((st.mode & 0o077) !== 0) return { ok: false, refused: { path: shown, problem: `is readable by others (mode ${(st.mode & 0o7777).toString(8)})`, fix: `chmod 600 ${shown}` } };
        const buf = Buffer.alloc(Math.min(st.size, req.maxBytes));
        const n = fs.readSync(fd, buf, 0, buf.length, 0);
        return { ok: true, key: buf.subarray(0, n).toString("base64") };
      } finally {
        fs.closeSync(fd);
      }
    }
    if (req.op === "remove-record") {
      try {
        fs.unlinkSync(at(dir.fd, req.file));
      } catch (e) {
        if (code(e) !== "ENOENT") throw e;
      }
      return { ok: true, written: true };
    }
    // write-record: a new file no one else can have made (O_EXCL, a random name, no symlink followed), renamed over the record.
    const tmp = `.${req.file}.${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}.tmp`;
    const fd = fs.openSync(at(dir.fd, tmp), C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, 0o644);
    try {
      fs.fchmodSync(fd, 0o644);
      fs.writeSync(fd, stdin());
    } catch (e) {
      fs.closeSync(fd);
      fs.unlinkSync(at(dir.fd, tmp));
      throw e;
    }
    fs.closeSync(fd);
    try {
      fs.renameSync(at(dir.fd, tmp), at(dir.fd, req.file));
    } catch (e) {
      fs.unlinkSync(at(dir.fd, tmp));
      throw e;
    }
    return { ok: true, written: true };
  } catch (e) {
    if (e instanceof Refused) return { ok: false, refused: e.detail };
    throw e;
  }
}

/** The child: `node -e SCRIPT REQUEST`; its answer is one line of JSON on stdout. */
// Records go out as they are, one a line, after a line of JSON: quoting them as JSON strings would make 48 MiB of records more than the 64 MiB the runner takes.
const SCRIPT = `const fs = require("node:fs");
const req = JSON.parse(process.argv[1]);
const r = (${fleetIo.toString()})(fs, req, () => fs.readFileSync(0, "utf8"));
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
