import { once } from "node:events";
import { errorMessage } from "../errors.js";
import type { FleetContext } from "./context.js";
import { IGNORED_REASONS, live, publishEveryMs, RECORD_MAX_BYTES, recordFileName, RECORDS_MAX_FILES, RECORDS_MAX_TOTAL_BYTES, signRecord, staleAfterMs, verifyRecordLines, type IgnoredReason, type PeerRecord } from "./records.js";
import { runFleetIo, type FleetIoResult } from "./shared-dir.js";

/** Digests of ignored records remembered, so that each is counted once (cleared past this many). */
const IGNORED_MEMORY = 100_000;

export interface BoardOptions {
  /** The key that signs this node's record, and the keys others' may be signed with. */
  key: () => Buffer | undefined;
  keys: () => Buffer[];
  /** This node's record as of now. */
  record: () => PeerRecord;
  node: () => string;
  /** Whether peer fill is on: publishing stops when it goes off. */
  enabled: () => boolean;
  /** A directory on the way was refused (FleetKey.refuse). */
  refused: (problem: string) => void;
  /** Records ignored so far, by reason (status and metrics). */
  ignoredCounts: Record<string, number>;
}

/**
 * The board of records in peer_dir: this node's, published when it changes
 * and every few ticks, and the others', read when a copy looks for a
 * source. One write at a time; every read and write is a child through
 * datadir's channel (shared-dir.ts). A failure to publish or to read is
 * said once when it starts and once when it ends, and shown in status.
 */
export class RecordBoard {
  /** The others' records as last read (signed, within bounds). */
  records: PeerRecord[] = [];
  readAt = -Infinity;
  private readonly problems: { publish?: string; read?: string } = {};
  private readonly ignoredSeen = new Set<string>();
  private publishedAt = -Infinity;
  private dirty = false;
  private publishing?: Promise<void>;

  constructor(
    private readonly ctx: FleetContext,
    private readonly options: BoardOptions,
  ) {}

  /** Why records cannot be published or read now, if so. */
  get problem(): string | undefined {
    return this.problems.publish ?? this.problems.read;
  }

  /** Something in this node's record changed: rewritten at the next publish. */
  changed(): void {
    this.dirty = true;
  }

  /** Each tick: publish if something changed or the period passed. */
  publishWhenDue(intervalS: number): void {
    if (this.dirty || this.ctx.clock.now() - this.publishedAt >= publishEveryMs(intervalS)) this.publishSoon();
  }

  /** Rewrite the record in the background (one write at a time; a change meanwhile makes one more). */
  publishSoon(): void {
    this.dirty = true;
    if (this.publishing) return;
    this.publishing = (async () => {
      while (this.dirty && this.options.enabled()) {
        this.dirty = false;
        await this.publishNow().then(
          () => this.failing("publish", undefined),
          (err: unknown) => this.failing("publish", `cannot publish this node's record: ${errorMessage(err)}`),
        );
      }
    })().finally(() => {
      this.publishing = undefined;
    });
  }

  /** Publish now and wait for it (a copy's start must be seen by the others before the election ends). */
  async publishAwait(signal: AbortSignal): Promise<void> {
    this.dirty = true;
    while (this.publishing && !signal.aborted) await Promise.race([this.publishing, abortion(signal)]);
    this.publishSoon();
    await Promise.race([this.publishing, abortion(signal)]);
  }

  private async publishNow(): Promise<void> {
    const key = this.options.key();
    if (!key) return;
    const text = signRecord(key, this.options.record());
    const { ctx } = this;
    const walk = ctx.layout().recordsDir;
    const file = recordFileName(this.options.node());
    const result = await ctx.channel(() => runFleetIo(ctx.run, { op: "write-record", walk, file }, { timeoutMs: ctx.timeoutMs(), signal: ctx.lifetime, input: text }), ctx.lifetime);
    // Written or refused, it is not tried again before the next period: a refused directory is said once (peer fill off).
    this.publishedAt = ctx.clock.now();
    if (!result.ok) this.options.refused(refusal(result));
  }

