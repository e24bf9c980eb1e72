import { createHash, type Hash } from "node:crypto";
import { open, utimes, type FileHandle } from "node:fs/promises";
import type { Logger } from "pino";
import type { Clock } from "../lib/clock.js";
import type { PeerStatus } from "../report/status.js";
import { fetchFromPeer, type FetchOutcome } from "./fetch.js";
import type { FleetKey } from "./fleet-key.js";
import type { RecordBoard } from "./record-board.js";
import { chooseSources, leader, publishedChecksums, type ImageIdentity, type PeerRecord, type Source } from "./records.js";

/** A copy that found no peer waits this long for the others that start it at the same moment to say so (records), then one of them reads the file server. */
const ELECTION_MS = 1000;
/** While every peer that has the image is busy, ask again this often (and a random part of it more, so that a herd spreads out), ... */
const BUSY_RETRY_MS = 500;
/** ... reading the records again at most this often (with a thousand nodes, a read opens a thousand files on the file server), ... */
const RECORDS_REREAD_MS = 5_000;
/** ... and read the file server after this long without a free one. */
const BUSY_GIVE_UP_MS = 20_000;
/** A peer that broke a transfer off (dead, stalled) is not asked again for this long; ... */
const AVOID_BROKEN_MS = 60_000;
/** ... one that refused this node's key (one of the two has not read a new key yet), for this long; ... */
const AVOID_UNAUTHORIZED_MS = 10_000;
/** ... one that sent bytes that did not match the image's checksum, for this long. */
const AVOID_WRONG_MS = 30 * 60_000;
/** A copy from peers whose checksum no record gives yet waits this long for one. */
const CHECKSUM_WAIT_MS = 30_000;
/** A transfer that gets nothing for this long is cut (or the configured command timeout, if shorter). */
const STALL_MAX_MS = 30_000;

/** Peers not to ask for a while, by node: shared by every copy of this node. */
export class Avoidance {
  private readonly until = new Map<string, number>();

  constructor(private readonly clock: Clock) {}

  avoid(node: string, forMs: number): void {
    this.until.set(node, this.clock.now() + forMs);
  }

  current(): Set<string> {
    const now = this.clock.now();
    for (const [node, until] of this.until) if (until <= now) this.until.delete(node);
    return new Set(this.until.keys());
  }
}

/** A copy in progress, as peer fill tracks it (and serves it to others as it grows). */
export interface CopyState {
  id: ImageIdentity;
  tmpPath: string;
  since: number;
  /** Where it comes from: "server", or the peer it follows. */
  from: string;
  /** Peers' bytes went into tmpPath: a start from the file server is another file. */
  opened: boolean;
  written: number;
}

export interface PeerCopyDeps {
  self: string;
  board: RecordBoard;
  fleetKey: FleetKey;
  avoidance: Avoidance;
  clock: Clock;
  intervalS: number;
  stallMs: number;
  counters: PeerStatus["counters"];
  log: Logger;
}

/** How the transfer ended: every byte (with the sender's signed checksum, if it sent one), or no peer could give it. */
type Transfer = { kind: "complete"; trailer?: string } | { kind: "gave-up" };

/**
 * One copy of an image from peers, as a few steps: choose the sources
 * (electing, with the others starting it at once, who reads the file
 * server), transfer (round after round over the sources, each resuming at
 * the byte the last stopped at), then verify against the checksum the fleet
 * signed. Undefined from run(): no peer could give it, and the caller reads
 * the file server; throws only for local failures or a cancel.
 */
export class PeerCopy {
  /** Sources that failed this copy (refused, broke off, sent a bad checksum): not asked again by it. */
  private readonly failed = new Set<string>();
  /** Peers whose bytes went into the copy. */
  private readonly used = new Set<string>();
  private readonly hash: Hash = createHash("sha256");
  private records: PeerRecord[] = [];

  constructor(
    private readonly deps: PeerCopyDeps,
    private readonly copy: CopyState,
    /** The copy cancelled or the daemon stopping: ends every wait. */
    private readonly signal: AbortSignal,
    /** The copy cancelled: ends transfers. */
    private readonly cancel: AbortSignal,
  ) {}

