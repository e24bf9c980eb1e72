import { readFile } from "node:fs/promises";
import path from "node:path";
import { ParseError } from "./parse-error.js";

export interface MountEntry {
  mountId: number;
  parentId: number;
  /** "7:3" */
  majorMinor: string;
  mountPoint: string;
  options: string;
  fsType: string;
  source: string;
}

/** mountinfo escapes space, tab, newline and backslash as \ooo octal (fs/proc_namespace.c). */
export function unescapeOctal(field: string): string {
  if (!field.includes("\\")) return field;
  const bytes: number[] = [];
  const raw = Buffer.from(field, "utf8");
  for (let i = 0; i < raw.length; i++) {
    const c = raw[i] as number;
    if (c === 0x5c && i + 3 < raw.length && /^[0-7]{3}$/.test(raw.subarray(i + 1, i + 4).toString("latin1"))) {
      bytes.push(parseInt(raw.subarray(i + 1, i + 4).toString("latin1"), 8));
      i += 3;
    } else {
      bytes.push(c);
    }
  }
  return Buffer.from(bytes).toString("utf8");
}

/** Parse /proc/<pid>/mountinfo (proc(5)). */
export function parseMountinfo(text: string, file = "/proc/self/mountinfo"): MountEntry[] {
  const entries: MountEntry[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] ?? "";
    if (line === "") continue;
    const fields = line.split(" ");
    const sep = fields.indexOf("-", 6);
    const mountId = Number(fields[0]);
    const parentId = Number(fields[1]);
    if (sep < 0 || fields.length < sep + 3 || !Number.isInteger(mountId) || !Number.isInteger(parentId)) {
      throw new ParseError(file, i + 1, "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [TAGS] - FSTYPE SOURCE SUPEROPTIONS", line);
    }
    entries.push({
      mountId,
      parentId,
      majorMinor: fields[2] as string,
      mountPoint: unescapeOctal(fields[4] as string),
      options: fields[5] as string,
      fsType: unescapeOctal(fields[sep + 1] as string),
      source: unescapeOctal(fields[sep + 2] as string),
    });
  }
  return entries;
}

export async function readMountinfo(procRoot = "/proc"): Promise<MountEntry[]> {
  const file = path.join(procRoot, "self", "mountinfo");
  return parseMountinfo(await readFile(file, "utf8"), file);
}

/**
 * The mounts stacked on one mount point, bottom first. An overmount's parent
 * is the mount it covers, so the stack is the chain of parents that share
 * the mount point. mountinfo lists mounts in creation order, which a restart
 * of the daemon does not change.
 */
export function stackAt(entries: readonly MountEntry[], mountPoint: string): MountEntry[] {
  return stackOf(entries.filter((e) => e.mountPoint === mountPoint));
}

/** Every mount point's stack (see stackAt), in one pass over the entries: O(mounts), not O(mounts^2). */
export function stacks(entries: readonly MountEntry[]): Map<string, MountEntry[]> {
  const byPoint = new Map<string, MountEntry[]>();
  for (const e of entries) {
    const list = byPoint.get(e.mountPoint);
    if (list) list.push(e);
    else byPoint.set(e.mountPoint, [e]);
  }
  return new Map([...byPoint].map(([point, here]) => [point, stackOf(here)]));
}

/** The mounts of one mount point, bottom first, by following parents. */
function stackOf(here: readonly MountEntry[]): MountEntry[] {
  if (here.length === 1) return [here[0] as MountEntry];
  const ids = new Set(here.map((e) => e.mountId));
  const byParent = new Map(here.map((e) => [e.parentId, e]));
  const stack: MountEntry[] = [];
  let cur = here.find((e) => !ids.has(e.parentId));
  while (cur && stack.length < here.length) {
    stack.push(cur);
    cur = byParent.get(cur.mountId);
  }
  return stack;
}
