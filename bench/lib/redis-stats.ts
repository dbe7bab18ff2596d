/** Redis commands per unit of work, from INFO commandstats (whole server: other clients count too). */
import type { Redis } from 'ioredis';

export type CommandStats = Map<string, [calls: number, usec: number]>;

/** INFO commandstats: command → [calls, usec]. Commands run by scripts are counted too (Redis 7). */
export async function commandStats(redis: Redis): Promise<CommandStats> {
  const out: CommandStats = new Map();
  for (const m of (await redis.info('commandstats')).matchAll(/^cmdstat_([^:]+):calls=(\d+),usec=(\d+)/gm)) out.set(m[1]!, [Number(m[2]), Number(m[3])]);
  return out;
}

/** Two report lines: commands and µs per unit between `before` and `after`, then each command's share. */
export function formatPerUnit(before: CommandStats, after: CommandStats, units: number, what: string, note = ''): string[] {
  const per = [...after].map(([cmd, [calls, usec]]) => [cmd, (calls - (before.get(cmd)?.[0] ?? 0)) / units, (usec - (before.get(cmd)?.[1] ?? 0)) / units] as const);
  const used = per.filter(([, calls]) => calls > 0.001).sort((x, y) => y[1] - x[1]);
  return [
    `Redis per ${what}${note}: ${used.reduce((n, [, c]) => n + c, 0).toFixed(1)} commands (scripts' own commands included), ${used.reduce((n, [, , u]) => n + u, 0).toFixed(0)} µs (a script's time also counts its commands' time)`,
    `  ${used.map(([cmd, c, u]) => `${cmd} ${c.toFixed(2)} (${u.toFixed(0)} µs)`).join(', ')}`,
  ];
}