  async run(): Promise<{ from: string; sha256: string } | undefined> {
    const sources = await this.choose();
    if (!sources || !this.deps.fleetKey.key) return undefined;
    const handle = await open(this.copy.tmpPath, "w", 0o600);
    this.copy.opened = true;
    let transfer: Transfer;
    try {
      transfer = await this.transfer(handle, sources);
      if (transfer.kind === "complete") await handle.sync();
    } finally {
      await handle.close();
    }
    return transfer.kind === "complete" ? this.verify(transfer.trailer) : undefined;
  }

  private avoiding(): Set<string> {
    return new Set([...this.deps.avoidance.current(), ...this.failed]);
  }

  private sources(): Source[] {
    return chooseSources(this.records, this.deps.self, this.copy.id, this.avoiding(), Math.random, this.copy.since);
  }

  private async readRecords(): Promise<void> {
    this.records = await this.deps.board.read(this.signal, this.deps.intervalS);
  }

  /** The sources to start with; undefined when this node is to read the file server (none, or it won the election). */
  private async choose(): Promise<Source[] | undefined> {
    await this.readRecords();
    const sources = this.sources();
    if (sources.length > 0) return sources;
    // Others may be starting the same copy at this very moment: say so, wait for them to say so, and let the first read the file server.
    await this.deps.board.publishAwait(this.signal);
    await this.deps.clock.sleep(ELECTION_MS, this.cancel);
    await this.readRecords();
    if (leader(this.records, { node: this.deps.self, since: this.copy.since }, this.copy.id) === this.deps.self) return undefined;
    const after = this.sources();
    return after.length > 0 ? after : undefined;
  }

  /** Rounds over the sources until every byte is in, or no source moved the copy on for BUSY_GIVE_UP_MS. */
  private async transfer(handle: FileHandle, first: Source[]): Promise<Transfer> {
    let sources = first;
    let waitingSince: number | undefined;
    const { clock } = this.deps;
    for (;;) {
      if (this.cancel.aborted) throw new Error("cancelled");
      const roundStart = this.copy.written;
      const round = await this.round(handle, sources);
      if (round !== "again") return round;
      // No source moved the copy on (all busy, or broken at once): wait a while for one, then the file server.
      const firstWait = waitingSince === undefined;
      waitingSince = this.copy.written > roundStart ? undefined : (waitingSince ?? clock.now());
      if (waitingSince !== undefined && clock.now() - waitingSince > BUSY_GIVE_UP_MS) return { kind: "gave-up" };
      await clock.sleep(BUSY_RETRY_MS * (1 + Math.random()), this.cancel);
      // Once at the first refusal (the others starting with this node have said what they copy by now), then at most every RECORDS_REREAD_MS.
      if (firstWait || clock.now() - this.deps.board.readAt >= RECORDS_REREAD_MS) await this.readRecords();
      sources = this.sources();
      if (sources.length === 0) return { kind: "gave-up" };
    }
  }

  /** Each source once, in order, resuming where the copy is; "again" when none finished it. */
  private async round(handle: FileHandle, sources: readonly Source[]): Promise<Transfer | "again"> {
    for (const s of sources) {
      // Said at once: the nodes a busy peer turns away look for another node copying the image.
      if (this.copy.from !== s.node) {
        this.copy.from = s.node;
        this.deps.board.publishSoon();
      }
      const before = this.copy.written;
      const outcome = await this.fetch(handle, s.node);
      if (this.copy.written > before) this.used.add(s.node);
      const next = this.judge(s.node, outcome, before);
      if (next !== "next") return next;
      if (this.cancel.aborted) throw new Error("cancelled");
    }
    return "again";
  }

  private fetch(handle: FileHandle, node: string): Promise<FetchOutcome> {
    const { fleetKey, clock } = this.deps;
    const key = fleetKey.key;
    if (!key) return Promise.resolve({ kind: "refused", status: 401 });
    return fetchFromPeer({
      node,
      id: this.copy.id,
      key,
      keys: fleetKey.keys(),
      self: this.deps.self,
      offset: this.copy.written,
      handle,
      hash: this.hash,
      onBytes: (n) => (this.copy.written += n),
      stallMs: Math.min(this.deps.stallMs, STALL_MAX_MS),
      signal: this.cancel,
      clock,
    });
  }

