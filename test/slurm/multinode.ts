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
 * pid (processes.ts); the namespaces go with their last process.
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { waitUntil } from "../integration/harness.js";
import { ClusterProcesses, type ClusterProcess, type JobRecord } from "./processes.js";
/** A private /24 for the bridge: only inside the test's namespaces. */
const SUBNET = "10.213.77";

interface Held {
  name: string;
  /** The process holding the namespaces: what nsenter -t enters. */
  pid: number;
  child: ChildProcess;
  /** Reaped: the namespaces are gone with it (a killed holder stays a while in the kernel's exit, tearing them down). */
  exited: Promise<void>;
}

export interface NodeInfo {
  name: string;
  address: string;
  /** The pid whose namespaces are the node's (nsenter -t). */
  pid: number;
}

export class MultiNodeCluster extends ClusterProcesses {
  readonly nodes: NodeInfo[] = [];
  private ctl?: Held;
  private holders: Held[] = [];

  private constructor(
    dir: string,
    readonly size: number,
  ) {
    super(dir);
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
    const exited = new Promise<void>((resolve) => child.on("exit", () => resolve()));
    const held = { name, pid: child.pid as number, child, exited };
    this.holders.push(held);
    return held;
  }

  private async boot(options: { jobSubmitLua?: string; extraConf?: string[] }): Promise<void> {
    const dir = this.dir;
    for (const d of ["state", "log", "spool"]) mkdirSync(path.join(dir, d), { recursive: true });
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

    const socket = await this.startMunge();

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
        ...this.sharedConf(socket),
        `SlurmdSpoolDir=${path.join(dir, "spool", "%n")}`,
        `SlurmdPidFile=${path.join(dir, "spool", "%n", "slurmd.pid")}`,
        `SlurmdLogFile=${log("slurmd-%n.log")}`,
        "SchedulerType=sched/backfill",
        "SchedulerParameters=sched_interval=1,bf_interval=1",
        ...(options.jobSubmitLua !== undefined ? ["JobSubmitPlugins=lua"] : []),
        ...(options.extraConf ?? []),
        ...this.nodes.map((n) => `NodeName=${n.name} NodeAddr=${n.address} CPUs=1 RealMemory=1000 State=UNKNOWN`),
        "PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        "",
      ].join("\n"),
    );
    this.spawnLogged("slurmctld", "nsenter", ["-t", String(ctl), "-n", "-u", "-m", "--", "slurmctld", "-D", "-c", "-f", this.conf]);
    await waitUntil("slurmctld answers", () => this.slurm("scontrol", ["ping"]).includes("UP"), 30_000, 250);
    for (const n of this.nodes) this.spawnLogged(`slurmd-${n.name}`, "nsenter", ["-t", String(n.pid), "-n", "-u", "-m", "--", "slurmd", "-D", "-f", this.conf, "-N", n.name]);
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
    this.spawnLogged(name, "nsenter", ["-t", String(pid), "-n", "-u", "-m", "--", ...argv]);
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

  /** Ends the cluster: slurmd, slurmctld, munged, then what spawnInside started, then every process of ours left, by pid; the namespaces go with their holders. */
  async stop(): Promise<ClusterProcess[]> {
    const left = await this.stopProcesses(this.holders.map((h) => h.pid));
    for (const h of this.holders) if (h.child.exitCode === null && h.child.signalCode === null) h.child.kill("SIGKILL");
    // Reaped, not only past the point where /proc/PID/environ reads empty: until then its stat says R.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all(this.holders.map((h) => h.exited)), new Promise((resolve) => (timer = setTimeout(resolve, 10_000)))]);
    clearTimeout(timer);
    await waitUntil("the cluster's processes and namespaces gone", () => this.processes().length === 0, 10_000);
    return left;
  }
}
