/**
 * Several Slurm nodes on one machine (issue 21): each node a network, UTS
 * and mount namespace of its own, held open by an `unshare ... sleep
 * infinity` the test starts, with its host name, its address on a bridge,
 * its own /etc/hosts (bind-mounted inside its mount namespace only) and its
 * own slurmd. The bridge, slurmctld and the Slurm commands the test runs
 * live in one more namespace ("ctl"); munged's socket is a file under the
 * cluster's directory, reached from every namespace. Addresses exist only
 * inside namespaces the test made: the machine's own network is not
 * touched. Entered with nsenter (not `ip netns exec`, which remounts /sys:
 * slurmd's cgroup plugin then refuses to start). Every process is ended by
 * pid; the namespaces go with their last process.
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { waitUntil } from "../integration/harness.js";
import type { JobRecord } from "./cluster.js";

const SBIN = `${process.env.PATH ?? ""}:/usr/sbin:/sbin`;
/** A private /24 for the bridge: only inside the test's namespaces. */
const SUBNET = "10.213.77";

interface Held {
  name: string;
  /** The process holding the namespaces: what nsenter -t enters. */
  pid: number;
  child: ChildProcess;
}

export interface NodeInfo {
  name: string;
  address: string;
  /** The pid whose namespaces are the node's (nsenter -t). */
  pid: number;
}

export class MultiNodeCluster {
  readonly conf: string;
  readonly marker: string;
  readonly nodes: NodeInfo[] = [];
  private ctl?: Held;
  private holders: Held[] = [];
  private readonly daemons: { name: string; child: ChildProcess; exited: Promise<void> }[] = [];

  private constructor(
    readonly dir: string,
    readonly size: number,
  ) {
    this.conf = path.join(dir, "slurm.conf");
    this.marker = `SM_SLURM_TEST=${dir}`;
  }

  env(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
    return { ...process.env, PATH: SBIN, SLURM_CONF: this.conf, SM_SLURM_TEST: this.dir, ...extra };
  }

  static async start(dir: string, size: number, options: { jobSubmitLua?: string; extraConf?: string[] } = {}): Promise<MultiNodeCluster> {
    const c = new MultiNodeCluster(dir, size);
    try {
      await c.boot(options);
    } catch (err) {
      await c.stop();
      throw new Error(`the test's multi-node Slurm did not start: ${err instanceof Error ? err.message : String(err)}\n${c.logs()}`);
    }
    return c;
  }

  /** Runs `argv` inside the namespaces of `pid` (net, UTS, mount); its stdout. */
  inside(pid: number, argv: string[], options: { timeoutMs?: number } = {}): string {
    return execFileSync("nsenter", ["-t", String(pid), "-n", "-u", "-m", "--", ...argv], { env: this.env(), encoding: "utf8", timeout: options.timeoutMs ?? 20_000, stdio: ["ignore", "pipe", "pipe"] });
  }

  /** Runs a Slurm command where slurmctld is reachable (the ctl namespace); stdout, or "" if it failed. */
  slurm(file: string, args: string[]): string {
    try {
      return this.inside(this.ctlPid, [file, ...args]);
    } catch {
      return "";
    }
  }

  /** The ctl namespace's address on the bridge (slurmctld's, and a file server's there). */
  readonly ctlAddress = `${SUBNET}.1`;

  get ctlPid(): number {
    if (!this.ctl) throw new Error("no ctl namespace");
    return this.ctl.pid;
  }

  private hold(name: string): Held {
    const child = spawn("unshare", ["--net", "--uts", "--mount", "--propagation", "private", "--", "sleep", "infinity"], { env: this.env(), stdio: "ignore" });
    child.on("error", () => undefined);
    const held = { name, pid: child.pid as number, child };
    this.holders.push(held);
    return held;
  }

