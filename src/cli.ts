#!/usr/bin/env node
import { readFileSync } from "node:fs";
import { Command, CommanderError, Option } from "commander";
import { pinCommand, unpinCommand } from "./commands/pin.js";
import { checkCommand } from "./commands/check.js";
import { evictCommand, releaseCommand } from "./commands/evict.js";
import { configCommand } from "./commands/config.js";
import { runCommand, type RunFlags } from "./commands/run.js";
import { FLAGGED_KEYS } from "./config.js";
import { statusCommand } from "./commands/status.js";
import { UsageError } from "./errors.js";
import { didYouMean } from "./lib/suggest.js";
import { isJournalStream } from "./log.js";

/** Set by packaging/bundle.mjs (esbuild --define): the bundle has no package.json beside it. */
declare const SCRATCH_MANAGER_VERSION: string | undefined;

function version(): string {
  if (typeof SCRATCH_MANAGER_VERSION === "string") return SCRATCH_MANAGER_VERSION;
  const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version: string };
  return pkg.version;
}

/**
 * The daemon's flags, as the original's (`--config/-c`, `--datadir`, ...,
 * `--verbose/-v`). They are the program's own, so that `scratch_manager
 * --help` lists them next to the commands, as the original's help did, and
 * `scratch_manager -c FILE -v` runs the daemon; `run` takes them too.
 */
function daemonOptions(command: Command): Command {
  command.option("-c, --config <file>", "configuration file (default: /etc/scratch_manager.conf, if it exists)");
  // The configuration keys that have a flag, from the one table of keys (config.ts).
  for (const k of FLAGGED_KEYS) {
    const option = new Option(k.flag, k.help);
    command.addOption(k.choices ? option.choices(k.choices) : option);
  }
  return command.option("-v, --verbose", "log debug lines too");
}

export function buildProgram(): Command {
  const program = new Command("scratch_manager")
    .description("Mount dataset images from shared storage and cache the most read ones on local SSD.\nWith no command, run the daemon with these options.")
    .usage("[options] | <command> [options]")
    .version(version())
    // A command's own options come after its name: `status -c FILE` is status's -c, not the daemon's.
    .enablePositionalOptions()
    // `scratch_manager help status`, which a root with an action of its own would not offer by itself.
    .helpCommand(true)
    .exitOverride()
    // Commander's own errors ("error: unknown option '--bogus' (Did you mean --verbose?)") with the program's prefix, as ours.
    .configureOutput({ outputError: (str, write) => write(`scratch_manager: ${str.replace(/^error: /, "")}`) });
  daemonOptions(program)
    // Commander would call a stray word "too many arguments"; it is a mistyped command.
    .allowExcessArguments()
    .action(async (flags: RunFlags, command: Command) => {
      const stray = command.args[0];
      if (stray !== undefined) {
        const hint = didYouMean(stray, command.commands.map((c) => c.name()));
        throw new UsageError(`unknown command ${JSON.stringify(stray)}${hint || "; see scratch_manager --help"}`);
      }
      await runCommand(flags);
    });

  addInspectCommands(program);
  addPinCommands(program);
  addCacheCommands(program);
  return program;
}

/** run, status, check, config: running the daemon and looking at it. */
function addInspectCommands(program: Command): void {
  daemonOptions(program.command("run").description("run the daemon (what the program does with no command)")).action(runCommand);

  program
    .command("status")
    .description("show every dataset, its state and throughput, and the cache's use (any user)")
    .argument("[names...]", "show only these datasets: names or globs (coco, 'imagenet-*')")
    .option("--state <states>", "show only datasets in these states: cached, copying, queued, slow, refused (comma-separated; repeatable)", (v: string, prev: string[]) => [...prev, v], [] as string[])
    .option("--json", "print the report as JSON, for scripts")
    .option("-c, --config <file>", "configuration file, for runtime_dir")
    .option("--runtime-dir <dir>", "where the daemon writes status.json (default: runtime_dir of the config)")
    .action(statusCommand);

  program
    .command("check")
    .description("check the configuration and this machine without starting: directories, capacity, programs, the fleet key (exit status 1 on an error)")
    .option("-c, --config <file>", "configuration file (default: /etc/scratch_manager.conf)")
    .option("-q, --quiet", "print only warnings and errors")
    .action(checkCommand);

  program
    .command("config")
    .description("print every configuration key with its value; --compat: the file the original Python scratch_manager accepts, for a rollback")
    .option("-c, --config <file>", "configuration file (default: /etc/scratch_manager.conf)")
    .option("--compat", "only what the original accepts, in its forms; the rest as comments")
    .action(configCommand);

}

