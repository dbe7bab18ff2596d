import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { openFilesLimit } from '../../../../src/media/rtp/fd-table.js';

/**
 * fd-table.ts grows the process's descriptor table before RTP streams play (each doubling of it waits for an RCU
 * grace period in a process with threads). Run in a fresh node process, whose table is still small, so that what
 * the call grows is its own doing; `prlimit` lowers the open-files limit for the capped case.
 */
const MODULE = fileURLToPath(new URL('../../../../src/media/rtp/fd-table.ts', import.meta.url));

interface Result {
  before: number;
  fds: number;
  after: number;
  r: { inUse: number; opened: number; tableSize: number; limit: number };
}

function reserveInChild(extra: number, nofile?: number): Result {
  const code = [
    `import { readdirSync } from 'node:fs';`,
    `const m = await import(${JSON.stringify(MODULE)});`,
    `const count = () => readdirSync('/proc/self/fd').length;`,
    `const before = m.fdTableSize(); const fds = count();`,
    `const r = m.reserveFdTable(${extra});`,
    `console.log(JSON.stringify({ before, fds, after: count(), r }));`,
  ].join('\n');
  const node = [process.execPath, '--import', 'tsx', '--input-type=module', '-e', code];
  const [cmd, ...args] = nofile === undefined ? node : ['prlimit', `--nofile=${nofile}:${nofile}`, ...node];
  return JSON.parse(execFileSync(cmd!, args, { encoding: 'utf8', timeout: 30_000 }).trim().split('\n').at(-1)!) as Result;
}

describe.runIf(process.platform === 'linux')('reserveFdTable', () => {
  it('grows the table to hold `extra` more descriptors than the process has, and leaves none of its placeholders open', () => {
    const { before, fds, after, r } = reserveInChild(3000);
    // A fresh process's table does not hold 3,000 more: the growth below is the call's.
    expect(before).toBeLessThan(fds + 3000);
    expect(r.limit).toBeGreaterThan(fds + 3000 + Math.max(64, r.limit / 10));
    expect(r.inUse).toBeGreaterThanOrEqual(fds);
    expect(r.opened).toBe(fds + 3000 - r.inUse);
    expect(r.tableSize).toBeGreaterThanOrEqual(fds + 3000);
    expect(after).toBe(fds);
  });

  it('stays a tenth of the open-files limit (at least 64) below it: the rest of the process never meets EMFILE', () => {
    const { fds, after, r } = reserveInChild(100_000, 400);
    expect(r.limit).toBe(400);
    expect(r.inUse + r.opened).toBe(400 - 64);
    expect(r.tableSize).toBeGreaterThanOrEqual(400 - 64);
    expect(after).toBe(fds);
  });
});

describe('openFilesLimit', () => {
  const limits = (soft: string, hard: string): string =>
    `Limit                     Soft Limit           Hard Limit           Units     \nMax cpu time              unlimited            unlimited            seconds   \nMax open files            ${soft.padEnd(21)}${hard.padEnd(21)}files     \n`;

  it('reads the soft limit of /proc/<pid>/limits', () => {
    expect(openFilesLimit(limits('1024', '524288'))).toBe(1024);
    expect(openFilesLimit(limits('unlimited', 'unlimited'))).toBe(Infinity);
  });

  it('throws on a text without the line', () => {
    expect(() => openFilesLimit('Limit Soft Hard\n')).toThrow(/Max open files/);
  });
});
