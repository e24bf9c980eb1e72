/**
 * A real network file system client that loses its handles on reconnect:
 * sshfs (Debian's package) against an sshd (Debian's openssh-server) that
 * the test starts on 127.0.0.1, on a port of its own, with its own host key,
 * client key and configuration under the test root. The server side is a
 * plain directory (`source`) into which images are dropped, as another
 * client of the file server would.
 *
 * What it can do to the client, as a network would: stall the server (the
 * session process stopped), drop the session (sshfs reconnects, and every
 * file handle it had is dead), kill the client (the mount answers ENOTCONN)
 * and mount it again. Every process is started here and ended by pid.
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import path from "node:path";
import { majorMinorOf } from "../../src/observe/loops.js";
import { waitUntil, type TestRoot } from "./harness.js";

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => (typeof address === "object" && address ? resolve(address.port) : reject(new Error("no port"))));
    });
  });
}

/** The children of a process (/proc/PID/task/*\/children). */
function childrenOf(pid: number): number[] {
  try {
    const tasks = path.join("/proc", String(pid), "task");
    return execFileSync("sh", ["-c", `cat ${tasks}/*/children`], { encoding: "utf8" }).trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

const alive = (pid: number) => existsSync(`/proc/${pid}`) && !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, "utf8"));

export class SshFs {
  readonly source: string;
  /** st_dev of each mount of the client made (loop devices left on its files are found by it). */
  readonly devices = new Set<string>();
  private sshd?: ChildProcess;
  private client?: ChildProcess;
  /** Every pid this fixture started or saw serve it, to check none is left. */
  private readonly pids = new Set<number>();
  private createdPrivsepDir = false;
  private port = 0;
  private readonly dir: string;

  constructor(
    readonly root: TestRoot,
    readonly mountPoint: string,
  ) {
    this.dir = path.join(root.work, "sshfs");
    this.source = path.join(root.work, "server");
    mkdirSync(this.dir, { recursive: true });
    mkdirSync(this.source, { recursive: true });
  }

  static async start(root: TestRoot, mountPoint: string): Promise<SshFs> {
    const fs = new SshFs(root, mountPoint);
    await fs.startServer();
    await fs.mount();
    return fs;
  }

  private async startServer(): Promise<void> {
    const key = (name: string) => path.join(this.dir, name);
    for (const name of ["host", "client"]) execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", key(name)]);
    writeFileSync(key("authorized_keys"), readFileSync(`${key("client")}.pub`));
    this.port = await freePort();
    writeFileSync(
      key("sshd_config"),
      [
        `Port ${this.port}`,
        "ListenAddress 127.0.0.1",
        `HostKey ${key("host")}`,
        `AuthorizedKeysFile ${key("authorized_keys")}`,
        "PidFile none",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "Subsystem sftp internal-sftp",
        "",
      ].join("\n"),
    );
    // sshd's privilege separation directory; made only if missing, and removed then at teardown.
    if (!existsSync("/run/sshd")) {
      mkdirSync("/run/sshd", { mode: 0o755 });
      this.createdPrivsepDir = true;
    }
    const sshd = spawn("/usr/sbin/sshd", ["-D", "-e", "-f", key("sshd_config")], { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    sshd.stderr?.setEncoding("utf8").on("data", (c: string) => (stderr += c));
    this.sshd = sshd;
    this.pids.add(sshd.pid as number);
    await waitUntil(`sshd listening on 127.0.0.1:${this.port} (${stderr})`, () => {
      if (sshd.exitCode !== null) throw new Error(`sshd exited ${sshd.exitCode}: ${stderr}`);
      return /Server listening on 127\.0\.0\.1/.test(stderr);
    }, 10_000, 50);
  }

  /** Mount (again) at mountPoint; resolves once it answers. */
  async mount(): Promise<void> {
    const options = [
      `IdentityFile=${path.join(this.dir, "client")}`,
      "StrictHostKeyChecking=no",
      "UserKnownHostsFile=/dev/null",
      "LogLevel=ERROR",
      `port=${this.port}`,
      // As sites run it: reconnect after the session drops (every handle it had is then dead).
      "reconnect",
      "ServerAliveInterval=2",
      "ServerAliveCountMax=2",
    ].join(",");
    const before = statSync(this.mountPoint).dev;
    const client = spawn("sshfs", ["-f", "-o", options, `root@127.0.0.1:${this.source}`, this.mountPoint], { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    client.stderr?.setEncoding("utf8").on("data", (c: string) => (stderr += c));
    this.client = client;
    this.pids.add(client.pid as number);
    await waitUntil(`sshfs mounted at ${this.mountPoint} (${stderr})`, () => {
      if (client.exitCode !== null) throw new Error(`sshfs exited ${client.exitCode}: ${stderr}`);
      return statSync(this.mountPoint).dev !== before;
    }, 15_000, 50);
    this.devices.add(majorMinorOf(statSync(this.mountPoint, { bigint: true }).dev));
    for (const pid of childrenOf(client.pid as number)) this.pids.add(pid);
  }

  /** The sshd process serving the client's session now (the listener's child). */
  session(): number {
    const sessions = childrenOf(this.sshd?.pid as number);
    if (sessions.length !== 1) throw new Error(`expected one sshd session, found ${sessions.length}`);
    const pid = sessions[0] as number;
    this.pids.add(pid);
    return pid;
  }

  /** The server stops answering (its session process stopped), until resume(). */
  stall(): number {
    const pid = this.session();
    process.kill(pid, "SIGSTOP");
    return pid;
  }

  resume(pid: number): void {
    process.kill(pid, "SIGCONT");
  }

  /** The session drops: sshfs reconnects on the next call, and every handle of the old session is dead. */
  dropSession(): void {
    process.kill(this.session(), "SIGKILL");
  }

  /** The client dies: the mount stays, answering ENOTCONN, until it is unmounted. */
  async killClient(): Promise<void> {
    const client = this.client;
    if (!client || client.exitCode !== null) return;
    const exited = new Promise((r) => client.once("exit", r));
    client.kill("SIGKILL");
    await exited;
  }

  /** As an administrator after a dead client: `umount -l` the dead mount, mount again. */
  async remount(): Promise<void> {
    execFileSync("umount", ["--lazy", this.mountPoint], { stdio: "pipe" });
    await this.mount();
  }

  /** Processes of ours still running. */
  get running(): number[] {
    return [...this.pids].filter(alive);
  }

  /** Unmount, end the client and the server (and its sessions) by pid, check nothing is left. */
  async teardown(): Promise<void> {
    for (const pid of this.pids) if (alive(pid)) process.kill(pid, "SIGCONT");
    try {
      execFileSync("umount", ["--lazy", this.mountPoint], { stdio: "pipe" });
    } catch {
      // not mounted
    }
    if (this.sshd?.pid !== undefined) for (const pid of childrenOf(this.sshd.pid)) this.pids.add(pid);
    for (const pid of this.pids) if (alive(pid)) process.kill(pid, "SIGTERM");
    await waitUntil("sshd and sshfs ended", () => this.running.length === 0, 5000).catch(() => {
      for (const pid of this.running) process.kill(pid, "SIGKILL");
    });
    await waitUntil("sshd and sshfs ended after SIGKILL", () => this.running.length === 0, 5000);
    if (this.createdPrivsepDir) rmSync("/run/sshd", { recursive: true, force: true });
  }
}
