/**
 * What `scratch_manager evict` asks of the daemon, decided from the last
 * report: pure, so that the rules (a pinned dataset needs --force, a pin of
 * the configuration file cannot be removed from here) are tested alone.
 */
import { didYouMean } from "../lib/suggest.js";
import type { DatasetStatus } from "../report/status.js";

export interface EvictPlan {
  ok: boolean;
  /** One line per name, for the command to print. */
  lines: string[];
  /** Datasets to drop from the cache (Memory.evicting). */
  evict: string[];
  /** Datasets whose read history is forgotten (so that they come back only once read again). */
  forget: string[];
  /** Datasets whose pins (every owner's) are removed (--force). */
  unpin: string[];
}

export function planEviction(names: readonly string[], force: boolean, datasets: readonly DatasetStatus[], configPins: readonly string[]): EvictPlan {
  const byName = new Map(datasets.map((d) => [d.name, d]));
  const out: EvictPlan = { ok: true, lines: [], evict: [], forget: [], unpin: [] };
  const refuse = (line: string) => {
    out.ok = false;
    out.lines.push(line);
  };
  for (const name of names) {
    const d = byName.get(name);
    if (!d) refuse(`no dataset ${JSON.stringify(name)}${didYouMean(name, [...byName.keys()])}`);
    else if (d.pinned && configPins.includes(name)) refuse(`${name}: pinned by the configuration file (pin = ...); remove it there and reload first`);
    else if (d.pinned && !force) refuse(`${name}: pinned; --force removes its pins and evicts it`);
    else {
      if (d.pinned) out.unpin.push(name);
      out.forget.push(name);
      if (d.state === "slow") {
        out.lines.push(`${name}: not cached${d.pinned ? "; its pins are removed" : ""}`);
        continue;
      }
      out.evict.push(name);
      out.lines.push(`${name}: evicting (${d.state}); files open on the cached copy read on until closed`);
    }
  }
  return out;
}
