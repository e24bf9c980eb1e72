import { createHash } from "node:crypto";
import { hostname } from "node:os";
import { open, unlink, utimes } from "node:fs/promises";
import type { Logger } from "pino";
import type { Runner } from "../lib/exec.js";
import { parseHostPort, type Config } from "../config.js";
import { errnoCode, errorMessage } from "../errors.js";
import type { PeerStatus } from "../report/status.js";
import { Checksums } from "./checksums.js";
import { fetchFromPeer } from "./fetch.js";
import { hashFile, hashFollowing } from "./follow.js";
import { chooseSources, IGNORED_REASONS, leader, live, publishedChecksums, publishEveryMs, RECORD_VERSION, RECORDS_MAX_FILES, RECORDS_MAX_TOTAL_BYTES, RECORD_MAX_BYTES, recordFileName, signRecord, staleAfterMs, verifyRecordLines, type ImageIdentity, type PeerRecord, type RecordImage } from "./records.js";
import { PeerServer, type Holding } from "./server.js";
import { fleetLayout, readFleetKey, runFleetIo, type FleetIoResult, type FleetLayout } from "./shared-dir.js";
import { systemClock, type Clock } from "../lib/clock.js";

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
/** ... one that sent bytes that did not match the image's checksum, for this long. */
const AVOID_WRONG_MS = 30 * 60_000;
/** A copy from peers whose checksum no record gives yet waits this long for one. */
const CHECKSUM_WAIT_MS = 30_000;
/** The key is read again this often (an administrator may replace it), ... */
const KEY_REFRESH_MS = 60_000;
/** ... and at once, at most this often, when a request's signature does not match it (the other node may have the new one). */
const KEY_RECHECK_MS = 5_000;
/** After the key changed, the previous one is still accepted (never used to sign) for this long: a fleet rotates without failed transfers. */
export const KEY_GRACE_MS = 10 * 60_000;
/** Digests of ignored records remembered, so that each is counted once (cleared past this many). */
const IGNORED_MEMORY = 100_000;

/** The transfer pool's copy, as peer fill needs it. */
export interface FillJob {
  name: string;
  imageFile: string;
  size: number;
  mtimeMs: number;
  tmpPath: string;
  /** Where the copy goes once verified (cachedir/<image>): served from there afterwards. */
  dest: string;
  abort: AbortController;
}

export interface FillResult {
  from: string;
  sha256?: string;
}

interface ActiveCopy {
  id: ImageIdentity;
  tmpPath: string;
  since: number;
  from: string;
  /** Bumped when the copy starts over (from the file server after peers failed): a follower of the old file stops. */
  generation: number;
  ended: boolean;
  /** Peers' bytes went into tmpPath: a start from the file server is another file. */
  opened: boolean;
  written: number;
  sha: Promise<string | undefined>;
  settleSha: (sha: string | undefined) => void;
}

/** Totals since start, for status and metrics. */
export type PeerCounters = PeerStatus["counters"];

export interface PeerFillOptions {
  run: Runner;
  logger: Logger;
  /** datadir's one-at-a-time channel (observe/dir-watch.ts): every record and key read or write goes through it. */
  channel: <R>(op: () => Promise<R>, signal?: AbortSignal) => Promise<R>;
  clock?: Clock;
  /** Called when a record says something new may be fetched (a copy finished): the daemon wakes its loop. */
  lifetime: AbortSignal;
}

/**
 * Peer fill (issue 13): each image leaves the file server about once, however
 * many nodes cache it. The node that reads it from the file server publishes
 * that it does (records.ts) and serves its copy as it grows (server.ts); the
 * others copy from it, or from one another, over HTTP, each verifying the
 * bytes against the SHA-256 the first node computed on the way.
 */
