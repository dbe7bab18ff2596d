/**
 * `bench voice-calls --sink quiet`: the RTP sink as a process that never reads
 * while packets arrive (quiet-sink.py). A reading sink on the same host is
 * woken by every packet inside the sender's own sendmsg() (loopback delivers
 * in the sender's context), which the far end of a real network link is not.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const SCRIPT = fileURLToPath(new URL('./quiet-sink.py', import.meta.url));

export interface QuietSink {
  readonly port: number;
  readonly pid: number;
  /** Ends the sink; resolves to the packets the kernel delivered to it (queued + dropped at its socket). */
  stop(): Promise<number>;
}

export async function startQuietSink(): Promise<QuietSink> {
  const child = spawn('python3', [SCRIPT], { stdio: ['pipe', 'pipe', 'inherit'] });
  let out = '';
  const exited = new Promise<void>((resolve) => child.on('close', () => resolve()));
  // Its first line is the port it bound; the second, at the end, the packets it got.
  const port = await new Promise<number>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('quiet sink: no port within 5 s')), 5000);
    child.on('error', (err) => reject(new Error(`quiet sink: ${err.message} (needs python3)`)));
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) {
        clearTimeout(t);
        resolve(Number(out.split('\n')[0]));
      }
    });
  });
  return {
    port,
    pid: child.pid!,
    async stop(): Promise<number> {
      child.stdin.end();
      const bounded = await Promise.race([exited.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 5000))]);
      if (!bounded) child.kill('SIGKILL');
      return Number(out.split('\n')[1] ?? NaN);
    },
  };
}
