/**
 * The packaged Slurm prolog and epilog under a real Slurm: a one-node
 * cluster from Debian's packages (slurmctld, slurmd, munge) whose Prolog and
 * Epilog are packaging/slurm/*.sh, the real daemon on real images and loop
 * mounts, real jobs submitted with sbatch. Run by `npm run test:slurm` (part
 * of `npm test`), in a private mount namespace, as root, under
 * flock /tmp/sm-slurm.lock.
 */
import assert from "node:assert/strict";
import { readdirSync, readFileSync, writeFileSync, existsSync, mkdirSync, statSync } from "node:fs";
import path from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { CLI, Daemon, makeImage, stackAt, waitUntil, withRoot, type TestRoot } from "../integration/harness.js";
import { SlurmCluster } from "./cluster.js";
import { missingPrograms } from "./processes.js";

const TOP = fileURLToPath(new URL("../../../", import.meta.url));
const MB = 1024 * 1024;

/** Where Slurm and munge keep things by default: the test must leave them as it found them. */
const SYSTEM_PLACES = ["/etc/munge", "/etc/slurm", "/run/munge", "/run/slurm", "/var/lib/munge", "/var/lib/slurm", "/var/log/munge", "/var/log/slurm", "/var/spool/slurmd", "/var/spool/slurmctld"];
/** Shared directories where only names of Slurm's or munge's are looked at (others' programs use them too). */
const SHARED_PLACES = ["/dev/shm", "/run", "/tmp", "/var/tmp"];

function listing(): string[] {
  const out: string[] = [];
  const walk = (p: string, depth: number) => {
    if (!existsSync(p)) return;
    out.push(`${p} ${statSync(p).mtimeMs}`);
    if (depth > 0 && statSync(p).isDirectory()) for (const e of readdirSync(p)) walk(path.join(p, e), depth - 1);
  };
  for (const p of SYSTEM_PLACES) walk(p, 3);
  // smtest-*: the test roots of test/integration/harness.ts, this one's included, which withRoot checks and removes.
  for (const dir of SHARED_PLACES) for (const e of readdirSync(dir)) if (/slurm|munge/i.test(e) && !e.startsWith("smtest-")) out.push(path.join(dir, e));
  return out;
}

let before_: string[] = [];
before(() => {
  const missing = missingPrograms();
  // Not a skip: CI installs Slurm (.ci/setup), and a test that skips proves nothing.
  assert.deepEqual(missing, [], `Slurm is not installed (missing ${missing.join(", ")}): run .ci/setup, or apt-get install slurmd slurmctld munge`);
  before_ = listing();
});

after(() => {
  assert.deepEqual(listing(), before_, "Slurm's and munge's system directories are as the test found them");
});

interface Timing {
  job: number;
  script: string;
  start: number;
  end: number;
  rc: number;
}

function timings(file: string): Timing[] {
  if (!existsSync(file)) return [];
  return readFileSync(file, "utf8")
    .trim()
    .split("\n")
    .filter(Boolean)
    .map((l) => {
      const [job, script, start, end, rc] = l.split(" ");
      return { job: Number(job), script: script as string, start: Number(start), end: Number(end), rc: Number(rc) };
    });
}

interface PinRow {
  name: string;
  owner: string;
  until?: number;
}

function pinsOf(root: TestRoot): PinRow[] {
  const file = path.join(root.root, "state", "pins.json");
  return existsSync(file) ? (JSON.parse(readFileSync(file, "utf8")) as { pins: PinRow[] }).pins : [];
}

