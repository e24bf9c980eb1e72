import { createHash, createHmac, timingSafeEqual } from "node:crypto";
import { parsePeerName } from "./peer-name.js";

/**
 * The records peers publish in peer_dir (datadir/.scratch_manager/peers by
 * default), and the choices made from them (pure: no I/O). A record is one
 * line, one file per node, replaced atomically; it says where the node
 * listens and which images it holds or is copying, each with the image's
 * identity. Anyone who can write datadir can write that directory's files,
 * so a record counts only when signed with the fleet key (SECURITY.md):
 *
 *   SMR1 <hex HMAC-SHA256(key, JSON)> <JSON>
 *
 * A line that is not is never parsed, and every bound below holds before
 * anything is believed.
 */

export const RECORD_VERSION = 1;

/** An image's identity: its file name in datadir, size and mtime (to the second, as sameVersion). */
export interface ImageIdentity {
  file: string;
  size: number;
  mtimeMs: number;
}

export interface RecordImage extends ImageIdentity {
  /** SHA-256 of the image's bytes, hex, once known (computed by the node that read it from the file server). */
  sha256?: string;
  state: "cached" | "copying";
  /** Bytes copied so far (size once cached). */
  progress: number;
  /** Where the node's copy comes from: "server", or the node it follows. */
  from: string;
  /** When the copy started (ms since the epoch); orders the nodes that all started one from the server at once. */
  since: number;
}

export interface PeerRecord {
  v: typeof RECORD_VERSION;
  /** The node's name in the fleet: its advertised HOST:PORT. */
  node: string;
  /** Written at (ms since the epoch, the writer's clock). */
  updatedAt: number;
  images: RecordImage[];
}

/** A record older than this is a node gone (crashed, powered off): ignored. */
export function staleAfterMs(intervalS: number): number {
  return Math.max(60_000, 4 * publishEveryMs(intervalS));
}

/** How often a node rewrites its record when nothing happened (events write it at once). */
export function publishEveryMs(intervalS: number): number {
  return Math.max(15_000, 3 * intervalS * 1000);
}

/** The file a node's record is kept in: its name made safe for a file name. */
export function recordFileName(node: string): string {
  return `${node.replace(/[^A-Za-z0-9._-]/g, "_")}.json`;
}

const SHA256 = /^[0-9a-f]{64}$/;
const MAGIC = "SMR1";

/** A record's line, at most: 20,000 images of about 200 bytes. */
export const RECORD_MAX_BYTES = 4 * 1024 * 1024;
export const RECORD_MAX_IMAGES = 20_000;
/** Record files read in one pass, and their bytes in all: a fleet of thousands, not a directory stuffed by a user. */
export const RECORDS_MAX_FILES = 20_000;
export const RECORDS_MAX_TOTAL_BYTES = 48 * 1024 * 1024;
/** A record written this far ahead of our clock is ignored: it would otherwise never go stale. */
export const FUTURE_SKEW_MS = 60_000;

export type IgnoredReason = "unsigned" | "bad_signature" | "too_large" | "future" | "too_many_images" | "malformed";
export const IGNORED_REASONS: readonly IgnoredReason[] = ["unsigned", "bad_signature", "too_large", "future", "too_many_images", "malformed"];

function mac(key: Buffer, json: string): Buffer {
  return createHmac("sha256", key).update(json).digest();
}

/** The record as its file holds it: one signed line. */
export function signRecord(key: Buffer, record: PeerRecord): string {
  const json = JSON.stringify(record);
  return `${MAGIC} ${mac(key, json).toString("hex")} ${json}\n`;
}

function isPeerName(x: unknown): x is string {
  return typeof x === "string" && parsePeerName(x) !== undefined;
}

function isImage(x: unknown): x is RecordImage {
  if (typeof x !== "object" || x === null) return false;
  const i = x as Record<string, unknown>;
  return (
    typeof i.file === "string" &&
    i.file !== "" &&
    !i.file.includes("/") &&
    Number.isSafeInteger(i.size) &&
    typeof i.mtimeMs === "number" &&
    (i.sha256 === undefined || (typeof i.sha256 === "string" && SHA256.test(i.sha256))) &&
    (i.state === "cached" || i.state === "copying") &&
    Number.isSafeInteger(i.progress) &&
    (i.from === "server" || isPeerName(i.from)) &&
    typeof i.since === "number"
  );
}

/** One line's verdict: the record, or why it is ignored. */
function verifyLine(line: string, keys: readonly Buffer[], now: number): PeerRecord | IgnoredReason {
  if (line.length > RECORD_MAX_BYTES) return "too_large";
  const m = /^SMR1 ([0-9a-f]{64}) /.exec(line);
  if (!m) return "unsigned";
  const json = line.slice(MAGIC.length + 66);
  const given = Buffer.from(m[1] as string, "hex");
  if (!keys.some((key) => timingSafeEqual(mac(key, json), given))) return "bad_signature";
  let r: unknown;
  try {
    r = JSON.parse(json);
  } catch {
    return "malformed";
  }
  if (typeof r !== "object" || r === null) return "malformed";
  const rec = r as Record<string, unknown>;
  if (rec.v !== RECORD_VERSION || !isPeerName(rec.node) || typeof rec.updatedAt !== "number" || !Array.isArray(rec.images)) return "malformed";
  if (rec.updatedAt > now + FUTURE_SKEW_MS) return "future";
  if (rec.images.length > RECORD_MAX_IMAGES) return "too_many_images";
  if (!rec.images.every(isImage)) return "malformed";
  return { v: RECORD_VERSION, node: rec.node, updatedAt: rec.updatedAt, images: rec.images };
}

