/**
 * Summarises V8 .cpuprofile files (from `node --cpu-prof`, e.g. the bench's
 * `--profile api,worker`): top functions by self time, and self time by
 * package / source file, so BENCHMARKS.md can say where the time goes.
 *
 *   npm run bench -- profile FILE.cpuprofile [--top 30]
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: Node[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

export function summarizeProfile(p: Profile, top: number): string[] {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  for (let i = 0; i < p.samples.length; i++) self.set(p.samples[i]!, (self.get(p.samples[i]!) ?? 0) + (p.timeDeltas[i] ?? 0));
  const total = [...self.values()].reduce((a, b) => a + b, 0);
  const fn = new Map<string, number>();
  const mod = new Map<string, number>();
  for (const [id, us] of self) {
    const cf = byId.get(id)!.callFrame;
    const where = shortUrl(cf.url);
    const name = `${cf.functionName || '(anonymous)'}  ${where}${cf.url ? `:${cf.lineNumber + 1}` : ''}`;
    fn.set(name, (fn.get(name) ?? 0) + us);
    mod.set(moduleOf(cf), (mod.get(moduleOf(cf)) ?? 0) + us);
  }
  const pct = (us: number): string => `${((us / total) * 100).toFixed(1).padStart(5)} %`;
  const out = [`profile: ${(total / 1e6).toFixed(1)} s sampled over ${((p.endTime - p.startTime) / 1e6).toFixed(1)} s wall`];
  out.push('top functions by self time:');
  for (const [k, v] of [...fn].sort((a, b) => b[1] - a[1]).slice(0, top)) out.push(`  ${pct(v)}  ${k}`);
  out.push('self time by package / file:');
  for (const [k, v] of [...mod].sort((a, b) => b[1] - a[1]).slice(0, top)) out.push(`  ${pct(v)}  ${k}`);
  return out;
}

function shortUrl(url: string): string {
  const nm = url.lastIndexOf('node_modules/');
  if (nm >= 0) return url.slice(nm + 'node_modules/'.length);
  const d = url.lastIndexOf('/dist/');
  if (d >= 0) return url.slice(d + 1);
  return url.replace(/^file:\/\//, '');
}

function moduleOf(cf: Node['callFrame']): string {
  const name = cf.functionName;
  if (!cf.url) return name === '(garbage collector)' || name === '(program)' || name === '(idle)' ? name : `(native) ${name}`;
  if (cf.url.startsWith('node:')) return cf.url;
  const nm = cf.url.lastIndexOf('node_modules/');
  if (nm >= 0) {
    const rest = cf.url.slice(nm + 'node_modules/'.length).split('/');
    return `pkg ${rest[0]!.startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]}`;
  }
  return shortUrl(cf.url);
}

const isMain = import.meta.url === `file://${process.argv[1]}`;
if (isMain) {
  const { values, positionals } = parseArgs({ allowPositionals: true, options: { top: { type: 'string', default: '30' }, help: { type: 'boolean', short: 'h' } } });
  if (positionals.length === 0 || values.help) {
    process.stderr.write('usage: npm run bench -- profile FILE.cpuprofile... [--top 30]\n');
    process.exit(2);
  }
  for (const f of positionals) {
    process.stdout.write(`== ${f}\n${summarizeProfile(JSON.parse(readFileSync(f, 'utf8')) as Profile, Number(values.top)).join('\n')}\n`);
  }
}