  /** The live records of the others, through datadir's channel; `signal`: the copy cancelled (waiting behind a hung scan stops). */
  async read(signal: AbortSignal, intervalS: number): Promise<PeerRecord[]> {
    const { ctx } = this;
    const walk = ctx.layout().recordsDir;
    let result: FleetIoResult;
    try {
      const req = { op: "read-records" as const, walk, maxFiles: RECORDS_MAX_FILES, maxFileBytes: RECORD_MAX_BYTES, maxTotalBytes: RECORDS_MAX_TOTAL_BYTES };
      result = await ctx.channel(() => runFleetIo(ctx.run, req, { timeoutMs: ctx.timeoutMs(), signal }), signal);
    } catch (err) {
      if (!signal.aborted) this.failing("read", `cannot read the peers' records: ${errorMessage(err)}`);
      throw err;
    }
    this.readAt = ctx.clock.now();
    if (!result.ok) {
      this.options.refused(refusal(result));
      this.records = [];
      return [];
    }
    if (!("lines" in result)) throw new Error("reading the peers' records: unexpected answer");
    this.failing("read", undefined);
    const cut = result.cutFiles + result.cutBytes;
    if (cut > 0) this.ignore("too_large", `cut:${result.cutFiles}:${result.cutBytes}`, `the records directory holds more than ${RECORDS_MAX_FILES} records or ${RECORDS_MAX_TOTAL_BYTES / 1024 / 1024} MiB; ${cut} left unread`);
    const { records, ignored } = verifyRecordLines(result.lines.join("\n"), this.options.keys(), ctx.clock.now());
    for (const i of ignored) this.ignore(i.reason, i.digest);
    this.records = records;
    return this.live(intervalS);
  }

  /** The others' records as last read, less the stale ones. */
  live(intervalS: number): PeerRecord[] {
    return live(this.records, this.options.node(), this.ctx.clock.now(), staleAfterMs(intervalS));
  }

  /** Take this node's record away (a clean stop: no one should ask it any more). */
  async remove(): Promise<void> {
    const { ctx } = this;
    const walk = { ...ctx.layout().recordsDir, create: false };
    const file = recordFileName(this.options.node());
    await ctx
      .channel(() => runFleetIo(ctx.run, { op: "remove-record", walk, file }, { timeoutMs: Math.min(ctx.timeoutMs(), 5000) }))
      .catch((err: unknown) => ctx.logger.warn({ err: errorMessage(err) }, "cannot remove the peer record"));
  }

  /** An ignored record (or a cut read), counted once by its digest; the first of each reason logged. */
  private ignore(reason: IgnoredReason, digest: string, message?: string): void {
    if (this.ignoredSeen.has(digest)) return;
    if (this.ignoredSeen.size >= IGNORED_MEMORY) this.ignoredSeen.clear();
    this.ignoredSeen.add(digest);
    const counts = this.options.ignoredCounts;
    if ((counts[reason] ?? 0) === 0 || message) this.ctx.logger.warn({ reason, records: this.ctx.layout().recordsPath }, message ?? `a peer record was ignored (${reason.replace("_", " ")}); only records signed with the fleet key count`);
    counts[reason] = (counts[reason] ?? 0) + 1;
  }

  /**
   * Publishing or reading records failed, or works again: each said once
   * when it starts, once when it ends, and shown in status meanwhile (a
   * read-only export fails the same way at every tick; the log must not).
   */
  private failing(kind: "publish" | "read", problem: string | undefined): void {
    const was = this.problems[kind];
    this.problems[kind] = problem;
    if ((problem === undefined) === (was === undefined)) return;
    const records = this.ctx.layout().recordsPath;
    if (problem !== undefined) {
      const hint = /EROFS|EACCES|EPERM/.test(problem) ? "; set peer_dir to a directory the nodes can write (SECURITY.md)" : "";
      this.ctx.logger.warn({ records }, `peer records: ${problem}${hint}; copies go on, from the file server where no peer is known`);
    } else this.ctx.logger.info({ records }, kind === "publish" ? "peer records: this node's record is published again" : "peer records: read again");
  }
}

export const EMPTY_IGNORED = (): Record<string, number> => Object.fromEntries(IGNORED_REASONS.map((r) => [r, 0]));

function refusal(r: Extract<FleetIoResult, { ok: false }>): string {
  return `${r.refused.path} ${r.refused.problem}; ${r.refused.fix}`;
}

/** Rejects when `signal` aborts (events.once removes its listener when it settles). */
async function abortion(signal: AbortSignal): Promise<never> {
  if (!signal.aborted) await once(signal, "abort");
  throw new Error("cancelled");
}
