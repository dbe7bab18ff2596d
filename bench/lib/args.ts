/** `--name value` / `--flag` parsing for the benchmarks, with typed getters and bounds. */
import { parseArgs } from 'node:util';

export function parseBenchArgs(argv: string[], spec: Record<string, { type: 'string' | 'boolean'; default?: string | boolean }>) {
  const { values } = parseArgs({ args: argv, options: { ...spec, help: { type: 'boolean', short: 'h' } }, strict: true, allowPositionals: false });
  const v = values as Record<string, string | boolean | undefined>;
  return {
    help: v.help === true,
    num(name: string, min: number, max: number): number {
      const n = Number(v[name]);
      if (!Number.isFinite(n) || n < min || n > max) throw new Error(`--${name} must be a number from ${min} to ${max} (got ${String(v[name])})`);
      return n;
    },
    str(name: string): string {
      return String(v[name] ?? '');
    },
    bool(name: string): boolean {
      return v[name] === true;
    },
    list(name: string): string[] {
      const s = v[name];
      return typeof s === 'string' && s !== '' ? s.split(',').map((x) => x.trim()).filter(Boolean) : [];
    },
  };
}

/** Options of every benchmark that starts engine processes through bench/lib/stack.ts. */
export const STACK_OPTIONS = {
  'keep-logs': { type: 'boolean' },
  'use-dist': { type: 'boolean' },
  app: { type: 'string' },
  'redis-url': { type: 'string', default: 'redis://127.0.0.1:6379' },
} as const;

/** Usage lines of STACK_OPTIONS. */
export const STACK_USAGE = `  --keep-logs        keep the temp directory
  --use-dist         run ./dist as built (default: a tsc snapshot of src/)
  --app DIR          run a snapshot kept by an earlier run (its temp directory's app/)
  --redis-url URL    default redis://127.0.0.1:6379`;
