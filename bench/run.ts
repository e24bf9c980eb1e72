/**
 * `npm run bench` runs the default benchmarks of this folder (planner, sim);
 * `node build/bench/run.js NAME...` runs the ones named, among them the
 * longer `seeds` and `ablation`. Results go to stdout as the tables quoted in
 * BENCHMARKS.md, after the machine they were measured on.
 */
import { describeMachine, formatMachine } from "./machine.js";
import { runPlanner } from "./planner.js";
import { COPY_CANDIDATES, runAblation, runSeeds, runSim, runStress, runTune, SHARES } from "./sim/suites.js";

const log = (line: string): void => console.log(line);

const suites: Record<string, () => void | Promise<void>> = {
  planner: () => runPlanner(log),
  sim: () => runSim(log),
  seeds: () => runSeeds(log),
  ablation: () => runAblation(log),
  tune: () => runTune(log),
  "tune-10": () => runTune(log, [0.1]),
  stress: () => runStress(log),
  "tune-copy": () => runTune(log, SHARES, COPY_CANDIDATES),
};
const DEFAULT = ["planner", "sim"];

async function main(argv: readonly string[]): Promise<number> {
  const wanted = argv.length > 0 ? argv : DEFAULT;
  const unknown = wanted.filter((w) => !(w in suites));
  if (unknown.length > 0) {
    console.error(`bench: unknown benchmark ${unknown.join(", ")}; expected one of: ${Object.keys(suites).join(", ")}`);
    return 2;
  }
  log(formatMachine(describeMachine()));
  log(`command: node build/bench/run.js ${wanted.join(" ")}`);
  for (const name of wanted) {
    const started = performance.now();
    log("");
    await (suites[name] as () => void | Promise<void>)();
    log(`(${name}: ${((performance.now() - started) / 1000).toFixed(1)} s wall)`);
  }
  return 0;
}

process.exitCode = await main(process.argv.slice(2));
