/**
 * A one-node Slurm cluster from Debian's packages (slurmctld, slurmd, munge),
 * started by the test and owned by it: its munge key, socket, configuration,
 * state, spool and logs all live under one directory the test removes, on
 * ports picked free, and every process it starts carries a marker in its
 * environment (inherited by slurmstepd and the jobs) so that the test can
 * prove none is left. Processes are ended by pid, never by name. Needs no
 * cgroups: proctrack/linuxproc, task/none.
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { waitUntil } from "../integration/harness.js";

/** The programs the cluster needs; .ci/setup installs them (apt-get install slurmd slurmctld munge). */
export const SLURM_PROGRAMS = ["munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo"];

/** The programs missing from the PATH (and /usr/sbin, where Debian puts the daemons). */
export function missingPrograms(): string[] {
  const dirs = [...(process.env.PATH ?? "").split(":"), "/usr/sbin", "/sbin"].filter(Boolean);
  return SLURM_PROGRAMS.filter((p) => !dirs.some((d) => existsSync(path.join(d, p))));
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

export interface JobRecord {
  job_id: number;
  job_state: string;
  comment: string;
  exit_code: number;
  start_time: number;
}

export interface ClusterOptions {
  /** Prolog= and Epilog= of slurm.conf. */
  prolog: string;
  epilog: string;
}

export class SlurmCluster {
  readonly conf: string;
  /** SM_SLURM_TEST=<dir> in the environment of every process of the cluster and of its jobs. */
  readonly marker: string;
  private readonly daemons: { name: string; child: ChildProcess; exited: Promise<void> }[] = [];

  private constructor(readonly dir: string) {
    this.conf = path.join(dir, "slurm.conf");
    this.marker = `SM_SLURM_TEST=${dir}`;
  }

  /** Environment for Slurm's commands and daemons: this cluster's slurm.conf, and the marker. */
  env(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
    return { ...process.env, SLURM_CONF: this.conf, SM_SLURM_TEST: this.dir, ...extra };
  }

  static async start(dir: string, options: ClusterOptions): Promise<SlurmCluster> {
    const c = new SlurmCluster(dir);
    try {
      await c.boot(options);
    } catch (err) {
      await c.stop();
      throw new Error(`the test's Slurm cluster did not start: ${err instanceof Error ? err.message : String(err)}\n${c.logs()}`);
    }
    return c;
  }

  private async boot(options: ClusterOptions): Promise<void> {
    const dir = this.dir;
    for (const d of ["munge", "state", "spool", "log"]) mkdirSync(path.join(dir, d), { recursive: true });
    // munged wants its key readable by its user only, and the socket's directory open to all.
    chmodSync(path.join(dir, "munge"), 0o755);
    const key = path.join(dir, "munge", "munge.key");
    writeFileSync(key, randomBytes(1024), { mode: 0o600 });
    const socket = path.join(dir, "munge", "munge.socket.2");
    this.spawnDaemon("munged", "munged", ["--foreground", "--force", `--socket=${socket}`, `--key-file=${key}`, `--pid-file=${path.join(dir, "munge", "munged.pid")}`, `--seed-file=${path.join(dir, "munge", "munged.seed")}`]);
    await waitUntil("munged's socket", () => existsSync(socket), 10_000);

    // slurmd takes the node's name from -N; the controller's address is the loopback.
    const host = os.hostname().split(".")[0] as string;
    const [ctldPort, slurmdPort] = [await freePort(), await freePort()];
    const log = (n: string) => path.join(dir, "log", n);
    writeFileSync(
      this.conf,
      [
        "# A one-node cluster of test/slurm/slurm.test.ts; everything under this directory.",
        "ClusterName=smtest",
        `SlurmctldHost=${host}(127.0.0.1)`,
        `SlurmctldPort=${ctldPort}`,
        `SlurmdPort=${slurmdPort}`,
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        `AuthInfo=socket=${socket}`,
        `StateSaveLocation=${path.join(dir, "state")}`,
        `SlurmdSpoolDir=${path.join(dir, "spool")}`,
        `SlurmctldPidFile=${path.join(dir, "slurmctld.pid")}`,
        `SlurmdPidFile=${path.join(dir, "slurmd.pid")}`,
        `SlurmctldLogFile=${log("slurmctld.log")}`,
        `SlurmdLogFile=${log("slurmd.log")}`,
        // No cgroups needed: processes tracked through /proc, no task binding.
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "MpiDefault=none",
        "ReturnToService=2",
        "SchedulerParameters=sched_interval=1",
        // Jobs leave the controller's memory 5 minutes after they end: the test reads their state.
        "MinJobAge=300",
        `Prolog=${options.prolog}`,
        `Epilog=${options.epilog}`,
        `NodeName=${host} NodeAddr=127.0.0.1 CPUs=${os.cpus().length} State=UNKNOWN`,
        // Several jobs at once on one node, whatever its number of CPUs.
        "PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8",
        "",
      ].join("\n"),
    );
    this.spawnDaemon("slurmctld", "slurmctld", ["-D", "-c", "-f", this.conf]);
    await waitUntil("slurmctld answers", () => this.quiet("scontrol", ["ping"]).includes("UP"), 30_000, 250);
    this.spawnDaemon("slurmd", "slurmd", ["-D", "-c", "-f", this.conf, "-N", host]);
    await waitUntil("the node idle", () => this.quiet("sinfo", ["--noheader", "--format=%T"]).trim() === "idle", 30_000, 250);
  }

  private spawnDaemon(name: string, file: string, args: string[]): void {
    const out = openSync(path.join(this.dir, "log", `${name}.out`), "a");
    // Its own process group, not a shell: its pid is the daemon's, to end it by pid.
    const child = spawn(file, args, { env: this.env({ PATH: `${process.env.PATH ?? ""}:/usr/sbin:/sbin` }), stdio: ["ignore", out, out], detached: true });
    closeSync(out);
    const exited = new Promise<void>((resolve) => child.on("exit", () => resolve()));
    child.on("error", () => undefined);
    this.daemons.push({ name, child, exited });
  }

  /** Run one of Slurm's commands; its stdout, or "" if it failed. */
  quiet(file: string, args: string[]): string {
    try {
      return execFileSync(file, args, { env: this.env(), encoding: "utf8", timeout: 20_000, stdio: ["ignore", "pipe", "ignore"] });
    } catch {
      return "";
    }
  }

  sbatch(args: string[]): number {
    const out = execFileSync("sbatch", ["--parsable", ...args], { env: this.env(), encoding: "utf8", timeout: 20_000 });
    return Number(out.trim().split(";")[0]);
  }

  /** Every job the controller knows, from squeue --json (22.05 lists them all). */
  jobs(): JobRecord[] {
    const text = this.quiet("squeue", ["--json"]);
    return text === "" ? [] : (JSON.parse(text) as { jobs: JobRecord[] }).jobs;
  }

  job(id: number): JobRecord | undefined {
    return this.jobs().find((j) => j.job_id === id);
  }

  logs(): string {
    const dir = path.join(this.dir, "log");
    if (!existsSync(dir)) return "";
    return readdirSync(dir)
      .map((f) => `--- ${f} (last lines) ---\n${readFileSync(path.join(dir, f), "utf8").split("\n").slice(-15).join("\n")}`)
      .join("\n");
  }

  /** Processes that carry the marker: the cluster's daemons, slurmstepd, job scripts. */
  processes(): { pid: number; cmd: string }[] {
    const out: { pid: number; cmd: string }[] = [];
    for (const entry of readdirSync("/proc")) {
      if (!/^\d+$/.test(entry)) continue;
      try {
        const env = readFileSync(`/proc/${entry}/environ`, "latin1").split("\0");
        if (!env.includes(this.marker)) continue;
        const stat = readFileSync(`/proc/${entry}/stat`, "latin1");
        // A zombie has exited already; its parent reaps it.
        if (/\) Z /.test(stat)) continue;
        out.push({ pid: Number(entry), cmd: readFileSync(`/proc/${entry}/cmdline`, "latin1").replace(/\0/g, " ").trim() });
      } catch {
        // gone meanwhile
      }
    }
    return out;
  }

  /**
   * slurmd, then slurmctld, then munged: SIGTERM, and SIGKILL after 10 s;
   * then any process of this cluster still there (a slurmstepd, a job), by pid.
   * Returns what had to be killed that way.
   */
  async stop(): Promise<{ pid: number; cmd: string }[]> {
    for (const name of ["slurmd", "slurmctld", "munged"]) {
      for (const d of this.daemons.filter((x) => x.name === name)) {
        if (d.child.exitCode !== null || d.child.signalCode !== null) continue;
        d.child.kill("SIGTERM");
        const timer = setTimeout(() => d.child.kill("SIGKILL"), 10_000);
        await d.exited;
        clearTimeout(timer);
      }
    }
    const left = this.processes();
    for (const p of left) {
      try {
        process.kill(p.pid, "SIGKILL");
      } catch {
        // gone meanwhile
      }
    }
    if (left.length > 0) await waitUntil("the cluster's last processes gone", () => this.processes().length === 0, 10_000);
    return left;
  }
}
