import { once } from "node:events";
import type { FileHandle } from "node:fs/promises";
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { Logger } from "pino";
import { parseHostPort } from "../config.js";
import { errorMessage } from "../errors.js";
import { signChecksum, Verifier } from "./auth.js";
import { followFile, openWhenThere } from "./follow.js";
import { sameIdentity, type ImageIdentity } from "./records.js";
import { systemClock, type Clock } from "../lib/clock.js";
import { parseStageUrl, STAGE_PATH } from "./stage.js";
import type { StagedEntry } from "../slurm/queue.js";

/** What this node can serve of an image: its cached copy, or the copy it is making. */
export interface Holding extends ImageIdentity {
  /** The local file: cachedir/<image>, or the copy's temporary file while it is made. */
  path: string;
  sha256?: string;
  /** While the copy is made: whether it is still going, and its checksum once verified. */
  copying?: { growing: () => boolean; sha: Promise<string | undefined> };
}

export interface PeerServerOptions {
  /** The keys requests may be signed with: the current one first (it signs the checksums), the previous for a while after a change. */
  keys: () => readonly Buffer[];
  /** This node's name in the fleet: a request signed for another node is refused. */
  self: () => string;
  lookup: (file: string) => Holding | undefined;
  maxUploads: () => number;
  /** A transfer whose source stops growing for this long is cut. */
  stallMs: () => number;
  logger: Logger;
  onServed: (bytes: number) => void;
  onRefused: (why: "busy" | "auth" | "unknown") => void;
  /** A stager's request: the datasets of jobs about to start here (slurm/queue.ts), from the fleet node `by`. */
  onStage?: (by: string, entries: StagedEntry[]) => void;
  clock?: Clock;
}

export const IMAGE_PATH = "/v1/images/";
export const SHA_TRAILER = "x-image-sha256";
export const SHA_SIG_TRAILER = "x-image-sha256-sig";

/** A client that takes no data for this long is cut, and its slot freed. */
const DRAIN_DEADLINE_MS = 15_000;
/** Below this rate, while waiting on the client, for longer than MIN_RATE_GRACE_MS, a transfer is cut: a trickle must not hold a slot. */
export const MIN_RATE_BYTES_S = 256 * 1024;
const MIN_RATE_GRACE_MS = 30_000;

/**
 * Serves the images of this node's cache to its peers, over HTTP with Range
 * requests: GET /v1/images/<image file>?size=<bytes>&mtime=<ms>, signed with
 * the fleet's key (auth.ts). The file name only selects among what this node
 * holds (Holding): no part of a request ever becomes a path. A copy still
 * being made is served as it grows, so that nodes fill in a pipeline; its
 * SHA-256 follows the last byte as a trailer, once this node verified it.
 */
export class PeerServer {
  private readonly server: http.Server;
  private readonly verifier = new Verifier();
  private uploads = 0;

  constructor(private readonly options: PeerServerOptions) {
    this.server = http.createServer((req, res) => {
      void this.handle(req, res).catch((err: unknown) => {
        this.options.logger.warn({ err: errorMessage(err) }, "peer request failed");
        res.destroy();
      });
    });
    // A peer holding a connection open without asking for anything must not hold a slot:
    // the headers within 10 s, the whole request (a GET: no body) within 15 s, idle sockets closed.
    this.server.headersTimeout = 10_000;
    this.server.requestTimeout = 15_000;
    this.server.keepAliveTimeout = 5_000;
    this.server.maxHeadersCount = 20;
    this.server.maxConnections = 4 * options.maxUploads() + 16;
  }

  private get clock(): Clock {
    return this.options.clock ?? systemClock;
  }

  get serving(): number {
    return this.uploads;
  }