export class PeerFill {
  private config: Config;
  private key?: Buffer;
  /** The key before the last change, accepted until `until`. */
  private previousKey?: { key: Buffer; until: number };
  private problem?: string;
  /** Why records cannot be published or read (one warning when it starts, one when it ends). */
  private readonly recordsProblems: { publish?: string; read?: string } = {};
  private readonly ignoredSeen = new Set<string>();
  private keyReadAt = -Infinity;
  private keyReading?: Promise<void>;
  private recheckWanted = false;
  private server?: { server: PeerServer; listen: string };
  private starting?: Promise<void>;
  private records: PeerRecord[] = [];
  private recordsReadAt = -Infinity;
  private readonly active = new Map<string, ActiveCopy>();
  private holdings = new Map<string, Holding>();
  private readonly avoid = new Map<string, number>();
  private readonly checksums: Checksums;
  private publishedAt = -Infinity;
  private dirty = false;
  private publishing?: Promise<void>;
  private hashing?: Promise<void>;
  readonly counters: PeerCounters = {
    fromPeersBytes: 0,
    fromServerBytes: 0,
    servedBytes: 0,
    refusedBusy: 0,
    refusedAuth: 0,
    refusedUnknown: 0,
    checksumMismatches: 0,
    checksumConflicts: 0,
    recordsIgnored: Object.fromEntries(IGNORED_REASONS.map((r) => [r, 0])),
  };

  constructor(
    config: Config,
    private readonly options: PeerFillOptions,
  ) {
    this.config = config;
    this.checksums = new Checksums(config.stateDir);
  }

  private get clock(): Clock {
    return this.options.clock ?? systemClock;
  }

  private now(): number {
    return this.clock.now();
  }

  /** This node's name in the fleet: the HOST:PORT the others reach it at. */
  get node(): string {
    if (this.config.peerAdvertise) return this.config.peerAdvertise;
    const { host, port } = parseHostPort(this.config.peerListen ?? ":0", "peer_listen");
    const actual = this.server ? this.serverPort : port;
    const h = host === "" || host === "0.0.0.0" || host === "::" ? hostname() : host;
    return h.includes(":") ? `[${h}]:${actual}` : `${h}:${actual}`;
  }

  private serverPort = 0;

  get enabled(): boolean {
    return this.key !== undefined && this.server !== undefined;
  }

  private get layout(): FleetLayout {
    const owner = this.config.peerDirOwner;
    return fleetLayout({ datadir: this.config.datadir, peerKey: this.config.peerKey, peerDir: this.config.peerDir, peerDirOwner: typeof owner === "number" ? owner : 0 });
  }

  /** The keys a signature may be made with: the current one first (it signs), the previous one during its grace. */
  private keys(): Buffer[] {
    const keys = this.key ? [this.key] : [];
    if (this.previousKey && this.previousKey.until > this.now()) keys.push(this.previousKey.key);
    return keys;
  }

  private timeoutMs(): number {
    return this.config.scanTimeout * 1000;
  }

  private stallMs(): number {
    return this.config.commandTimeout * 1000;
  }

  view(): PeerStatus {
    const staleMs = staleAfterMs(this.config.interval);
    return {
      enabled: this.enabled,
      node: this.config.peerListen ? this.node : undefined,
      problem: this.problem,
      peersLive: live(this.records, this.node, this.now(), staleMs).length,
      serving: this.server?.server.serving ?? 0,
      recordsProblem: this.recordsProblems.publish ?? this.recordsProblems.read,
      counters: { ...this.counters, recordsIgnored: { ...this.counters.recordsIgnored } },
    };
  }

  /** Where a running copy comes from ("server" or a peer's HOST:PORT), for status. */
  sourceOf(file: string): string | undefined {
    return this.active.get(file)?.from;
  }

  async init(): Promise<void> {
    try {
      await this.checksums.load();
    } catch (err) {
      this.options.logger.warn({ err: errorMessage(err) }, "cannot read the checksums of the cached copies; they will be computed again");
    }
  }

  /** A reloaded configuration: the listener follows peer_listen. */
  reconfigure(config: Config): void {
    this.config = config;
    this.keyReadAt = -Infinity;
  }

