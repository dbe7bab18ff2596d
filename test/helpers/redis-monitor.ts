import net from 'node:net';
import { redisTarget } from '../../src/store/redis.js';

/**
 * Redis MONITOR on a plain socket: each command Redis executes, as its name (lower-cased) and arguments.
 *
 * Why not ioredis's `monitor()`: Redis may send the first monitored command in the same read as the +OK of
 * MONITOR, and ioredis, which switches the connection to monitor mode when it has handled that +OK, then takes the
 * line for the reply of a command it never sent ("Command queue state error"): seen in a CI run with the whole
 * suite on the shared Redis.
 */
export interface RedisMonitor {
  disconnect(): void;
}

export async function monitorRedis(url: string, onCommand: (args: string[]) => void): Promise<RedisMonitor> {
  const target = redisTarget(url);
  const u = target.startsWith('/') ? undefined : new URL(target);
  const socket = u ? net.connect({ host: u.hostname || '127.0.0.1', port: Number(u.port || 6379) }) : net.connect({ path: target });
  let buf = '';
  let ready: (() => void) | undefined;
  let failed: ((err: Error) => void) | undefined;
  const started = new Promise<void>((resolve, reject) => {
    ready = resolve;
    failed = reject;
  });
  socket.setEncoding('latin1');
  socket.on('error', (err) => failed?.(err));
  socket.on('connect', () => socket.write('MONITOR\r\n'));
  socket.on('data', (chunk: string) => {
    buf += chunk;
    let eol: number;
    while ((eol = buf.indexOf('\r\n')) >= 0) {
      const line = buf.slice(0, eol);
      buf = buf.slice(eol + 2);
      if (line === '+OK') {
        ready?.();
        ready = undefined;
        continue;
      }
      if (line.startsWith('-')) {
        failed?.(new Error(`MONITOR refused: ${line.slice(1)}`));
        continue;
      }
      // +1339518083.107412 [0 127.0.0.1:60866] "keys" "*"
      const args = [...line.matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((m) => unescape(m[1]!));
      if (args.length) onCommand([args[0]!.toLowerCase(), ...args.slice(1)]);
    }
  });
  await started;
  return { disconnect: () => socket.destroy() };
}

/** MONITOR's quoting: \" \\ \n \r \t \a \b and \xNN. */
function unescape(s: string): string {
  return s.replace(/\\(x[0-9a-fA-F]{2}|.)/g, (_, e: string) => {
    if (e[0] === 'x') return String.fromCharCode(parseInt(e.slice(1), 16));
    return ({ n: '\n', r: '\r', t: '\t', a: '\x07', b: '\b' } as Record<string, string>)[e] ?? e;
  });
}
