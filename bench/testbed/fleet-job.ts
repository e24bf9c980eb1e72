/**
 * The parent's side of the job reader (fleet-reader.ts): starts it, keeps
 * its samples (time, bytes read so far), and says how many bytes it read in
 * a span of time, so that bench/fleet.ts can report the share of the file
 * server's link left to a job while the nodes fill their caches.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { deadline } from "./exec.js";

/** build/bench/testbed/fleet-job.js -> build/bench/testbed/fleet-reader.js. */
const READER = fileURLToPath(new URL("./fleet-reader.js", import.meta.url));

export class JobReader {
  /** [ms since the epoch, bytes read so far], one per read. */
  private readonly samples: [number, number][] = [];
  private stderr = "";
  private total?: number;
  private readonly closed: Promise<number | null>;

  private constructor(private readonly child: ChildProcess) {
    this.closed = new Promise((resolve) => child.on("close", (status) => resolve(status)));
    if (!child.stdout) throw new Error("job reader: no stdout");
    createInterface({ input: child.stdout }).on("line", (line) => {
      const [a, b] = line.split(" ");
      if (a === "done") this.total = Number(b);
      else this.samples.push([Number(a), Number(b)]);
    });
    child.stderr?.setEncoding("utf8").on("data", (s: string) => {
      this.stderr = (this.stderr + s).slice(-2000);
    });
  }

  /** Starts reading `file` and resolves once the first read is done (the reader is up). */
  static async start(file: string): Promise<JobReader> {
    const reader = new JobReader(spawn(process.execPath, [READER, file], { stdio: ["ignore", "pipe", "pipe"] }));
    const until = performance.now() + 30_000;
    while (reader.samples.length === 0) {
      if (reader.child.exitCode !== null || performance.now() > until) {
        await reader.stop().catch(() => undefined);
        throw new Error(`job reader: no read of ${file} within 30 s: ${reader.stderr.trim()}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    return reader;
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** Bytes read by `t` (ms since the epoch), interpolated between the two reads around it. */
  bytesAt(t: number): number {
    const s = this.samples;
    const first = s[0];
    const last = s.at(-1);
    if (!first || !last) return 0;
    if (t <= first[0]) return 0;
    if (t >= last[0]) return last[1];
    let lo = 0;
    let hi = s.length - 1;
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      if ((s[mid] as [number, number])[0] <= t) lo = mid;
      else hi = mid;
    }
    const [t0, b0] = s[lo] as [number, number];
    const [t1, b1] = s[hi] as [number, number];
    return t1 === t0 ? b1 : b0 + ((b1 - b0) * (t - t0)) / (t1 - t0);
  }

  /** Bytes per second read between two times (ms since the epoch). */
  rate(from: number, to: number): number {
    return to > from ? (this.bytesAt(to) - this.bytesAt(from)) / ((to - from) / 1000) : NaN;
  }

  /** Ends the reader after its read in flight (SIGTERM, then SIGKILL after 10 s); resolves with every byte it read. */
  async stop(): Promise<number> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill("SIGTERM");
      const status = await Promise.race([this.closed, deadline(10_000).then(() => "timeout" as const)]);
      if (status === "timeout") {
        this.child.kill("SIGKILL");
        await this.closed;
      }
    } else {
      await this.closed;
    }
    if (this.total === undefined) throw new Error(`job reader: ended without its count (status ${String(this.child.exitCode)}, ${String(this.child.signalCode)}): ${this.stderr.trim()}`);
    return this.total;
  }
}