  /**
   * Each tick: the copies this node holds (its cached datasets), the key read
   * again now and then, the listener started or stopped, the record
   * rewritten when due. Nothing here waits on the file server: reads and
   * writes of datadir go through its channel, in the background.
   */
  async tick(config: Config, cached: readonly Holding[]): Promise<void> {
    // The daemon's configuration, with datadir as it resolved it.
    this.config = config;
    const holdings = new Map(cached.map((h) => [h.file, { ...h, sha256: this.checksums.get(h) }]));
    if ([...holdings.keys()].some((f) => !this.holdings.has(f)) || [...this.holdings.keys()].some((f) => !holdings.has(f))) this.dirty = true;
    this.holdings = holdings;
    if (!this.config.peerListen) {
      await this.shutdownServer();
      this.key = undefined;
      return;
    }
    // In the background: a key read stuck behind a dead file server must not hold the tick.
    const since = this.now() - this.keyReadAt;
    if ((since >= KEY_REFRESH_MS || (this.recheckWanted && since >= KEY_RECHECK_MS)) && !this.keyReading) {
      this.recheckWanted = false;
      this.keyReading = this.refreshKey().finally(() => (this.keyReading = undefined));
    }
    if (this.key && !this.server) await this.startServer();
    if (!this.key && this.server) await this.shutdownServer();
    if (this.server && this.server.listen !== this.config.peerListen) {
      await this.shutdownServer();
      await this.startServer();
    }
    if (!this.enabled) return;
    this.hashMissing();
    if (this.dirty || this.now() - this.publishedAt >= publishEveryMs(this.config.interval)) this.publishSoon();
  }

  /**
   * Read the key, and check the records' directory, through datadir's
   * channel. Either refused (a symlink, the wrong owner, writable by
   * others, a key others can read) turns peer fill off, with one warning
   * that says which path and what to run.
   */
  private async refreshKey(): Promise<void> {
    const layout = this.layout;
    this.keyReadAt = this.now();
    let problem: string | undefined;
    let key: Buffer | undefined;
    try {
      const read = await this.options.channel(() => readFleetKey(this.options.run, layout, process.getuid?.() ?? 0, this.timeoutMs(), this.options.lifetime), this.options.lifetime);
      if (read.kind === "problem") problem = read.problem;
      else {
        key = read.bytes;
        const dir = await this.options.channel(() => this.recordsIo({ op: "read-records", walk: layout.recordsDir, maxFiles: 0, maxFileBytes: 0, maxTotalBytes: 0 }, this.options.lifetime), this.options.lifetime);
        if (!dir.ok) problem = `${dir.refused.path} ${dir.refused.problem}; ${dir.refused.fix}`;
      }
    } catch (err) {
      // Not answering: keep the key we have (peers are how the node fills while the server is slow).
      if (this.key) return;
      problem = errorMessage(err);
      if (/EROFS|EACCES|EPERM/.test(problem)) problem += `; on a read-only or root_squash export, set peer_key to a local copy of the key and peer_dir to a directory the nodes can write (SECURITY.md)`;
    }
    if (problem !== this.problem) {
      if (problem) this.options.logger.warn({ key: layout.keyPath, records: layout.recordsPath }, `peer fill off: ${problem}`);
      else this.options.logger.info({ key: layout.keyPath, records: layout.recordsPath }, "peer fill on: the fleet key is usable");
      this.problem = problem;
    }
    if (problem) key = undefined;
    if (key && this.key && !key.equals(this.key)) {
      this.options.logger.info({ key: layout.keyPath }, `the fleet key changed; the previous one is accepted for ${KEY_GRACE_MS / 60_000} more minutes`);
      this.previousKey = { key: this.key, until: this.now() + KEY_GRACE_MS };
    }
    this.key = key;
  }

  /** A record operation in a child (shared-dir.ts); a timeout or a failure is an error, a refused path is in the result. */
  private recordsIo(req: Parameters<typeof runFleetIo>[1], signal: AbortSignal, input?: string): Promise<FleetIoResult> {
    return runFleetIo(this.options.run, req, { timeoutMs: this.timeoutMs(), signal, input });
  }

  /**
   * Publishing or reading records failed, or works again: each said once
   * when it starts, once when it ends, and shown in status meanwhile (a
   * read-only export fails the same way at every tick; the log must not).
   */
  private recordsFailing(kind: "publish" | "read", problem: string | undefined): void {
    const was = this.recordsProblems[kind];
    if ((problem === undefined) === (was === undefined)) {
      this.recordsProblems[kind] = problem;
      return;
    }
    const records = this.layout.recordsPath;
    if (problem !== undefined) {
      const hint = /EROFS|EACCES|EPERM/.test(problem) ? "; set peer_dir to a directory the nodes can write (SECURITY.md)" : "";
      this.options.logger.warn({ records }, `peer records: ${problem}${hint}; copies go on, from the file server where no peer is known`);
    } else this.options.logger.info({ records }, kind === "publish" ? "peer records: this node's record is published again" : "peer records: read again");
    this.recordsProblems[kind] = problem;
  }

