/** A Slurm job's datasets and time limit, from Slurm's JSON; `pin --slurm-job`, the prolog's command. */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { describe, test } from "node:test";
import { CommandFailedError, type Runner } from "../../src/lib/exec.js";
import { pinSlurmJob, type SlurmDeps } from "../../src/commands/pin.js";
import { UsageError } from "../../src/errors.js";
import { datasetsInComment, parseJobJson, readSlurmJob } from "../../src/slurm/job.js";
import { clockAt } from "../../src/lib/clock.js";
import { readPins } from "../../src/state/pins.js";
import { FIXTURES, tempDir } from "./helpers.js";

const fixture = (name: string) => readFileSync(path.join(FIXTURES, "slurm", name), "utf8");
const SQUEUE_22_05 = fixture("squeue-json-22.05.json");
const SCONTROL_23_02 = fixture("scontrol-json-23.02-shape.json");

describe("datasetsInComment: the names after datasets:, wherever they stand", () => {
  const cases: [string, string[]][] = [
    ["datasets:coco,imagenet", ["coco", "imagenet"]],
    ["datasets:coco", ["coco"]],
    ["run 7 of sweep; datasets:a,b  more text", ["a", "b"]],
    ["sweep 7 (lr=0.1);datasets:coco TimeLimit=99", ["coco"]],
    ["datasets:a,,b,a", ["a", "b"]],
    ["datasets:a datasets:b", ["a", "b"]],
    ["", []],
    ["(null)", []],
    ["no datasets here", []],
    ["mydatasets:x", []],
    ["datasets:", []],
    ["datasets: coco", []],
    ["datasets:données,数据", ["données", "数据"]],
  ];
  for (const [comment, names] of cases) test(JSON.stringify(comment), () => assert.deepEqual(datasetsInComment(comment), names));
});

describe("parseJobJson: the job in Slurm's JSON", () => {
  test("Slurm 22.05's squeue --json (captured): every job is listed, the one asked for is picked; minutes -> seconds", () => {
    assert.deepEqual(parseJobJson(SQUEUE_22_05, 1), { jobId: 1, comment: "run 7 of sweep; datasets:a,b  more text", timeLimitSeconds: 1564 * 60 });
    assert.deepEqual(parseJobJson(SQUEUE_22_05, 2), { jobId: 2, comment: "x", timeLimitSeconds: 300 });
  });
  test("22.05: UNLIMITED is null, no limit; a comment with quotes stays whole", () => {
    assert.deepEqual(parseJobJson(SQUEUE_22_05, 3), { jobId: 3, comment: 'say "hi"; datasets:c', timeLimitSeconds: undefined });
  });
  test("23.02's shape: {set, infinite, number}", () => {
    assert.deepEqual(parseJobJson(SCONTROL_23_02, 4711), { jobId: 4711, comment: "sweep 7 (lr=0.1); datasets:coco,imagenet  TimeLimit=99", timeLimitSeconds: 5400 });
    assert.equal(parseJobJson(SCONTROL_23_02, 4712)?.timeLimitSeconds, undefined);
  });
  test("a job that is not there: undefined; text that is not Slurm's JSON: an error", () => {
    assert.equal(parseJobJson(SQUEUE_22_05, 99), undefined);
    assert.throws(() => parseJobJson("JobId=1 Comment=datasets:a", 1), /not JSON/);
    assert.throws(() => parseJobJson("{}", 1), /no "jobs" list/);
  });
  test("Slurm's infinite and no-value sentinels count as no limit", () => {
    assert.equal(parseJobJson(JSON.stringify({ jobs: [{ job_id: 1, time_limit: 0xfffffffe }] }), 1)?.timeLimitSeconds, undefined);
    assert.equal(parseJobJson(JSON.stringify({ jobs: [{ job_id: 1, time_limit: 0xffffffff }] }), 1)?.timeLimitSeconds, undefined);
  });
});

/** A runner that plays Slurm: scontrol --json fails as 22.05's does, squeue answers with the fixture. */
function slurm2205(calls: string[] = []): Runner {
  return (file, args) => {
    calls.push([file, ...args].join(" "));
    if (file === "squeue") return Promise.resolve({ stdout: SQUEUE_22_05, stderr: "", ms: 3 });
    return Promise.reject(new CommandFailedError([file, ...args], 1, null, "scontrol: unrecognized option '--json'", 2, false, false));
  };
}

describe("readSlurmJob: scontrol --json (23.02+), else squeue --json (22.05)", () => {
  test("on 22.05, scontrol's --json fails and squeue's answers", async () => {
    const calls: string[] = [];
    assert.equal((await readSlurmJob(2, slurm2205(calls))).timeLimitSeconds, 300);
    assert.deepEqual(calls, ["scontrol --json show job 2", "squeue --json --jobs 2"]);
  });
  test("on 23.02+, scontrol answers and squeue is not asked", async () => {
    const calls: string[] = [];
    const run: Runner = (file) => (calls.push(file), Promise.resolve({ stdout: SCONTROL_23_02, stderr: "", ms: 1 }));
    assert.equal((await readSlurmJob(4711, run)).comment.includes("datasets:coco"), true);
    assert.deepEqual(calls, ["scontrol"]);
  });
  test("neither answers: one error that says what each said", async () => {
    const run: Runner = (file) => Promise.reject(new Error(`${file}: Unable to contact slurm controller`));
    await assert.rejects(readSlurmJob(5, run), /cannot read Slurm job 5: scontrol: .*controller; squeue: .*controller/);
  });
});