  async listen(hostPort: string): Promise<number> {
    const { host, port } = parseHostPort(hostPort, "peer_listen");
    this.server.listen(port, host === "" ? undefined : host);
    await Promise.race([once(this.server, "listening"), once(this.server, "error").then(([err]) => Promise.reject(err as Error))]);
    return (this.server.address() as AddressInfo).port;
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private refuse(res: ServerResponse, status: number, message: string, why?: "busy" | "auth" | "unknown"): void {
    if (why) this.options.onRefused(why);
    res.writeHead(status, { "content-type": "text/plain", connection: "close", ...(status === 503 ? { "retry-after": "1" } : {}) });
    res.end(`${message}\n`);
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const now = this.clock.now();
    if (req.method !== "GET") return this.refuse(res, 405, "only GET");
    const target = req.url ?? "";
    const range = typeof req.headers.range === "string" ? req.headers.range : undefined;
    const self = this.options.self();
    const verdict = this.verifier.verify(this.options.keys(), req.headers.authorization, { method: "GET", path: target, range, to: self }, now);
    // Why is for this node's log, not for whoever asked.
    if (!verdict.ok) return this.refuse(res, 401, "unauthorized", "auth");
    if (target.startsWith(STAGE_PATH)) {
      const entries = parseStageUrl(target);
      if (!entries || !this.options.onStage) return this.refuse(res, 400, "not a stage request");
      this.options.onStage(verdict.by, entries);
      res.writeHead(204, { connection: "close" });
      res.end();
      return;
    }
    const wanted = parseImageUrl(target);
    if (!wanted) return this.refuse(res, 404, "no such image", "unknown");
    const holding = this.options.lookup(wanted.file);
    if (!holding || !sameIdentity(holding, wanted)) return this.refuse(res, 404, "this node does not hold that version of the image", "unknown");
    const start = parseRange(range);
    if (start === undefined || start > holding.size) return this.refuse(res, 416, "only Range: bytes=N- within the image");
    if (this.uploads >= this.options.maxUploads()) return this.refuse(res, 503, "busy", "busy");
    this.uploads++;
    const stop = new AbortController();
    res.on("close", () => stop.abort());
    try {
      await this.send(holding, start, res, stop.signal, { nonce: verdict.nonce, by: verdict.by, to: self }, verdict.key);
    } finally {
      this.uploads--;
    }
  }

  private async send(holding: Holding, start: number, res: ServerResponse, signal: AbortSignal, request: { nonce: string; by: string; to: string }, key: Buffer): Promise<void> {
    const copying = holding.copying;
    const stallMs = this.options.stallMs();
    // A cached copy is complete; a copy being made grows until its writer stops.
    const growing = copying?.growing ?? (() => false);
    let handle: FileHandle;
    try {
      // A copy whose temporary file is not created yet (its node is still choosing where to copy from): waited for.
      handle = await openWhenThere(holding.path, { growing, stallMs, signal });
    } catch {
      return this.refuse(res, 404, "that copy is gone", "unknown");
    }
    try {
      if (!copying) {
        // A cached copy is its image's version (size, mtime): checked on the file itself, not only its name.
        const st = await handle.stat();
        if (!sameIdentity({ file: holding.file, size: st.size, mtimeMs: st.mtimeMs }, holding)) return this.refuse(res, 404, "that copy changed", "unknown");
      }
      res.writeHead(start === 0 ? 200 : 206, {
        "content-type": "application/octet-stream",
        "x-image-size": String(holding.size),
        ...(start === 0 ? {} : { "content-range": `bytes ${start}-${holding.size - 1}/${holding.size}` }),
        trailer: `${SHA_TRAILER}, ${SHA_SIG_TRAILER}`,
      });
      const pace = new ClientPace(this.clock);
      for await (const chunk of followFile(handle, { from: start, size: holding.size, growing, stallMs, signal, clock: this.clock })) {
        if (!res.write(chunk)) {
          const waited = await pace.wait(() => drainOrClose(res, DRAIN_DEADLINE_MS));
          if (!waited || pace.tooSlow()) {
            this.options.logger.info({ image: holding.file, peer: request.by }, waited ? "peer transfer cut: the client reads too slowly" : "peer transfer cut: the client stopped reading");
            res.destroy();
            return;
          }
        }
        if (signal.aborted) return;
        pace.sent(chunk.length);
        this.options.onServed(chunk.length);
      }
      // The checksum, once this node has verified its own copy: the receiver checks what it got against it.
      const sha = holding.sha256 ?? (await withTimeout(copying?.sha, stallMs));
      if (sha === undefined) {
        res.destroy();
        return;
      }
      res.addTrailers({ [SHA_TRAILER]: sha, [SHA_SIG_TRAILER]: signChecksum(key, { id: holding, sha256: sha, ...request }) });
      res.end();
    } catch (err) {
      // The copy being followed failed or stalled: cut, so that the peer sees an incomplete transfer and goes elsewhere.
      if (!signal.aborted) this.options.logger.info({ image: holding.file, err: errorMessage(err) }, "peer transfer cut");
      res.destroy();
    } finally {
      await handle.close();
    }
  }
}

/**
 * Until the response can take more (true), is gone (true: the caller sees
 * the abort), or `deadlineMs` passed with the client taking nothing
 * (false); without leaving a listener or timer behind.
 */
function drainOrClose(res: ServerResponse, deadlineMs: number): Promise<boolean> {
  // Closed already (the client hung up while the chunk was written): no "close" event is coming.
  if (res.destroyed || res.closed) return Promise.resolve(true);
  return new Promise((resolve) => {
    const done = (ok: boolean) => {
      clearTimeout(timer);
      res.off("drain", drained);
      res.off("close", drained);
      resolve(ok);
    };
    const drained = () => done(true);
    const timer = setTimeout(() => done(false), deadlineMs);
    res.on("drain", drained);
    res.on("close", drained);
  });
}

/** How fast a client takes a response, counted only while the server waits on it (a copy being followed may be slow at its source). */
class ClientPace {
  private bytes = 0;
  private waitedMs = 0;
  private readonly started: number;