  /** What one transfer's outcome means for the copy: done, given up, or on to the next source. */
  private judge(node: string, outcome: FetchOutcome, before: number): Transfer | "next" {
    const { log, avoidance } = this.deps;
    switch (outcome.kind) {
      case "complete":
        return { kind: "complete", trailer: outcome.sha256 };
      case "busy":
        return "next";
      case "forged":
        // Whatever it sent is not to be believed: the copy is thrown away, and the peer avoided as for wrong bytes.
        log.warn({ peer: node, err: outcome.error }, "a peer's checksum is not signed for this request; its copy is discarded");
        this.deps.counters.checksumMismatches++;
        avoidance.avoid(node, AVOID_WRONG_MS);
        return { kind: "gave-up" };
      case "refused":
        this.failed.add(node);
        log.info({ peer: node, status: outcome.status }, "peer refused the transfer");
        // 401: one of the two has a key the other has not read yet: read ours again; that peer asked again soon.
        if (outcome.status === 401) this.deps.fleetKey.recheck();
        avoidance.avoid(node, outcome.status === 401 ? AVOID_UNAUTHORIZED_MS : AVOID_BROKEN_MS);
        return "next";
      case "broken":
        log.info({ peer: node, at: this.copy.written, err: outcome.error }, "peer transfer broke off; going on from another source");
        this.failed.add(node);
        if (this.copy.written === before) avoidance.avoid(node, AVOID_BROKEN_MS);
        return "next";
    }
  }

  /** Every byte in: the copy is kept only if its SHA-256 is the one the fleet signed. */
  private async verify(trailer: string | undefined): Promise<{ from: string; sha256: string } | undefined> {
    const { log, counters, avoidance, clock } = this.deps;
    const got = this.hash.digest("hex");
    const expected = await this.expectedChecksum(trailer);
    if (expected === "conflict") return undefined;
    const peers = [...this.used];
    if (expected === undefined || got !== expected) {
      if (expected !== undefined) counters.checksumMismatches++;
      for (const node of peers) avoidance.avoid(node, AVOID_WRONG_MS);
      log.warn({ peers, got, expected }, expected === undefined ? "no checksum known for the copy from peers; discarded" : "the copy from peers does not match the image's checksum; discarded, those peers avoided");
      return undefined;
    }
    // The copy carries the image's mtime, as cp --preserve=timestamps gives it: that is how a cached copy is recognised.
    await utimes(this.copy.tmpPath, new Date(clock.now()), new Date(this.copy.id.mtimeMs));
    counters.fromPeersBytes += this.copy.id.size;
    log.info({ peers, bytes: this.copy.id.size }, "filled from peers, checksum verified");
    return { from: peers.join(",") || this.copy.from, sha256: got };
  }

  /**
   * The checksum the copy must have: the one signed by the peer that sent
   * the last byte (for this request), and every one the signed records
   * give. Two different ones are an alarm and neither is used ("conflict");
   * none yet: wait for the node that read the file server to publish it.
   */
  private async expectedChecksum(trailer: string | undefined): Promise<string | undefined | "conflict"> {
    const { clock, board, intervalS, log, counters } = this.deps;
    const until = clock.now() + CHECKSUM_WAIT_MS;
    let records = board.live(intervalS);
    for (;;) {
      const known = publishedChecksums(records, this.copy.id);
      if (trailer !== undefined) known.set(trailer, [...(known.get(trailer) ?? []), "the sender"]);
      if (known.size > 1) {
        counters.checksumConflicts++;
        log.error({ image: this.copy.id.file, checksums: Object.fromEntries(known) }, "two different signed checksums for one image; neither is used");
        return "conflict";
      }
      const [sha] = known.keys();
      if (sha !== undefined || clock.now() > until || this.signal.aborted) return sha;
      await clock.sleep(1000, this.signal);
      records = await board.read(this.signal, intervalS);
    }
  }
}