  private async boot(options: { jobSubmitLua?: string; extraConf?: string[] }): Promise<void> {
    const dir = this.dir;
    for (const d of ["munge", "state", "log", "spool"]) mkdirSync(path.join(dir, d), { recursive: true });
    // Namespaces: ctl (the bridge, slurmctld), then one per node, each joined to the bridge by a veth pair.
    this.ctl = this.hold("ctl");
    for (let i = 1; i <= this.size; i++) {
      const held = this.hold(`node${i}`);
      this.nodes.push({ name: held.name, address: `${SUBNET}.${10 + i}`, pid: held.pid });
    }
    // unshare has exec'd sleep once /proc/PID/ns/net differs from ours.
    const ownNet = execFileSync("readlink", ["/proc/self/ns/net"], { encoding: "utf8" }).trim();
    for (const h of this.holders) await waitUntil(`namespaces of ${h.name}`, () => existsSync(`/proc/${h.pid}/ns/net`) && execFileSync("readlink", [`/proc/${h.pid}/ns/net`], { encoding: "utf8" }).trim() !== ownNet, 10_000, 20);
    const hosts = path.join(dir, "hosts");
    writeFileSync(hosts, ["127.0.0.1 localhost", `${SUBNET}.1 ctl`, ...this.nodes.map((n) => `${n.address} ${n.name}`), ""].join("\n"));
    const ctl = this.ctlPid;
    const sh = (pid: number, script: string) => this.inside(pid, ["sh", "-ec", script]);
    sh(ctl, `hostname ctl; mount --bind ${hosts} /etc/hosts; ip link set lo up; ip link add smbr0 type bridge; ip link set smbr0 up; ip addr add ${SUBNET}.1/24 dev smbr0`);
    for (const [i, n] of this.nodes.entries()) {
      sh(ctl, `ip link add smv${i + 1} type veth peer name eth0 netns ${n.pid}; ip link set smv${i + 1} master smbr0; ip link set smv${i + 1} up`);
      sh(n.pid, `hostname ${n.name}; mount --bind ${hosts} /etc/hosts; ip link set lo up; ip addr add ${n.address}/24 dev eth0; ip link set eth0 up; mkdir -p ${path.join(dir, "spool", n.name)}`);
    }

    chmodSync(path.join(dir, "munge"), 0o755);
    const key = path.join(dir, "munge", "munge.key");
    writeFileSync(key, randomBytes(1024), { mode: 0o600 });
    const socket = path.join(dir, "munge", "munge.socket.2");
    this.spawnDaemon("munged", "munged", ["--foreground", "--force", `--socket=${socket}`, `--key-file=${key}`, `--pid-file=${path.join(dir, "munge", "munged.pid")}`, `--seed-file=${path.join(dir, "munge", "munged.seed")}`]);
    await waitUntil("munged's socket", () => existsSync(socket), 10_000);

    const log = (n: string) => path.join(dir, "log", n);
    if (options.jobSubmitLua !== undefined) writeFileSync(path.join(dir, "job_submit.lua"), options.jobSubmitLua);
    writeFileSync(
      this.conf,
      [
        `# A ${this.size}-node cluster of test/slurm/: everything under this directory.`,
        "ClusterName=smmulti",
        `SlurmctldHost=ctl(${SUBNET}.1)`,
        "SlurmctldPort=6817",
        "SlurmdPort=6818",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        `AuthInfo=socket=${socket}`,
        `StateSaveLocation=${path.join(dir, "state")}`,
        `SlurmdSpoolDir=${path.join(dir, "spool", "%n")}`,
        `SlurmctldPidFile=${path.join(dir, "slurmctld.pid")}`,
        `SlurmdPidFile=${path.join(dir, "spool", "%n", "slurmd.pid")}`,
        `SlurmctldLogFile=${log("slurmctld.log")}`,
        `SlurmdLogFile=${log("slurmd-%n.log")}`,
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "MpiDefault=none",
        "ReturnToService=2",
        "SchedulerType=sched/backfill",
        "SchedulerParameters=sched_interval=1,bf_interval=1",
        "MinJobAge=300",
        ...(options.jobSubmitLua !== undefined ? ["JobSubmitPlugins=lua"] : []),
        ...(options.extraConf ?? []),
        ...this.nodes.map((n) => `NodeName=${n.name} NodeAddr=${n.address} CPUs=1 RealMemory=1000 State=UNKNOWN`),
        "PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        "",
      ].join("\n"),
    );
    this.spawnDaemon("slurmctld", "nsenter", ["-t", String(ctl), "-n", "-u", "-m", "--", "slurmctld", "-D", "-c", "-f", this.conf]);
    await waitUntil("slurmctld answers", () => this.slurm("scontrol", ["ping"]).includes("UP"), 30_000, 250);
    for (const n of this.nodes) this.spawnDaemon(`slurmd-${n.name}`, "nsenter", ["-t", String(n.pid), "-n", "-u", "-m", "--", "slurmd", "-D", "-f", this.conf, "-N", n.name]);
    await waitUntil("every node idle", () => {
      const states = this.slurm("sinfo", ["--noheader", "--Node", "--format=%N %T"]).trim().split("\n");
      return states.length === this.size && states.every((l) => l.endsWith(" idle"));
    }, 40_000, 250);
  }

  /**
   * Starts `argv` inside the namespaces of `pid` (net, UTS, mount), logged
   * to log/NAME.out and ended by stop() (by pid, with the cluster's other
   * processes): a file server, its clients.
   */
  spawnInside(pid: number, name: string, argv: string[]): void {
    this.spawnDaemon(name, "nsenter", ["-t", String(pid), "-n", "-u", "-m", "--", ...argv]);
  }

