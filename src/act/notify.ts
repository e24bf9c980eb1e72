import type { Runner } from "./exec.js";

/**
 * sd_notify(3) through systemd-notify(1): Node has no AF_UNIX datagram
 * socket, and a native addon could not ship in the one-file bundle.
 * systemd attributes a message by its sender, which here is a short-lived
 * child, so a message can be lost when the child exits before PID 1 reads it
 * (hence NotifyAccess=all in the unit); every tick therefore repeats READY=1
 * with its STATUS and WATCHDOG, and a lost message is made good 5 s later.
 * Without NOTIFY_SOCKET (not started by systemd) nothing is sent.
 */
export class Notifier {
  constructor(
    private readonly run: Runner,
    private readonly socket: string | undefined = process.env.NOTIFY_SOCKET,
  ) {}

  get enabled(): boolean {
    return this.socket !== undefined && this.socket !== "";
  }

  async send(fields: Record<string, string>): Promise<void> {
    if (!this.enabled) return;
    const assignments = Object.entries(fields).map(([k, v]) => `${k}=${v.replace(/\n/g, " ")}`);
    await this.run("systemd-notify", [`--pid=${process.pid}`, ...assignments], { timeoutMs: 5000 });
  }
}