/**
 * The records among these lines (one per file) that are signed with one of
 * `keys`, within the bounds; the others each with its reason and a digest,
 * so that the caller counts a bad record once, not at every read. When two
 * records name one node, the newer wins.
 */
export function verifyRecordLines(text: string, keys: readonly Buffer[], now: number): { records: PeerRecord[]; ignored: { reason: IgnoredReason; digest: string }[] } {
  const byNode = new Map<string, PeerRecord>();
  const ignored: { reason: IgnoredReason; digest: string }[] = [];
  for (const line of text.split("\n")) {
    if (line.trim() === "") continue;
    const verdict = verifyLine(line, keys, now);
    if (typeof verdict === "string") {
      ignored.push({ reason: verdict, digest: createHash("sha256").update(line).digest("hex") });
      continue;
    }
    const seen = byNode.get(verdict.node);
    if (!seen || seen.updatedAt < verdict.updatedAt) byNode.set(verdict.node, verdict);
  }
  return { records: [...byNode.values()], ignored };
}

export function sameIdentity(a: ImageIdentity, b: ImageIdentity): boolean {
  return a.file === b.file && a.size === b.size && Math.floor(a.mtimeMs / 1000) === Math.floor(b.mtimeMs / 1000);
}

/** The live records (not stale, not this node's), each with its entry for this identity if it has one. */
export function live(records: readonly PeerRecord[], self: string, now: number, staleMs: number): PeerRecord[] {
  return records.filter((r) => r.node !== self && now - r.updatedAt <= staleMs);
}

function entryFor(r: PeerRecord, id: ImageIdentity): RecordImage | undefined {
  return r.images.find((i) => sameIdentity(i, id));
}

/**
 * Among the nodes copying this image from the file server (this one
 * included, by its own entry), the one that started first; ties by name.
 * The others follow it instead of reading the file server too.
 */
export function leader(records: readonly PeerRecord[], self: { node: string; since: number }, id: ImageIdentity): string {
  let best = { node: self.node, since: self.since };
  for (const r of records) {
    const e = entryFor(r, id);
    if (!e || e.state !== "copying" || e.from !== "server") continue;
    if (e.since < best.since || (e.since === best.since && r.node < best.node)) best = { node: r.node, since: e.since };
  }
  return best.node;
}

/**
 * Whether following `node` could lead back to this one: the chain of
 * "from"s, through the records' entries for this image, passes through
 * `self` or goes round. `entries` is built once per choice, not per candidate.
 */
function leadsTo(entries: ReadonlyMap<string, RecordImage>, node: string, self: string, known: Map<string, boolean>): boolean {
  const visited: string[] = [];
  const onPath = new Set<string>();
  let at: string | undefined = node;
  let result = false;
  while (at !== undefined && at !== "server") {
    const memo = known.get(at);
    if (memo !== undefined) {
      result = memo;
      break;
    }
    if (at === self || onPath.has(at)) {
      result = true;
      break;
    }
    visited.push(at);
    onPath.add(at);
    const e: RecordImage | undefined = entries.get(at);
    at = e?.state === "cached" ? "server" : e?.from;
  }
  // Every node on the way leads where this one does: a chain is walked once per choice, not once per candidate on it.
  for (const n of visited) known.set(n, result);
  return result;
}

/**
 * A node that started the same copy from the file server after this one
 * (`since`, ties by name) and has no byte yet is still electing: by
 * leader() it will follow this node, so this node must not follow it (the
 * two would wait on each other). Records published late make the two see
 * each other at once, without the election's wait.
 */
function startedAfter(e: RecordImage, node: string, self: { node: string; since: number }): boolean {
  return e.state === "copying" && e.from === "server" && e.progress === 0 && (e.since > self.since || (e.since === self.since && node > self.node));
}

export interface Source {
  node: string;
  entry: RecordImage;
}

/**
 * The peers to ask for an image, best first: those holding a verified copy
 * (in a random order, to spread the load), then those still copying it, the
 * furthest ahead first. Not: nodes being avoided (a dead one, one that sent
 * wrong bytes), an older or newer version (identity), a held copy whose
 * checksum is unknown (it could not be verified), a chain that leads back here.
 */
export function chooseSources(records: readonly PeerRecord[], self: string, id: ImageIdentity, avoid: ReadonlySet<string>, random: () => number = Math.random, since?: number): Source[] {
  const entries = new Map<string, RecordImage>();
  for (const r of records) {
    const e = entryFor(r, id);
    if (e) entries.set(r.node, e);
  }
  const held: Source[] = [];
  const copying: Source[] = [];
  const known = new Map<string, boolean>();
  for (const [node, entry] of entries) {
    if (node === self || avoid.has(node)) continue;
    if (entry.state === "cached") {
      if (entry.sha256 !== undefined) held.push({ node, entry });
    } else if (since !== undefined && startedAfter(entry, node, { node: self, since })) continue;
    else if (!leadsTo(entries, node, self, known)) copying.push({ node, entry });
  }
  const shuffled = held.map((s) => ({ s, k: random() })).sort((a, b) => a.k - b.k).map(({ s }) => s);
  copying.sort((a, b) => b.entry.progress - a.entry.progress || a.node.localeCompare(b.node));
  return [...shuffled, ...copying];
}

/**
 * The checksums the fleet's signed records give for this identity, each
 * with the nodes that give it. More than one is an alarm (a node with the
 * key lies, or the image changed within its mtime's second): none is used.
 */
export function publishedChecksums(records: readonly PeerRecord[], id: ImageIdentity): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const r of records) {
    const sha = entryFor(r, id)?.sha256;
    if (sha !== undefined) out.set(sha, [...(out.get(sha) ?? []), r.node]);
  }
  return out;
}