  constructor(private readonly clock: Clock) {
    this.started = clock.monotonic();
  }

  sent(n: number): void {
    this.bytes += n;
  }

  async wait(drain: () => Promise<boolean>): Promise<boolean> {
    const from = this.clock.monotonic();
    const ok = await drain();
    this.waitedMs += this.clock.monotonic() - from;
    return ok;
  }

  /** Most of the time spent waiting on the client, past the grace, at less than the minimum rate. */
  tooSlow(): boolean {
    const elapsed = this.clock.monotonic() - this.started;
    return elapsed > MIN_RATE_GRACE_MS && this.waitedMs > elapsed / 2 && (this.bytes * 1000) / elapsed < MIN_RATE_BYTES_S;
  }
}

function withTimeout<T>(p: Promise<T> | undefined, ms: number): Promise<T | undefined> {
  if (!p) return Promise.resolve(undefined);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(undefined), ms);
    p.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      () => {
        clearTimeout(timer);
        resolve(undefined);
      },
    );
  });
}

/** /v1/images/<file>?size=N&mtime=M -> the identity asked for; undefined for anything else. */
export function parseImageUrl(target: string): ImageIdentity | undefined {
  let url: URL;
  try {
    url = new URL(target, "http://peer");
  } catch {
    return undefined;
  }
  if (!url.pathname.startsWith(IMAGE_PATH)) return undefined;
  let file: string;
  try {
    file = decodeURIComponent(url.pathname.slice(IMAGE_PATH.length));
  } catch {
    return undefined;
  }
  const size = Number(url.searchParams.get("size"));
  const mtimeMs = Number(url.searchParams.get("mtime"));
  if (file === "" || file.startsWith(".") || /[/\0]/.test(file) || !Number.isSafeInteger(size) || size < 0 || !Number.isFinite(mtimeMs)) return undefined;
  return { file, size, mtimeMs };
}

export function imageUrl(id: ImageIdentity): string {
  return `${IMAGE_PATH}${encodeURIComponent(id.file)}?size=${id.size}&mtime=${Math.round(id.mtimeMs)}`;
}

/** Range: absent -> 0; "bytes=N-" -> N; anything else (several ranges, a suffix) -> undefined. */
export function parseRange(header: string | undefined): number | undefined {
  if (header === undefined) return 0;
  const m = /^bytes=(\d{1,16})-$/.exec(header.trim());
  return m ? Number(m[1]) : undefined;
}
