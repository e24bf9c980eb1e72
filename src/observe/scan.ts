/**
 * Reading a directory that may live on a dead file server, without ever
 * blocking the daemon. Node runs every fs call on libuv's thread pool (4
 * threads): a few calls stuck on a hard NFS mount and every other file
 * operation of the daemon waits too, and the process cannot even exit (libuv
 * joins its threads at exit). So the daemon never makes a system call on
 * datadir itself: GNU find(1) lists it, head(1) reads image headers, each a
 * child process with a timeout that the runner abandons if it stays stuck in
 * the kernel after SIGKILL (act/exec.ts).
 */
import type { Stats } from "node:fs";
import { lstat, readdir, stat, statfs } from "node:fs/promises";
import path from "node:path";
import { CommandFailedError, type Runner } from "../lib/exec.js";
import { errnoCode, errorMessage } from "../errors.js";
import type { FileEntry } from "./images.js";
import { majorMinorOf } from "./loops.js";

/** The directory itself, as stat() sees it (find's depth 0). */
export interface DirStat {
  /** st_dev as "major:minor": another file system mounted there (or gone from there) changes it. */
  dev: string;
  ino: number;
  mtimeMs: number;
  ctimeMs: number;
}

export interface Listing {
  dir: DirStat;
  /** Every entry (hidden ones too), sorted by name, as lstat saw them. */
  entries: FileEntry[];
}

/** An error reading the directory: an errno code (EIO, ESTALE, ENOENT, ...) and find's own words. */
export class ScanError extends Error {
  override name = "ScanError";
  constructor(
    readonly code: string,
    message: string,
    /** The command did not finish in time (a hung server). */
    readonly timedOut = false,
  ) {
    super(message);
  }
}

/**
 * One record per file, NUL-terminated, name last (a name may hold tabs or
 * newlines): depth, type, st_dev (decimal), inode, size, mtime and ctime in
 * seconds with a fraction.
 */
const FIND_FORMAT = "%d\\t%y\\t%D\\t%i\\t%s\\t%T@\\t%C@\\t%P\\0";

function typeOf(letter: string): FileEntry["type"] {
  return letter === "f" ? "file" : letter === "d" ? "directory" : letter === "l" ? "symlink" : "other";
}

const seconds = (text: string) => Math.round(Number(text) * 1e6) / 1e3;

/** Parse find's records (FIND_FORMAT) for `dir`. Pure. */
export function parseFindListing(text: string, dir: string): Listing {
  let self: DirStat | undefined;
  const entries: FileEntry[] = [];
  for (const record of text.split("\0")) {
    if (record === "") continue;
    const fields = record.split("\t");
    if (fields.length < 8) throw new ScanError("EPROTO", `find printed an unexpected record for ${dir}: ${JSON.stringify(record.slice(0, 120))}`);
    const [depth, type, dev, ino, size, mtime, ctime] = fields as [string, string, string, string, string, string, string];
    const file = fields.slice(7).join("\t");
    const stat = { dev: majorMinorOf(BigInt(dev)), ino: Number(ino), mtimeMs: seconds(mtime) };
    if (depth === "0") self = { ...stat, ctimeMs: seconds(ctime) };
    else entries.push({ file, path: path.join(dir, file), type: typeOf(type), size: Number(size), ...stat });
  }
  if (!self) throw new ScanError("EPROTO", `find printed nothing for ${dir} itself`);
  entries.sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : 0));
  return { dir: self, entries };
}

/**
 * glibc's strerror texts (LC_ALL=C) of the errors a file server gives, back
 * to their codes: find and head say only the text.
 */
const ERRNO_TEXTS: Record<string, string> = {
  "No such file or directory": "ENOENT",
  "Input/output error": "EIO",
  "Stale file handle": "ESTALE",
  "Transport endpoint is not connected": "ENOTCONN",
  "Permission denied": "EACCES",
  "Operation not permitted": "EPERM",
  "Not a directory": "ENOTDIR",
  "Too many levels of symbolic links": "ELOOP",
  "Connection timed out": "ETIMEDOUT",
  "Host is down": "EHOSTDOWN",
  "No route to host": "EHOSTUNREACH",
  "Remote I/O error": "EREMOTEIO",
  "Communication error on send": "ECOMM",
  "Resource temporarily unavailable": "EAGAIN",
  "Cannot allocate memory": "ENOMEM",
  "Interrupted system call": "EINTR",
  "Software caused connection abort": "ECONNABORTED",
  "Connection refused": "ECONNREFUSED",
  "Connection reset by peer": "ECONNRESET",
  "Is a directory": "EISDIR",
  "No such device": "ENODEV",
  "No such device or address": "ENXIO",
};

