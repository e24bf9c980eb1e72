import type { Runner } from "../lib/exec.js";
import { systemClock, type Clock } from "../lib/clock.js";

/**
 * sd_notify(3) through systemd-notify(1): Node has no AF_UNIX datagram
 * socket, and a native addon could not ship in the one-file bundle.
 * systemd attributes a message by its sender, which here is a short-lived
 * child, so a message can be lost when the child exits before PID 1 reads it
 * (hence NotifyAccess=all in the unit). So each message repeats READY=1,
 * the STATUS and WATCHDOG=1, and one that did not change is sent again only
 * after half the watchdog's period (WATCHDOG_USEC, as sd_watchdog_enabled(3)
 * advises), or a minute without a watchdog: a lost message is made good by
 * then. Not every tick: a program started each tick is much of a quiet
 * tick's CPU (BENCHMARKS.md).
 * Without NOTIFY_SOCKET (not started by systemd) nothing is sent.
 */
export class Notifier {
  private last?: { text: string; at: number };
  private readonly repeatMs: number;

  constructor(
    private readonly run: Runner,
    private readonly socket: string | undefined = process.env.NOTIFY_SOCKET,
    watchdogUsec: string | undefined = process.env.WATCHDOG_USEC,
    private readonly clock: Clock = systemClock,
  ) {
    const usec = Number(watchdogUsec);
    this.repeatMs = Number.isFinite(usec) && usec > 0 ? usec / 2000 : 60_000;
  }

  get enabled(): boolean {
    return this.socket !== undefined && this.socket !== "";
  }

  async send(fields: Record<string, string>): Promise<void> {
    if (!this.enabled) return;
    const assignments = Object.entries(fields).map(([k, v]) => `${k}=${v.replace(/\n/g, " ")}`);
    await this.run("systemd-notify", [`--pid=${process.pid}`, ...assignments], { timeoutMs: 5000 });
  }

  /** send(), unless the same message went out less than the repeat period ago. */
  async sendChanged(fields: Record<string, string>): Promise<void> {
    const text = JSON.stringify(fields);
    const now = this.clock.monotonic();
    if (this.last?.text === text && now - this.last.at < this.repeatMs) return;
    await this.send(fields);
    this.last = { text, at: now };
  }
}
