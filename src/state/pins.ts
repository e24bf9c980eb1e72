import { mkdir, open, readFile, rename, stat, unlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { errnoCode } from "../errors.js";
import type { Clock } from "../lib/clock.js";

/**
 * Run-time pins, kept in <state_dir>/pins.json so that they survive a
 * restart. `scratch_manager pin` writes the file and the daemon reads it each
 * tick: no socket, and the pin holds even while the daemon is down. A pin has
 * an owner (a job ID, say) so that one job's epilog does not remove the pin
 * of another job that uses the same dataset.
 */
export interface Pin {
  name: string;
  /** Who pinned it; unpin removes only that owner's pin. */
  owner: string;
  /** Milliseconds since the epoch when the pin ends; absent: until unpinned. */
  until?: number;
}

const FILE = "pins.json";
const LOCK = "pins.lock";
/** A lock older than this was left by a killed writer: writers hold it for milliseconds. */
const STALE_LOCK_MS = 30_000;

export function pinsFile(stateDir: string): string {
  return path.join(stateDir, FILE);
}

function isPin(value: unknown): value is Pin {
  if (typeof value !== "object" || value === null) return false;
  const p = value as Record<string, unknown>;
  return typeof p.name === "string" && typeof p.owner === "string" && (p.until === undefined || typeof p.until === "number");
}

export function parsePins(text: string, file: string): Pin[] {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw new Error(`${file}: not JSON (${err instanceof Error ? err.message : String(err)})`);
  }
  const pins = (data as { pins?: unknown }).pins;
  if (!Array.isArray(pins) || !pins.every(isPin)) throw new Error(`${file}: expected {"pins": [{"name", "owner", "until"?}]}`);
  return pins;
}

export async function readPins(stateDir: string): Promise<Pin[]> {
  const file = pinsFile(stateDir);
  try {
    return parsePins(await readFile(file, "utf8"), file);
  } catch (err) {
    if (errnoCode(err) === "ENOENT") return [];
    throw err;
  }
}

/** A pin without an end, or whose end is still to come. */
export function isActive(p: Pin, now: number): boolean {
  return p.until === undefined || p.until > now;
}

/** Pins in force at `now`, by dataset name: the latest end wins; a permanent pin beats any end. */
export function activePins(pins: readonly Pin[], now: number): Map<string, number | undefined> {
  const out = new Map<string, number | undefined>();
  for (const p of pins) {
    if (!isActive(p, now)) continue;
    const seen = out.has(p.name);
    const prev = out.get(p.name);
    if (!seen) out.set(p.name, p.until);
    else if (prev !== undefined && (p.until === undefined || p.until > prev)) out.set(p.name, p.until);
  }
  return out;
}

async function withLock<T>(stateDir: string, clock: Clock, fn: () => Promise<T>): Promise<T> {
  await mkdir(stateDir, { recursive: true, mode: 0o755 });
  const lock = path.join(stateDir, LOCK);
  const deadline = clock.monotonic() + 10_000;
  for (;;) {
    try {
      const handle = await open(lock, "wx", 0o600);
      await handle.close();
      break;
    } catch (err) {
      if (errnoCode(err) !== "EEXIST") throw err;
      const st = await stat(lock).catch(() => undefined);
      // The lock's age is wall time: its mtime is the file system's clock.
      if (st && clock.now() - st.mtimeMs > STALE_LOCK_MS) await unlink(lock).catch(() => undefined);
      else if (clock.monotonic() > deadline) throw new Error(`${lock} is held by another writer; try again`);
      else await clock.sleep(20);
    }
  }
  try {
    return await fn();
  } finally {
    await unlink(lock).catch(() => undefined);
  }
}

/**
 * Read, change and atomically rewrite the pins file (mode 0644: anyone may
 * read, only root may write). `clock` is the caller's: a pin made "for a
 * week" from its now is judged expired by that same now.
 */
export async function updatePins(stateDir: string, clock: Clock, change: (pins: Pin[], now: number) => Pin[]): Promise<Pin[]> {
  return withLock(stateDir, clock, async () => {
    const now = clock.now();
    // Expired pins are dropped whenever the file is written, so it does not grow.
    const pins = change((await readPins(stateDir)).filter((p) => p.until === undefined || p.until > now), now);
    const file = pinsFile(stateDir);
    const tmp = `${file}.${process.pid}.tmp`;
    await writeFile(tmp, JSON.stringify({ pins }, null, 2) + "\n", { mode: 0o644 });
    await rename(tmp, file);
    return pins;
  });
}
