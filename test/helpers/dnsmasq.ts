/**
 * A real DNS server on loopback for RFC 3263 tests: dnsmasq (Debian `dnsmasq-base`) in the foreground on a free
 * 127.0.0.1 port, answering only from the records given (no upstream, no /etc/hosts), stopped by its PID.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { Resolver } from 'node:dns/promises';
import { findFreePort } from './sipp.js';

export interface Dnsmasq {
  readonly port: number;
  /** `127.0.0.1:port`, for sip.dns.servers. */
  readonly server: string;
  /** dnsmasq's own log (one line per query with --log-queries). */
  log(): string;
  stop(): void;
}

/**
 * `srv`: `_sip._udp.trunk.test,target,port,priority,weight` (dnsmasq --srv-host); `hosts`: `name,address`
 * (--host-record); `naptr`: `name,order,preference,flags,service,regexp,replacement` (--naptr-record). Names under
 * `domain` that are not given answer NXDOMAIN.
 */
export async function startDnsmasq(options: { srv?: string[]; hosts?: string[]; naptr?: string[]; domain?: string }): Promise<Dnsmasq> {
  const port = await findFreePort();
  const args = [
    '--keep-in-foreground', '--no-resolv', '--no-hosts', '--bind-interfaces', '--listen-address=127.0.0.1', `--port=${port}`,
    '--pid-file=', '--log-queries', '--log-facility=-', `--local=/${options.domain ?? 'test'}/`,
    ...(options.srv ?? []).map((s) => `--srv-host=${s}`),
    ...(options.hosts ?? []).map((h) => `--host-record=${h}`),
    ...(options.naptr ?? []).map((n) => `--naptr-record=${n}`),
  ];
  const child: ChildProcess = spawn('/usr/sbin/dnsmasq', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  const stop = (): void => {
    if (child.exitCode === null && child.pid !== undefined) process.kill(child.pid, 'SIGTERM');
  };
  // Ready once it answers a query (NXDOMAIN is an answer).
  const probe = new Resolver({ timeout: 200, tries: 1 });
  probe.setServers([`127.0.0.1:${port}`]);
  const deadline = Date.now() + 5000;
  for (;;) {
    const answered = await probe.resolve4(`probe.${options.domain ?? 'test'}`).then(
      () => true,
      (err: NodeJS.ErrnoException) => err.code === 'ENOTFOUND' || err.code === 'ENODATA',
    );
    if (answered) break;
    if (child.exitCode !== null || Date.now() > deadline) {
      stop();
      throw new Error(`dnsmasq did not start: ${out}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { port, server: `127.0.0.1:${port}`, log: () => out, stop };
}