  /** A directory refused on the way to the records: peer fill off, as for the key. */
  private refused(r: Extract<FleetIoResult, { ok: false }>): void {
    const problem = `${r.refused.path} ${r.refused.problem}; ${r.refused.fix}`;
    if (problem !== this.problem) this.options.logger.warn({ records: this.layout.recordsPath }, `peer fill off: ${problem}`);
    this.problem = problem;
    this.key = undefined;
  }

  /** A signature that did not match: the key may have changed; read it again now (at most every KEY_RECHECK_MS). */
  private recheckKey(): void {
    // Read by the next tick once KEY_RECHECK_MS have passed since the last read.
    this.recheckWanted = true;
  }

  /**
   * Start the listener, once: the tick and a copy's first fill may both
   * ask for it while it is binding, and a second bind of the same port
   * would fail and turn peer fill off.
   */
  private startServer(): Promise<void> {
    this.starting ??= this.bindServer().finally(() => (this.starting = undefined));
    return this.starting;
  }

  private async bindServer(): Promise<void> {
    const listen = this.config.peerListen;
    if (!listen || this.server) return;
    const server = new PeerServer({
      keys: () => this.keys(),
      self: () => this.node,
      lookup: (file) => this.lookup(file),
      maxUploads: () => this.config.peerUploads,
      stallMs: () => this.stallMs(),
      logger: this.options.logger,
      onServed: (n) => (this.counters.servedBytes += n),
      onRefused: (why) => {
        if (why === "busy") this.counters.refusedBusy++;
        else if (why === "auth") {
          this.counters.refusedAuth++;
          this.recheckKey();
        }
        else this.counters.refusedUnknown++;
      },
      clock: this.clock,
    });
    try {
      this.serverPort = await server.listen(listen);
    } catch (err) {
      const problem = `cannot listen on peer_listen = ${listen}: ${errorMessage(err)}`;
      if (problem !== this.problem) this.options.logger.error(`peer fill off: ${problem}`);
      this.problem = problem;
      return;
    }
    this.server = { server, listen };
    this.dirty = true;
    this.options.logger.info({ listen, node: this.node }, "serving cached images to peers");
  }

  private async shutdownServer(): Promise<void> {
    if (!this.server) return;
    const { server } = this.server;
    this.server = undefined;
    await server.close();
  }

  /** What this node can serve of an image: a copy it is making (followed as it grows), or its verified cached copy. */
  private lookup(file: string): Holding | undefined {
    const a = this.active.get(file);
    if (a && !a.ended) {
      const generation = a.generation;
      return { ...a.id, path: a.tmpPath, copying: { growing: () => !a.ended && a.generation === generation, sha: a.sha } };
    }
    const h = this.holdings.get(file);
    // Never a copy whose checksum is unknown: the receiver could not verify it.
    return h?.sha256 !== undefined ? h : undefined;
  }

  /** Cached copies made before peer fill was on have no checksum yet: computed here, one at a time, from the local SSD. */
  private hashMissing(): void {
    if (this.hashing) return;
    const missing = [...this.holdings.values()].find((h) => h.sha256 === undefined);
    if (!missing) return;
    this.hashing = (async () => {
      try {
        const sha = await hashFile(missing.path, this.options.lifetime);
        await this.checksums.set(missing, sha);
        const h = this.holdings.get(missing.file);
        if (h) h.sha256 = sha;
        this.dirty = true;
        this.options.logger.info({ image: missing.file }, "checksum of a cached copy computed");
      } catch (err) {
        this.options.logger.warn({ image: missing.file, err: errorMessage(err) }, "cannot compute the checksum of a cached copy");
      } finally {
        this.hashing = undefined;
      }
    })();
  }