/** "find: '/data/x': Input/output error" -> { file: "/data/x", code: "EIO" }. */
export function parseErrorLine(line: string): { file?: string; code: string; text: string } {
  const m = /^[\w.-]+: (?:'(.*)'|‘(.*)’|(.*?)): ([^:]+)$/.exec(line.trim());
  const text = (m?.[4] ?? line).trim();
  return { file: m?.[1] ?? m?.[2] ?? m?.[3], code: ERRNO_TEXTS[text] ?? "EIO", text };
}

/**
 * find's complaints, sorted: an entry that vanished between readdir and its
 * lstat (an image deleted during the scan) is no error, it is simply not
 * listed; anything else is (the first is returned).
 */
export function fatalFindError(stderr: string, dir: string): { code: string; text: string } | undefined {
  for (const line of stderr.split("\n")) {
    if (line.trim() === "") continue;
    const e = parseErrorLine(line);
    if (e.code === "ENOENT" && e.file !== undefined && e.file !== dir && path.dirname(e.file) === dir) continue;
    return e;
  }
  return undefined;
}

/** Any failure of a command reading a directory, as a ScanError with its errno code. */
export function scanFailure(err: unknown, what: string): ScanError {
  if (err instanceof ScanError) return err;
  if (err instanceof CommandFailedError) {
    if (err.timedOut || err.abandoned) return new ScanError("ETIMEDOUT", `${what} did not finish in ${Math.round(err.ms / 1000)} s`, true);
    const e = fatalFindError(err.stderr, "");
    if (e) return new ScanError(e.code, `${what}: ${e.text}`);
  }
  return new ScanError("EIO", `${what}: ${errorMessage(err)}`);
}

/** List `dir` through find: its own stat and every entry's lstat. Throws ScanError. */
export async function listDirectory(run: Runner, dir: string, timeoutMs: number, signal?: AbortSignal): Promise<Listing> {
  let out: { stdout: string; stderr: string };
  try {
    out = await run("find", ["-H", dir, "-maxdepth", "1", "-printf", FIND_FORMAT], { timeoutMs, signal });
  } catch (err) {
    // find exits 1 for any complaint, also for an entry that vanished mid-scan: keep what it listed then.
    if (err instanceof CommandFailedError && err.exitCode === 1 && fatalFindError(err.stderr, dir) === undefined) {
      out = { stdout: err.stdout, stderr: err.stderr };
    } else {
      throw scanFailure(err, `listing ${dir}`);
    }
  }
  return parseFindListing(out.stdout, dir);
}

/** lstat of one file through find (e.g. an image before and after its copy). Throws ScanError. */
export async function statFile(run: Runner, file: string, timeoutMs: number, signal?: AbortSignal): Promise<DirStat & { size: number; type: FileEntry["type"] }> {
  let stdout: string;
  try {
    ({ stdout } = await run("find", [file, "-maxdepth", "0", "-printf", FIND_FORMAT.replace("%P", "x")], { timeoutMs, signal }));
  } catch (err) {
    throw scanFailure(err, `stat of ${file}`);
  }
  const fields = stdout.split("\0")[0]?.split("\t") ?? [];
  if (fields.length < 8) throw new ScanError("EPROTO", `find printed an unexpected record for ${file}`);
  const [, type, dev, ino, size, mtime, ctime] = fields as [string, string, string, string, string, string, string];
  return { dev: majorMinorOf(BigInt(dev)), ino: Number(ino), mtimeMs: seconds(mtime), ctimeMs: seconds(ctime), size: Number(size), type: typeOf(type) };
}

/** The real path of `dir` (symbolic links resolved), through realpath(1). Throws ScanError (ENOENT when missing). */
export async function realDirectory(run: Runner, dir: string, timeoutMs: number, signal?: AbortSignal): Promise<string> {
  try {
    const { stdout } = await run("realpath", ["-e", "--", dir], { timeoutMs, signal });
    return stdout.replace(/\n$/, "");
  } catch (err) {
    throw scanFailure(err, `resolving ${dir}`);
  }
}

/**
 * Split the output of `head -c N -- f1 f2 ...` into each file's first bytes.
 * head frames each file as "==> NAME <==\n", and files after the first with a
 * "\n" before that. Each file's bytes are min(N, its size as listed), so the
 * frames are found exactly, whatever bytes the images hold. Undefined if the
 * output does not frame so (a file changed size since it was listed): the
 * caller then reads the files one by one.
 */
export function splitHeadOutput(out: Buffer, files: readonly { path: string; length: number }[]): Map<string, Buffer> | undefined {
  const result = new Map<string, Buffer>();
  let at = 0;
  for (const [i, f] of files.entries()) {
    if (files.length > 1) {
      const header = Buffer.from(`${i === 0 ? "" : "\n"}==> ${f.path} <==\n`, "utf8");
      if (!out.subarray(at, at + header.length).equals(header)) return undefined;
      at += header.length;
    }
    if (at + f.length > out.length) return undefined;
    result.set(f.path, out.subarray(at, at + f.length));
    at += f.length;
  }
  return at === out.length ? result : undefined;
}

