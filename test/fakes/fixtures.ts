import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Wire-exchange fixtures (test/fixtures/drachtio/*.txt, test/fixtures/esl/*.txt):
 * the exchanges the fakes replay and are checked against.
 *
 * File format: comment lines (`#`) and blank lines before the first block;
 * then blocks, each opened by a line `@@ <name> [<role>]`. A block's text is
 * every line after its `@@` line up to the next `@@` line (or the end of the
 * file), joined with "\n": the line break just before the next `@@` (or the
 * file's final newline) is not part of it. So a block ending in one empty line
 * ends in "\n", one ending in two empty lines ends in "\n\n" (ESL's blank-line
 * terminator), and `#` inside a block is text, not a comment.
 */

export interface FixtureBlock {
  name: string;
  /** The word after the name: who sends it (`server`, `client`), or `template`. */
  role: string;
  text: string;
}

export const FIXTURES_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', 'fixtures');

const cache = new Map<string, FixtureBlock[]>();

/** The blocks of test/fixtures/<file>, in file order. */
export function fixtureBlocks(file: string): FixtureBlock[] {
  const cached = cache.get(file);
  if (cached) return cached;
  const content = readFileSync(join(FIXTURES_DIR, file), 'utf8');
  const lines = content.split('\n');
  if (lines.at(-1) === '') lines.pop();
  const blocks: FixtureBlock[] = [];
  let current: { name: string; role: string; lines: string[] } | undefined;
  const close = (): void => {
    if (current) blocks.push({ name: current.name, role: current.role, text: current.lines.join('\n') });
  };
  for (const line of lines) {
    if (line.startsWith('@@ ')) {
      close();
      const [name = '', role = ''] = line.slice(3).trim().split(/\s+/);
      current = { name, role, lines: [] };
    } else if (current) {
      current.lines.push(line);
    } else if (line !== '' && !line.startsWith('#')) {
      throw new Error(`${file}: text before the first @@ block: ${JSON.stringify(line)}`);
    }
  }
  close();
  cache.set(file, blocks);
  return blocks;
}

/** The text of the block called `name` in test/fixtures/<file>. */
export function fixtureText(file: string, name: string): string {
  const found = fixtureBlocks(file).find((b) => b.name === name);
  if (!found) throw new Error(`${file}: no block @@ ${name}`);
  return found.text;
}

/** A block of `Name: value` lines as an ordered record (event header templates); a literal backslash-n in a value is a line break. */
export function fixtureHeaders(file: string, name: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of fixtureText(file, name).split('\n')) {
    if (line === '') continue;
    const i = line.indexOf(': ');
    if (i <= 0) throw new Error(`${file} @@ ${name}: not a header line: ${JSON.stringify(line)}`);
    out[line.slice(0, i)] = line.slice(i + 2).replace(/\\n/g, '\n');
  }
  return out;
}

/** Fills `{name}` placeholders. */
export function fill(template: string, values: Record<string, string | number>): string {
  return template.replace(/\{(\w+)\}/g, (m, k: string) => (k in values ? String(values[k]) : m));
}

/**
 * A template as a whole-string RegExp: `{name}` matches any run of characters
 * without a `|` or line break (one token of drachtio's leader, one header value).
 */
export function templatePattern(template: string): RegExp {
  const parts = template.split(/(\{\w+\})/);
  const source = parts.map((p) => (/^\{\w+\}$/.test(p) ? '[^|\\r\\n]*' : p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'))).join('');
  return new RegExp(`^${source}$`);
}