  private record(): PeerRecord {
    const images: RecordImage[] = [];
    for (const h of this.holdings.values()) {
      images.push({ file: h.file, size: h.size, mtimeMs: h.mtimeMs, sha256: h.sha256, state: "cached", progress: h.size, from: "server", since: 0 });
    }
    for (const a of this.active.values()) {
      if (a.ended || this.holdings.has(a.id.file)) continue;
      images.push({ ...a.id, state: "copying", progress: a.written, from: a.from, since: a.since });
    }
    return { v: RECORD_VERSION, node: this.node, updatedAt: this.now(), images };
  }

  /** Rewrite the record in the background (one write at a time; a change meanwhile makes one more). */
  private publishSoon(): void {
    this.dirty = true;
    if (this.publishing) return;
    this.publishing = (async () => {
      while (this.dirty && this.enabled) {
        this.dirty = false;
        await this.publishNow().then(
          () => this.recordsFailing("publish", undefined),
          (err: unknown) => this.recordsFailing("publish", `cannot publish this node's record: ${errorMessage(err)}`),
        );
      }
    })().finally(() => {
      this.publishing = undefined;
    });
  }

  private async publishNow(): Promise<void> {
    const key = this.key;
    if (!key) return;
    const text = signRecord(key, this.record());
    const walk = this.layout.recordsDir;
    const result = await this.options.channel(() => this.recordsIo({ op: "write-record", walk, file: recordFileName(this.node) }, this.options.lifetime, text), this.options.lifetime);
    // Written or refused, it is not tried again before the next period: a refused directory is said once (peer fill off).
    this.publishedAt = this.now();
    if (!result.ok) this.refused(result);
  }

  /** Publish now and wait for it (a copy's start must be seen by the others before the election ends). */
  private async publishAwait(signal: AbortSignal): Promise<void> {
    this.dirty = true;
    while (this.publishing && !signal.aborted) await Promise.race([this.publishing, aborted(signal)]);
    this.publishSoon();
    await Promise.race([this.publishing, aborted(signal)]);
  }

  /** The records, through datadir's channel; `signal`: the copy cancelled (waiting behind a hung scan stops). */
  private async readRecords(signal: AbortSignal): Promise<PeerRecord[]> {
    const walk = this.layout.recordsDir;
    let result: FleetIoResult;
    try {
      result = await this.options.channel(() => this.recordsIo({ op: "read-records", walk, maxFiles: RECORDS_MAX_FILES, maxFileBytes: RECORD_MAX_BYTES, maxTotalBytes: RECORDS_MAX_TOTAL_BYTES }, signal), signal);
    } catch (err) {
      if (!signal.aborted) this.recordsFailing("read", `cannot read the peers' records: ${errorMessage(err)}`);
      throw err;
    }
    this.recordsReadAt = this.now();
    if (!result.ok) {
      this.refused(result);
      this.records = [];
      return [];
    }
    if (!("lines" in result)) throw new Error("reading the peers' records: unexpected answer");
    this.recordsFailing("read", undefined);
    if (result.cutFiles > 0 || result.cutBytes > 0) this.noteIgnored("too_large", `cut:${result.cutFiles}:${result.cutBytes}`, `the records directory holds more than ${RECORDS_MAX_FILES} records or ${RECORDS_MAX_TOTAL_BYTES / 1024 / 1024} MiB; ${result.cutFiles + result.cutBytes} left unread`);
    const { records, ignored } = verifyRecordLines(result.lines.join("\n"), this.keys(), this.now());
    for (const i of ignored) this.noteIgnored(i.reason, i.digest);
    this.records = records;
    return live(this.records, this.node, this.now(), staleAfterMs(this.config.interval));
  }

  /** An ignored record (or a cut read), counted once by its digest; the first of each reason logged. */
  private noteIgnored(reason: (typeof IGNORED_REASONS)[number], digest: string, message?: string): void {
    if (this.ignoredSeen.has(digest)) return;
    if (this.ignoredSeen.size >= IGNORED_MEMORY) this.ignoredSeen.clear();
    this.ignoredSeen.add(digest);
    const counts = this.counters.recordsIgnored;
    if ((counts[reason] ?? 0) === 0 || message) this.options.logger.warn({ reason, records: this.layout.recordsPath }, message ?? `a peer record was ignored (${reason.replace("_", " ")}); only records signed with the fleet key count`);
    counts[reason] = (counts[reason] ?? 0) + 1;
  }