/** Errors that concern one file, not the directory or the server behind it. */
const FILE_ERRORS = new Set(["EACCES", "EPERM", "ENOENT", "EISDIR", "ENXIO", "ENODEV"]);

/** Files read per head(1): a long argument list, but far from ARG_MAX. */
const HEAD_BATCH = 200;

/**
 * The first `bytes` of each file (each listed with its size), in batches
 * through head(1). A file that cannot be read gets its ScanError (e.g.
 * EACCES) rather than bytes; a hung or failing directory throws.
 */
export async function readHeaders(
  run: Runner,
  files: readonly { path: string; size: number }[],
  bytes: number,
  timeoutMs: number,
  signal?: AbortSignal,
): Promise<Map<string, Buffer | ScanError>> {
  const out = new Map<string, Buffer | ScanError>();
  for (let i = 0; i < files.length; i += HEAD_BATCH) {
    const batch = files.slice(i, i + HEAD_BATCH);
    let split: Map<string, Buffer> | undefined;
    try {
      const { stdout } = await run("head", ["-c", String(bytes), "--", ...batch.map((f) => f.path)], { timeoutMs, signal, encoding: "latin1" });
      split = splitHeadOutput(
        Buffer.from(stdout, "latin1"),
        batch.map((f) => ({ path: f.path, length: Math.min(bytes, f.size) })),
      );
      // One file: whatever head read is its header, even if it changed size since it was listed.
      if (!split && batch.length === 1) split = new Map([[batch[0]?.path as string, Buffer.from(stdout, "latin1")]]);
    } catch (err) {
      const failure = scanFailure(err, `reading ${batch.length === 1 ? batch[0]?.path : `${batch.length} image headers`}`);
      // A hung server fails the whole scan; so does an I/O error on one file.
      if (failure.timedOut) throw failure;
      if (batch.length === 1) {
        // One file's own problem (not readable, gone): that file is refused, the scan goes on.
        if (!FILE_ERRORS.has(failure.code)) throw failure;
        out.set(batch[0]?.path as string, failure);
        continue;
      }
      // head gave up on the batch for one file's sake: one by one below, each with its own outcome.
    }
    if (split) {
      for (const [file, header] of split) out.set(file, header);
      continue;
    }
    for (const f of batch) {
      const one = await readHeaders(run, [f], bytes, timeoutMs, signal);
      out.set(f.path, one.get(f.path) as Buffer | ScanError);
    }
  }
  return out;
}

/** An error of an in-process call on the local disk, as a ScanError with its errno code. */
function localFailure(err: unknown, what: string): ScanError {
  const code = errnoCode(err) ?? "EIO";
  return new ScanError(code, `${what}: ${errorMessage(err)}`);
}

function direntType(st: Stats): FileEntry["type"] {
  return st.isFile() ? "file" : st.isDirectory() ? "directory" : st.isSymbolicLink() ? "symlink" : "other";
}

/** stat() of a directory of the local disk (cachedir), in the daemon's threads. Throws ScanError. */
export async function statLocal(dir: string): Promise<DirStat> {
  try {
    const st = await stat(dir, { bigint: true });
    return { dev: majorMinorOf(st.dev), ino: Number(st.ino), mtimeMs: Number(st.mtimeNs / 1000n) / 1000, ctimeMs: Number(st.ctimeNs / 1000n) / 1000 };
  } catch (err) {
    throw localFailure(err, `stat of ${dir}`);
  }
}

/** Size and free space of the local file system holding `dir`. Throws ScanError. */
export async function statfsLocal(dir: string): Promise<{ totalBytes: number; freeBytes: number }> {
  try {
    const st = await statfs(dir);
    return { totalBytes: st.blocks * st.bsize, freeBytes: st.bavail * st.bsize };
  } catch (err) {
    throw localFailure(err, `statfs of ${dir}`);
  }
}

/** Every entry of a directory of the local disk, lstat'ed, as listDirectory gives them; entries that vanish meanwhile are skipped. Throws ScanError. */
export async function listLocalDirectory(dir: string): Promise<Listing> {
  try {
    const [self, names] = await Promise.all([statLocal(dir), readdir(dir)]);
    const entries: FileEntry[] = [];
    for (const file of names.sort()) {
      const full = path.join(dir, file);
      let st: Stats;
      try {
        st = await lstat(full);
      } catch (err) {
        if (errnoCode(err) === "ENOENT") continue;
        throw err;
      }
      entries.push({ file, path: full, type: direntType(st), size: st.size, mtimeMs: Math.round(st.mtimeMs * 1000) / 1000, ino: st.ino, dev: self.dev });
    }
    entries.sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : 0));
    return { dir: self, entries };
  } catch (err) {
    if (err instanceof ScanError) throw err;
    throw localFailure(err, `listing ${dir}`);
  }
}
