/**
 * A one-node Slurm cluster from Debian's packages (slurmctld, slurmd, munge),
 * started by the test and owned by it (processes.ts: one directory, a
 * marker on every process, ended by pid), on ports picked free. Needs no
 * cgroups: proctrack/linuxproc, task/none.
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { waitUntil } from "../integration/harness.js";
import { ClusterProcesses, type ClusterProcess, type JobRecord } from "./processes.js";

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

export interface ClusterOptions {
  /** Prolog= and Epilog= of slurm.conf. */
  prolog: string;
  epilog: string;
}

export class SlurmCluster extends ClusterProcesses {
  private constructor(dir: string) {
    super(dir);
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
    for (const d of ["state", "spool", "log"]) mkdirSync(path.join(dir, d), { recursive: true });
    const socket = await this.startMunge();

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
        ...this.sharedConf(socket),
        `SlurmdSpoolDir=${path.join(dir, "spool")}`,
        `SlurmdPidFile=${path.join(dir, "slurmd.pid")}`,
        `SlurmdLogFile=${log("slurmd.log")}`,
        "SchedulerParameters=sched_interval=1",
        `Prolog=${options.prolog}`,
        `Epilog=${options.epilog}`,
        `NodeName=${host} NodeAddr=127.0.0.1 CPUs=${os.cpus().length} State=UNKNOWN`,
        // Several jobs at once on one node, whatever its number of CPUs.
        "PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8",
        "",
      ].join("\n"),
    );
    this.spawnLogged("slurmctld", "slurmctld", ["-D", "-c", "-f", this.conf]);
    await waitUntil("slurmctld answers", () => this.quiet("scontrol", ["ping"]).includes("UP"), 30_000, 250);
    this.spawnLogged("slurmd", "slurmd", ["-D", "-c", "-f", this.conf, "-N", host]);
    await waitUntil("the node idle", () => this.quiet("sinfo", ["--noheader", "--format=%T"]).trim() === "idle", 30_000, 250);
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

  /** Ends the cluster (slurmd, slurmctld, munged, then any process of it left, by pid); returns what had to be killed. */
  async stop(): Promise<ClusterProcess[]> {
    const left = await this.stopProcesses();
    if (left.length > 0) await waitUntil("the cluster's last processes gone", () => this.processes().length === 0, 10_000);
    return left;
  }
}
