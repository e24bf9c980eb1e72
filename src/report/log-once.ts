/**
 * Log each condition once, and again only when it changes: a refused image,
 * a problem the diff cannot fix, a failing status file are logged when they
 * appear, not every tick; one that goes away is forgotten, so that it is
 * logged again if it comes back.
 */
export interface Notice {
  /** Names the thing within its scope (a file, a dataset's problem). */
  key: string;
  /** What is wrong with it: a new signature is logged again. */
  signature: string;
  log: () => void;
}

export class LogOnce {
  private readonly reported = new Map<string, string>();

  /** `items` are every live notice of `scope`; the others of that scope are forgotten. */
  report(scope: string, items: readonly Notice[]): void {
    const live = new Set<string>();
    for (const item of items) {
      const key = `${scope}:${item.key}`;
      live.add(key);
      if (this.reported.get(key) === item.signature) continue;
      this.reported.set(key, item.signature);
      item.log();
    }
    for (const key of this.reported.keys()) if (key.startsWith(`${scope}:`) && !live.has(key)) this.reported.delete(key);
  }
}
