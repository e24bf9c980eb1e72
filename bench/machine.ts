import { readFileSync } from "node:fs";
import os from "node:os";

export interface Machine {
  nproc: number;
  cpu: string;
  kernel: string;
  node: string;
  /** 1, 5 and 15 minute load averages when the run started: other work on the machine skews timings, not simulated results. */
  load: number[];
}

/** What BENCHMARKS.md must state next to every figure: the figures mean little without it. */
export function describeMachine(): Machine {
  let cpu = os.cpus()[0]?.model ?? "unknown";
  try {
    // /proc/cpuinfo is what the write-up quotes; os.cpus() can differ in spacing on some kernels.
    const line = readFileSync("/proc/cpuinfo", "utf8")
      .split("\n")
      .find((l) => l.startsWith("model name"));
    if (line) cpu = line.slice(line.indexOf(":") + 1).trim();
  } catch {
    // Not Linux: keep os.cpus()'s answer.
  }
  return { nproc: os.availableParallelism(), cpu, kernel: os.release(), node: process.version, load: os.loadavg() };
}

export function formatMachine(m: Machine): string {
  return `machine: nproc=${m.nproc}, cpu="${m.cpu}", kernel ${m.kernel}, node ${m.node}, load average ${m.load.map((x) => x.toFixed(2)).join(" ")}`;
}