test("under a real Slurm, the prolog pins a job's datasets for its time limit before its script runs, the epilog removes that job's pins only, and no job is failed or held up", async () => {
  await withRoot("slurm", async (root, track) => {
    for (const name of ["a", "b", "c"]) makeImage(root, path.join(root.data, `${name}.sqfs`), { "data.bin": 2 * MB });
    const d = track(Daemon.start(root, { capacity: "64MB" }));
    await waitUntil("a, b, c mounted", () => ["a", "b", "c"].every((n) => stackAt(path.join(root.mnt, n)).length === 1));

    const dir = path.join(root.root, "slurm");
    mkdirSync(dir);
    const bin = path.join(dir, "bin");
    mkdirSync(bin);
    const conf = path.join(root.root, "scratch_manager.conf");
    // scratch_manager as the packaged launcher would run it, on this test's configuration (its state_dir).
    const sm = path.join(bin, "scratch_manager");
    writeFileSync(sm, `#!/bin/sh\nexec ${process.execPath} ${CLI} "$@" -c ${conf}\n`, { mode: 0o755 });
    // Prolog= and Epilog=: the packaged scripts, pointed at this test's scratch_manager, and timed.
    const timingFile = path.join(dir, "timings");
    for (const script of ["prolog", "epilog"]) {
      writeFileSync(
        path.join(dir, script),
        [
          "#!/bin/sh",
          "start=$(date +%s.%N)",
          `SCRATCH_MANAGER=${sm} /bin/sh ${path.join(TOP, `packaging/slurm/${script}.sh`)}`,
          "rc=$?",
          `echo "$SLURM_JOB_ID ${script} $start $(date +%s.%N) $rc" >>${timingFile}`,
          "exit $rc",
          "",
        ].join("\n"),
        { mode: 0o755 },
      );
    }
    // A job: notes when its script starts and the pins it finds then, then waits to be released.
    const jobScript = path.join(dir, "job.sh");
    writeFileSync(
      jobScript,
      [
        "#!/bin/sh",
        'echo "started $(date +%s.%N)"',
        `${sm} pin`,
        'echo "pins listed"',
        `i=0; while [ ! -e ${dir}/release-$SLURM_JOB_ID ] && [ $i -lt 600 ]; do sleep 0.2; i=$((i + 1)); done`,
        'echo "done"',
        "",
      ].join("\n"),
      { mode: 0o755 },
    );
    const release = (job: number) => writeFileSync(path.join(dir, `release-${job}`), "");
    const output = (job: number) => (existsSync(path.join(dir, `job-${job}.out`)) ? readFileSync(path.join(dir, `job-${job}.out`), "utf8") : "");
    const scriptStarted = (job: number) => Number(/^started (\S+)$/m.exec(output(job))?.[1] ?? NaN);
    /** The job's own pins, as its script listed them when it started. */
    const pinsSeen = (job: number): string[] => output(job).split("\n").filter((l) => l.split("\t")[1] === `slurm-${job}`);

    const started = Date.now();
    const cluster = await SlurmCluster.start(dir, { prolog: path.join(dir, "prolog"), epilog: path.join(dir, "epilog") });
    const bootMs = Date.now() - started;
    let left: { pid: number; cmd: string }[] = [];
    try {
      const submit = (comment: string | undefined, minutes: number) =>
        cluster.sbatch([...(comment === undefined ? [] : [`--comment=${comment}`]), `--time=${minutes}`, `--output=${dir}/job-%j.out`, jobScript]);
      const running = async (job: number) => waitUntil(`job ${job}'s script running`, () => /^pins listed$/m.test(output(job)), 60_000, 200);
      const ended = async (job: number) =>
        waitUntil(`job ${job} ended, epilog run`, () => {
          const state = cluster.job(job)?.job_state;
          return state !== undefined && !["PENDING", "CONFIGURING", "RUNNING", "COMPLETING"].includes(state) && timings(timingFile).some((t) => t.job === job && t.script === "epilog") && state;
        }, 60_000, 250);

      // 1. Job 1 names a and b, for 10 minutes: pinned before its script runs, then cached while it runs.
      const j1 = submit("datasets:a,b", 10);
      await running(j1);
      const prolog1 = timings(timingFile).find((t) => t.job === j1 && t.script === "prolog");
      assert.ok(prolog1, "the prolog ran");
      assert.equal(prolog1.rc, 0);
      assert.deepEqual(pinsSeen(j1).map((l) => l.split("\t").slice(0, 2).join(" ")).sort(), [`a slurm-${j1}`, `b slurm-${j1}`], "the job's script finds a and b pinned by the job");
      for (const p of pinsOf(root).filter((x) => x.owner === `slurm-${j1}`)) {
        const seconds = ((p.until ?? 0) - prolog1.start * 1000) / 1000;
        assert.ok(Math.abs(seconds - 600) < 10, `${p.name} pinned for the job's time limit (10 min), not ${seconds} s`);
      }
      await waitUntil("a and b cached while job 1 runs", () => stackAt(path.join(root.mnt, "a")).length === 2 && stackAt(path.join(root.mnt, "b")).length === 2, 30_000);
      const cachedAfterMs = Math.round(Date.now() - scriptStarted(j1) * 1000);
      assert.equal(cluster.job(j1)?.job_state, "RUNNING");
      assert.equal(stackAt(path.join(root.mnt, "c")).length, 1, "c, named by no job yet, is not cached");

      // 2. Job 2 names b and c while job 1 runs; job 1 ends: only its own pins go.
      const j2 = submit("datasets:b,c", 15);
      await running(j2);
      assert.deepEqual(pinsOf(root).map((p) => `${p.name} ${p.owner}`).sort(), [`a slurm-${j1}`, `b slurm-${j1}`, `b slurm-${j2}`, `c slurm-${j2}`]);
      release(j1);
      assert.equal(await ended(j1), "COMPLETED");
      assert.deepEqual(pinsOf(root).map((p) => `${p.name} ${p.owner}`).sort(), [`b slurm-${j2}`, `c slurm-${j2}`], "job 1's epilog removed its pins, not job 2's");
      await waitUntil("c cached for job 2", () => stackAt(path.join(root.mnt, "c")).length === 2, 30_000);
      release(j2);
      assert.equal(await ended(j2), "COMPLETED");
      assert.deepEqual(pinsOf(root), [], "job 2's epilog removed its pins");

      // 3. Jobs the prolog must let through as they are: no comment, an unknown dataset, a name that is
      //    not one, a comment with other text and spaces around datasets:.
      const others = {
        none: submit(undefined, 5),
        unknown: submit("datasets:nosuch", 5),
        invalid: submit("datasets:../etc", 5),
        text: submit("sweep 7 (lr=0.1, seed 3); datasets:c  and more words", 5),
      };
      for (const job of Object.values(others)) await running(job);
      assert.deepEqual(pinsSeen(others.none), []);
      assert.deepEqual(pinsSeen(others.unknown).map((l) => l.split("\t")[0]), ["nosuch"], "an unknown dataset is pinned (the daemon reports it) and the job runs");
      assert.deepEqual(pinsSeen(others.invalid), [], "a name that is not one is left out");
      assert.deepEqual(pinsSeen(others.text).map((l) => l.split("\t").slice(0, 2).join(" ")), [`c slurm-${others.text}`], "datasets: found among other text");
      await d.waitForLog("the unknown pin reported", (l) => l.msg === 'pinned dataset "nosuch" does not exist');
      for (const job of Object.values(others)) release(job);
      for (const [what, job] of Object.entries(others)) {
        assert.equal(await ended(job), "COMPLETED", `job ${job} (${what}) completed`);
        assert.equal(cluster.job(job)?.exit_code, 0, `job ${job} (${what}) exit code`);
        assert.match(output(job), /^done$/m);
      }
      assert.deepEqual(pinsOf(root), [], "every job's pins removed by its epilog");

      // Every prolog and epilog exited 0, and quickly.
      const all = timings(timingFile);
      assert.equal(all.length, 2 * (2 + Object.keys(others).length), "one prolog and one epilog per job");
      for (const t of all) {
        assert.equal(t.rc, 0, `job ${t.job}'s ${t.script} exit status`);
        assert.ok(t.end - t.start < 10, `job ${t.job}'s ${t.script} took ${(t.end - t.start).toFixed(3)} s`);
      }
      const ms = (t: Timing | undefined) => (t ? Math.round((t.end - t.start) * 1000) : NaN);
      const prologOf = (job: number) => all.find((t) => t.job === job && t.script === "prolog");
      assert.ok(ms(prologOf(others.none)) < 1000, "a job naming no dataset: the prolog ends in the shell");
      process.stdout.write(
        `# slurm: cluster up in ${bootMs} ms; prolog ${ms(prologOf(j1))} ms (datasets:a,b), ${ms(prologOf(others.none))} ms (no comment), ` +
          `${ms(prologOf(others.unknown))} ms (unknown), ${ms(prologOf(others.invalid))} ms (invalid name), ${ms(prologOf(others.text))} ms (text); ` +
          `script started ${Math.round((scriptStarted(j1) - (prologOf(j1)?.end ?? NaN)) * 1000)} ms after job 1's prolog ended; a and b cached ${cachedAfterMs} ms after its script started\n`,
      );
    } catch (err) {
      const outputs = readdirSync(dir).filter((f) => /^job-\d+\.out$/.test(f)).map((f) => `--- ${f} ---\n${readFileSync(path.join(dir, f), "utf8")}`);
      process.stderr.write(`${cluster.logs()}\n--- prolog and epilog timings ---\n${existsSync(timingFile) ? readFileSync(timingFile, "utf8") : ""}${outputs.join("\n")}\n`);
      throw err;
    } finally {
      left = await cluster.stop();
    }
    assert.deepEqual(left, [], "no process of the cluster was left once its daemons were stopped");
    assert.deepEqual(cluster.processes(), [], "no munged, slurmctld, slurmd, slurmstepd or job of the test remains");
  });
});
