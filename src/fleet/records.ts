/**
 * The records peers publish in datadir/.scratch_manager/peers/, and the
 * choices made from them (pure: no I/O). A record is one line of JSON, one
 * file per node, replaced atomically; it says where the node listens and
 * which images it holds or is copying, each with the image's identity.
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
    typeof i.from === "string" &&
    typeof i.since === "number"
  );
}

/**
 * The records in the output of `cat` over the directory: one per line.
 * A line that is not a valid record (a half-written file of another
 * version, garbage) is skipped: one bad record never hides the others.
 */
export function parseRecords(text: string): PeerRecord[] {
  const out: PeerRecord[] = [];
  for (const line of text.split("\n")) {
    if (line.trim() === "") continue;
    let r: unknown;
    try {
      r = JSON.parse(line);
    } catch {
      continue;
    }
    if (typeof r !== "object" || r === null) continue;
    const rec = r as Record<string, unknown>;
    if (rec.v !== RECORD_VERSION || typeof rec.node !== "string" || typeof rec.updatedAt !== "number" || !Array.isArray(rec.images)) continue;
    out.push({ v: RECORD_VERSION, node: rec.node, updatedAt: rec.updatedAt, images: rec.images.filter(isImage) });
  }
  return out;
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
 * "from"s, through the records, passes through `self` or goes round.
 */
function leadsTo(records: readonly PeerRecord[], node: string, self: string, id: ImageIdentity): boolean {
  const byNode = new Map(records.map((r) => [r.node, r]));
  const visited = new Set<string>();
  let at: string | undefined = node;
  while (at !== undefined && at !== "server") {
    if (at === self || visited.has(at)) return true;
    visited.add(at);
    const e: RecordImage | undefined = byNode.get(at) && entryFor(byNode.get(at) as PeerRecord, id);
    at = e?.state === "cached" ? "server" : e?.from;
  }
  return false;
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
export function chooseSources(records: readonly PeerRecord[], self: string, id: ImageIdentity, avoid: ReadonlySet<string>, random: () => number = Math.random): Source[] {
  const held: Source[] = [];
  const copying: Source[] = [];
  for (const r of records) {
    if (r.node === self || avoid.has(r.node)) continue;
    const entry = entryFor(r, id);
    if (!entry) continue;
    if (entry.state === "cached") {
      if (entry.sha256 !== undefined) held.push({ node: r.node, entry });
    } else if (!leadsTo(records, r.node, self, id)) copying.push({ node: r.node, entry });
  }
  const shuffled = held.map((s) => ({ s, k: random() })).sort((a, b) => a.k - b.k).map(({ s }) => s);
  copying.sort((a, b) => b.entry.progress - a.entry.progress || a.node.localeCompare(b.node));
  return [...shuffled, ...copying];
}

/** The checksum the fleet knows for this identity: from a node that holds or verified it. */
export function knownChecksum(records: readonly PeerRecord[], id: ImageIdentity): string | undefined {
  for (const r of records) {
    const e = entryFor(r, id);
    if (e?.sha256 !== undefined) return e.sha256;
  }
  return undefined;
}
