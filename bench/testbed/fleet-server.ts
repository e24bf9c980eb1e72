/**
 * The fleet's file server for bench/fleet.ts: test/fixtures/faultfs.py, a
 * FUSE passthrough of one directory, with `--direct-io` (no page cache in
 * front of its files: every read of every node reaches it), `--rate` (one
 * link shared by all its readers) and `--counts` (the bytes it served).
 * Started and ended by pid; unmounted with fusermount -u.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { readFile, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { deadline, run, sleep } from "./exec.js";

/** test/fixtures/faultfs.py, from build/bench/testbed/fleet-server.js. */
const FAULTFS = fileURLToPath(new URL("../../../test/fixtures/faultfs.py", import.meta.url));

export interface ServerOptions {
  /** The directory served (the file server's disk). */
  source: string;
  /** Where it is mounted: the daemons' datadir. */
  mountPoint: string;
  /** Where its control and counts files go. */
  work: string;
  /** Bytes per second of the link all reads share. */
  rateBps: number;
}

export class FileServer {
  private stderr = "";
  private readonly closed: Promise<number | null>;

  private constructor(
    private readonly child: ChildProcess,
    readonly options: ServerOptions,
    private readonly countsFile: string,
  ) {
    this.closed = new Promise((resolve) => child.on("close", (status) => resolve(status)));
    child.stderr?.setEncoding("utf8").on("data", (s: string) => {
      this.stderr = (this.stderr + s).slice(-2000);
    });
  }

  static async start(options: ServerOptions): Promise<FileServer> {
    const control = path.join(options.work, "faultfs.control");
    const countsFile = path.join(options.work, "faultfs.counts");
    await writeFile(control, "ok\n");
    const before = (await stat(options.mountPoint)).dev;
    const argv = [FAULTFS, options.source, options.mountPoint, "--control", control, "--counts", countsFile, "--rate", String(options.rateBps), "--direct-io"];
    const server = new FileServer(spawn("/usr/bin/python3", argv, { stdio: ["ignore", "ignore", "pipe"] }), options, countsFile);
    for (let i = 0; i < 200; i++) {
      if ((await stat(options.mountPoint)).dev !== before) {
        await server.bytesServed(); // the counts file is there
        return server;
      }
      if (server.child.exitCode !== null) break;
      await sleep(50);
    }
    await server.stop();
    throw new Error(`faultfs did not mount at ${options.mountPoint}: ${server.stderr.trim()}`);
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /**
   * Bytes served since it started, once the count has settled: faultfs
   * rewrites the counts file every 100 ms while counters move, so two equal
   * readings 300 ms apart are the count of every read that has returned.
   */
  async bytesServed(timeoutMs = 10_000): Promise<number> {
    const until = performance.now() + timeoutMs;
    let last = NaN;
    for (;;) {
      const text = await readFile(this.countsFile, "utf8").catch(() => "");
      const now = text ? (JSON.parse(text) as { bytes_read: number }).bytes_read : NaN;
      if (now === last) return now;
      if (performance.now() > until) {
        if (Number.isFinite(now)) return now;
        throw new Error(`faultfs: no counts in ${this.countsFile} within ${timeoutMs} ms`);
      }
      last = now;
      await sleep(300);
    }
  }

  /** fusermount -u (lazily if it is busy), then the process by its pid: SIGTERM, SIGKILL after 5 s. */
  async stop(): Promise<void> {
    const mp = this.options.mountPoint;
    await run("fusermount", ["-u", "--", mp]).catch(() => run("fusermount", ["-u", "-z", "--", mp]).catch(() => undefined));
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const waited = await Promise.race([this.closed, deadline(5000).then(() => "timeout" as const)]);
    if (waited !== "timeout") return;
    this.child.kill("SIGTERM");
    if ((await Promise.race([this.closed, deadline(5000).then(() => "timeout" as const)])) === "timeout") {
      this.child.kill("SIGKILL");
      await this.closed;
    }
  }
}
