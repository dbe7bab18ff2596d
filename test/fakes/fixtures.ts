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

/**
 * Matches `text` against a template, binding `{name}` placeholders: a name
 * already in `bindings` must carry the same value again (names starting with
 * `_` match anything and bind nothing). Returns false on a mismatch.
 */
export function matchBinding(template: string, text: string, bindings: Map<string, string>): boolean {
  const names: string[] = [];
  const source = template
    .split(/(\{\w+\})/)
    .map((p) => {
      const m = /^\{(\w+)\}$/.exec(p);
      if (!m) return p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
      names.push(m[1]!);
      return '([^|\\r\\n]*)';
    })
    .join('');
  const found = new RegExp(`^${source}$`).exec(text);
  if (!found) return false;
  const fresh = new Map<string, string>();
  for (const [i, name] of names.entries()) {
    if (name.startsWith('_')) continue;
    const value = found[i + 1]!;
    const known = bindings.get(name) ?? fresh.get(name);
    if (known !== undefined && known !== value) return false;
    fresh.set(name, value);
  }
  for (const [k, v] of fresh) bindings.set(k, v);
  return true;
}

export interface TranscriptFrame {
  direction: '>' | '<';
  leader: string;
  /** Start line of the SIP message after the leader, when the transcript gives one. */
  sipStartLine?: string;
}

/** The frames of a transcript block (`> leader` / `< leader` lines, each optionally followed by a `  <SIP start line>` line). */
export function transcriptFrames(file: string, name: string): TranscriptFrame[] {
  const frames: TranscriptFrame[] = [];
  for (const line of fixtureText(file, name).split('\n')) {
    if (line.startsWith('> ') || line.startsWith('< ')) frames.push({ direction: line[0] as '>' | '<', leader: line.slice(2) });
    else if (line.startsWith('  ') && frames.length > 0) frames[frames.length - 1]!.sipStartLine = line.slice(2);
    else if (line !== '') throw new Error(`${file} @@ ${name}: bad transcript line ${JSON.stringify(line)}`);
  }
  return frames;
}

/**
 * Compares frames seen on the wire (whole payloads, in order) with a
 * transcript; returns a description of the first difference, or undefined.
 */
export function diffTranscript(expected: TranscriptFrame[], seen: { direction: '>' | '<'; payload: string }[]): string | undefined {
  const bindings = new Map<string, string>();
  for (let i = 0; i < Math.max(expected.length, seen.length); i++) {
    const want = expected[i];
    const got = seen[i];
    if (!want || !got) return `frame ${i}: expected ${want ? `${want.direction} ${want.leader}` : 'no more frames'}, saw ${got ? `${got.direction} ${got.payload.split('\r\n', 1)[0]}` : 'nothing'}`;
    const eol = got.payload.indexOf('\r\n');
    const leader = eol === -1 ? got.payload : got.payload.slice(0, eol);
    const startLine = eol === -1 ? undefined : got.payload.slice(eol + 2).split('\r\n', 1)[0];
    if (want.direction !== got.direction || !matchBinding(want.leader, leader, bindings)) {
      return `frame ${i}: expected ${want.direction} ${want.leader}, saw ${got.direction} ${leader} (bound: ${JSON.stringify(Object.fromEntries(bindings))})`;
    }
    if (want.sipStartLine !== undefined && (startLine === undefined || !matchBinding(want.sipStartLine, startLine, bindings))) {
      return `frame ${i}: expected SIP "${want.sipStartLine}", saw "${startLine ?? ''}"`;
    }
  }
  return undefined;
}
