import { mkdir, rmdir, stat, unlink } from "node:fs/promises";
import pMap from "p-map";
import type { Clock } from "../lib/clock.js";
import type { Logger } from "pino";
import { errnoCode, errorMessage } from "../errors.js";
import { majorMinorOf } from "../observe/loops.js";
import { actionDataset, type Action } from "../plan/diff.js";
import type { Runner } from "../lib/exec.js";
import { attachAndMount, hardenMount, lazyUnmount } from "./mounts.js";
import type { TransferPool } from "./transfers.js";

export interface ActContext {
  run: Runner;
  transfers: TransferPool;
  logger: Logger;
  procRoot: string;
  /** A hung mount (a dead NFS server behind the image) is cut after this long. */
  commandTimeoutMs: number;
  /** Called after each mount, so the daemon can read the new loop device's counter before jobs do. */
  onMounted?: (target: string, source: string) => Promise<void>;
  /**
   * No key is started after `at` on `clock`'s monotonic time: the steps of
   * keys left over are done by later ticks (the diff asks for them again),
   * so that ten thousand new images do not hold one tick, and with it the
   * status, the watchdog and READY=1, for minutes.
   */
  deadline?: { clock: Clock; at: number };
}

/**
 * Keys acted on at once. A first tick on a node with hundreds of images
 * started hundreds of `mount` processes together, each followed by reads of
 * sysfs: 150 images ran the daemon out of file descriptors (EMFILE). The
 * price: eight mounts hung on a dead server hold the others back for up to
 * command_timeout, once; back-off then keeps them out of the way.
 */
export const ACT_CONCURRENCY = 8;

export interface ActionFailure {
  action: Action;
  error: string;
}

export interface ActOutcome {
  /** Steps that ran and succeeded. */
  done: Set<Action>;
  failures: ActionFailure[];
  /** Steps not started: their key came after the deadline. */
  deferred: number;
}

/** A key that only brings a new image in (a mount point, a slow mount) waits behind keys that change what is there. */
function onlyNew(steps: readonly Action[]): boolean {
  return steps.every((a) => a.kind === "mkdir" || (a.kind === "mount" && a.tier === "slow"));
}

/**
 * Carry out the diff. Steps of one key run in order and stop at the first
 * failure; keys are independent, so one bad image never holds up another.
 */
export async function act(actions: readonly Action[], ctx: ActContext): Promise<ActOutcome> {
  const byKey = new Map<string, Action[]>();
  for (const a of actions) {
    const steps = byKey.get(a.key);
    if (steps) steps.push(a);
    else byKey.set(a.key, [a]);
  }
  // Removals, drops and cache mounts first: they are few, and what they change is in use.
  const keys = [...byKey.values()].sort((a, b) => Number(onlyNew(a)) - Number(onlyNew(b)));
  const outcome: ActOutcome = { done: new Set(), failures: [], deferred: 0 };
  await pMap(
    keys,
    async (steps) => {
      if (ctx.deadline !== undefined && ctx.deadline.clock.monotonic() > ctx.deadline.at) {
        outcome.deferred += steps.length;
        return;
      }
      for (const action of steps) {
        try {
          await perform(action, ctx);
          outcome.done.add(action);
        } catch (err) {
          outcome.failures.push({ action, error: errorMessage(err) });
          ctx.logger.error({ dataset: actionDataset(action), action: action.kind, err: errorMessage(err) }, "action failed");
          break;
        }
      }
    },
    { concurrency: ACT_CONCURRENCY },
  );
  return outcome;
}

/**
 * The diff saw this mount on top; check it still is, so that we never touch
 * a mount someone made since. stat() of a mount point is the root of the
 * file system on top: its device says whose it is (the root inode of a
 * mounted file system is in memory: no read of a dead server). Not
 * /proc/self/mountinfo, whose parse costs O(mounts) per call: O(n^2) for many.
 */
async function checkTop(action: { target: string; mountId: number; device: string }): Promise<void> {
  const top = majorMinorOf((await stat(action.target, { bigint: true })).dev);
  if (top !== action.device) throw new Error(`mount ${action.mountId} (${action.device}) is no longer the top of ${action.target} (${top}); skipped`);
}

async function perform(action: Action, ctx: ActContext): Promise<void> {
  const log = ctx.logger;
  switch (action.kind) {
    case "mkdir":
      // Already there after a failed mount or a restart: that is fine (recursive: no EEXIST).
      await mkdir(action.path, { mode: 0o755, recursive: true });
      return void log.debug({ dataset: action.dataset, path: action.path }, "created mount point");
    case "rmdir":
      try {
        await rmdir(action.path);
        log.debug({ path: action.path }, "removed mount point");
      } catch (err) {
        // Not empty or still a mount point (a lazy unmount still busy): not ours to force.
        if (!["ENOTEMPTY", "EBUSY", "ENOENT", "EEXIST"].includes(errnoCode(err) ?? "")) throw err;
      }
      return;
    case "mount":
      await attachAndMount(ctx.run, action.fsType, action.source, action.target, ctx.commandTimeoutMs);
      await ctx.onMounted?.(action.target, action.source);
      return void log.info({ dataset: action.dataset, tier: action.tier, source: action.source, target: action.target }, action.tier === "cache" ? "mounted cached copy" : "mounted image");
    case "unmount":
      await checkTop(action);
      await lazyUnmount(ctx.run, action.target, ctx.commandTimeoutMs);
      return void log.info({ dataset: action.dataset, tier: action.tier, target: action.target, reason: action.reason }, "unmounted");
    case "harden":
      await checkTop(action);
      await hardenMount(ctx.run, action.target, ctx.commandTimeoutMs);
      return void log.info({ dataset: action.dataset, tier: action.tier, target: action.target, mountId: action.mountId }, "hardened an adopted mount: nosuid,nodev set in place");
    case "delete-file":
      try {
        await unlink(action.path);
      } catch (err) {
        if (errnoCode(err) !== "ENOENT") throw err;
      }
      return void log.info({ dataset: action.dataset, file: action.path, reason: action.reason }, "deleted cache file");
    case "start-copy":
      return ctx.transfers.start(action.dataset);
    case "cancel-copy":
      return ctx.transfers.cancel(action.dataset, action.reason);
  }
}
