/**
 * The real daemon (build/src/cli.js) on the testbed: started inside the
 * throttled cgroup with --verbose, its JSON log lines parsed as they come,
 * stopped with SIGTERM. Mounts stay in place after SIGTERM (by design);
 * reset() unmounts them and empties the cache for the next run.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdir, readdir, readFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { Bed } from "./bed.js";
import { deadline, sleep } from "./exec.js";

/** build/bench/testbed/daemon.js -> the repository's build/src/cli.js. */
export const CLI = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../src/cli.js");

export interface LogEvent {
  level: string;
  /** Milliseconds since the epoch, from the line's ISO "time". */
  t: number;
  msg: string;
  dataset?: string;
  bytes?: number;
  ms?: number;
  [key: string]: unknown;
}

/**
 * Where a daemon runs: its files go under `root`, and `inGroup` wraps its
 * argv (the testbed's Bed puts it in the throttled cgroup; a host without a
 * cgroup returns the argv as it is).
 */
export interface DaemonHost {
  readonly root: string;
  inGroup(argv: readonly string[]): string[];
}

export interface DaemonDirs {
  datadir: string;
  cachedir: string;
  mountdir: string;
}

export class Daemon {
  readonly events: LogEvent[] = [];
  private readonly waiters = new Set<() => void>();
  private readonly listeners: ((e: LogEvent) => void)[] = [];
  private exited: Promise<number | null>;
  blkioGroup = "?";

  private constructor(
    private readonly child: ChildProcess,
    readonly configFile: string,
  ) {
    this.exited = new Promise((resolve) => child.on("close", (status) => resolve(status)));
    if (!child.stdout) throw new Error("daemon: no stdout");
    createInterface({ input: child.stdout }).on("line", (line) => this.onLine(line));
    child.stderr?.setEncoding("utf8").on("data", (s: string) => this.onLine(s.trim()));
  }

  /**
   * Writes the configuration (`key = value` lines, the daemon's own format)
   * and starts `node build/src/cli.js --config FILE --verbose` in the cgroup.
   */
  static async start(bed: DaemonHost, dirs: DaemonDirs, keys: Record<string, string>, label: string, options: { cli?: string; env?: Record<string, string>; nodeArgs?: string[] } = {}): Promise<Daemon> {
    const home = path.join(bed.root, "daemon", label);
    await mkdir(path.join(home, "state"), { recursive: true });
    await mkdir(path.join(home, "run"), { recursive: true });
    for (const dir of Object.values(dirs)) await mkdir(dir, { recursive: true });
    const config = { ...dirs, state_dir: path.join(home, "state"), runtime_dir: path.join(home, "run"), ...keys };
    const configFile = path.join(home, "scratch_manager.conf");
    await writeFile(configFile, Object.entries(config).map(([k, v]) => `${k} = ${v}\n`).join(""));
    const [file, ...args] = bed.inGroup([process.execPath, ...(options.nodeArgs ?? []), options.cli ?? CLI, "--config", configFile, "--verbose"]);
    const child = spawn(file as string, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...options.env } });
    const daemon = new Daemon(child, configFile);
    await sleep(100);
    if (child.pid !== undefined) daemon.blkioGroup = await Bed.blkioGroupOf(child.pid).catch(() => "?");
    return daemon;
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** Whether the process is still there (a configuration error ends it at once, with status 2). */
  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  private onLine(line: string): void {
    if (!line) return;
    let parsed: Record<string, unknown>;
    try {
      parsed = JSON.parse(line) as Record<string, unknown>;
    } catch {
      parsed = { level: "raw", time: new Date().toISOString(), msg: line };
    }
    const t = typeof parsed.time === "string" ? Date.parse(parsed.time) : Date.now();
    const event: LogEvent = { ...parsed, level: String(parsed.level), t, msg: String(parsed.msg) };
    this.events.push(event);
    for (const listen of this.listeners) listen(event);
    for (const wake of this.waiters) wake();
  }

  /** Calls `listen` with each log line from now on, as it comes. */
  onEvent(listen: (e: LogEvent) => void): void {
    this.listeners.push(listen);
  }

  /** Resolves with the first event that matches; rejects after the timeout, or if the daemon exits. */
  async waitFor(match: (e: LogEvent) => boolean, timeoutMs: number, what: string): Promise<LogEvent> {
    const deadline = performance.now() + timeoutMs;
    let exited = false;
    void this.exited.then(() => {
      exited = true;
    });
    for (;;) {
      const found = this.events.find(match);
      if (found) return found;
      if (exited) throw new Error(`daemon exited while waiting for ${what}; last lines: ${this.tail()}`);
      if (performance.now() > deadline) throw new Error(`daemon: no ${what} within ${timeoutMs} ms; last lines: ${this.tail()}`);
      await new Promise<void>((resolve) => {
        const wake = (): void => {
          this.waiters.delete(wake);
          resolve();
        };
        this.waiters.add(wake);
        setTimeout(wake, 200);
      });
    }
  }

  /** Errors and warnings the daemon logged, for the report: a figure from a daemon that failed means nothing. */
  problems(): LogEvent[] {
    return this.events.filter((e) => e.level === "error" || e.level === "fatal" || e.level === "raw");
  }

  tail(n = 5): string {
    return this.events
      .slice(-n)
      .map((e) => JSON.stringify(e))
      .join("\n");
  }

  /** Rewrite its configuration file with these keys changed, and SIGHUP it (systemctl reload). */
  async reload(keys: Record<string, string>): Promise<void> {
    const lines = (await readFile(this.configFile, "utf8")).split("\n").filter((l) => l.trim() !== "");
    const kept = lines.filter((l) => !Object.keys(keys).includes(l.split("=")[0]?.trim() ?? ""));
    await writeFile(this.configFile, [...kept, ...Object.entries(keys).map(([k, v]) => `${k} = ${v}`)].join("\n") + "\n");
    this.child.kill("SIGHUP");
  }

  /** SIGTERM (copies cancelled, mounts left in place), then SIGKILL if it lingers. */
  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill("SIGTERM");
    const status = await Promise.race([this.exited, deadline(15_000).then(() => "timeout" as const)]);
    if (status === "timeout") {
      this.child.kill("SIGKILL");
      await this.exited;
    }
  }
}

/** After a daemon run: its mounts and cached copies go, so that the next run starts cold and empty. */
export async function resetDaemon(bed: Bed, dirs: DaemonDirs): Promise<void> {
  await bed.unmountUnder(dirs.mountdir);
  for (const f of await readdir(dirs.cachedir).catch(() => [])) await rm(path.join(dirs.cachedir, f), { force: true, recursive: true });
}
