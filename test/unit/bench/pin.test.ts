import { spawn, spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { applyPins, parsePinSpec } from '../../../bench/lib/pin.js';

const affinity = (pid: number): string => /list:\s*(\S+)/.exec(spawnSync('taskset', ['-cp', String(pid)], { encoding: 'utf8' }).stdout)![1]!;

describe('bench --pin', () => {
  it('reads name=cpus pairs, CPU lists and ranges included', () => {
    expect([...parsePinSpec('api0=0  worker0=0 worker1=1 redis=0,1 bench=0-1', 2)]).toEqual([
      ['api0', '0'],
      ['worker0', '0'],
      ['worker1', '1'],
      ['redis', '0,1'],
      ['bench', '0-1'],
    ]);
    expect(parsePinSpec('', 2).size).toBe(0);
  });

  it('refuses a part that is not name=cpus, a CPU the machine lacks, a backward range and a name given twice', () => {
    expect(() => parsePinSpec('worker0', 2)).toThrow(/"worker0" is not name=cpus/);
    expect(() => parsePinSpec('worker0=a', 2)).toThrow(/not name=cpus/);
    expect(() => parsePinSpec('=1', 2)).toThrow(/not name=cpus/);
    expect(() => parsePinSpec('worker0=2', 2)).toThrow(/CPU 2 does not exist \(this machine has CPUs 0-1\)/);
    expect(() => parsePinSpec('worker0=1-0', 2)).toThrow(/runs backwards/);
    expect(() => parsePinSpec('api0=0 api0=1', 2)).toThrow(/api0 is given twice/);
  });

  it('pins a running process and gives it its old affinity back; an unknown name lists the ones there are', async () => {
    const child = spawn('sleep', ['30'], { stdio: 'ignore' });
    try {
      const pid = child.pid!;
      const was = affinity(pid);
      expect(() => applyPins(new Map([['worker9', '0']]), [{ key: 'worker0', pid }])).toThrow(/no process named worker9 in this run \(there are: worker0\)/);
      const { summary, restore } = applyPins(new Map([['worker0', '0']]), [{ key: 'worker0', pid }]);
      expect(summary).toBe('worker0→0');
      expect(affinity(pid)).toBe('0');
      restore();
      expect(affinity(pid)).toBe(was);
    } finally {
      child.kill('SIGKILL');
    }
  });
});