  private avoiding(): Set<string> {
    const now = this.now();
    for (const [node, until] of this.avoid) if (until <= now) this.avoid.delete(node);
    return new Set(this.avoid.keys());
  }

  /** Called by the daemon when the pool is done with a copy, whatever the outcome. */
  async settled(file: string, dest: string, ok: boolean): Promise<void> {
    const a = this.active.get(file);
    if (!a) return;
    a.ended = true;
    this.active.delete(file);
    if (ok) {
      const sha = await a.sha;
      if (sha !== undefined) {
        // Served from its place in the cache at once, not from the next tick on.
        this.holdings.set(file, { ...a.id, path: dest, sha256: sha });
        await this.checksums.set(a.id, sha).catch((err: unknown) => this.options.logger.warn({ err: errorMessage(err) }, "cannot save a checksum"));
      }
    }
    if (this.enabled) this.publishSoon();
  }

  /**
   * Fill `job.tmpPath` with the image: from peers when one holds it or is
   * ahead on it, else from the file server through `fromServer` (cp or
   * rsync), hashed as it is written. Throws when neither worked; leaves
   * nothing at tmpPath the pool would take for a good copy.
   */
  async fill(job: FillJob, fromServer: () => Promise<void>): Promise<FillResult> {
    // A copy started by the first ticks, before the key was first read: peer fill is not off, only not ready yet.
    if (this.config.peerListen && !this.key) {
      if (this.keyReadAt === -Infinity && !this.keyReading) this.keyReading = this.refreshKey().finally(() => (this.keyReading = undefined));
      await this.keyReading;
    }
    if (this.config.peerListen && this.key && !this.server) await this.startServer();
    if (!this.enabled) {
      await fromServer();
      return { from: "server" };
    }
    const id: ImageIdentity = { file: job.imageFile, size: job.size, mtimeMs: job.mtimeMs };
    let settleSha: (sha: string | undefined) => void = () => undefined;
    const sha = new Promise<string | undefined>((resolve) => (settleSha = resolve));
    const copy: ActiveCopy = { id, tmpPath: job.tmpPath, since: this.now(), from: "server", generation: 0, ended: false, opened: false, written: 0, sha, settleSha };
    this.active.set(id.file, copy);
    const log = this.options.logger.child({ dataset: job.name });
    try {
      const fromPeers = await this.fillFromPeers(job, copy, log).catch((err: unknown) => {
        log.warn({ err: errorMessage(err) }, "peer fill failed; copying from the file server");
        return undefined;
      });
      if (fromPeers) {
        copy.settleSha(fromPeers.sha256);
        return fromPeers;
      }
      if (job.abort.signal.aborted) throw new Error("cancelled");
      return await this.fillFromServer(job, copy, fromServer);
    } catch (err) {
      copy.settleSha(undefined);
      copy.ended = true;
      throw err;
    }
  }

  private async fillFromServer(job: FillJob, copy: ActiveCopy, fromServer: () => Promise<void>): Promise<FillResult> {
    // Whatever peers left is not this copy: cp starts a new file, which followers must not mix with the old.
    // (Followers that came while this node was still choosing, before any byte, just wait for cp's file.)
    if (copy.opened) copy.generation++;
    await unlink(job.tmpPath).catch((err: unknown) => {
      if (errnoCode(err) !== "ENOENT") throw err;
    });
    copy.from = "server";
    copy.written = 0;
    this.publishSoon();
    let done = false;
    const hashing = hashFollowing(job.tmpPath, { size: job.size, growing: () => !done, stallMs: this.stallMs(), signal: job.abort.signal });
    hashing.catch(() => undefined);
    try {
      await fromServer();
    } finally {
      done = true;
    }
    const sha = await hashing;
    copy.written = job.size;
    copy.settleSha(sha);
    this.counters.fromServerBytes += job.size;
    return { from: "server", sha256: sha };
  }