/** pin and unpin: what the cache keeps whatever its use. */
function addPinCommands(program: Command): void {
  program
    .command("pin")
    .description("keep datasets in the cache whatever their use; with no NAME, list the pins")
    .argument("[names...]", "dataset names (as under mountdir)")
    .option("--for <duration>", "the pin ends by itself after this long: a number and a unit s, m, h or d (e.g. 30m, 4h, 7d)")
    .option("--force", "pin names the running daemon does not know (an image about to be added to datadir)")
    .option("--owner <id>", "who pins (e.g. a job ID): unpin removes only that owner's pin (default: admin)")
    .option("-c, --config <file>", "configuration file, for state_dir")
    .option("--state-dir <dir>", "where pins are kept (default: state_dir of the config)")
    .option("--slurm-job <id>", "pin the datasets Slurm job <id> names in its comment (datasets:a,b) for its time limit, as owner slurm-<id> (the Slurm prolog)")
    .action(pinCommand);

  program
    .command("unpin")
    .description("remove pins: of NAMEs by an owner, or every pin of --owner")
    .argument("[names...]", "dataset names (default with --owner: all of that owner's)")
    .option("--owner <id>", "remove this owner's pins (default: admin)")
    .option("--all", "remove every owner's pin of these datasets")
    .option("-c, --config <file>", "configuration file, for state_dir")
    .option("--state-dir <dir>", "where pins are kept (default: state_dir of the config)")
    .action(unpinCommand);
}

/** evict and release: asked of the running daemon. */
function addCacheCommands(program: Command): void {
  program
    .command("evict")
    .description("drop the cached copies of these datasets now (root); they come back only once read again")
    .argument("<names...>", "dataset names (as under mountdir)")
    .option("--force", "evict pinned datasets too, removing their pins")
    .option("-c, --config <file>", "configuration file, for runtime_dir and state_dir")
    .option("--runtime-dir <dir>", "where the daemon runs (default: runtime_dir of the config)")
    .action(evictCommand);

  program
    .command("release")
    .description("drop the whole cache and stop the daemon (root); with --all, unmount every dataset too: for a rollback or an uninstall")
    .option("--all", "unmount every mount of ours too, not only the cache's")
    .option("-c, --config <file>", "configuration file, for runtime_dir and mountdir")
    .option("--runtime-dir <dir>", "where the daemon runs (default: runtime_dir of the config)")
    .action(releaseCommand);
}

export async function main(argv: string[]): Promise<number> {
  try {
    await buildProgram().parseAsync(argv);
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version end here too, with exit code 0.
      return err.exitCode === 0 ? 0 : 2;
    }
    // Under systemd, an error that stops the daemon is found by `journalctl -p err` too.
    const prefix = isJournalStream(process.env, 2) ? "<3>" : "";
    if (err instanceof UsageError) {
      process.stderr.write(`${prefix}scratch_manager: ${err.message}\n`);
      return err.exitCode;
    }
    // One entry: journald would give each line of a stack its own, at the default priority.
    const text = err instanceof Error ? (err.stack ?? err.message) : String(err);
    process.stderr.write(`${prefix}scratch_manager: ${prefix ? text.replace(/\n\s*/g, " | ") : text}\n`);
    return 1;
  }
}

process.exitCode = await main(process.argv);
