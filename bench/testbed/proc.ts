import { readFile } from "node:fs/promises";
import { run } from "./exec.js";

/**
 * CPU time of a process from /proc/<pid>/stat, in clock ticks: utime +
 * stime, plus cutime + cstime (its reaped children) when `children`.
 */
export async function cpuTicks(pid: number | "self", children: boolean): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, "utf8");
  // Fields after the command name, which may hold spaces: state is field 3, utime field 14.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (children ? [11, 12, 13, 14] : [11, 12]).reduce((sum, i) => sum + Number(fields[i]), 0);
}

/** Clock ticks per second (getconf CLK_TCK), to turn cpuTicks into seconds. */
export async function ticksPerSecond(): Promise<number> {
  return Number((await run("getconf", ["CLK_TCK"])).stdout.trim()) || 100;
}
