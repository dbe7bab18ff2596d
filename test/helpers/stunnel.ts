/**
 * TLS in front of a SIPp far end that speaks TCP only: stunnel (Debian `stunnel4`) in server mode on a loopback
 * port, with throwaway certificates made by openssl in a temporary directory.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A directory of certificates: `ca(name)` makes a CA, `leaf(name, ca, san)` a certificate it signs. */
export class TestPki {
  readonly dir = mkdtempSync(join(tmpdir(), 'fv-tls-'));

  private openssl(...args: string[]): void {
    execFileSync('openssl', args, { cwd: this.dir, stdio: 'pipe' });
  }

  /** `<name>.pem` / `<name>.key`: a self-signed CA. Returns the certificate's path. */
  ca(name: string): string {
    this.openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', `/CN=${name}`,
      '-keyout', `${name}.key`, '-out', `${name}.pem`, '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign');
    return join(this.dir, `${name}.pem`);
  }

  /** `<name>.pem` / `<name>.key` signed by CA `ca`, with subjectAltName `san` (e.g. "DNS:localhost,IP:127.0.0.1"). */
  leaf(name: string, ca: string, san: string): { cert: string; key: string } {
    writeFileSync(join(this.dir, `${name}.ext`), `subjectAltName=${san}\nextendedKeyUsage=serverAuth,clientAuth\n`);
    this.openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', `/CN=${name}`, '-keyout', `${name}.key`, '-out', `${name}.csr`);
    this.openssl('x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.pem`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-days', '2',
      '-extfile', `${name}.ext`, '-out', `${name}.pem`);
    return { cert: join(this.dir, `${name}.pem`), key: join(this.dir, `${name}.key`) };
  }

  remove(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export interface Stunnel {
  readonly child: ChildProcess;
  /** stunnel's log (debug level 5: one "accepted connection" line per TLS connection). */
  log(): string;
  stop(): void;
}

/** stunnel accepting TLS on 127.0.0.1:`acceptPort`, forwarding to 127.0.0.1:`connectPort` over TCP. */
export async function startStunnel(options: {
  dir: string;
  acceptPort: number;
  connectPort: number;
  cert: { cert: string; key: string };
  /** Ask for a client certificate chaining to this CA (mutual TLS). */
  clientCa?: string;
}): Promise<Stunnel> {
  const logFile = join(options.dir, `stunnel-${options.acceptPort}.log`);
  const conf = join(options.dir, `stunnel-${options.acceptPort}.conf`);
  writeFileSync(
    conf,
    [
      'foreground = yes',
      'pid =',
      `output = ${logFile}`,
      'debug = 5',
      '[sip]',
      `accept = 127.0.0.1:${options.acceptPort}`,
      `connect = 127.0.0.1:${options.connectPort}`,
      `cert = ${options.cert.cert}`,
      `key = ${options.cert.key}`,
      ...(options.clientCa ? ['verifyChain = yes', `CAfile = ${options.clientCa}`] : []),
      '',
    ].join('\n'),
  );
  const child = spawn('stunnel', [conf], { stdio: 'ignore' });
  const log = (): string => {
    try {
      return readFileSync(logFile, 'utf8');
    } catch {
      return '';
    }
  };
  const stop = (): void => {
    if (child.exitCode === null && child.pid !== undefined) child.kill('SIGKILL');
  };
  const deadline = Date.now() + 5000;
  while (!(await listening(options.acceptPort))) {
    if (child.exitCode !== null || Date.now() > deadline) {
      stop();
      throw new Error(`stunnel did not start: ${log()}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { child, log, stop };
}

/** Is something listening on 127.0.0.1:port? Checked by binding it (no connection: stunnel would log one). */
async function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(true));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(false)));
  });
}