describe("pin --slurm-job (the prolog)", () => {
  const NOW = Date.UTC(2026, 10, 26, 12, 0, 0);
  async function withState(body: (stateDir: string, deps: (over?: Partial<SlurmDeps>) => SlurmDeps, calls: string[]) => Promise<void>): Promise<void> {
    const { dir, cleanup } = await tempDir();
    const calls: string[] = [];
    try {
      await body(dir, (over = {}) => ({ run: slurm2205(calls), env: {}, clock: clockAt(() => NOW), ...over }), calls);
    } finally {
      await cleanup();
    }
  }

  test("pins what the comment names, for the time limit, as owner slurm-ID; the comment from the prolog's environment", async () => {
    await withState(async (stateDir, deps) => {
      await pinSlurmJob([], { slurmJob: "2", stateDir }, deps({ env: { SLURM_JOB_ID: "2", SLURM_JOB_COMMENT: "sweep; datasets:coco,imagenet" } }));
      const pins = await readPins(stateDir);
      assert.deepEqual(pins.map((p) => [p.name, p.owner, p.until]), [["coco", "slurm-2", NOW + 300_000], ["imagenet", "slurm-2", NOW + 300_000]]);
    });
  });

  test("a job that names no dataset, or has no comment at all (22.05 then sets no SLURM_JOB_COMMENT), costs no call to Slurm and pins nothing", async () => {
    await withState(async (stateDir, deps, calls) => {
      await pinSlurmJob([], { slurmJob: "2", stateDir }, deps({ env: { SLURM_JOB_ID: "2", SLURM_JOB_COMMENT: "just a comment" } }));
      await pinSlurmJob([], { slurmJob: "2", stateDir }, deps({ env: { SLURM_JOB_ID: "2", SLURM_SCRIPT_CONTEXT: "prolog_slurmd" } }));
      assert.deepEqual(calls, []);
      assert.deepEqual(await readPins(stateDir), []);
    });
  });

  test("without the comment in the environment (another job's, or an older Slurm), it is read from Slurm's JSON", async () => {
    await withState(async (stateDir, deps, calls) => {
      await pinSlurmJob([], { slurmJob: "1", stateDir }, deps({ env: { SLURM_JOB_ID: "7" } }));
      assert.deepEqual((await readPins(stateDir)).map((p) => [p.name, p.until]), [["a", NOW + 1564 * 60_000], ["b", NOW + 1564 * 60_000]]);
      assert.equal(calls.length, 2, "asked once: scontrol, then squeue");
    });
  });

  test("an UNLIMITED job's pins end a week on (the epilog removes them sooner)", async () => {
    await withState(async (stateDir, deps) => {
      await pinSlurmJob([], { slurmJob: "3", stateDir }, deps());
      assert.deepEqual((await readPins(stateDir)).map((p) => [p.name, p.until]), [["c", NOW + 7 * 24 * 3600_000]]);
    });
  });

  test("Slurm unreachable but the comment known: pinned for a week all the same", async () => {
    await withState(async (stateDir, deps) => {
      const run: Runner = () => Promise.reject(new Error("Unable to contact slurm controller"));
      await pinSlurmJob([], { slurmJob: "9", stateDir }, deps({ run, env: { SLURM_JOB_ID: "9", SLURM_JOB_COMMENT: "datasets:coco" } }));
      assert.deepEqual((await readPins(stateDir)).map((p) => [p.name, p.owner, p.until]), [["coco", "slurm-9", NOW + 7 * 24 * 3600_000]]);
    });
  });

  test("names that are not valid are left out and reported; the others are pinned; another job's pins are kept", async () => {
    await withState(async (stateDir, deps) => {
      await pinSlurmJob([], { slurmJob: "8", stateDir }, deps({ env: { SLURM_JOB_ID: "8", SLURM_JOB_COMMENT: "datasets:coco" } }));
      await assert.rejects(
        pinSlurmJob([], { slurmJob: "2", stateDir }, deps({ env: { SLURM_JOB_ID: "2", SLURM_JOB_COMMENT: "datasets:../etc,coco" } })),
        (err: unknown) => err instanceof UsageError && /job 2 names "\.\.\/etc"/.test(err.message),
      );
      assert.deepEqual((await readPins(stateDir)).map((p) => [p.name, p.owner]), [["coco", "slurm-8"], ["coco", "slurm-2"]]);
    });
  });

  test("a job ID that is not one, or names given with it, are usage errors", async () => {
    await withState(async (stateDir, deps) => {
      await assert.rejects(pinSlurmJob([], { slurmJob: "12; rm -rf /", stateDir }, deps()), UsageError);
      await assert.rejects(pinSlurmJob(["coco"], { slurmJob: "2", stateDir }, deps()), UsageError);
      await assert.rejects(pinSlurmJob([], { slurmJob: "2", for: "4h", stateDir }, deps()), UsageError);
    });
  });
});