  /** Undefined when no peer could give the image (the caller reads the file server); throws only for local failures. */
  private async fillFromPeers(job: FillJob, copy: ActiveCopy, log: Logger): Promise<FillResult | undefined> {
    // Cancelled copy or stopping daemon: whichever comes first ends every wait on the file server.
    const { signal, dispose } = anySignal(job.abort.signal, this.options.lifetime);
    try {
      return await this.fillFromPeersUntil(job, copy, log, signal);
    } finally {
      dispose();
    }
  }

  private async fillFromPeersUntil(job: FillJob, copy: ActiveCopy, log: Logger, signal: AbortSignal): Promise<FillResult | undefined> {
    const id = copy.id;
    const self = this.node;
    // A source that failed this copy (refused, broke off at once, sent a bad checksum) is not asked again by it.
    const failed = new Set<string>();
    const avoiding = () => new Set([...this.avoiding(), ...failed]);
    let records = await this.readRecords(signal);
    let sources = chooseSources(records, self, id, avoiding());
    if (sources.length === 0) {
      // Others may be starting the same copy at this very moment: say so, wait for them to say so, and let the first read the file server.
      await this.publishAwait(signal);
      await this.clock.sleep(ELECTION_MS, job.abort.signal);
      records = await this.readRecords(signal);
      if (leader(records, { node: self, since: copy.since }, id) === self) return undefined;
      sources = chooseSources(records, self, id, avoiding());
      if (sources.length === 0) return undefined;
    }
    const key = this.key;
    if (!key) return undefined;
    const hash = createHash("sha256");
    const handle = await open(job.tmpPath, "w", 0o600);
    copy.opened = true;
    const used = new Set<string>();
    let trailer: string | undefined;
    let complete = false;
    let waitingSince: number | undefined;
    try {
      while (!complete) {
        if (job.abort.signal.aborted) throw new Error("cancelled");
        const roundStart = copy.written;
        for (const s of sources) {
          // Said at once: the nodes a busy peer turns away look for another node copying the image.
          if (copy.from !== s.node) {
            copy.from = s.node;
            this.publishSoon();
          }
          const before = copy.written;
          const outcome = await fetchFromPeer({
            node: s.node,
            id,
            key: this.key ?? key,
            keys: this.keys(),
            self,
            offset: copy.written,
            handle,
            hash,
            onBytes: (n) => (copy.written += n),
            stallMs: Math.min(this.stallMs(), 30_000),
            signal: job.abort.signal,
            clock: this.clock,
          });
          if (copy.written > before) used.add(s.node);
          if (outcome.kind === "complete") {
            trailer = outcome.sha256;
            complete = true;
            break;
          }
          if (outcome.kind === "busy") continue;
          if (outcome.kind === "forged") {
            // Whatever it sent is not to be believed: this copy is thrown away below, and the peer avoided as for wrong bytes.
            log.warn({ peer: s.node, err: outcome.error }, "a peer's checksum is not signed for this request; its copy is discarded");
            this.counters.checksumMismatches++;
            this.avoid.set(s.node, this.now() + AVOID_WRONG_MS);
            return undefined;
          }
          if (outcome.kind === "refused") {
            failed.add(s.node);
            log.info({ peer: s.node, status: outcome.status }, "peer refused the transfer");
            // 401: this node or that one has a key the other does not have yet; read ours again.
            // 401: one of the two has a key the other has not read yet: both read theirs again; asked again soon.
            if (outcome.status === 401) this.recheckKey();
            this.avoid.set(s.node, this.now() + (outcome.status === 401 ? 2 * KEY_RECHECK_MS : AVOID_BROKEN_MS));
          } else {
            log.info({ peer: s.node, at: copy.written, err: outcome.error }, "peer transfer broke off; going on from another source");
            failed.add(s.node);
            if (copy.written === before) this.avoid.set(s.node, this.now() + AVOID_BROKEN_MS);
          }
          if (job.abort.signal.aborted) throw new Error("cancelled");
        }
        if (complete) break;
        // No source moved the copy on (all busy, or broken at once): wait a while for one, then the file server.
        const firstWait = waitingSince === undefined;
        waitingSince = copy.written > roundStart ? undefined : (waitingSince ?? this.now());
        if (waitingSince !== undefined && this.now() - waitingSince > BUSY_GIVE_UP_MS) return undefined;
        await this.clock.sleep(BUSY_RETRY_MS * (1 + Math.random()), job.abort.signal);
        // Once at the first refusal (the others starting with this node have said what they copy by now), then at most every RECORDS_REREAD_MS.
        if (firstWait || this.now() - this.recordsReadAt >= RECORDS_REREAD_MS) records = await this.readRecords(signal);
        sources = chooseSources(records, self, id, avoiding());
        if (sources.length === 0) return undefined;
      }
      await handle.sync();
    } finally {
      await handle.close();
    }
    const got = hash.digest("hex");
    const expected = await this.expectedChecksum(id, trailer, signal, log);
    if (expected === "conflict") return undefined;
    if (expected === undefined || got !== expected) {
      this.counters.checksumMismatches += expected === undefined ? 0 : 1;
      const peers = [...used];
      for (const node of peers) this.avoid.set(node, this.now() + AVOID_WRONG_MS);
      log.warn({ peers, got, expected }, expected === undefined ? "no checksum known for the copy from peers; discarded" : "the copy from peers does not match the image's checksum; discarded, those peers avoided");
      return undefined;
    }
    // The copy carries the image's mtime, as cp --preserve=timestamps gives it: that is how a cached copy is recognised.
    await utimes(job.tmpPath, new Date(this.now()), new Date(id.mtimeMs));
    this.counters.fromPeersBytes += id.size;
    log.info({ peers: [...used], bytes: id.size }, "filled from peers, checksum verified");
    return { from: [...used].join(",") || copy.from, sha256: got };
  }

