/** A kernel file that does not read as expected: names the file, the line and what was expected. */
export class ParseError extends Error {
  override name = "ParseError";
  constructor(file: string, line: number, expected: string, text: string) {
    super(`${file}:${line}: expected ${expected}, got ${JSON.stringify(text.slice(0, 120))}`);
  }
}
