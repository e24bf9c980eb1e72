/**
 * The decision between observing and acting: from the datasets, their
 * rates, the pins and the space, which datasets the cache should hold and
 * which copies may start now. Pure; the daemon (Daemon.tick) and the
 * simulator (bench/sim/ours.ts) both call it, so that what the benchmarks
 * measure is what the daemon does.
 */
import type { PolicyName } from "../config.js";
import { formatBytes } from "../units.js";
import type { Dataset } from "./catalog.js";
import { admitCopies, copyPriority, fitPins, plan } from "./policy.js";

export interface DecideInput {
  /** The datasets of this tick (catalogue). */
  datasets: readonly Dataset[];
  /** Names still being written: a pin of one of them is not "unknown". */
  pending?: ReadonlySet<string>;
  /** Pinned dataset names (config and `scratch_manager pin`, not expired). */
  pinned: ReadonlySet<string>;
  policy: PolicyName;
  /** Over the period (Stats.rate), bytes/s. */
  rate: (name: string) => { slow: number; cache: number };
  /** Both tiers over the fast window (Stats.fastRate), bytes/s. */
  fastRate: (name: string) => number;
  /** Unread for max_idle: worth nothing. */
  idle?: (name: string) => boolean;
  /** Datasets whose copy is queued or running. */
  copying: ReadonlySet<string>;
  /**
   * Datasets staged for jobs the scheduler plans here (slurm/stager.ts),
   * earliest job first. Those of jobs due within STAGED_LEAD_MS make room:
   * they come after the pins and what running jobs read from the cache, and
   * before the policy's other choices. The rest take only the room left.
   */
  staged?: readonly StagedChoice[];
  space: {
    /** The configured capacity, bytes. */
    capacity: number;
    /** What the cached copies may take this tick (policy.ts: budget()). */
    budget: number;
    /** Space of dropped copies still held open by readers (ghostBytes). */
    ghosts: number;
    /** Bytes the cache holds now, running copies at their full size (occupiedBytes). */
    occupied: number;
    /** Free bytes of the cache file system no running copy will take, less keep_free. */
    writable: number;
  };
}

/** A dataset staged for a job planned here; `due`: the job starts within STAGED_LEAD_MS (plan/reconcile.ts says). */
export interface StagedChoice {
  name: string;
  due: boolean;
}

/**
 * A staged dataset whose job is due within this makes room in the cache
 * (evicting what no running job reads); a later one waits for free room.
 * Long enough to copy tens of GB from a busy file server; short enough
 * that a job far down the queue, whose plan will change, evicts nothing.
 */
export const STAGED_LEAD_MS = 15 * 60_000;

export interface Decision {
  /** The datasets the cache should hold. */
  cached: Set<string>;
  /** The chosen datasets whose copy may start now, in free space (admitCopies). */
  admitted: Set<string>;
  /** Pins that cannot be honoured, as one line each for the log and the status. */
  pinProblems: string[];
}

/** Which datasets to cache, and which copies to start now: pins first, then the policy, then admission in free space. */
export function decide(input: DecideInput): Decision {
  const { datasets, pinned, space } = input;
  const rates = { rate: input.rate, fastRate: input.fastRate, policy: input.policy };
  const stagedNames = (input.staged ?? []).map((s) => s.name);
  const cached = plan({ ...rates, datasets, budgetBytes: space.budget, pinned: held(input), idle: input.idle, copying: input.copying });
  addStaged(cached, datasets, stagedNames, space.budget);
  // Earliest job first: a staged dataset chosen (by the room it made, the room left, or the policy anyway) is copied before the policy's others.
  const stagedRank = new Map(stagedNames.filter((n) => cached.has(n)).map((n, i) => [n, i]));
  const admitted = admitCopies({
    candidates: datasets
      .filter((d) => cached.has(d.name) && d.cache !== "valid" && !input.copying.has(d.name))
      // Pins first, then what jobs about to start need (earliest first), then the policy's order.
      .map((d) => {
        const rank = stagedRank.get(d.name);
        return { d, pinned: pinned.has(d.name) ? 2 : rank !== undefined ? 1 : 0, priority: rank !== undefined ? -rank : copyPriority(rates, d) };
      })
      .sort((a, b) => b.pinned - a.pinned || b.priority - a.priority)
      .map(({ d }) => d),
    occupiedBytes: space.ghosts + space.occupied,
    capacityBytes: Math.min(space.capacity, space.budget + space.ghosts),
    writableBytes: space.writable,
  });
  return { cached, admitted, pinProblems: pinProblems(datasets, input.pending ?? new Set(), pinned, space.budget) };
}

/**
 * What the policy must keep before it chooses (passed to it as pins): the
 * pins; and, when a job due here soon needs a dataset, first what running
 * jobs read from the cache now (cached or being copied, read over the fast
 * window: "in use", never evicted for a job that has not started), then
 * the due datasets, earliest job first, as far as they fit.
 */
function held(input: DecideInput): ReadonlySet<string> {
  const due = (input.staged ?? []).filter((s) => s.due);
  if (due.length === 0) return input.pinned;
  const { datasets, space } = input;
  const byName = new Map(datasets.map((d) => [d.name, d]));
  const { fit } = fitPins(datasets, input.pinned, space.budget);
  const keep = new Set(fit.map((d) => d.name));
  let left = space.budget - fit.reduce((sum, d) => sum + d.size, 0);
  const inUse = datasets.filter((d) => (d.cache === "valid" || input.copying.has(d.name)) && input.fastRate(d.name) > 0).sort((a, b) => input.fastRate(b.name) - input.fastRate(a.name));
  for (const d of [...inUse, ...due.flatMap((s) => byName.get(s.name) ?? [])]) {
    if (keep.has(d.name) || d.size > left) continue;
    keep.add(d.name);
    left -= d.size;
  }
  return keep;
}

/** The staged datasets that fit beside what is chosen, in their order, added to `cached`. */
function addStaged(cached: Set<string>, datasets: readonly Dataset[], staged: readonly string[], budget: number): void {
  const byName = new Map(datasets.map((d) => [d.name, d]));
  let used = [...cached].reduce((sum, name) => sum + (byName.get(name)?.size ?? 0), 0);
  for (const name of staged) {
    const d = byName.get(name);
    if (!d || cached.has(name) || used + d.size > budget) continue;
    cached.add(name);
    used += d.size;
  }
}

function pinProblems(datasets: readonly Dataset[], pending: ReadonlySet<string>, pinned: ReadonlySet<string>, budgetBytes: number): string[] {
  const out: string[] = [];
  const names = new Set(datasets.map((d) => d.name));
  for (const name of pinned) {
    if (!names.has(name) && !pending.has(name)) out.push(`pinned dataset ${JSON.stringify(name)} does not exist`);
  }
  const { fit, overflow } = fitPins(datasets, pinned, budgetBytes);
  if (overflow.length > 0) {
    const need = [...fit, ...overflow].reduce((s, d) => s + d.size, 0);
    out.push(
      `pins exceed the cache: ${overflow.map((d) => `${d.name} (${formatBytes(d.size)})`).join(", ")} not cached; pinned datasets need ${formatBytes(need)}, the cache has ${formatBytes(budgetBytes)}`,
    );
  }
  return out;
}
