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
   * Datasets staged for jobs about to start here (slurm/queue.ts), earliest
   * first: cached in the room the pins and the policy leave; they evict
   * nothing, and give their room back when the policy wants it.
   */
  staged?: readonly string[];
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
  const cached = plan({ ...rates, datasets, budgetBytes: space.budget, pinned, idle: input.idle, copying: input.copying });
  const staged = addStaged(cached, datasets, input.staged ?? [], space.budget);
  const admitted = admitCopies({
    candidates: datasets
      .filter((d) => cached.has(d.name) && d.cache !== "valid" && !input.copying.has(d.name))
      // Pins first, then what jobs about to start need (earliest first), then the policy's order.
      .map((d) => ({ d, pinned: pinned.has(d.name) ? 2 : staged.has(d.name) ? 1 : 0, priority: staged.has(d.name) ? -(input.staged?.indexOf(d.name) ?? 0) : copyPriority(rates, d) }))
      .sort((a, b) => b.pinned - a.pinned || b.priority - a.priority)
      .map(({ d }) => d),
    occupiedBytes: space.ghosts + space.occupied,
    capacityBytes: Math.min(space.capacity, space.budget + space.ghosts),
    writableBytes: space.writable,
  });
  return { cached, admitted, pinProblems: pinProblems(datasets, input.pending ?? new Set(), pinned, space.budget) };
}

/** The staged datasets that fit beside what is chosen, in their order, added to `cached`; those added. */
function addStaged(cached: Set<string>, datasets: readonly Dataset[], staged: readonly string[], budget: number): Set<string> {
  const byName = new Map(datasets.map((d) => [d.name, d]));
  let used = [...cached].reduce((sum, name) => sum + (byName.get(name)?.size ?? 0), 0);
  const added = new Set<string>();
  for (const name of staged) {
    const d = byName.get(name);
    if (!d || cached.has(name) || used + d.size > budget) continue;
    cached.add(name);
    added.add(name);
    used += d.size;
  }
  return added;
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
