import { distance } from "fastest-levenshtein";

/**
 * The candidate a mistyped word most likely meant: within a third of its
 * length in edits (at least one), the closest, ties by the candidates' order.
 */
export function closestMatch(word: string, candidates: readonly string[]): string | undefined {
  const limit = Math.max(1, Math.floor(word.length / 3));
  let best: { name: string; d: number } | undefined;
  for (const name of candidates) {
    const d = distance(word.toLowerCase(), name.toLowerCase());
    if (d <= limit && (best === undefined || d < best.d)) best = { name, d };
  }
  return best?.name;
}

/** "; did you mean X?" for a message, or "" when nothing is close. */
export function didYouMean(word: string, candidates: readonly string[]): string {
  const match = closestMatch(word, candidates);
  return match === undefined ? "" : `; did you mean ${match}?`;
}
