import path from "node:path";
import { CommandFailedError, type Runner } from "../act/exec.js";
import { errorMessage } from "../errors.js";

/**
 * The fleet's files in datadir (the file server): the key and the peers'
 * records, under datadir/.scratch_manager/. Like every access to datadir,
 * each is a child process with a timeout (observe/scan.ts), never a call in
 * the daemon's own threads, which a dead server would hold.
 */

export const FLEET_DIR = ".scratch_manager";

export function fleetPaths(datadir: string): { dir: string; key: string; peers: string } {
  const dir = path.join(datadir, FLEET_DIR);
  return { dir, key: path.join(dir, "peer.key"), peers: path.join(dir, "peers") };
}

/** Every record in `dir`, as the concatenated lines of its *.json files; "" when the directory does not exist yet. */
export async function readRecordLines(run: Runner, dir: string, timeoutMs: number, signal?: AbortSignal): Promise<string> {
  try {
    const { stdout } = await run("find", [dir, "-maxdepth", "1", "-type", "f", "-name", "*.json", "-exec", "cat", "--", "{}", "+"], { timeoutMs, signal });
    return stdout;
  } catch (err) {
    if (err instanceof CommandFailedError && /No such file or directory/.test(err.stderr) && !err.timedOut) return err.stdout;
    throw new Error(`reading the peers' records in ${dir}: ${errorMessage(err)}`);
  }
}

/** Replace this node's record, atomically (a temporary hidden file renamed over it), creating the directory if needed. */
export async function writeRecordFile(run: Runner, dir: string, file: string, text: string, timeoutMs: number, signal?: AbortSignal): Promise<void> {
  const script = 'mkdir -p -- "$1" && cat > "$1/.$2.tmp" && mv -f -- "$1/.$2.tmp" "$1/$2"';
  try {
    await run("sh", ["-c", script, "sh", dir, file], { timeoutMs, signal, input: text });
  } catch (err) {
    throw new Error(`writing the peer record ${path.join(dir, file)}: ${errorMessage(err)}`);
  }
}

export async function removeRecordFile(run: Runner, dir: string, file: string, timeoutMs: number, signal?: AbortSignal): Promise<void> {
  await run("rm", ["-f", "--", path.join(dir, file)], { timeoutMs, signal });
}

export type KeyFile = { kind: "missing" } | { kind: "present"; mode: number; uid: number; bytes: Buffer };

/** The fleet key's mode, owner and bytes (at most 4 KiB of them). */
export async function readKeyFile(run: Runner, file: string, timeoutMs: number, signal?: AbortSignal): Promise<KeyFile> {
  let meta: string;
  try {
    ({ stdout: meta } = await run("stat", ["-L", "-c", "%a %u %s %F", "--", file], { timeoutMs, signal }));
  } catch (err) {
    if (err instanceof CommandFailedError && /No such file or directory/.test(err.stderr) && !err.timedOut) return { kind: "missing" };
    throw new Error(`reading the fleet key ${file}: ${errorMessage(err)}`);
  }
  const m = /^([0-7]+) (\d+) (\d+) (.*)$/.exec(meta.trim());
  if (!m) throw new Error(`reading the fleet key ${file}: stat printed ${JSON.stringify(meta.trim())}`);
  if (m[4] !== "regular file" && m[4] !== "regular empty file") throw new Error(`the fleet key ${file} is a ${m[4]}, not a regular file`);
  const { stdout } = await run("head", ["-c", "4096", "--", file], { timeoutMs, signal, encoding: "latin1" });
  return { kind: "present", mode: parseInt(m[1] as string, 8), uid: Number(m[2]), bytes: Buffer.from(stdout, "latin1") };
}

/** The smallest key accepted: 32 bytes, as `head -c 32 /dev/urandom` makes. */
export const MIN_KEY_BYTES = 32;

/**
 * Whether the key may be used: present, at least MIN_KEY_BYTES, owned by
 * root (or the daemon's user) and readable by no one else. Undefined if so,
 * else why not, in one line that says what to do.
 */
export function keyProblem(key: KeyFile, file: string, ownUid: number): string | undefined {
  const make = `make it once with: head -c 32 /dev/urandom > ${file}; chmod 600 ${file}`;
  if (key.kind === "missing") return `the fleet key ${file} does not exist; ${make}`;
  if ((key.mode & 0o077) !== 0) return `the fleet key ${file} is readable by others (mode ${key.mode.toString(8)}); chmod 600 ${file}`;
  if (key.uid !== 0 && key.uid !== ownUid) return `the fleet key ${file} is owned by uid ${key.uid}, not root; chown root ${file}`;
  if (key.bytes.length < MIN_KEY_BYTES) return `the fleet key ${file} has ${key.bytes.length} bytes, fewer than ${MIN_KEY_BYTES}; ${make}`;
  return undefined;
}
