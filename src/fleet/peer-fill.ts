import { createHash } from "node:crypto";
import { hostname } from "node:os";
import { open, unlink, utimes } from "node:fs/promises";
import type { Logger } from "pino";
import type { Runner } from "../act/exec.js";
import { parseHostPort, type Config } from "../config.js";
import { errnoCode, errorMessage } from "../errors.js";
import type { PeerStatus } from "../report/status.js";
import { Checksums } from "./checksums.js";
import { fetchFromPeer } from "./fetch.js";
import { hashFile, hashFollowing } from "./follow.js";
import { chooseSources, knownChecksum, leader, live, parseRecords, publishEveryMs, RECORD_VERSION, recordFileName, staleAfterMs, type ImageIdentity, type PeerRecord, type RecordImage } from "./records.js";
import { PeerServer, type Holding } from "./server.js";
import { fleetPaths, keyProblem, readKeyFile, readRecordLines, removeRecordFile, writeRecordFile } from "./shared-dir.js";
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
  private problem?: string;
  private keyReadAt = -Infinity;
  private keyReading?: Promise<void>;
  private recheckWanted = false;
  private server?: { server: PeerServer; listen: string };
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
  readonly counters: PeerCounters = { fromPeersBytes: 0, fromServerBytes: 0, servedBytes: 0, refusedBusy: 0, refusedAuth: 0, refusedUnknown: 0, checksumMismatches: 0 };

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

  private get paths(): ReturnType<typeof fleetPaths> {
    return fleetPaths(this.config.datadir);
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
      counters: { ...this.counters },
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

  private async refreshKey(): Promise<void> {
    const file = this.paths.key;
    this.keyReadAt = this.now();
    let problem: string | undefined;
    let key: Buffer | undefined;
    try {
      const read = await this.options.channel(() => readKeyFile(this.options.run, file, this.timeoutMs(), this.options.lifetime), this.options.lifetime);
      problem = keyProblem(read, file, process.getuid?.() ?? 0);
      if (!problem && read.kind === "present") key = read.bytes;
    } catch (err) {
      // datadir not answering: keep the key we have (peers are how the node fills while the server is slow).
      if (this.key) return;
      problem = errorMessage(err);
    }
    if (problem !== this.problem) {
      if (problem) this.options.logger.warn({ key: file }, `peer fill off: ${problem}`);
      else this.options.logger.info({ key: file }, "peer fill on: the fleet key is usable");
      this.problem = problem;
    }
    if (key && this.key && !key.equals(this.key)) this.options.logger.info({ key: file }, "the fleet key changed");
    this.key = key;
  }

  /** A signature that did not match: the key may have changed; read it again now (at most every KEY_RECHECK_MS). */
  private recheckKey(): void {
    // Read by the next tick once KEY_RECHECK_MS have passed since the last read.
    this.recheckWanted = true;
  }

  private async startServer(): Promise<void> {
    const listen = this.config.peerListen;
    if (!listen) return;
    const server = new PeerServer({
      keys: () => (this.key ? [this.key] : []),
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
        await this.publishNow().catch((err: unknown) => this.options.logger.warn({ err: errorMessage(err) }, "cannot publish the peer record"));
      }
    })().finally(() => {
      this.publishing = undefined;
    });
  }

  private async publishNow(): Promise<void> {
    const text = `${JSON.stringify(this.record())}\n`;
    const { peers } = this.paths;
    await this.options.channel(() => writeRecordFile(this.options.run, peers, recordFileName(this.node), text, this.timeoutMs(), this.options.lifetime), this.options.lifetime);
    this.publishedAt = this.now();
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
    const text = await this.options.channel(() => readRecordLines(this.options.run, this.paths.peers, this.timeoutMs(), signal), signal);
    this.records = parseRecords(text);
    this.recordsReadAt = this.now();
    return live(this.records, this.node, this.now(), staleAfterMs(this.config.interval));
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
    let records = await this.readRecords(signal);
    let sources = chooseSources(records, self, id, this.avoiding());
    if (sources.length === 0) {
      // Others may be starting the same copy at this very moment: say so, wait for them to say so, and let the first read the file server.
      await this.publishAwait(signal);
      await this.clock.sleep(ELECTION_MS, job.abort.signal);
      records = await this.readRecords(signal);
      if (leader(records, { node: self, since: copy.since }, id) === self) return undefined;
      sources = chooseSources(records, self, id, this.avoiding());
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
          if (outcome.kind === "refused") {
            log.info({ peer: s.node, status: outcome.status }, "peer refused the transfer");
            // 401: this node or that one has a key the other does not have yet; read ours again.
            // 401: one of the two has a key the other has not read yet: both read theirs again; asked again soon.
            if (outcome.status === 401) this.recheckKey();
            this.avoid.set(s.node, this.now() + (outcome.status === 401 ? 2 * KEY_RECHECK_MS : AVOID_BROKEN_MS));
          } else {
            log.info({ peer: s.node, at: copy.written, err: outcome.error }, "peer transfer broke off; going on from another source");
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
        sources = chooseSources(records, self, id, this.avoiding());
        if (sources.length === 0) return undefined;
      }
      await handle.sync();
    } finally {
      await handle.close();
    }
    const got = hash.digest("hex");
    const expected = trailer ?? (await this.awaitChecksum(id, signal));
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

  /** The checksum the fleet published for this version, once one node has it (the one that read the file server). */
  private async awaitChecksum(id: ImageIdentity, signal: AbortSignal): Promise<string | undefined> {
    const until = this.now() + CHECKSUM_WAIT_MS;
    for (;;) {
      const sha = knownChecksum(await this.readRecords(signal), id);
      if (sha !== undefined || this.now() > until || signal.aborted) return sha;
      await this.clock.sleep(1000, signal);
    }
  }

  /** Stop serving and take this node's record away (a clean stop: no one should ask it any more). */
  async stop(): Promise<void> {
    const wasEnabled = this.enabled;
    const file = recordFileName(this.node);
    await this.shutdownServer();
    if (!wasEnabled) return;
    const { peers } = this.paths;
    await this.options
      .channel(() => removeRecordFile(this.options.run, peers, file, Math.min(this.timeoutMs(), 5000)))
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
