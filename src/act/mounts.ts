import type { Runner } from "./exec.js";

/** Mount and unmount through util-linux, so that loop devices are set up with autoclear. */

/**
 * ro,nosuid,nodev always: anyone who can write into datadir must not be able
 * to bring a setuid binary or a device node onto every node. `-o loop` lets
 * mount(8) attach the loop device with autoclear, so it is released when the
 * last reference to the mount goes away: no loop device leaks.
 */
export async function mountImage(run: Runner, fsType: string, source: string, target: string, timeoutMs: number): Promise<void> {
  await run("mount", ["-t", fsType, "-o", "ro,nosuid,nodev,loop", "--", source, target], { timeoutMs });
}

/**
 * Lazy, as the original: readers of open files keep reading the mount they
 * opened, new opens see what lies beneath. Only the top mount at the path is
 * detached, which is why the diff unmounts stacks from the top.
 */
export async function lazyUnmount(run: Runner, target: string, timeoutMs: number): Promise<void> {
  await run("umount", ["--lazy", "--", target], { timeoutMs });
}
