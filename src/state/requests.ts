/**
 * Requests to the running daemon from `scratch_manager evict` and
 * `release`: a small JSON file in <runtime_dir>/requests/, then SIGUSR2 to
 * the daemon, which reads them at once and answers in <id>.reply. Only
 * root can write runtime_dir (0755, root's); the daemon still opens each
 * file without following links, checks that root owns it, and bounds its
 * size and number.
 */
import { constants } from "node:fs";
import { mkdir, open, readdir, rename, unlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { errnoCode } from "../errors.js";
import { validName } from "../names.js";

export type Request = { id: string; kind: "evict"; names: string[]; force: boolean } | { id: string; kind: "release"; all: boolean };

export interface Reply {
  ok: boolean;
  /** One line per dataset or step, for the command to print. */
  lines: string[];
}

/** A request larger than this is not one of ours. */
const MAX_REQUEST_BYTES = 64 * 1024;
/** At most this many requests are read at once; the rest wait for the next signal or tick. */
const MAX_REQUESTS = 16;
const ID = /^[0-9a-z-]{1,64}$/;

export function requestsDir(runtimeDir: string): string {
  return path.join(runtimeDir, "requests");
}

/** Parses a request file's text; throws with a one-line reason. */
export function parseRequest(text: string): Request {
  const v: unknown = JSON.parse(text);
  if (typeof v !== "object" || v === null) throw new Error("not a JSON object");
  const r = v as Record<string, unknown>;
  if (typeof r.id !== "string" || !ID.test(r.id)) throw new Error("no valid id");
  if (r.kind === "evict") {
    if (!Array.isArray(r.names) || r.names.length === 0 || r.names.length > 1000 || !r.names.every((n) => typeof n === "string" && validName(n) === undefined)) throw new Error("names must be dataset names");
    return { id: r.id, kind: "evict", names: r.names as string[], force: r.force === true };
  }
  if (r.kind === "release") return { id: r.id, kind: "release", all: r.all === true };
  throw new Error(`unknown kind ${JSON.stringify(r.kind)}`);
}

/** Reads a regular, root-owned file without following a link, at most MAX_REQUEST_BYTES. */
async function readOwnFile(file: string): Promise<string> {
  const handle = await open(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  try {
    const st = await handle.stat();
    if (!st.isFile() || st.uid !== 0) throw new Error("not a regular file of root's");
    if (st.size > MAX_REQUEST_BYTES) throw new Error(`larger than ${MAX_REQUEST_BYTES} bytes`);
    const buf = Buffer.alloc(st.size);
    const { bytesRead } = await handle.read(buf, 0, st.size, 0);
    return buf.subarray(0, bytesRead).toString("utf8");
  } finally {
    await handle.close();
  }
}

/** The pending requests (each file removed once read); `bad` names the files that were not requests. */
export async function takeRequests(runtimeDir: string): Promise<{ requests: Request[]; bad: string[] }> {
  const dir = requestsDir(runtimeDir);
  let names: string[];
  try {
    names = (await readdir(dir)).filter((n) => n.endsWith(".request")).sort().slice(0, MAX_REQUESTS);
  } catch (err) {
    if (errnoCode(err) === "ENOENT") return { requests: [], bad: [] };
    throw err;
  }
  const requests: Request[] = [];
  const bad: string[] = [];
  for (const name of names) {
    const file = path.join(dir, name);
    try {
      requests.push(parseRequest(await readOwnFile(file)));
    } catch (err) {
      bad.push(`${file}: ${err instanceof Error ? err.message : String(err)}`);
    }
    await unlink(file).catch(() => undefined);
  }
  return { requests, bad };
}

/** Writes a file atomically in the requests directory (made 0700 root's if missing). */
async function writeInDir(runtimeDir: string, name: string, text: string): Promise<void> {
  const dir = requestsDir(runtimeDir);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const tmp = path.join(dir, `.${name}.${process.pid}.tmp`);
  await writeFile(tmp, text, { mode: 0o600, flag: "wx" });
  await rename(tmp, path.join(dir, name));
}

export function writeRequest(runtimeDir: string, request: Request): Promise<void> {
  return writeInDir(runtimeDir, `${request.id}.request`, JSON.stringify(request));
}

export function writeReply(runtimeDir: string, id: string, reply: Reply): Promise<void> {
  return writeInDir(runtimeDir, `${id}.reply`, JSON.stringify(reply));
}

/** The daemon's reply to `id`, once it is there (removed once read). */
export async function takeReply(runtimeDir: string, id: string): Promise<Reply | undefined> {
  const file = path.join(requestsDir(runtimeDir), `${id}.reply`);
  try {
    const reply = JSON.parse(await readOwnFile(file)) as Reply;
    await unlink(file).catch(() => undefined);
    return reply;
  } catch (err) {
    if (errnoCode(err) === "ENOENT") return undefined;
    throw err;
  }
}
