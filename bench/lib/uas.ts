/**
 * The SIPp far end of the flash and floor benchmarks:
 * sip-test/uas-load-ring-cancel.xml on one UDP socket, logging each INVITE's
 * receipt time, with SIPp's statistics in a CSV.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { SIP_TEST, type Managed, type Stack } from './stack.js';

export function startUas(stack: Stack, name: string, port: number, timeoutS: number): { m: Managed; logFile: string; statFile: string } {
  const logFile = join(stack.dir, `${name}-invites.log`);
  const statFile = join(stack.dir, `${name}-stat.csv`);
  // -t u1: one UDP socket for every call; a UAS takes every call that comes, so no -l.
  const m = stack.spawnManaged(name, 'sipp', [
    '-sf', join(SIP_TEST, 'uas-load-ring-cancel.xml'), '-t', 'u1', '-i', '127.0.0.1', '-p', String(port),
    '-mi', '127.0.0.1', '-ci', '127.0.0.1', '-buff_size', '4194304', '-nostdin',
    '-trace_logs', '-log_file', logFile, '-trace_stat', '-stf', statFile, '-fd', '1',
    '-trace_err', '-error_file', join(stack.dir, `${name}-errors.log`),
    '-timeout', `${timeoutS}s`,
  ]);
  return { m, logFile, statFile };
}

/** INVITE receipt times (epoch ms) by Call-ID, from the UAS's <log> lines. */
export function readInvites(file: string): Map<string, number> {
  const out = new Map<string, number>();
  if (!existsSync(file)) return out;
  for (const l of readFileSync(file, 'utf8').split('\n')) {
    const p = l.split(' ');
    if (p[0] !== 'INVITE' || p.length < 4) continue;
    if (!out.has(p[1]!)) out.set(p[1]!, Number(p[2]) * 1000 + Number(p[3]) / 1000);
  }
  return out;
}

/** INVITEs (distinct Call-IDs) per destination user part, from the UAS's <log> lines: more than one is a number dialled twice. */
export function readInvitesPerNumber(file: string): Map<string, number> {
  const calls = new Map<string, string>();
  if (existsSync(file)) {
    for (const l of readFileSync(file, 'utf8').split('\n')) {
      const p = l.split(' ');
      if (p[0] === 'INVITE' && p.length >= 5 && p[4]) calls.set(p[1]!, p[4]);
    }
  }
  const out = new Map<string, number>();
  for (const user of calls.values()) out.set(user, (out.get(user) ?? 0) + 1);
  return out;
}

export async function waitUasUp(stack: Stack, m: Managed, statFile: string): Promise<void> {
  const until = Date.now() + 10_000;
  while (Date.now() < until) {
    if (m.child.exitCode !== null) throw new Error(`SIPp exited at start:\n${stack.tail(m)}`);
    if (existsSync(statFile)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`SIPp did not start:\n${stack.tail(m)}`);
}