  /**
   * Shapes a link with tc's token bucket (tbf): `device` in the namespace of
   * `pid` sends at most `bytesPerS`. A node's eth0 is its link to the
   * others; the ctl namespace's bridge smbr0 carries what the ctl
   * namespace itself sends (a file server there), not what nodes send each other.
   */
  shape(pid: number, device: string, bytesPerS: number): void {
    // A burst of 64 KiB, and a queue of 200 ms: TCP sees the rate, not drops.
    this.inside(pid, ["tc", "qdisc", "replace", "dev", device, "root", "tbf", "rate", `${Math.round(bytesPerS * 8)}bit`, "burst", "64kb", "latency", "200ms"]);
  }

  private spawnDaemon(name: string, file: string, args: string[]): void {
    const out = openSync(path.join(this.dir, "log", `${name}.out`), "a");
    const child = spawn(file, args, { env: this.env(), stdio: ["ignore", out, out], detached: true });
    closeSync(out);
    const exited = new Promise<void>((resolve) => child.on("exit", () => resolve()));
    child.on("error", () => undefined);
    this.daemons.push({ name, child, exited });
  }

  sbatch(args: string[]): number {
    const out = this.inside(this.ctlPid, ["sbatch", "--parsable", ...args]);
    return Number(out.trim().split(";")[0]);
  }

  jobs(): (JobRecord & { nodes?: string; job_resources?: { nodes?: string } })[] {
    const text = this.slurm("squeue", ["--json"]);
    return text === "" ? [] : (JSON.parse(text) as { jobs: (JobRecord & { nodes?: string })[] }).jobs;
  }

  /** The node's features, as slurmctld has them now (AvailableFeatures, ActiveFeatures). */
  features(node: string): { available: string[]; active: string[] } {
    const line = this.slurm("scontrol", ["show", "node", node, "-o"]);
    const field = (k: string) => (new RegExp(`\\b${k}=(\\S*)`).exec(line)?.[1] ?? "").split(",").filter((f) => f !== "" && f !== "(null)");
    return { available: field("AvailableFeatures"), active: field("ActiveFeatures") };
  }

  logs(): string {
    const dir = path.join(this.dir, "log");
    if (!existsSync(dir)) return "";
    return readdirSync(dir)
      .map((f) => `--- ${f} (last lines) ---\n${readFileSync(path.join(dir, f), "utf8").split("\n").slice(-15).join("\n")}`)
      .join("\n");
  }

  /** Processes that carry the marker (the cluster's daemons, slurmstepd, jobs), and the namespace holders. */
  processes(): { pid: number; cmd: string }[] {
    const out: { pid: number; cmd: string }[] = [];
    for (const entry of readdirSync("/proc")) {
      if (!/^\d+$/.test(entry)) continue;
      try {
        const env = readFileSync(`/proc/${entry}/environ`, "latin1").split("\0");
        if (!env.includes(this.marker)) continue;
        const stat = readFileSync(`/proc/${entry}/stat`, "latin1");
        if (/\) Z /.test(stat)) continue;
        out.push({ pid: Number(entry), cmd: readFileSync(`/proc/${entry}/cmdline`, "latin1").replace(/\0/g, " ").trim() });
      } catch {
        // gone meanwhile
      }
    }
    return out;
  }

  /** slurmd, slurmctld, munged, then what spawnInside started (SIGTERM, then SIGKILL), then every process of ours left, by pid; the namespaces go with their holders. */
  async stop(): Promise<{ pid: number; cmd: string }[]> {
    // Then the rest spawned by name (spawnInside: sshd re-executes itself without the marker, so only its pid finds it).
    const order = ["slurmd", "slurmctld", "munged"];
    const rank = (name: string) => {
      const i = order.findIndex((prefix) => name.startsWith(prefix));
      return i < 0 ? order.length : i;
    };
    for (let r = 0; r <= order.length; r++) {
      for (const d of this.daemons.filter((x) => rank(x.name) === r)) {
        if (d.child.exitCode !== null || d.child.signalCode !== null) continue;
        d.child.kill("SIGTERM");
        const timer = setTimeout(() => d.child.kill("SIGKILL"), 10_000);
        await d.exited;
        clearTimeout(timer);
      }
    }
    const left = this.processes().filter((p) => !this.holders.some((h) => h.pid === p.pid));
    for (const p of left) {
      try {
        process.kill(p.pid, "SIGKILL");
      } catch {
        // gone meanwhile
      }
    }
    for (const h of this.holders) if (h.child.exitCode === null && h.child.signalCode === null) h.child.kill("SIGKILL");
    await waitUntil("the cluster's processes and namespaces gone", () => this.processes().length === 0, 10_000);
    return left;
  }
}
