/**
 * Running programs for the testbed: execFile with an argument array and a
 * timeout (never a shell of our own making), and an error that explains
 * itself (argv, status, the tail of stderr), like src/act/exec.ts.
 */
import { execFile, spawn } from "node:child_process";
import { openSync, closeSync } from "node:fs";

export class BenchCommandError extends Error {
  constructor(
    readonly argv: readonly string[],
    readonly status: number | null,
    readonly signal: string | null,
    readonly stderr: string,
  ) {
    super(`${argv.join(" ")}: ${signal ? `killed by ${signal}` : `exit status ${String(status)}`}${stderr ? `: ${stderr.split("\n").filter((l) => l.trim() && !l.startsWith("    at ")).slice(-8).join(" | ")}` : ""}`);
  }
}

export interface Output {
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs a short program to completion and returns its output; fails on a non-zero status. */
export function run(file: string, args: readonly string[], timeoutMs = 120_000): Promise<Output> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024, encoding: "utf8" }, (err, stdout, stderr) => {
      if (err) {
        const code = typeof err.code === "number" ? err.code : null;
        reject(new BenchCommandError([file, ...args], code, err.signal ?? null, stderr));
        return;
      }
      resolve({ stdout, stderr, ms: performance.now() - started });
    });
  });
}

/**
 * Runs a program whose output is not wanted (`cat image`): stdout goes to
 * /dev/null itself, as with `cat image > /dev/null`, so that no pipe and no
 * JavaScript buffer sits between the reader and the sink. Resolves with the
 * wall time from spawn to exit.
 */
export function runToNull(file: string, args: readonly string[], timeoutMs = 600_000): Promise<number> {
  const started = performance.now();
  const sink = openSync("/dev/null", "w");
  return new Promise<number>((resolve, reject) => {
    const child = spawn(file, args, { stdio: ["ignore", sink, "pipe"], timeout: timeoutMs });
    let stderr = "";
    child.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
      stderr = (stderr + chunk).slice(-4096);
    });
    child.on("error", reject);
    child.on("close", (status, signal) => {
      if (status === 0) resolve(performance.now() - started);
      else reject(new BenchCommandError([file, ...args], status, signal, stderr));
    });
  }).finally(() => closeSync(sink));
}

/**
 * Runs `node script args...` (a copier or reader that joins the blkio group
 * itself) and parses the last line it prints as JSON.
 */
export function runJsonChild<T>(script: string, args: readonly string[]): Promise<T> {
  const argv = [script, ...args];
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, argv, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.setEncoding("utf8").on("data", (s: string) => (out += s));
    child.stderr.setEncoding("utf8").on("data", (s: string) => (err += s));
    child.on("error", reject);
    child.on("close", (status, signal) => {
      if (status !== 0) reject(new BenchCommandError([process.execPath, ...argv], status, signal, err));
      else resolve(JSON.parse(out.trim().split("\n").pop() ?? "{}") as T);
    });
  });
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** A deadline to race against: its timer does not keep the process alive once everything else is done. */
export const deadline = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms).unref());
