/**
 * What the one-node (cluster.ts) and the multi-node (multinode.ts) test
 * clusters share: one directory that holds everything of the cluster, a
 * marker in the environment of every process it starts (inherited by
 * slurmstepd and the jobs) so that the test can prove none is left, munged
 * on a socket under that directory, the daemons' logs, and the end of it
 * all, by pid, never by name.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { waitUntil } from "../integration/harness.js";

/** The PATH with the directories Debian puts Slurm's and munge's daemons in. */
export const SBIN_PATH = `${process.env.PATH ?? ""}:/usr/sbin:/sbin`;

/** The programs the clusters need; .ci/setup installs them (apt-get install slurmd slurmctld munge). */
export const SLURM_PROGRAMS = ["munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo"];

/** The programs missing from the PATH (and /usr/sbin, where Debian puts the daemons). */
export function missingPrograms(): string[] {
  const dirs = SBIN_PATH.split(":").filter(Boolean);
  return SLURM_PROGRAMS.filter((p) => !dirs.some((d) => existsSync(path.join(d, p))));
}

/** A job as `squeue --json` (22.05) lists it: the fields the tests read. */
export interface JobRecord {
  job_id: number;
  job_state: string;
  comment: string;
  exit_code: number;
  start_time: number;
}

export interface ClusterProcess {
  pid: number;
  cmd: string;
}

interface Spawned {
  name: string;
  child: ChildProcess;
  exited: Promise<void>;
}

export abstract class ClusterProcesses {
  readonly conf: string;
  /** SM_SLURM_TEST=<dir> in the environment of every process of the cluster and of its jobs. */
  readonly marker: string;
  private readonly spawned: Spawned[] = [];

  protected constructor(readonly dir: string) {
    this.conf = path.join(dir, "slurm.conf");
    this.marker = `SM_SLURM_TEST=${dir}`;
  }

  /** Environment for Slurm's commands and daemons: this cluster's slurm.conf, and the marker. */
  env(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
    return { ...process.env, PATH: SBIN_PATH, SLURM_CONF: this.conf, SM_SLURM_TEST: this.dir, ...extra };
  }

  /** Starts a process of the cluster, its output to log/NAME.out; stop() ends it by its pid. */
  protected spawnLogged(name: string, file: string, args: string[]): void {
    mkdirSync(path.join(this.dir, "log"), { recursive: true });
    const out = openSync(path.join(this.dir, "log", `${name}.out`), "a");
    // Its own process group, not a shell: its pid is the program's (or nsenter's, which execs it).
    const child = spawn(file, args, { env: this.env(), stdio: ["ignore", out, out], detached: true });
    closeSync(out);
    const exited = new Promise<void>((resolve) => child.on("exit", () => resolve()));
    child.on("error", () => undefined);
    this.spawned.push({ name, child, exited });
  }

  /** munged with a fresh key, its socket under munge/ (a file every namespace of the cluster reaches); the socket's path. */
  protected async startMunge(): Promise<string> {
    const dir = path.join(this.dir, "munge");
    mkdirSync(dir, { recursive: true });
    // munged wants its key readable by its user only, and the socket's directory open to all.
    chmodSync(dir, 0o755);
    const key = path.join(dir, "munge.key");
    writeFileSync(key, randomBytes(1024), { mode: 0o600 });
    const socket = path.join(dir, "munge.socket.2");
    this.spawnLogged("munged", "munged", ["--foreground", "--force", `--socket=${socket}`, `--key-file=${key}`, `--pid-file=${path.join(dir, "munged.pid")}`, `--seed-file=${path.join(dir, "munged.seed")}`]);
    await waitUntil("munged's socket", () => existsSync(socket), 10_000);
    return socket;
  }

  /**
   * The lines of slurm.conf both clusters share: root runs everything,
   * munge on the cluster's socket, the controller's state, pid and log under
   * the cluster's directory, and no cgroups (processes tracked through
   * /proc, no task binding, no accounting).
   */
  protected sharedConf(mungeSocket: string): string[] {
    return [
      "SlurmUser=root",
      "SlurmdUser=root",
      "AuthType=auth/munge",
      "CredType=cred/munge",
      `AuthInfo=socket=${mungeSocket}`,
      `StateSaveLocation=${path.join(this.dir, "state")}`,
      `SlurmctldPidFile=${path.join(this.dir, "slurmctld.pid")}`,
      `SlurmctldLogFile=${path.join(this.dir, "log", "slurmctld.log")}`,
      "ProctrackType=proctrack/linuxproc",
      "TaskPlugin=task/none",
      "JobAcctGatherType=jobacct_gather/none",
      "AccountingStorageType=accounting_storage/none",
      // Cores, not whole nodes: several jobs of a node at once.
      "SelectType=select/cons_tres",
      "SelectTypeParameters=CR_Core",
      "MpiDefault=none",
      "ReturnToService=2",
      // Jobs leave the controller's memory 5 minutes after they end: the tests read their state.
      "MinJobAge=300",
    ];
  }

  /** The last lines of every log of the cluster, for a failure's message. */
  logs(): string {
    const dir = path.join(this.dir, "log");
    if (!existsSync(dir)) return "";
    return readdirSync(dir)
      .map((f) => `--- ${f} (last lines) ---\n${readFileSync(path.join(dir, f), "utf8").split("\n").slice(-15).join("\n")}`)
      .join("\n");
  }

  /** Processes that carry the marker: the cluster's daemons, slurmstepd, job scripts. */
  processes(): ClusterProcess[] {
    const out: ClusterProcess[] = [];
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
   * Ends what spawnLogged started: slurmd (every node's), slurmctld, munged,
   * then the rest (a file server, its clients: sshd re-executes itself
   * without the marker, so only its pid finds it), each SIGTERM and SIGKILL
   * after 10 s; then SIGKILL to every process still carrying the marker but
   * those `spare` names. Returns what had to be killed that way.
   */
  protected async stopProcesses(spare: readonly number[] = []): Promise<ClusterProcess[]> {
    const order = ["slurmd", "slurmctld", "munged"];
    const rank = (name: string) => {
      const i = order.findIndex((prefix) => name.startsWith(prefix));
      return i < 0 ? order.length : i;
    };
    for (let r = 0; r <= order.length; r++) {
      for (const d of this.spawned.filter((x) => rank(x.name) === r)) {
        if (d.child.exitCode !== null || d.child.signalCode !== null) continue;
        d.child.kill("SIGTERM");
        const timer = setTimeout(() => d.child.kill("SIGKILL"), 10_000);
        await d.exited;
        clearTimeout(timer);
      }
    }
    const left = this.processes().filter((p) => !spare.includes(p.pid));
    for (const p of left) {
      try {
        process.kill(p.pid, "SIGKILL");
      } catch {
        // gone meanwhile
      }
    }
    return left;
  }
}