  /**
   * The checksum a copy from peers must have: the one signed by the peer
   * that sent the last byte (for this request), and every one the signed
   * records give. Two different ones are an alarm and neither is used
   * ("conflict"); none yet: wait for the node that read the file server to
   * publish it.
   */
  private async expectedChecksum(id: ImageIdentity, trailer: string | undefined, signal: AbortSignal, log: Logger): Promise<string | undefined | "conflict"> {
    const until = this.now() + CHECKSUM_WAIT_MS;
    let records = this.records;
    for (;;) {
      const known = publishedChecksums(live(records, this.node, this.now(), staleAfterMs(this.config.interval)), id);
      if (trailer !== undefined) known.set(trailer, [...(known.get(trailer) ?? []), "the sender"]);
      if (known.size > 1) {
        this.counters.checksumConflicts++;
        log.error({ image: id.file, checksums: Object.fromEntries(known) }, "two different signed checksums for one image; neither is used");
        return "conflict";
      }
      const [sha] = known.keys();
      if (sha !== undefined || this.now() > until || signal.aborted) return sha;
      await this.clock.sleep(1000, signal);
      records = await this.readRecords(signal);
    }
  }

  /** Stop serving and take this node's record away (a clean stop: no one should ask it any more). */
  async stop(): Promise<void> {
    const wasEnabled = this.enabled;
    const file = recordFileName(this.node);
    await this.shutdownServer();
    if (!wasEnabled) return;
    const walk = { ...this.layout.recordsDir, create: false };
    await this.options
      .channel(() => runFleetIo(this.options.run, { op: "remove-record", walk, file }, { timeoutMs: Math.min(this.timeoutMs(), 5000) }))
      .catch((err: unknown) => this.options.logger.warn({ err: errorMessage(err) }, "cannot remove the peer record"));
  }
}

/** Aborted when either is (AbortSignal.any is Node >= 20.3; the daemon runs on 18 too). */
function anySignal(a: AbortSignal, b: AbortSignal): { signal: AbortSignal; dispose: () => void } {
  const both = new AbortController();
  const abort = () => both.abort();
  for (const s of [a, b]) {
    if (s.aborted) both.abort();
    else s.addEventListener("abort", abort, { once: true });
  }
  // The daemon's lifetime signal outlives every copy: its listener goes with the copy.
  return { signal: both.signal, dispose: () => [a, b].forEach((s) => s.removeEventListener("abort", abort)) };
}

/** Rejects when `signal` aborts (never resolves). */
function aborted(signal: AbortSignal): Promise<never> {
  return new Promise((_, reject) => {
    if (signal.aborted) reject(new Error("cancelled"));
    else signal.addEventListener("abort", () => reject(new Error("cancelled")), { once: true });
  });
}
